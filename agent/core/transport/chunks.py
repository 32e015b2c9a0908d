"""Chunking with integrity: split large payloads, reassemble them with bounded memory.

:class:`Inbox` is the receive side both transports share. It turns raw MQTT messages into whole
payloads and decides when the broker may be acknowledged: a plain message when the caller acks
it, a chunked payload's every chunk when the caller acks the whole payload, and anything dropped
(not a fedge message, malformed, oversized, inconsistent, digest mismatch, stale) at once, with a
log line. It is pure bookkeeping: no I/O, no threads; the transport passes opaque ack handles in
and gets back the ones to acknowledge.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import msgpack

from fedge.agent.core import wire
from fedge.agent.core.errors import WireError
from fedge.agent.core.messages.transport import Chunk
from fedge.agent.core.transport.base import Inbound, TransportConfig

log = logging.getLogger(__name__)

#: Every fedge message starts with these bytes (msgpack array of 4, magic, version).
ENVELOPE_PREFIX = b"\x94" + msgpack.packb(wire.MAGIC) + msgpack.packb(wire.WIRE_VERSION)
#: ...and a chunk continues with its type name.
CHUNK_PREFIX = ENVELOPE_PREFIX + msgpack.packb("transport.chunk")
#: Bytes a chunk's envelope adds to its data (generous).
CHUNK_OVERHEAD = 512
_COMPLETED_MEMORY = 4096

Handle = Hashable


def split(payload: bytes, chunk_bytes: int, transfer_id: str) -> list[bytes]:
    """Encode ``payload`` as ``transport.chunk`` messages of at most ``chunk_bytes`` data each."""
    digest = hashlib.sha256(payload).digest()
    count = max(1, -(-len(payload) // chunk_bytes))
    view = memoryview(payload)
    return [
        wire.encode(
            Chunk(
                transfer_id=transfer_id,
                index=i,
                count=count,
                total_bytes=len(payload),
                sha256=digest,
                data=bytes(view[i * chunk_bytes : (i + 1) * chunk_bytes]),
            )
        )
        for i in range(count)
    ]


@dataclass
class _Partial:
    """A transfer being reassembled: its pieces, their ack handles, and when it last moved."""

    count: int
    total: int
    sha256: bytes
    retain: bool
    last_seen: float
    pieces: dict[int, bytes] = field(default_factory=dict)
    handles: list[Handle] = field(default_factory=list)
    held: int = 0


class Inbox:
    """Receive-side bookkeeping for one transport connection (see the module docstring)."""

    def __init__(self, config: TransportConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._cfg = config
        self._clock = clock
        self._partials: OrderedDict[tuple[str, str], _Partial] = OrderedDict()
        self._held_bytes = 0
        self._pending: dict[int, list[Handle]] = {}
        self._completed: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._rejected: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._next_delivery = 0
        self.dropped = 0

    @property
    def held_bytes(self) -> int:
        """Bytes of partial payloads held right now."""
        return self._held_bytes

    @property
    def partial_transfers(self) -> int:
        return len(self._partials)

    def accept(
        self, topic: str, payload: bytes, *, retain: bool, dup: bool, handle: Handle
    ) -> tuple[Inbound | None, list[Handle]]:
        """Take one raw message; return a whole payload to deliver (or None) and handles to ack now."""
        to_ack = self.expire()
        if len(payload) > self._cfg.max_payload_bytes + CHUNK_OVERHEAD:
            to_ack += self._drop(topic, f"message of {len(payload)} bytes is over the limit", [handle])
            return None, to_ack
        if not payload.startswith(ENVELOPE_PREFIX):
            to_ack += self._drop(topic, "not a fedge message", [handle])
            return None, to_ack
        if not payload.startswith(CHUNK_PREFIX):
            if len(payload) > self._cfg.max_payload_bytes:
                to_ack += self._drop(topic, f"message of {len(payload)} bytes is over the limit", [handle])
                return None, to_ack
            return self._deliver(topic, payload, retain, dup, [handle], None), to_ack
        try:
            chunk = wire.decode(payload, max_bytes=self._cfg.max_payload_bytes + CHUNK_OVERHEAD, expect=Chunk)
        except WireError as e:
            to_ack += self._drop(topic, f"malformed chunk: {e}", [handle])
            return None, to_ack
        inbound, more = self._add_chunk(topic, chunk, retain, dup, handle)
        return inbound, to_ack + more

    def release(self, inbound: Inbound) -> list[Handle]:
        """The caller stored ``inbound``: return every handle to acknowledge for it (once)."""
        return self._pending.pop(inbound.delivery, [])

    def expire(self) -> list[Handle]:
        """Forget partial transfers untouched for ``transfer_timeout_s``; return their handles."""
        now = self._clock()
        to_ack: list[Handle] = []
        for key in [k for k, p in self._partials.items() if now - p.last_seen > self._cfg.transfer_timeout_s]:
            to_ack += self._drop_partial(key, "stale transfer expired")
        return to_ack

    # ------------------------------------------------------------ internals

    def _add_chunk(
        self, topic: str, c: Chunk, retain: bool, dup: bool, handle: Handle
    ) -> tuple[Inbound | None, list[Handle]]:
        key = (topic, c.transfer_id)
        done = self._completed.get(key)
        if done is not None:
            pending = self._pending.get(done)
            log.debug("duplicate chunk %d of a delivered transfer on %s dropped", c.index, topic)
            if pending is not None:
                pending.append(handle)  # acked with the payload
                return None, []
            return None, [handle]
        if key in self._rejected:
            log.debug("chunk %d of a dropped transfer on %s dropped", c.index, topic)
            return None, [handle]
        if c.total_bytes > self._cfg.max_payload_bytes:
            more = self._drop_partial(key, "transfer is over the limit") if key in self._partials else []
            self._reject(key)
            return None, more + self._drop(topic, f"transfer of {c.total_bytes} bytes is over the limit", [handle])
        p = self._partials.get(key)
        if p is None:
            if len(self._partials) >= self._cfg.max_transfers:
                return None, self._drop(topic, "too many concurrent transfers", [handle])
            p = _Partial(count=c.count, total=c.total_bytes, sha256=c.sha256, retain=retain, last_seen=self._clock())
            self._partials[key] = p
        elif (c.count, c.total_bytes, c.sha256) != (p.count, p.total, p.sha256):
            return None, self._drop_partial(key, "chunk disagrees with its transfer", [handle])
        p.last_seen = self._clock()
        self._partials.move_to_end(key)
        old = p.pieces.get(c.index)
        if old is not None:
            if old != c.data:
                return None, self._drop_partial(key, "two different chunks with one index", [handle])
            log.debug("duplicate chunk %d on %s dropped", c.index, topic)
            p.handles.append(handle)
            return None, []
        if p.held + len(c.data) > p.total:
            return None, self._drop_partial(key, "chunks exceed the declared length", [handle])
        if self._held_bytes + len(c.data) > self._cfg.max_reassembly_bytes:
            return None, self._drop_partial(key, "reassembly memory is full", [handle])
        p.pieces[c.index] = c.data
        p.handles.append(handle)
        p.held += len(c.data)
        self._held_bytes += len(c.data)
        if len(p.pieces) < p.count:
            return None, []
        del self._partials[key]
        self._held_bytes -= p.held
        payload = b"".join(p.pieces[i] for i in range(p.count))
        if len(payload) != p.total or hashlib.sha256(payload).digest() != p.sha256:
            self._reject(key)
            return None, self._drop(topic, "reassembled payload fails its length or digest check", p.handles)
        if not payload.startswith(ENVELOPE_PREFIX) or payload.startswith(CHUNK_PREFIX):
            return None, self._drop(topic, "reassembled payload is not a fedge message", p.handles)
        return self._deliver(topic, payload, p.retain, dup, p.handles, key), []

    def _deliver(
        self, topic: str, payload: bytes, retain: bool, dup: bool, handles: list[Handle], key: tuple[str, str] | None
    ) -> Inbound:
        self._next_delivery += 1
        d = self._next_delivery
        self._pending[d] = handles
        if key is not None:
            self._completed[key] = d
            while len(self._completed) > _COMPLETED_MEMORY:
                self._completed.popitem(last=False)
        return Inbound(topic=topic, payload=payload, retain=retain, delivery=d, duplicate=dup)

    def _drop_partial(self, key: tuple[str, str], why: str, extra: list[Handle] | None = None) -> list[Handle]:
        p = self._partials.pop(key)
        self._held_bytes -= p.held
        self._reject(key)
        return self._drop(key[0], why, p.handles + (extra or []))

    def _reject(self, key: tuple[str, str]) -> None:
        """Remember a dropped transfer so its remaining chunks are acknowledged without noise."""
        self._rejected[key] = None
        while len(self._rejected) > _COMPLETED_MEMORY:
            self._rejected.popitem(last=False)

    def _drop(self, topic: str, why: str, handles: list[Handle]) -> list[Handle]:
        self.dropped += 1
        log.warning("dropped input on %s: %s", topic, why, extra={"device": _device(topic)})
        return handles


def _device(topic: str) -> str | None:
    parts = topic.split("/")
    return parts[3] if len(parts) == 5 and parts[2] == "device" else None
