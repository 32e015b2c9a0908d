"""The rollout state machine: which devices get a release next, when a phase is done, when to abort.

Pure: :func:`advance` takes a rollout's spec, its progress and every targeted device's record
plus the time, and returns the next progress and what to send. :mod:`fedge.coordinator.fleet.controller` persists
both and turns the decisions into wire messages. Devices are ordered by a hash of (rollout,
device), so phases are a stable, spread-out sample of the cohort without a random generator.

Statuses: ``active`` -> ``completed``; ``active`` <-> ``paused``; ``active``/``paused`` ->
``aborted`` (by the abort criteria or the operator) -> ``rolled_back`` once every device that
was sent the release has answered its rollback command.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from fedge.agent.core.errors import ConfigError


class Status(str, enum.Enum):
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"


#: Legal operator and machine transitions.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.ACTIVE: frozenset({Status.PAUSED, Status.COMPLETED, Status.ABORTED}),
    Status.PAUSED: frozenset({Status.ACTIVE, Status.ABORTED}),
    Status.COMPLETED: frozenset({Status.ABORTED}),  # an operator may still roll a finished rollout back
    Status.ABORTED: frozenset({Status.ROLLED_BACK}),
    Status.ROLLED_BACK: frozenset(),
}


class DeviceState(str, enum.Enum):
    WAITING = "waiting"  # not sent yet
    SENT = "sent"  # install command sent, no report yet
    INSTALLED = "installed"
    FAILED = "failed"  # install failed or was refused (counts against the failure threshold)
    SKIPPED = "skipped"  # pinned elsewhere or took this rollout before: not executed
    TIMED_OUT = "timed_out"  # no report within report_timeout_s: not executed
    ROLLBACK_SENT = "rollback_sent"
    ROLLED_BACK = "rolled_back"  # answered the rollback (rolled back, or was not running the release)
    #: answered the rollback but cannot leave the release (no previous release): it still runs it
    ROLLBACK_FAILED = "rollback_failed"


EXECUTED = frozenset({DeviceState.INSTALLED, DeviceState.FAILED})
PENDING = frozenset({DeviceState.WAITING, DeviceState.SENT})
#: May be running the release: an aborted rollout sends these a rollback command.
NEEDS_ROLLBACK = frozenset({DeviceState.SENT, DeviceState.INSTALLED, DeviceState.TIMED_OUT})


def check_transition(old: Status, new: Status) -> None:
    """ConfigError unless ``old -> new`` is legal (for operator commands)."""
    if new not in TRANSITIONS[old]:
        raise ConfigError(f"rollout is {old.value}; cannot go to {new.value}")


@dataclass(frozen=True)
class Target:
    """Which devices a rollout is for: an explicit list, or a device class and/or tags (all must match)."""

    device_class: str = ""
    tags: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (self.device_class or self.tags or self.devices):
            raise ConfigError("a rollout target needs a device class, tags or a device list")

    def matches(self, device_id: str, device_class: str, tags: Sequence[str]) -> bool:
        if self.devices:
            return device_id in self.devices
        return (not self.device_class or self.device_class == device_class) and set(self.tags) <= set(tags)

    @property
    def is_cohort(self) -> bool:
        """A class/tag cohort (late enrollees join it), not a fixed list."""
        return not self.devices

    def describe(self) -> str:
        if self.devices:
            return f"devices {','.join(self.devices)}"
        parts = ([f"class {self.device_class}"] if self.device_class else []) + [f"tag {t}" for t in self.tags]
        return " and ".join(parts)


@dataclass(frozen=True)
class Criteria:
    """Abort when more than ``max_failure_pct`` of at least ``min_executed`` installs failed, or when the
    mean on-device accuracy drop (old minus new, same local data) exceeds ``max_metric_drop`` over at
    least ``min_evaluated`` devices (None: no metric criterion)."""

    max_failure_pct: float = 10.0
    min_executed: int = 5
    max_metric_drop: float | None = 0.05
    min_evaluated: int = 5

    def __post_init__(self) -> None:
        if not 0 <= self.max_failure_pct <= 100 or self.min_executed < 1 or self.min_evaluated < 1:
            raise ConfigError("abort criteria: failure % in [0, 100], minimums >= 1")
        if self.max_metric_drop is not None and not 0 <= self.max_metric_drop <= 1:
            raise ConfigError("abort criteria: metric drop in [0, 1]")


@dataclass(frozen=True)
class Spec:
    """What an operator asked for. ``phases`` are cumulative fractions ending at 1.0 (e.g. 0.05, 0.25, 1);
    ``rate_per_minute`` additionally paces sends (None: a whole phase at once)."""

    rollout_id: str
    version: str
    target: Target
    phases: tuple[float, ...] = (1.0,)
    rate_per_minute: float | None = None
    criteria: Criteria = field(default_factory=Criteria)
    phase_wait_s: float = 0.0
    report_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        p = self.phases
        if not p or any(not 0 < x <= 1 for x in p) or list(p) != sorted(set(p)) or p[-1] != 1.0:
            raise ConfigError(f"phases must increase within (0, 1] and end at 1.0, got {list(p)}")
        if self.rate_per_minute is not None and self.rate_per_minute <= 0:
            raise ConfigError("rate per minute must be positive")
        if self.phase_wait_s < 0 or self.report_timeout_s <= 0:
            raise ConfigError("phase wait must be >= 0 and report timeout > 0")


@dataclass(frozen=True)
class Progress:
    """Where a rollout is: status, current phase (0-based), and the times pacing needs."""

    status: Status
    phase: int
    phase_started: float
    started: float
    paused_total: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class DeviceRecord:
    """One targeted device in one rollout."""

    phase: int
    state: DeviceState
    sent_at: float | None = None
    metric: float | None = None
    baseline: float | None = None


@dataclass(frozen=True)
class Decision:
    """The next progress and the device state changes to carry out (send install / rollback)."""

    progress: Progress
    install: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    rollback: tuple[str, ...] = ()
    timed_out: tuple[str, ...] = ()


def order(rollout_id: str, device_ids: Sequence[str]) -> list[str]:
    """Devices in a stable, rollout-specific pseudo-random order."""
    return sorted(device_ids, key=lambda d: hashlib.sha256(f"{rollout_id}/{d}".encode()).digest())


def phase_sizes(n: int, phases: Sequence[float]) -> list[int]:
    """Cumulative devices per phase: ceil(fraction * n), each phase at least one more device when it can."""
    out, prev = [], 0
    for f in phases:
        size = min(n, max(math.ceil(f * n - 1e-9), prev + (1 if prev < n else 0)))
        out.append(size)
        prev = size
    return out


def assign_phases(spec: Spec, device_ids: Sequence[str]) -> dict[str, int]:
    """Each targeted device's phase (0-based)."""
    ordered = order(spec.rollout_id, device_ids)
    sizes = phase_sizes(len(ordered), spec.phases)
    out, lo = {}, 0
    for p, hi in enumerate(sizes):
        for d in ordered[lo:hi]:
            out[d] = p
        lo = hi
    return out


def abort_reason(criteria: Criteria, devices: Mapping[str, DeviceRecord]) -> str:
    """Why the abort criteria fire for these device records, or ""."""
    executed = [r for r in devices.values() if r.state in EXECUTED]
    failed = sum(r.state is DeviceState.FAILED for r in executed)
    if len(executed) >= criteria.min_executed and 100.0 * failed / len(executed) > criteria.max_failure_pct:
        return (
            f"failures: {failed} of {len(executed)} executed ({100.0 * failed / len(executed):.0f}%) "
            f"above {criteria.max_failure_pct:g}%"
        )
    if criteria.max_metric_drop is not None:
        drops = [
            r.baseline - r.metric
            for r in executed
            if r.state is DeviceState.INSTALLED and r.metric is not None and r.baseline is not None
        ]
        if len(drops) >= criteria.min_evaluated and sum(drops) / len(drops) > criteria.max_metric_drop:
            return (
                f"regression: mean on-device accuracy drop {sum(drops) / len(drops):.3f} over {len(drops)} "
                f"devices above {criteria.max_metric_drop:g}"
            )
    return ""


def abort(progress: Progress, devices: Mapping[str, DeviceRecord], reason: str) -> Decision:
    """Abort now: every device that was sent the release gets a rollback command."""
    back = tuple(sorted(d for d, r in devices.items() if r.state in NEEDS_ROLLBACK))
    return Decision(replace(progress, status=Status.ABORTED, reason=reason), rollback=back)


def advance(
    spec: Spec,
    progress: Progress,
    devices: Mapping[str, DeviceRecord],
    now: float,
    pinned: frozenset[str] = frozenset(),
) -> Decision:
    """One step of the machine at time ``now``. ``pinned`` devices (pinned elsewhere, revoked) are skipped, never sent."""
    timed_out = tuple(
        sorted(
            d
            for d, r in devices.items()
            if r.state is DeviceState.SENT and r.sent_at is not None and now - r.sent_at > spec.report_timeout_s
        )
    )
    if timed_out:
        devices = {**devices, **{d: replace(devices[d], state=DeviceState.TIMED_OUT) for d in timed_out}}
    st = progress.status
    if st is Status.ABORTED:
        back = tuple(sorted(d for d, r in devices.items() if r.state in NEEDS_ROLLBACK))
        if not back and not any(r.state is DeviceState.ROLLBACK_SENT for r in devices.values()):
            stuck = sum(r.state is DeviceState.ROLLBACK_FAILED for r in devices.values())
            ended = replace(progress, status=Status.ROLLED_BACK)
            if stuck:  # ended, but not every device could leave the release: the reason says so
                ended = replace(
                    ended, reason=f"{progress.reason}; {stuck} devices could not roll back (no previous release)"
                )
            return Decision(ended, timed_out=timed_out)
        return Decision(progress, rollback=back, timed_out=timed_out)
    if st in (Status.COMPLETED, Status.ROLLED_BACK):
        return Decision(progress, timed_out=timed_out)
    reason = abort_reason(spec.criteria, devices)
    if reason:
        d = abort(progress, devices, reason)
        return replace(d, timed_out=timed_out)
    if st is Status.PAUSED:
        return Decision(progress, timed_out=timed_out)
    install: list[str] = []
    skip: list[str] = []
    chosen: set[str] = set()
    last = len(spec.phases) - 1
    ordered = order(spec.rollout_id, [d for d, r in devices.items() if r.state is DeviceState.WAITING])
    while True:
        waiting = [d for d in ordered if devices[d].phase <= progress.phase and d not in chosen]
        budget = len(waiting)
        if spec.rate_per_minute is not None:
            elapsed = max(0.0, now - progress.started - progress.paused_total)
            allowed = int(spec.rate_per_minute * elapsed / 60.0) + 1
            sent = sum(
                r.state is not DeviceState.WAITING and r.state is not DeviceState.SKIPPED for r in devices.values()
            )
            budget = max(0, min(budget, allowed - sent - len(install)))
        for d in waiting[:budget]:
            (skip if d in pinned else install).append(d)
            chosen.add(d)
        skipped = set(skip)
        in_phase_pending = any(
            r.phase <= progress.phase and r.state in PENDING and d not in skipped for d, r in devices.items()
        )
        if in_phase_pending or now - progress.phase_started < spec.phase_wait_s:
            break
        if progress.phase >= last:
            progress = replace(progress, status=Status.COMPLETED)
            break
        progress = replace(progress, phase=progress.phase + 1, phase_started=now)
    return Decision(progress, tuple(install), tuple(skip), (), timed_out)
