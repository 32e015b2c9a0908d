"""The in-memory broker and transport: MQTT semantics the simulator relies on, deterministically."""

from __future__ import annotations

import time

import pytest

from fedge.agent.core import topics
from fedge.agent.core.errors import TransportError
from fedge.agent.core.transport import InMemoryBroker, InMemoryTransport, TransportConfig, open_transport
from fedge.agent.core.transport.chunks import split
from tests.transport_fixtures import GARBAGE, corrupt, payload


def client(broker: InMemoryBroker, cid: str, **kw) -> InMemoryTransport:
    t = InMemoryTransport(TransportConfig("memory://", cid, **kw), broker)
    t.connect()
    return t


def drain(t: InMemoryTransport, ack: bool = True) -> list:
    out = []
    while (m := t.receive(0)) is not None:
        out.append(m)
        if ack:
            t.ack(m)
    return out


def test_round_trip_wildcards_and_order() -> None:
    b = InMemoryBroker()
    coord, a = client(b, "coordinator"), client(b, "dev-a")
    coord.subscribe(topics.ALL_DEVICES_OUT)
    msgs = [payload(50, seed=i) for i in range(5)]
    for m in msgs:
        a.publish(topics.device_out("dev-a"), m)
    a.publish(topics.device_status("dev-a"), payload(10))  # not subscribed
    got = drain(coord)
    assert [g.payload for g in got] == msgs and {g.topic for g in got} == {topics.device_out("dev-a")}
    assert b.unacked("coordinator") == 0


def test_large_payload_chunked_and_reassembled() -> None:
    b = InMemoryBroker()
    coord, a = client(b, "coordinator"), client(b, "dev-a", chunk_bytes=256 * 1024)
    coord.subscribe(topics.ALL_DEVICES_OUT)
    big = payload(5_000_000)
    a.publish(topics.device_out("dev-a"), big)
    assert b.published == -(-len(big) // (256 * 1024))
    (g,) = drain(coord, ack=False)
    assert g.payload == big
    assert b.unacked("coordinator") == b.published
    coord.ack(g)
    assert b.unacked("coordinator") == 0


def test_bad_inputs_dropped_and_later_messages_arrive() -> None:
    b = InMemoryBroker()
    coord = client(b, "coordinator", max_payload_bytes=100_000, chunk_bytes=10_000)
    a = client(b, "dev-a", chunk_bytes=10_000)
    coord.subscribe(topics.ALL_DEVICES_OUT)
    t = topics.device_out("dev-a")
    for g in GARBAGE:
        a.publish(t, g)
    for c in corrupt(split(payload(30_000), 5_000, "evil.1"), 1):
        a.publish(t, c)
    a.publish(t, payload(200_000))  # over the receiver's limit, chunked by the sender
    a.publish(t, split(payload(20_000), 5_000, "nested.1")[0] * 3)  # a "payload" made of chunks
    good = payload(500, seed=9)
    a.publish(t, good)
    assert [g.payload for g in drain(coord)] == [good]
    assert coord.dropped == len(GARBAGE) + 3
    assert b.unacked("coordinator") == 0  # everything dropped was acknowledged


def test_publish_over_own_limit_raises() -> None:
    a = client(InMemoryBroker(), "dev-a", max_payload_bytes=10_000, chunk_bytes=2_000)
    with pytest.raises(TransportError):
        a.publish("x", payload(20_000))


def test_retained_messages_and_clearing() -> None:
    b = InMemoryBroker()
    coord = client(b, "coordinator")
    ann = payload(30)
    coord.publish(topics.ROUNDS, ann, retain=True)
    dev = client(b, "dev-a")
    dev.subscribe(topics.ROUNDS)
    (g,) = drain(dev)
    assert g.payload == ann and g.retain
    coord.publish(topics.ROUNDS, b"", retain=True)
    assert b.retained(topics.ROUNDS) is None


def test_persistent_session_queues_and_redelivers_unacked() -> None:
    b = InMemoryBroker()
    coord = client(b, "coordinator")
    dev = client(b, "dev-a")
    dev.subscribe(topics.device_in("dev-a"))
    first, second = payload(40, seed=1), payload(40, seed=2)
    coord.publish(topics.device_in("dev-a"), first)
    got = dev.receive(0)
    assert got is not None and got.payload == first  # received, not acked
    dev.close()
    coord.publish(topics.device_in("dev-a"), second)  # queued while away
    dev.connect()
    redelivered = drain(dev)
    assert [r.payload for r in redelivered] == [first, second] and redelivered[0].duplicate
    dev.ack(got)  # stale handle from the old connection: harmless
    dev.close()
    dev.connect()
    assert drain(dev) == []


def test_clean_start_forgets_the_session() -> None:
    b = InMemoryBroker()
    dev = client(b, "dev-a", clean_start=True)
    dev.subscribe("x")
    dev.close()
    client(b, "p").publish("x", payload(10))
    dev.connect()
    assert drain(dev) == []


def test_will_on_kill_not_on_close() -> None:
    b = InMemoryBroker()
    coord = client(b, "coordinator")
    coord.subscribe(topics.ALL_DEVICES_STATUS)
    offline = payload(10, seed=3)
    for cid, kill in (("dev-a", True), ("dev-b", False)):
        d = InMemoryTransport(TransportConfig("memory://", cid), b)
        d.set_will(topics.device_status(cid), offline)
        d.connect()
        b.kill(cid) if kill else d.close()
        assert not d.connected
        with pytest.raises(TransportError):
            d.publish(topics.device_out(cid), payload(10))
    assert [g.topic for g in drain(coord)] == [topics.device_status("dev-a")]


def test_queue_limit_drops_silently_like_mosquitto() -> None:
    b = InMemoryBroker(max_queued=3)
    dev = client(b, "dev-a")
    dev.subscribe("x")
    dev.close()
    p = client(b, "p")
    for i in range(5):
        p.publish("x", payload(10, seed=i))  # no error: the publisher cannot tell
    dev.connect()
    assert len(drain(dev)) == 3 and b.dropped == 2


def test_many_messages_deterministic() -> None:
    """20,000 small messages from 200 devices arrive complete, in the same order every run."""

    def run() -> list[str]:
        b = InMemoryBroker()
        coord = client(b, "coordinator")
        coord.subscribe(topics.ALL_DEVICES_OUT)
        devs = [client(b, f"d{i}") for i in range(200)]
        msg = payload(200)
        for _ in range(100):
            for i, d in enumerate(devs):
                d.publish(topics.device_out(f"d{i}"), msg)
        return [g.topic for g in drain(coord)]

    t0 = time.perf_counter()
    first = run()
    elapsed = time.perf_counter() - t0
    assert len(first) == 20_000 and first == run()
    assert elapsed < 20, f"{elapsed:.1f} s for 20,000 messages"


def test_open_transport_factory() -> None:
    b = InMemoryBroker()
    assert isinstance(open_transport(TransportConfig("memory://", "x"), memory_broker=b), InMemoryTransport)
    with pytest.raises(ValueError):
        open_transport(TransportConfig("memory://", "x"))
