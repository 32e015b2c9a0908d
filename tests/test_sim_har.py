"""Third-party pickles read without running code, and UCI HAPT (30 users) as a natural-partition data set."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from fedge.agent.core.errors import ConfigError
from fedge.simulations.safe_pickle import Call, Global, ndarray_of, read


class _Boom:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_plain_data_reads_back(protocol):
    obj = {"a": [1, 2.5, "x", None, True], 3: ("t", b"\x00\xff", -7), "n": {"deep": [[], {}]}}
    assert read(pickle.dumps(obj, protocol=protocol)) == obj


def test_a_pickle_that_would_run_code_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    tree = read(pickle.dumps(_Boom(str(target)), protocol=2))
    assert isinstance(tree, Call) and tree.func == Global("posix", "system")
    assert not target.exists()


@pytest.mark.parametrize("protocol", [1, 2])
def test_numpy_arrays_are_rebuilt_from_bytes_and_object_arrays_refused(protocol):
    a = np.arange(12, dtype=">f8").reshape(3, 4)
    got = ndarray_of(read(pickle.dumps(a, protocol=protocol)))
    assert got.dtype == np.float64 and np.array_equal(got, a)
    assert np.array_equal(ndarray_of(read(pickle.dumps(np.asfortranarray(a), protocol=protocol))), a)
    with pytest.raises(ConfigError, match="refused"):
        ndarray_of(read(pickle.dumps(np.array(["a", 1], dtype=object), protocol=protocol)))


def test_malformed_streams_are_config_errors():
    with pytest.raises(ConfigError):
        read(b"\x80\x02}q\x00")  # no STOP
    with pytest.raises(ConfigError):
        read(pickle.dumps(bytearray(b"ab"), protocol=5))  # an opcode the safe reader does not know


def test_hapt_users_windows_and_a_natural_partition():
    from fedge.simulations.har import hapt_examples, recordings

    recs = recordings()
    assert len(recs) == 30 and sum(len(r) for r in recs.values()) == 61
    x, y, users = hapt_examples()
    assert x.shape == (10_017, 60) and np.isfinite(x).all()
    assert np.bincount(y).tolist() == [1660, 1468, 1317, 1736, 1926, 1910]
    assert np.unique(users).tolist() == list(range(1, 31))


def test_fedge_sim_learns_har_with_one_device_per_user(tmp_path):
    from fedge.simulations.config import SimConfig
    from fedge.simulations.runner import run

    summary = run(
        SimConfig(
            population=30,
            per_round=10,
            rounds=10,
            model="mlp",
            dataset="har",
            partition="natural",
            learning_rate=0.1,
            seed=0,
            workers=0,
        ),
        show_progress=False,
    )
    assert summary.rounds[-1].accuracy > 0.85, [r.accuracy for r in summary.rounds]
