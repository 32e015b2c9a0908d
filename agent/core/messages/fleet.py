"""Fleet operations on the wire: install, roll back and pin commands, and the device's install report.

The release itself (:class:`~agent.core.release.SignedRelease`, ``fleet.release``) and key
rotations (:class:`~agent.core.release.KeyRotation`, ``fleet.key_rotation``) are registered in
:mod:`fedge.agent.core.release` next to the code that signs and verifies them; importing this module
registers all of them. Commands go to ``device_in(id)``, reports come back on ``device_out(id)``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from fedge.agent.core.release import KeyRotation, ReleaseManifest, SignedRelease, check_version
from fedge.agent.core.wire import message

__all__ = [
    "InstallCommand",
    "InstallReport",
    "InstallResult",
    "KeyRotation",
    "PinCommand",
    "ReleaseManifest",
    "RollbackCommand",
    "SignedRelease",
]


def _check_rollout(rollout_id: str) -> None:
    if not 1 <= len(rollout_id) <= 64:
        raise ValueError("rollout_id must be 1-64 characters")


@message("fleet.install")
@dataclass(frozen=True)
class InstallCommand:
    """Install ``release`` as part of rollout ``rollout_id`` (a device takes each rollout at most once)."""

    device_id: str
    rollout_id: str
    release: SignedRelease

    def __post_init__(self) -> None:
        _check_rollout(self.rollout_id)


@message("fleet.rollback")
@dataclass(frozen=True)
class RollbackCommand:
    """Leave ``version`` (installed by ``rollout_id``) for the release the device ran before it."""

    device_id: str
    rollout_id: str
    version: str

    def __post_init__(self) -> None:
        _check_rollout(self.rollout_id)
        check_version(self.version)


@message("fleet.pin")
@dataclass(frozen=True)
class PinCommand:
    """Run ``version`` and refuse every other release until unpinned (``version`` ""); ``release``
    carries it when the device may not hold it yet."""

    device_id: str
    version: str
    release: SignedRelease | None

    def __post_init__(self) -> None:
        if self.version:
            check_version(self.version)
        if self.release is not None and self.release.manifest.version != self.version:
            raise ValueError("pin release does not match the pinned version")


class InstallResult(enum.Enum):
    """What a device did with a command."""

    INSTALLED = "installed"  # verified, loaded, evaluated: now the current release
    FAILED = "failed"  # verified but could not be installed or run; the previous release keeps running
    REFUSED = "refused"  # signature or hash check failed; never loaded
    PINNED = "pinned"  # the device is pinned to another version
    ALREADY_TAKEN = "already_taken"  # this rollout was taken before
    ROLLED_BACK = "rolled_back"  # back on the previous release
    UNCHANGED = "unchanged"  # rollback or pin needed nothing (not running that version)


@message("fleet.install_report")
@dataclass(frozen=True)
class InstallReport:
    """A device's answer to a fleet command, with the on-device evaluation on held-out local data.

    ``metric`` is the accuracy of the new release and ``baseline`` that of the release it
    replaced, on the same ``evaluated`` examples (None when the device has no held-out data).
    ``rollout_id`` is "" for pin commands.
    """

    device_id: str
    rollout_id: str
    version: str
    result: InstallResult
    running: str
    metric: float | None
    baseline: float | None
    evaluated: int
    detail: str

    def __post_init__(self) -> None:
        if len(self.rollout_id) > 64 or len(self.detail) > 500:
            raise ValueError("rollout_id or detail too long")
        for v in (self.metric, self.baseline):
            if v is not None and not math.isfinite(v):
                raise ValueError("metrics must be finite")
        if self.evaluated < 0:
            raise ValueError("evaluated must be >= 0")
