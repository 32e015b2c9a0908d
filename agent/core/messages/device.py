"""A device's retained status: online or offline (its last will) and whether it may train now."""

from __future__ import annotations

from dataclasses import dataclass

from fedge.agent.core.wire import message


@message("device.status")
@dataclass(frozen=True)
class DeviceStatus:
    """Published retained on ``device_status(id)``; the broker publishes ``online=False`` as the will."""

    device_id: str
    online: bool
    eligible: bool
    reasons: tuple[str, ...]
