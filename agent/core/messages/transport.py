"""Transport framing: one piece of a payload too large to travel as a single MQTT message."""

from __future__ import annotations

from dataclasses import dataclass

from fedge.agent.core.wire import message

SHA256_BYTES = 32
MAX_TRANSFER_ID = 128


@message("transport.chunk")
@dataclass(frozen=True)
class Chunk:
    """Piece ``index`` of ``count`` of a ``total_bytes`` payload whose SHA-256 is ``sha256``.

    Every chunk of a transfer repeats count, total and digest, so a receiver can check each
    piece against the first one it saw and drop any transfer that disagrees with itself.
    """

    transfer_id: str
    index: int
    count: int
    total_bytes: int
    sha256: bytes
    data: bytes

    def __post_init__(self) -> None:
        if not 0 < len(self.transfer_id) <= MAX_TRANSFER_ID:
            raise ValueError("transfer_id must be 1-128 characters")
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"chunk index {self.index} is not in [0, {self.count})")
        if self.total_bytes < 0 or len(self.data) > self.total_bytes:
            raise ValueError("chunk is larger than its transfer")
        if len(self.sha256) != SHA256_BYTES:
            raise ValueError("sha256 must be 32 bytes")
