"""The agent's store parts on real SQLite files: the outbox survives a reopen and replays in order,
round state drops unfinished rounds at restart, the model cache checks hashes, identities persist."""

from __future__ import annotations

import contextlib
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedge.agent import identity
from fedge.agent.core.errors import ConfigError, TrainingError, TransportError
from fedge.agent.model_cache import ModelCache
from fedge.agent.outbox import Outbox
from fedge.agent.round_state import RoundStates
from fedge.agent.store import Store


def test_outbox_survives_a_reopen_and_replays_in_order_once(tmp_path):
    db = tmp_path / "agent.db"
    with Store(db) as s:
        ob = Outbox(s.db)
        assert ob.put(1, "round.checkin", "t/out", b"a") == (1, True)
        assert ob.put(1, "round.plain_update", "t/out", b"b")[1]
        assert ob.put(2, "round.checkin", "t/out", b"c")[1]
        # a second put of the same (round, stage) keeps the first payload
        assert ob.put(1, "round.plain_update", "t/out", b"changed") == (2, False)
    # the process "dies" before any PUBACK; a new one opens the same file
    with Store(db) as s:
        ob = Outbox(s.db)
        assert len(ob) == 3
        sent = []
        assert ob.flush(lambda topic, payload: sent.append((topic, payload))) == 3
        assert sent == [("t/out", b"a"), ("t/out", b"b"), ("t/out", b"c")]
        assert len(ob) == 0
        assert ob.flush(lambda *_: pytest.fail("nothing left to send")) == 0


def test_outbox_keeps_what_was_not_acknowledged_and_counts_attempts(tmp_path):
    with Store(tmp_path / "agent.db") as s:
        ob = Outbox(s.db)
        for i in range(3):
            ob.put(7, f"stage{i}", "t", bytes([i]))
        calls = []

        def flaky(topic, payload):
            calls.append(payload)
            if payload == b"\x01":
                raise TransportError("no PUBACK")

        with pytest.raises(TransportError):
            ob.flush(flaky)
        left = ob.pending()
        assert [i.stage for i in left] == ["stage1", "stage2"]  # order kept, the first one is gone
        assert [i.attempts for i in left] == [1, 0]
        ob.flush(lambda *_: None)
        assert len(ob) == 0 and calls == [b"\x00", b"\x01"]


def test_round_state_drops_unfinished_rounds_at_restart(tmp_path):
    db = tmp_path / "agent.db"
    with Store(db) as s:
        rs = RoundStates(s.db, clock=lambda: 5.0)
        rs.set(1, "round.plain_update", "ended")
        rs.set(2, "round.plain_update", "uploaded")
        rs.set(3, "task", "training")
        rs.set(4, "checkin", "ineligible")
        rs.set(5, "checkin", "checked_in")
    with Store(db) as s:
        rs = RoundStates(s.db)
        assert rs.drop_unfinished() == [2, 3]
        assert rs.get(5).status == "checked_in"  # only checked in: it can still take its task
        assert rs.get(2).stage == "round.plain_update" and rs.get(2).status == "dropped"
        assert rs.get(3).status == "dropped" and rs.get(1).status == "ended"
        assert rs.drop_unfinished() == []
        assert [r.round_id for r in rs.latest(2)] == [5, 4]


def test_model_cache_keeps_the_newest_and_detects_corruption(tmp_path):
    with Store(tmp_path / "agent.db") as s:
        clock = iter(range(100))
        mc = ModelCache(s.db, keep=2, clock=lambda: float(next(clock)))
        w = np.arange(10, dtype=np.float32)
        for v in ("v1", "v2", "v3"):
            mc.put(v, w + int(v[1]))
        assert mc.get("v1") is None and mc.latest_version() == "v3"
        np.testing.assert_array_equal(mc.get("v3"), w + 3)
        s.db.execute("update model_cache set weights = ? where version = 'v2'", [b"\0" * 40])
        with pytest.raises(TrainingError):
            mc.get("v2")


def test_identity_is_created_once_and_bound_to_one_device(tmp_path):
    db = tmp_path / "agent.db"
    with Store(db) as s:
        with pytest.raises(ConfigError):
            identity.load(s.db)
        k1 = identity.load_or_create(s.db, "dev-1")
        identity.set_authority(s.db, bytes(range(32)))
    with Store(db) as s:
        dev, k2 = identity.load(s.db)
        assert dev == "dev-1" and k2.public_bytes() == k1.public_bytes()
        assert identity.stored_authority(s.db) == bytes(range(32))
        with pytest.raises(ConfigError):
            identity.load_or_create(s.db, "dev-2")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.tuples(st.integers(1, 3), st.sampled_from(["a", "b", "c"]), st.booleans()), max_size=25),
    st.integers(0, 2**32 - 1),
)
def test_outbox_delivers_every_put_once_in_order_whatever_fails_and_restarts(tmp_path, ops, seed):
    """Puts (some replayed), flushes that fail at random and reopens: the broker sees each
    (round, stage) at least once, first copies in put order, and the outbox ends empty."""
    import random

    rnd = random.Random(seed)
    path = tmp_path / f"o{seed}-{len(ops)}.db"
    store = Store(path)
    received: list[tuple[int, str]] = []

    def publish(topic, payload):
        if rnd.random() < 0.3:
            raise TransportError("lost")
        received.append(tuple(payload.decode().split(":")))  # type: ignore[arg-type]

    promised: list[tuple[int, str]] = []
    for rid, stage, reopen in ops:
        Outbox(store.db).put(rid, stage, "t", f"{rid}:{stage}".encode())
        if (rid, stage) not in promised:
            promised.append((rid, stage))
        with contextlib.suppress(TransportError):
            Outbox(store.db).flush(publish)
        if reopen:
            store.close()
            store = Store(path)
    while len(Outbox(store.db)):
        with contextlib.suppress(TransportError):
            Outbox(store.db).flush(publish)
    store.close()
    received = [(int(r), s) for r, s in received]
    assert list(dict.fromkeys(received)) == promised
    # a publish either succeeded (then the row is gone) or raised: one copy per put at most, and
    # a put while the row is still pending adds none (a put after delivery is a new message)
    puts = Counter((rid, stage) for rid, stage, _ in ops)
    assert all(n <= puts[k] for k, n in Counter(received).items())
    if len(set(puts)) == len(ops):
        assert len(received) == len(promised)
