"""Quarantine: one misbehaving device must not stop a round, and must not be selected again.

A device is quarantined when the coordinator sees it as two processes at once (a cloned device:
two live sessions claiming one identity, which shows as two different messages for the same round
and stage, e.g. two check-ins from two sessions or two different key advertisements), or when
its Shamir shares at unmask were forged and had to be corrected. The quarantine is kept in the
store (``devices.quarantined_at`` and ``quarantine_reason``), logged at WARNING, shown by
``fedge-coordinator devices list`` and lifted only by the operator
(``fedge-coordinator devices unquarantine ID``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fedge.agent.core.errors import ConfigError
from fedge.coordinator.store import Store

log = logging.getLogger(__name__)


def conflict_reason(round_id: int, stage: str) -> str:
    """Why a device that sent two different ``stage`` messages in one round is quarantined."""
    return f"cloned device: two different {stage} messages in round {round_id} (two live sessions with one identity)"


def quarantine(store: Store, device_id: str, reason: str, *, now: float, round_id: int | None = None) -> bool:
    """Quarantine ``device_id`` (first reason kept); logs a WARNING when it is new. False if it already was."""
    new = store.quarantine(device_id, reason, now)
    if new:
        log.warning("device quarantined: %s", reason, extra={"device": device_id, "round": round_id})
    return new


def lift(store: Store, device_id: str, clock: Callable[[], float] | None = None) -> str:
    """Lift a quarantine (the operator's call); returns the reason it had. ConfigError if none."""
    if store.device(device_id) is None:
        raise ConfigError(f"no enrolled device {device_id!r}")
    reason = store.quarantined(device_id)
    if reason is None or not store.lift_quarantine(device_id):
        raise ConfigError(f"device {device_id!r} is not quarantined")
    log.warning("quarantine lifted (was: %s)", reason, extra={"device": device_id})
    return reason
