"""Every MQTT topic fedge uses, in one place. See docs/topics.md for who publishes what.

All topics live under ``fedge/v1/``; the version segment lets a fleet run two protocol versions
side by side during an upgrade. Device ids are restricted to ``[A-Za-z0-9_.-]{1,64}`` so that an
id can never inject a topic level or a wildcard (and so ACL patterns with ``%c``/``%u`` hold).
"""

from __future__ import annotations

import re

from fedge.agent.core.errors import ProtocolError

PREFIX = "fedge/v1"
_DEVICE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

#: Coordinator -> all devices: round announcements (retained: a device that connects late sees it).
ROUNDS = f"{PREFIX}/rounds"
#: Coordinator -> all devices: signed model releases (retained per release channel).
RELEASES = f"{PREFIX}/releases"
#: Coordinator -> all devices: release-key rotations, one retained topic per sequence number
#: (:func:`release_key_rotation`); devices subscribe to ``RELEASE_KEYS + "/#"``.
RELEASE_KEYS = f"{RELEASES}/keys"
#: Coordinator liveness (retained, with a last will).
COORDINATOR_STATUS = f"{PREFIX}/coordinator/status"
#: Coordinator subscribes here to hear every device's uploads.
ALL_DEVICES_OUT = f"{PREFIX}/device/+/out"
#: Coordinator subscribes here to every device's status (eligibility, last will).
ALL_DEVICES_STATUS = f"{PREFIX}/device/+/status"


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is a safe topic level, else raise ProtocolError."""
    if not isinstance(device_id, str) or not _DEVICE_ID.match(device_id):
        raise ProtocolError(f"invalid device id {device_id!r}: expected 1-64 of [A-Za-z0-9_.-]")
    return device_id


def device_in(device_id: str) -> str:
    """Coordinator -> one device: stage requests, shares relayed for it, rollout commands."""
    return f"{PREFIX}/device/{check_device_id(device_id)}/in"


def device_out(device_id: str) -> str:
    """One device -> coordinator: key advertisements, shares, masked inputs, reports."""
    return f"{PREFIX}/device/{check_device_id(device_id)}/out"


def device_status(device_id: str) -> str:
    """One device -> coordinator: online/offline (last will) and eligibility (retained)."""
    return f"{PREFIX}/device/{check_device_id(device_id)}/status"


def release(channel: str) -> str:
    """Retained signed release for a rollout channel (e.g. a cohort)."""
    return f"{RELEASES}/{check_device_id(channel)}"


def device_of(topic: str) -> str:
    """The device id in a per-device topic, or ProtocolError if the topic is not one."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != f"{PREFIX}/device" or parts[4] not in ("in", "out", "status"):
        raise ProtocolError(f"not a per-device topic: {topic!r}")
    return check_device_id(parts[3])


def release_key_rotation(sequence: int) -> str:
    """Retained release-key rotation number ``sequence`` (every one is kept: a device may have missed some)."""
    if type(sequence) is not int or sequence < 1:
        raise ProtocolError(f"invalid rotation sequence {sequence!r}")
    return f"{RELEASE_KEYS}/{sequence}"
