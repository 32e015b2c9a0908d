"""SecAgg+ in groups (coordinator/rounds/grouped.py) through build_round and the real participants."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest

from fedge.agent.core import wire
from fedge.agent.core.crypto import IdentityKey
from fedge.agent.core.errors import ProtocolError
from fedge.agent.core.messages.secagg import KeyAdvertisement, MaskedInput
from fedge.agent.participant import LocalResult, Participant
from fedge.agent.secure import PeerDirectory, secagg_factory, trusted_lookup
from fedge.coordinator.rounds.accounting import PrivacyAccountant, RoundEvent
from fedge.coordinator.rounds.builder import Draw, build_round
from fedge.coordinator.rounds.engine import RoundStatus
from fedge.coordinator.rounds.grouped import GroupedAggregation, GroupRefused, split_cohort
from fedge.coordinator.rounds.plan import TrainingConfig
from fedge.coordinator.rounds.remote import HOST, GroupHost, pack, unpack
from fedge.coordinator.rounds.secure import secure_spec
from fedge.coordinator.workers import GroupWorkers
from tests.fakes import FakeClock
from tests.round_fixtures import deliver


@pytest.fixture(scope="module", params=["serial", "thread", "process", "ray"])
def engine_workers(request):
    """Where the groups run: this process (one by one, or closing on three threads), two worker
    processes, or two Ray actors (a local Ray)."""
    if request.param == "serial":
        yield None
        return
    if request.param == "ray":
        pytest.importorskip("ray")
    workers = GroupWorkers(2 if request.param != "thread" else 3, request.param, HOST)
    yield workers
    workers.close()


def _round(n, cfg, deltas, *, group_size, parallel=None, round_id=1, workers=None):
    keys = {f"d{i:03d}": IdentityKey.generate() for i in range(n)}
    roster = {d: k.public_bytes() for d, k in keys.items()}
    clock = FakeClock()
    extra = {"parallel": parallel} if parallel is not None else {}
    if workers is not None:
        extra.update(parallel=workers, hosts=workers.hosts)
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


def test_grouped_round_equals_plain_mean_with_dropouts_in_every_group(engine_workers) -> None:
    n, dim, gsize = 36, 30, 12
    deltas = _deltas(n, dim)
    cfg = TrainingConfig(secagg=True, goal=n, min_clients=24)
    built, parts, clock = _round(n, cfg, deltas, group_size=gsize, workers=engine_workers)
    agg = built.aggregation
    assert isinstance(agg, GroupedAggregation) and len(agg.groups) == 3
    members = [sorted(g.roster_ids) for g in agg.groups]
    # in every group: one device never sends its masked input, another drops at unmask (still summed)
    silent_masked = {m[1] for m in members}
    silent_unmask = {m[4] for m in members}

    def drop(dev, msg):
        name = type(msg).__name__
        return (dev in silent_masked and name == "MaskedInput") or (dev in silent_unmask and name == "UnmaskShares")

    engine = built.engine
    deliver(engine, parts, engine.start(), drop)
    _finish(engine, clock, parts, drop)
    assert engine.status is RoundStatus.COMPLETED, engine.reason
    contributed = [d for d in deltas if d not in silent_masked]
    assert engine.outcome.participants == len(contributed) == 33
    assert sorted(engine.outcome.survivors) == sorted(contributed)
    expect = np.mean([deltas[d] for d in contributed], axis=0)
    tol = 2 * len(contributed) / built.plan.quantization.scale  # stochastic rounding: < 1 step per device
    np.testing.assert_allclose(engine.outcome.aggregate.mean_delta, expect, atol=tol)
    assert engine.outcome.dropped["masked_input"] == 3 and engine.outcome.dropped["unmask"] == 3


def test_group_below_its_floor_is_refused_with_its_reason_and_the_round_goes_on(engine_workers) -> None:
    n, dim, gsize = 30, 10, 10
    deltas = _deltas(n, dim, seed=5)
    cfg = TrainingConfig(secagg=True, goal=n, min_clients=18)
    built, parts, clock = _round(n, cfg, deltas, group_size=gsize, workers=engine_workers)
    agg = built.aggregation
    floor = agg.groups[0].params.min_clients
    victims = set(sorted(agg.groups[0].roster_ids)[: 10 - floor + 1])  # one more than group 0 can lose
    drop = lambda d, m: d in victims and type(m).__name__ == "MaskedInput"  # noqa: E731
    engine = built.engine
    deliver(engine, parts, engine.start(), drop)
    _finish(engine, clock, parts, drop)
    assert engine.status is RoundStatus.COMPLETED, engine.reason
    assert list(agg.refused) == [0]
    reason = agg.refused[0]
    assert f"group 0 (10 devices, floor {floor}) refused" in reason and "masked_input" in reason
    assert engine.outcome.participants == 20 and engine.outcome.dropped["refused_groups"] == 1
    others = [d for d in deltas if d not in agg.groups[0].roster_ids]
    tol = 2 * 20 / built.plan.quantization.scale
    np.testing.assert_allclose(engine.outcome.aggregate.mean_delta, np.mean([deltas[d] for d in others], 0), atol=tol)
    with pytest.raises(ProtocolError, match="group 0"):
        agg.receive(sorted(agg.groups[0].roster_ids)[-1], object(), clock())


def test_round_abandoned_when_groups_left_are_below_the_minimum_cohort(engine_workers) -> None:
    n, gsize = 20, 10
    deltas = _deltas(n, 6, seed=7)
    cfg = TrainingConfig(secagg=True, goal=n, min_clients=16)
    built, parts, clock = _round(n, cfg, deltas, group_size=gsize, workers=engine_workers)
    agg = built.aggregation
    victims = set(sorted(agg.groups[1].roster_ids)[:4])
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


def test_a_reply_the_worker_refuses_is_logged_awaited_again_and_a_good_resend_completes_the_round(
    caplog,
) -> None:
    """In a worker process a forged advertisement is refused where it is checked; the driver hears of
    it when it holds every reply it waited for, logs the reason and waits for that device again."""
    n, gsize = 20, 10
    deltas = _deltas(n, 6, seed=11)
    workers = GroupWorkers(2, "process", HOST)
    try:
        built, parts, clock = _round(
            n, TrainingConfig(secagg=True, goal=n, min_clients=16), deltas, group_size=gsize, workers=workers
        )
        engine, agg = built.engine, built.aggregation
        victim = sorted(agg.groups[0].roster_ids)[3]
        held = []

        def drop(dev, msg):  # hold the victim's genuine advertisement; send a forged one instead
            if dev == victim and isinstance(msg, KeyAdvertisement) and not held:
                held.append(msg)
                forged = dataclasses.replace(msg, signature=bytes(64))
                engine.receive(dev, wire.decode(wire.encode(forged)))
                return True
            return False

        with caplog.at_level(logging.WARNING, logger="fedge.coordinator.rounds.remote"):
            deliver(engine, parts, engine.start(), drop)
        assert held and agg.groups[0].stage == "advertise_keys" and not agg.groups[0].ready()
        refused = [r for r in caplog.records if r.name == "fedge.coordinator.rounds.remote"]
        assert any(getattr(r, "device", None) == victim and "SecurityError" in r.getMessage() for r in refused)
        assert agg.groups[1].ready()  # the other group is done and waits in lockstep
        deliver(engine, parts, engine.receive(victim, held[0]))
        _finish(engine, clock, parts, lambda d, m: False)
        assert engine.status is RoundStatus.COMPLETED, engine.reason
        assert engine.outcome.participants == n
    finally:
        workers.close()


def test_a_worker_killed_mid_round_loses_its_groups_with_the_reason_and_the_others_finish() -> None:
    n, gsize = 30, 10
    deltas = _deltas(n, 6, seed=13)
    workers = GroupWorkers(2, "process", HOST)
    try:
        built, parts, clock = _round(
            n, TrainingConfig(secagg=True, goal=n, min_clients=18), deltas, group_size=gsize, workers=workers
        )
        engine, agg = built.engine, built.aggregation
        killed = []

        def drop(dev, msg):  # the worker of group 1 (groups spread round-robin: p1) dies at masked input
            if isinstance(msg, MaskedInput) and not killed:
                proc, _ = workers._procs[1]
                proc.kill()
                proc.wait()
                killed.append(dev)
            return False

        deliver(engine, parts, engine.start(), drop)
        _finish(engine, clock, parts, drop)
        assert killed and engine.status is RoundStatus.COMPLETED, engine.reason
        assert list(agg.refused) == [1] and "group worker p1 is gone" in agg.refused[1]
        assert engine.outcome.participants == 20 and engine.outcome.dropped["refused_groups"] == 1
        others = [d for d in deltas if d not in agg.groups[1].roster_ids]
        tol = 2 * 20 / built.plan.quantization.scale
        np.testing.assert_allclose(
            engine.outcome.aggregate.mean_delta, np.mean([deltas[d] for d in others], 0), atol=tol
        )
    finally:
        workers.close()


def test_group_host_answers_bad_frames_with_a_clear_error_and_forgets_old_rounds() -> None:
    host = GroupHost(lambda: 0.0)
    bad = unpack(host.handle(b"\xc1"))
    assert bad["error"] == "ProtocolError" and bad["text"].startswith("malformed host frame")
    assert unpack(host.handle(pack({"op": "nope", "key": "1/0"})))["text"] == "unknown host operation 'nope'"
    assert "not held by this worker" in unpack(host.handle(pack({"op": "status", "key": "9/0"})))["text"]
    assert (
        "malformed group spec" in unpack(host.handle(pack({"op": "open", "key": "1/0", "spec": {}, "now": 0})))["text"]
    )
    cfg = TrainingConfig(secagg=True, goal=4, min_clients=3)
    keys = {f"d{i}": IdentityKey.generate().public_bytes() for i in range(4)}
    plan_round, _, _ = _round(4, cfg, _deltas(4, 3), group_size=0)
    for r in (1, 2, 3, 4):
        spec = secure_spec(plan_round.plan, r, keys, 3, min_clients=3)
        assert "ok" in unpack(host.handle(pack({"op": "open", "key": f"{r}/0", "spec": spec.to_plain(), "now": 0})))
    assert host.groups == 3  # round 1 is more than KEEP_ROUNDS older than round 4
    # an offer is never answered; a bad one is reported at the next status, with its device
    assert host.handle(pack({"op": "offer", "key": "4/0", "device": "d1", "msg": b"junk"})) is None
    state = unpack(host.handle(pack({"op": "status", "key": "4/0"})))["ok"]
    assert state["awaiting"] == ["d0", "d1", "d2", "d3"] and state["rejected"][0][0] == "d1"
    assert "WireError" in state["rejected"][0][1]
