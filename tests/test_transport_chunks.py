"""Chunking and reassembly (the Inbox): intact payloads, bounded memory, bad input dropped."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.agent.core import wire
from fedge.agent.core.errors import ConfigError
from fedge.agent.core.messages.transport import Chunk
from fedge.agent.core.transport.base import TransportConfig
from fedge.agent.core.transport.chunks import Inbox, split
from tests.fakes import FakeClock
from tests.transport_fixtures import GARBAGE, corrupt, payload

CFG = TransportConfig(
    "memory://",
    "rx",
    chunk_bytes=1024,
    max_payload_bytes=64 * 1024,
    max_reassembly_bytes=128 * 1024,
    max_transfers=4,
    transfer_timeout_s=10.0,
)


def feed(inbox: Inbox, msgs: list[bytes], topic: str = "t", start: int = 0):
    """Feed messages with handles start, start+1, ...; return delivered inbounds and acks-now."""
    got, acked = [], []
    for i, m in enumerate(msgs):
        inbound, now = inbox.accept(topic, m, retain=False, dup=False, handle=start + i)
        acked += now
        if inbound is not None:
            got.append(inbound)
    return got, acked


@pytest.mark.parametrize("size", [1025, 5000, 60_000])
def test_split_and_reassemble_in_any_order(size: int) -> None:
    p = payload(size)
    chunks = split(p, CFG.chunk_bytes, "x.1")
    assert len(chunks) == -(-len(p) // 1024)
    order = np.random.default_rng(size).permutation(len(chunks))
    inbox = Inbox(CFG)
    got, acked = feed(inbox, [chunks[i] for i in order])
    assert [g.payload for g in got] == [p] and acked == []
    assert sorted(inbox.release(got[0])) == list(range(len(chunks)))
    assert inbox.release(got[0]) == []  # once
    assert inbox.held_bytes == 0 and inbox.partial_transfers == 0


def test_plain_message_delivered_and_acked_on_release() -> None:
    inbox = Inbox(CFG)
    p = payload(100)
    (g,), acked = feed(inbox, [p], start=7)
    assert g.payload == p and acked == []
    assert inbox.release(g) == [7]


@pytest.mark.parametrize("bad", GARBAGE)
def test_garbage_dropped_logged_and_acked(bad: bytes, caplog: pytest.LogCaptureFixture) -> None:
    inbox = Inbox(CFG)
    with caplog.at_level(logging.WARNING, logger="fedge.agent.core.transport.chunks"):
        got, acked = feed(inbox, [bad, payload(10)])
    assert len(got) == 1 and acked == [0] and inbox.dropped == 1
    assert "dropped input" in caplog.text


def test_oversized_plain_and_oversized_transfer_dropped() -> None:
    inbox = Inbox(CFG)
    big = payload(CFG.max_payload_bytes + 10)
    got, acked = feed(inbox, [big])
    assert got == [] and acked == [0]
    chunks = split(big, 8192, "x.2")
    got, acked = feed(inbox, chunks, start=10)
    assert got == [] and sorted(acked) == list(range(10, 10 + len(chunks)))
    assert inbox.held_bytes == 0


def test_corrupt_chunk_fails_digest_and_all_chunks_acked() -> None:
    p = payload(5000)
    chunks = corrupt(split(p, 1024, "x.3"), 2)
    inbox = Inbox(CFG)
    got, acked = feed(inbox, chunks + [payload(10)])
    assert len(got) == 1 and got[0].payload != p
    assert sorted(acked) == list(range(len(chunks)))
    assert inbox.dropped == 1


def test_inconsistent_chunk_drops_transfer() -> None:
    p = payload(5000)
    chunks = split(p, 1024, "x.4")
    c = wire.decode(chunks[1], expect=Chunk)
    liar = wire.encode(Chunk(c.transfer_id, c.index, c.count + 1, c.total_bytes, c.sha256, c.data))
    inbox = Inbox(CFG)
    got, acked = feed(inbox, [chunks[0], liar] + chunks[2:])
    assert got == [] and acked[:2] == [0, 1]
    assert inbox.dropped >= 1


def test_duplicate_chunk_joins_the_payload_ack() -> None:
    p = payload(3000)
    chunks = split(p, 1024, "x.5")
    inbox = Inbox(CFG)
    got, acked = feed(inbox, [chunks[0], chunks[0]] + chunks[1:])
    assert [g.payload for g in got] == [p] and acked == []
    late, acked = feed(inbox, [chunks[1]], start=100)  # redelivered after completion, before release
    assert late == [] and acked == []
    assert sorted(inbox.release(got[0])) == list(range(len(chunks) + 1)) + [100]
    late, acked = feed(inbox, [chunks[2]], start=200)  # after release: acked at once, not redelivered
    assert late == [] and acked == [200]


def test_stale_transfer_expires() -> None:
    clock = FakeClock()
    inbox = Inbox(CFG, clock)
    chunks = split(payload(5000), 1024, "x.6")
    feed(inbox, chunks[:2])
    assert inbox.partial_transfers == 1
    clock.t = 11.0
    got, acked = feed(inbox, [payload(10)], start=50)
    assert len(got) == 1 and acked == [0, 1] and inbox.partial_transfers == 0 and inbox.held_bytes == 0


def test_bounded_concurrent_transfers_and_bytes() -> None:
    inbox = Inbox(CFG)
    firsts = [split(payload(5000, seed=i), 1024, f"t.{i}")[0] for i in range(6)]
    got, acked = feed(inbox, firsts)
    assert got == [] and acked == [4, 5] and inbox.partial_transfers == CFG.max_transfers
    # byte bound: three large transfers fill 128 KiB of reassembly memory
    cfg = TransportConfig(
        "memory://",
        "rx",
        chunk_bytes=16 * 1024,
        max_payload_bytes=64 * 1024,
        max_reassembly_bytes=64 * 1024,
        max_transfers=8,
    )
    inbox = Inbox(cfg)
    parts = [split(payload(60_000, seed=i), 16 * 1024, f"b.{i}") for i in range(2)]
    feed(inbox, parts[0][:-1])
    got, acked = feed(inbox, parts[1][:2], start=10)
    assert inbox.held_bytes <= cfg.max_reassembly_bytes and 11 in acked


def test_transfers_on_different_topics_do_not_mix() -> None:
    p1, p2 = payload(3000, seed=1), payload(3000, seed=2)
    c1, c2 = split(p1, 1024, "same"), split(p2, 1024, "same")
    inbox = Inbox(CFG)
    out = []
    for a, b in zip(c1, c2):
        out += feed(inbox, [a], topic="x/a")[0] + feed(inbox, [b], topic="x/b")[0]
    assert sorted(g.payload for g in out) == sorted([p1, p2])


@pytest.mark.parametrize(
    "kw",
    [
        {"broker_url": "http://x"},
        {"chunk_bytes": 10},
        {"protocol": "4"},
        {"tls_cert": "c"},
        {"broker_url": "mqtt://h:1", "tls_cert": "c", "tls_key": "k"},
        {"reconnect_min_s": 0},
    ],
)
def test_bad_config_rejected(kw: dict) -> None:
    args = {"broker_url": "mqtt://127.0.0.1:1883", "client_id": "c", **kw}
    with pytest.raises(ConfigError):
        TransportConfig(**args)


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1025, 20_000),
    chunk=st.integers(1024, 8192),
    seed=st.integers(0, 2**32 - 1),
    dups=st.integers(0, 5),
)
def test_property_any_order_with_duplicates_delivers_once_and_acks_everything(
    size: int, chunk: int, seed: int, dups: int
) -> None:
    rng = np.random.default_rng(seed)
    p = payload(size, seed=seed % 1000)
    pieces = split(p, chunk, "prop")
    stream = pieces + [pieces[int(i)] for i in rng.integers(0, len(pieces), dups)]
    stream = [stream[int(i)] for i in rng.permutation(len(stream))]
    inbox = Inbox(CFG)
    got, acked = feed(inbox, stream)
    if len(p) <= CFG.max_payload_bytes:
        assert [g.payload for g in got] == [p]
        acked += inbox.release(got[0])
    assert sorted(acked) == list(range(len(stream)))  # every MQTT message acked exactly once
    assert inbox.held_bytes == 0 and inbox.partial_transfers == 0
