"""Payloads for transport tests: real fedge wire messages of a chosen size, and bad inputs."""

from __future__ import annotations

import numpy as np

from fedge.agent.core import wire
from fedge.agent.core.messages.common import Reject
from fedge.agent.core.messages.transport import Chunk


def payload(size: int, seed: int = 0, device: str = "dev-a") -> bytes:
    """A wire-encoded message of about ``size`` bytes with random (seeded) content."""
    rng = np.random.default_rng(seed)
    return wire.encode(
        Reject(device_id=device, round_id=seed, stage="upload", reason=rng.bytes(max(1, size // 2)).hex())
    )


def corrupt(chunks: list[bytes], index: int) -> list[bytes]:
    """The same chunks with one piece's data altered (its digest still claims the original)."""
    out = list(chunks)
    c = wire.decode(out[index], expect=Chunk)
    data = bytearray(c.data)
    data[len(data) // 2] ^= 0xFF
    out[index] = wire.encode(Chunk(c.transfer_id, c.index, c.count, c.total_bytes, c.sha256, bytes(data)))
    return out


GARBAGE = (b"", b"\x00\xff garbage", b"\x94\xa5fedge\x01\xaftransport.chunk\x00truncated", b"\x94\xa5fedge\x02x")
