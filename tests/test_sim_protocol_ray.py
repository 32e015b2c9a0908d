"""``--engine ray``: the same device hosts on Ray actors give the same numbers as the local engine."""

from __future__ import annotations

import importlib.util

import pytest

from fedge.simulations import runner
from tests.sim_protocol_fixtures import numbers, small_config

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray is an optional extra (pip install 'fedge[ray]'); scripts/test installs it",
)


def test_ray_actors_reproduce_the_local_run_exactly() -> None:
    config = small_config(profiles=(), rounds=1, per_round=30)
    on_ray = runner.run(small_config(profiles=(), rounds=1, per_round=30, engine="ray", workers=2), show_progress=False)
    local = runner.run(config, show_progress=False)
    assert on_ray.extra["hosts"] == 2 and local.extra["hosts"] == 1
    assert numbers(on_ray) == numbers(local)
    assert on_ray.rounds[0].epsilon is not None and on_ray.rounds[0].status == "completed"
