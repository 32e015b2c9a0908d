"""Messages every protocol area uses: acknowledgements and refusals, and a message addressed to one device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedge.agent.core.wire import message


@message("common.ack")
@dataclass(frozen=True)
class Ack:
    """The receiver stored ``message_id`` (device, round and stage make it unique)."""

    device_id: str
    round_id: int
    stage: str
    message_id: str


@message("common.reject")
@dataclass(frozen=True)
class Reject:
    """The receiver refused a message; ``reason`` is safe to log on both sides."""

    device_id: str
    round_id: int
    stage: str
    reason: str


@dataclass(frozen=True)
class Outbound:
    """A message for one device (not itself on the wire: the sender publishes ``message`` to it)."""

    device_id: str
    message: Any
