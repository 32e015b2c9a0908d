"""SecAgg+ in groups (coordinator/rounds/grouped.py) through build_round and the real participants."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fedge.agent.core.crypto import IdentityKey
from fedge.agent.core.errors import ProtocolError
from fedge.agent.participant import LocalResult, Participant
from fedge.agent.secure import PeerDirectory, secagg_factory, trusted_lookup
from fedge.coordinator.rounds.accounting import PrivacyAccountant, RoundEvent
from fedge.coordinator.rounds.builder import Draw, build_round
from fedge.coordinator.rounds.engine import RoundStatus
from fedge.coordinator.rounds.grouped import GroupedAggregation, GroupRefused, split_cohort
from fedge.coordinator.rounds.plan import TrainingConfig
from tests.fakes import FakeClock
from tests.round_fixtures import deliver


def _round(n, cfg, deltas, *, group_size, parallel=None, round_id=1):
    keys = {f"d{i:03d}": IdentityKey.generate() for i in range(n)}
    roster = {d: k.public_bytes() for d, k in keys.items()}
    clock = FakeClock()
    extra = {"parallel": parallel} if parallel is not None else {}
    built = build_round(
        round_id,
        cfg,
        "v0",
        np.zeros(next(iter(deltas.values())).size, np.float32),
        list(roster),
        Draw.fixed(1000, n),
        clock,
        roster=roster,
        group_size=group_size,
        **extra,
    )
    parts = {}
    for i, (d, key) in enumerate(keys.items()):
        directory = PeerDirectory(trusted=trusted_lookup(roster))
        parts[d] = Participant(
            d,
            (lambda dd: lambda task: LocalResult(deltas[dd], 10))(d),
            np.random.default_rng(i),
            secagg_factory(d, key, directory),
            peers=directory,
        )
    return built, parts, clock


def _finish(engine, clock, parts, drop):
    while engine.status is RoundStatus.RUNNING:
        clock.t = engine.deadline + 1
        deliver(engine, parts, engine.tick(), drop)


def _deltas(n, dim, seed=3):
    rng = np.random.default_rng(seed)
    return {f"d{i:03d}": rng.normal(0, 0.05, dim).astype(np.float32) for i in range(n)}


def test_split_gives_groups_of_at_least_g_with_proportional_floors() -> None:
    ids = [f"d{i:03d}" for i in range(103)]
    g = split_cohort(ids, 25, 80)
    assert [len(m) for m in g.groups] == [26, 26, 25, 26]
    assert sorted(sum(g.groups, ())) == ids
    assert g.floors == (21, 21, 20, 21)  # ceil(80 * size / 103)
    assert sum(g.floors) >= 80 and g.min_clients == 20


@pytest.mark.parametrize("threads", [False, True])
def test_grouped_round_equals_plain_mean_with_dropouts_in_every_group(threads) -> None:
    n, dim, gsize = 36, 30, 12
    deltas = _deltas(n, dim)
    cfg = TrainingConfig(secagg=True, goal=n, min_clients=24)
    pool = ThreadPoolExecutor(3) if threads else None
    parallel = (lambda jobs: list(pool.map(lambda j: j(), jobs))) if pool else None
    built, parts, clock = _round(n, cfg, deltas, group_size=gsize, parallel=parallel)
    agg = built.aggregation
    assert isinstance(agg, GroupedAggregation) and len(agg.groups) == 3
    members = [sorted(g._roster) for g in agg.groups]
    # in every group: one device never sends its masked input, another drops at unmask (still summed)
    silent_masked = {m[1] for m in members}
    silent_unmask = {m[4] for m in members}

    def drop(dev, msg):
        name = type(msg).__name__
        return (dev in silent_masked and name == "MaskedInput") or (dev in silent_unmask and name == "UnmaskShares")

    engine = built.engine
    deliver(engine, parts, engine.start(), drop)
    _finish(engine, clock, parts, drop)
    if pool:
        pool.shutdown()
    assert engine.status is RoundStatus.COMPLETED, engine.reason
    contributed = [d for d in deltas if d not in silent_masked]
    assert engine.outcome.participants == len(contributed) == 33
    assert sorted(engine.outcome.survivors) == sorted(contributed)
    expect = np.mean([deltas[d] for d in contributed], axis=0)
    tol = 2 * len(contributed) / built.plan.quantization.scale  # stochastic rounding: < 1 step per device
    np.testing.assert_allclose(engine.outcome.aggregate.mean_delta, expect, atol=tol)
    assert engine.outcome.dropped["masked_input"] == 3 and engine.outcome.dropped["unmask"] == 3


def test_group_below_its_floor_is_refused_with_its_reason_and_the_round_goes_on() -> None:
    n, dim, gsize = 30, 10, 10
    deltas = _deltas(n, dim, seed=5)
    cfg = TrainingConfig(secagg=True, goal=n, min_clients=18)
    built, parts, clock = _round(n, cfg, deltas, group_size=gsize)
    agg = built.aggregation
    floor = agg.groups[0].params.min_clients
    victims = set(sorted(agg.groups[0]._roster)[: 10 - floor + 1])  # one more than group 0 can lose
    drop = lambda d, m: d in victims and type(m).__name__ == "MaskedInput"  # noqa: E731
    engine = built.engine
    deliver(engine, parts, engine.start(), drop)
    _finish(engine, clock, parts, drop)
    assert engine.status is RoundStatus.COMPLETED, engine.reason
    assert list(agg.refused) == [0]
    reason = agg.refused[0]
    assert f"group 0 (10 devices, floor {floor}) refused" in reason and "masked_input" in reason
    assert engine.outcome.participants == 20 and engine.outcome.dropped["refused_groups"] == 1
    others = [d for d in deltas if d not in agg.groups[0]._roster]
    tol = 2 * 20 / built.plan.quantization.scale
    np.testing.assert_allclose(engine.outcome.aggregate.mean_delta, np.mean([deltas[d] for d in others], 0), atol=tol)
    with pytest.raises(ProtocolError, match="group 0"):
        agg.receive(sorted(agg.groups[0]._roster)[-1], object(), clock())


def test_round_abandoned_when_groups_left_are_below_the_minimum_cohort() -> None:
    n, gsize = 20, 10
    deltas = _deltas(n, 6, seed=7)
    cfg = TrainingConfig(secagg=True, goal=n, min_clients=16)
    built, parts, clock = _round(n, cfg, deltas, group_size=gsize)
    agg = built.aggregation
    victims = set(sorted(agg.groups[1]._roster)[:4])
    drop = lambda d, m: d in victims and type(m).__name__ == "MaskedInput"  # noqa: E731
    deliver(built.engine, parts, built.engine.start(), drop)
    _finish(built.engine, clock, parts, drop)
    assert built.engine.status is RoundStatus.ABANDONED
    assert "10 devices in the groups' sums, minimum cohort is 16" in built.engine.reason
    assert "group 1 (10 devices" in built.engine.reason


def test_cohort_smaller_than_a_group_is_refused() -> None:
    deltas = _deltas(8, 4)
    with pytest.raises(GroupRefused, match="group of 8 devices is below the minimum group size 10"):
        _round(8, TrainingConfig(secagg=True, goal=8, min_clients=4), deltas, group_size=10)


def test_distributed_dp_every_group_carries_the_noise_and_the_event_says_so() -> None:
    n = 40
    cfg = TrainingConfig(secagg=True, goal=n, min_clients=30, dp_mode="distributed", noise_multiplier=1.0)
    deltas = _deltas(n, 8)
    ungrouped, _, _ = _round(n, cfg, deltas, group_size=0)
    built, _, _ = _round(n, cfg, deltas, group_size=10)
    assert ungrouped.plan.privacy.min_clients == 30 and ungrouped.event.groups == 1
    # four groups of 10, floors ceil(30 * 10 / 40) = 8: every device's share is 1/8 of sigma^2
    assert built.plan.privacy.min_clients == 8 and built.event.groups == 4
    assert all(g.params.min_clients >= 8 for g in built.aggregation.groups)
    # the same Gaussian event (a device moves one group sum), so the same epsilon
    assert built.event.noise_multiplier == pytest.approx(ungrouped.event.noise_multiplier)
    a = PrivacyAccountant("rdp", [built.event])
    restored = PrivacyAccountant.from_json(a.to_json())
    assert restored.events[0].groups == 4
    doc = json.loads(a.to_json())
    del doc["events"][0]["groups"]  # a ledger written before groups existed
    old = json.dumps(doc)
    assert PrivacyAccountant.from_json(old).events[0] == RoundEvent(**{**built.event.to_dict(), "groups": 1})
