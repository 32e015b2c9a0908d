"""Fleet operations on the coordinator: rollouts and pins persisted in SQLite, driven by :func:`advance`.

Operator commands (:func:`create_rollout`, :func:`pause`, :func:`resume`, :func:`rollback`,
:func:`pin`) only write the store, so the CLI can run beside a serving coordinator. The service
owns a :class:`FleetController`: :meth:`~FleetController.handle` records devices' install
reports (idempotently: a redelivered report changes nothing) and :meth:`~FleetController.tick`
advances every open rollout, delivers pins, gives late enrollees their cohort's active release,
and returns the commands to publish on ``device_in``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from fedge.agent.core import topics
from fedge.agent.core.errors import ConfigError, ProtocolError
from fedge.agent.core.messages.common import Outbound
from fedge.agent.core.messages.fleet import (
    InstallCommand,
    InstallReport,
    InstallResult,
    KeyRotation,
    PinCommand,
    SignedRelease,
)
from fedge.agent.core.release import sign_rollback
from fedge.coordinator.fleet.releases import get_release, release_key, rotations, signed_release
from fedge.coordinator.fleet.rollouts import (
    Criteria,
    Decision,
    DeviceRecord,
    DeviceState,
    Progress,
    Spec,
    Status,
    Target,
    advance,
    assign_phases,
    check_transition,
    phase_sizes,
)
from fedge.coordinator.store import Store

log = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

#: How a device's report moves its state in a rollout.
_REPORTED = {
    InstallResult.INSTALLED: DeviceState.INSTALLED,
    InstallResult.FAILED: DeviceState.FAILED,
    InstallResult.REFUSED: DeviceState.FAILED,
    InstallResult.PINNED: DeviceState.SKIPPED,
    InstallResult.ALREADY_TAKEN: DeviceState.SKIPPED,
}


# ---------------------------------------------------------------------- device view


def _devices(store: Store) -> list[dict[str, Any]]:
    return list(
        store.db.query("select device_id, device_class, tags from devices where revoked = 0 order by device_id")
    )


def _matching(store: Store, target: Target) -> list[str]:
    return [
        r["device_id"]
        for r in _devices(store)
        if target.matches(r["device_id"], r["device_class"] or "", json.loads(r["tags"] or "[]"))
    ]


def pinned_versions(store: Store) -> dict[str, str]:
    """Each active device's pinned version (a device pin beats a class pin beats a tag pin)."""
    pins = {r["selector"]: r["version"] for r in store.db.query("select selector, version from pins")}
    out = {}
    for r in _devices(store):
        tags = sorted(json.loads(r["tags"] or "[]"))
        for sel in [f"device:{r['device_id']}", f"class:{r['device_class']}"] + [f"tag:{t}" for t in tags]:
            if sel in pins:
                out[r["device_id"]] = pins[sel]
                break
    return out


# ---------------------------------------------------------------------- operator commands


@dataclass(frozen=True)
class RolloutView:
    """A rollout for people and JSON: spec, status and per-phase device counts."""

    spec: Spec
    progress: Progress
    created: float
    ended: float | None
    phases: tuple[dict[str, Any], ...]
    counts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        s, p, c = self.spec, self.progress, self.spec.criteria
        return {
            "rollout_id": s.rollout_id,
            "version": s.version,
            "target": s.target.describe(),
            "status": p.status.value,
            "phase": p.phase + 1,
            "phases": list(self.phases),
            "devices": self.counts,
            "reason": p.reason,
            "rate_per_minute": s.rate_per_minute,
            "created": self.created,
            "ended": self.ended,
            "abort": {
                "max_failure_pct": c.max_failure_pct,
                "min_executed": c.min_executed,
                "max_metric_drop": c.max_metric_drop,
                "min_evaluated": c.min_evaluated,
            },
        }


def create_rollout(store: Store, spec: Spec, *, clock: Callable[[], float] = time.time) -> RolloutView:
    """Start sending ``spec.version`` to its target in phases; the cohort is fixed now (late enrollees
    of a class/tag cohort get the release once the rollout completed)."""
    if not _ID.match(spec.rollout_id):
        raise ConfigError("rollout id: 1-64 of [A-Za-z0-9_.-]")
    if store.db["rollouts"].count_where("rollout_id = ?", [spec.rollout_id]):
        raise ConfigError(f"rollout {spec.rollout_id!r} exists; a device never takes the same rollout twice")
    get_release(store, spec.version)  # ConfigError if it is not a release
    devices = _matching(store, spec.target)
    now = clock()
    c = spec.criteria
    with store.db.conn:
        store.db["rollouts"].insert(
            {
                "rollout_id": spec.rollout_id,
                "version": spec.version,
                "target": json.dumps(
                    {
                        "class": spec.target.device_class,
                        "tags": list(spec.target.tags),
                        "devices": list(spec.target.devices),
                    }
                ),
                "phases": json.dumps(list(spec.phases)),
                "rate_per_minute": spec.rate_per_minute,
                "max_failure_pct": c.max_failure_pct,
                "min_executed": c.min_executed,
                "max_metric_drop": c.max_metric_drop,
                "min_evaluated": c.min_evaluated,
                "phase_wait_s": spec.phase_wait_s,
                "report_timeout_s": spec.report_timeout_s,
                "status": Status.ACTIVE.value,
                "phase": 0,
                "phase_started": now,
                "created": now,
                "paused_total": 0.0,
                "reason": "",
            }
        )
        store.db["rollout_devices"].insert_all(
            (
                {
                    "rollout_id": spec.rollout_id,
                    "device_id": d,
                    "phase": p,
                    "state": DeviceState.WAITING.value,
                    "late": 0,
                }
                for d, p in assign_phases(spec, devices).items()
            ),
        )
    log.info(
        "rollout %s of %s to %s: %d devices in phases %s",
        spec.rollout_id,
        spec.version,
        spec.target.describe(),
        len(devices),
        list(spec.phases),
    )
    return get_rollout(store, spec.rollout_id)


def _load(store: Store, rollout_id: str) -> tuple[Spec, Progress, dict[str, Any]]:
    rows = list(store.db.query("select * from rollouts where rollout_id = ?", [rollout_id]))
    if not rows:
        raise ConfigError(f"no rollout {rollout_id!r}")
    r = rows[0]
    t = json.loads(r["target"])
    spec = Spec(
        rollout_id=r["rollout_id"],
        version=r["version"],
        target=Target(t["class"], tuple(t["tags"]), tuple(t["devices"])),
        phases=tuple(json.loads(r["phases"])),
        rate_per_minute=r["rate_per_minute"],
        criteria=Criteria(r["max_failure_pct"], r["min_executed"], r["max_metric_drop"], r["min_evaluated"]),
        phase_wait_s=r["phase_wait_s"],
        report_timeout_s=r["report_timeout_s"],
    )
    progress = Progress(
        Status(r["status"]), r["phase"], r["phase_started"], r["created"], r["paused_total"] or 0.0, r["reason"] or ""
    )
    return spec, progress, r


def _records(store: Store, rollout_id: str) -> dict[str, DeviceRecord]:
    return {
        r["device_id"]: DeviceRecord(r["phase"], DeviceState(r["state"]), r["sent_at"], r["metric"], r["baseline"])
        for r in store.db.query("select * from rollout_devices where rollout_id = ?", [rollout_id])
    }


def _set_status(store: Store, rollout_id: str, progress: Progress, now: float) -> None:
    ended = now if progress.status in (Status.COMPLETED, Status.ROLLED_BACK) else None
    store.db.execute(
        "update rollouts set status = ?, phase = ?, phase_started = ?, paused_total = ?, reason = ?,"
        " ended = coalesce(?, ended) where rollout_id = ?",
        [
            progress.status.value,
            progress.phase,
            progress.phase_started,
            progress.paused_total,
            progress.reason,
            ended,
            rollout_id,
        ],
    )


def pause(store: Store, rollout_id: str, *, clock: Callable[[], float] = time.time) -> RolloutView:
    """Stop sending installs (reports are still counted, abort criteria still apply)."""
    _, progress, _ = _load(store, rollout_id)
    check_transition(progress.status, Status.PAUSED)
    now = clock()
    with store.db.conn:
        _set_status(store, rollout_id, replace(progress, status=Status.PAUSED), now)
        store.db.execute("update rollouts set paused_at = ? where rollout_id = ?", [now, rollout_id])
    return get_rollout(store, rollout_id)


def resume(store: Store, rollout_id: str, *, clock: Callable[[], float] = time.time) -> RolloutView:
    """Continue a paused rollout; the time paused does not count towards its rate."""
    _, progress, row = _load(store, rollout_id)
    check_transition(progress.status, Status.ACTIVE)
    now = clock()
    paused = now - (row["paused_at"] or now)
    with store.db.conn:
        _set_status(
            store,
            rollout_id,
            replace(
                progress,
                status=Status.ACTIVE,
                paused_total=progress.paused_total + paused,
                phase_started=progress.phase_started + paused,
            ),
            now,
        )
    return get_rollout(store, rollout_id)


def rollback(
    store: Store,
    rollout_id: str,
    *,
    reason: str = "rolled back by the operator",
    clock: Callable[[], float] = time.time,
) -> RolloutView:
    """Abort the rollout: every device that was sent its release goes back to the one before."""
    _, progress, _ = _load(store, rollout_id)
    check_transition(progress.status, Status.ABORTED)
    with store.db.conn:  # the service's next tick sends the rollback commands
        _set_status(store, rollout_id, replace(progress, status=Status.ABORTED, reason=reason), clock())
    log.info("rollout %s: rollback requested", rollout_id)
    return get_rollout(store, rollout_id)


def pin(store: Store, selector: str, version: str | None, *, clock: Callable[[], float] = time.time) -> dict[str, str]:
    """Pin ``device:ID``, ``class:C`` or ``tag:T`` to ``version`` (None unpins); return the pinned devices."""
    kind, _, value = selector.partition(":")
    if kind not in ("device", "class", "tag") or not value:
        raise ConfigError("pin selector: device:ID, class:CLASS or tag:TAG")
    with store.db.conn:
        if version is None:
            store.db.execute("delete from pins where selector = ?", [selector])
        else:
            get_release(store, version)
            store.db["pins"].upsert({"selector": selector, "version": version, "created": clock()}, pk="selector")
    return pinned_versions(store)


def get_rollout(store: Store, rollout_id: str) -> RolloutView:
    spec, progress, row = _load(store, rollout_id)
    records = _records(store, rollout_id)
    sizes = phase_sizes(len(records), spec.phases)
    phases = []
    for i, frac in enumerate(spec.phases):
        states = [r.state for r in records.values() if r.phase == i]
        phases.append(
            {
                "phase": i + 1,
                "percent": round(frac * 100, 2),
                "devices": len(states),
                "cumulative": sizes[i] if i < len(sizes) else 0,
                **{s.value: sum(x is s for x in states) for s in DeviceState},
            }
        )
    counts = {s.value: sum(r.state is s for r in records.values()) for s in DeviceState}
    counts["total"] = len(records)
    return RolloutView(spec, progress, row["created"], row["ended"], tuple(phases), counts)


def list_rollouts(store: Store) -> list[RolloutView]:
    return [
        get_rollout(store, r["rollout_id"])
        for r in store.db.query("select rollout_id from rollouts order by created, rowid")
    ]


def active_release(store: Store, device_id: str) -> str | None:
    """The release of the newest completed class/tag rollout whose cohort this device is in."""
    row = store.device(device_id)
    if row is None:
        return None
    tags = json.loads(row["tags"] or "[]")
    for r in store.db.query(
        "select rollout_id from rollouts where status = 'completed' order by ended desc, rowid desc"
    ):
        spec, _, _ = _load(store, r["rollout_id"])
        if spec.target.is_cohort and spec.target.matches(device_id, row["device_class"] or "", tags):
            return spec.version
    return None


def _apply(store: Store, rollout_id: str, d: Decision, now: float, out: list[Outbound]) -> None:
    """Persist a decision; queue its install and rollback commands in ``out``."""
    spec, _, _ = _load(store, rollout_id)
    set_state = (
        "update rollout_devices set state = ?, sent_at = coalesce(?, sent_at) where rollout_id = ? and device_id = ?"
    )
    for dev in d.timed_out:
        store.db.execute(set_state, [DeviceState.TIMED_OUT.value, None, rollout_id, dev])
    for dev in d.skip:
        store.db.execute(set_state, [DeviceState.SKIPPED.value, None, rollout_id, dev])
        store.db.execute(
            "update rollout_devices set detail = 'pinned or revoked' where rollout_id = ? and device_id = ?",
            [rollout_id, dev],
        )
    release: SignedRelease | None = signed_release(store, spec.version) if d.install else None
    for dev in d.install:
        store.db.execute(set_state, [DeviceState.SENT.value, now, rollout_id, dev])
        assert release is not None
        out.append(Outbound(dev, InstallCommand(dev, rollout_id, release)))
    key = release_key(store) if d.rollback else None
    for dev in d.rollback:
        store.db.execute(set_state, [DeviceState.ROLLBACK_SENT.value, now, rollout_id, dev])
        assert key is not None
        out.append(Outbound(dev, sign_rollback(key, dev, rollout_id, spec.version)))
    _set_status(store, rollout_id, d.progress, now)
    if d.rollback or d.progress.status in (Status.COMPLETED, Status.ROLLED_BACK):
        log.info("rollout %s: %s %s", rollout_id, d.progress.status.value, d.progress.reason)


# ---------------------------------------------------------------------- the service's side


class FleetController:
    """Runs inside the coordinator service: records reports, advances rollouts, delivers pins."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self._published_rotation = 0

    def new_rotations(self) -> list[tuple[str, KeyRotation]]:
        """Key rotations not yet marked published (all of them at first), to publish retained in order.
        ``releases rotate-key`` may run in another process; the service asks on every tick."""
        return [(t, r) for t, r in retained_rotations(self.store) if r.sequence > self._published_rotation]

    def rotation_published(self, sequence: int) -> None:
        self._published_rotation = max(self._published_rotation, sequence)

    def handle(self, device_id: str, msg: Any) -> None:
        """Record one device's :class:`InstallReport` (ProtocolError for anything else or a stranger)."""
        if not isinstance(msg, InstallReport):
            raise ProtocolError(f"{type(msg).__name__} is not a fleet report")
        if msg.device_id != device_id:
            raise ProtocolError("report names another device")
        now = self.clock()
        db = self.store.db
        with db.conn:
            if not msg.rollout_id:  # answer to a pin
                db.execute(
                    "update pin_deliveries set result = ?, reported_at = ? where device_id = ?",
                    [msg.result.value, now, device_id],
                )
                return
            row = next(
                db.query(
                    "select d.state, r.version from rollout_devices d join rollouts r using (rollout_id)"
                    " where d.rollout_id = ? and d.device_id = ?",
                    [msg.rollout_id, device_id],
                ),
                None,
            )
            if row is None:
                raise ProtocolError(f"device is not in rollout {msg.rollout_id!r}")
            state = DeviceState(row["state"])
            new: DeviceState
            if msg.result in (InstallResult.ROLLED_BACK, InstallResult.UNCHANGED):
                new = DeviceState.ROLLED_BACK if state is DeviceState.ROLLBACK_SENT else state
            elif (
                state is DeviceState.ROLLBACK_SENT
                and msg.result is InstallResult.FAILED
                and msg.running == row["version"]
            ):
                new = DeviceState.ROLLBACK_FAILED  # no previous release: still runs it; the rollout can end
            elif state in (DeviceState.SENT, DeviceState.TIMED_OUT):
                new = _REPORTED.get(msg.result, state)
            else:
                new = state  # a redelivery, or an install report that crossed a rollback: keep the state
            db.execute(
                "update rollout_devices set state = ?, result = ?, reported_at = ?, metric = coalesce(?, metric),"
                " baseline = coalesce(?, baseline), detail = ? where rollout_id = ? and device_id = ?",
                [
                    new.value,
                    msg.result.value,
                    now,
                    msg.metric,
                    msg.baseline,
                    msg.detail[:200],
                    msg.rollout_id,
                    device_id,
                ],
            )
        log.debug("report %s for rollout %s", msg.result.value, msg.rollout_id, extra={"device": device_id})

    def tick(self) -> list[Outbound]:
        """Advance every open rollout, then pins and late enrollees; the commands to send now."""
        out: list[Outbound] = []
        now = self.clock()
        pins = pinned_versions(self.store)
        active = {r["device_id"] for r in _devices(self.store)}
        for r in list(
            self.store.db.query("select rollout_id from rollouts where status in ('active', 'paused', 'aborted')")
        ):
            rid = r["rollout_id"]
            spec, progress, _ = _load(self.store, rid)
            records = _records(self.store, rid)
            # pinned elsewhere, or revoked since the rollout was created: skipped, never sent
            skip = frozenset(d for d, v in pins.items() if v != spec.version) | (records.keys() - active)
            decision = advance(spec, progress, records, now, skip)
            with self.store.db.conn:
                _apply(self.store, rid, decision, now, out)
        out += self._deliver_pins(pins, now)
        out += self._late_enrollees(pins, now)
        return out

    def _deliver_pins(self, pins: dict[str, str], now: float) -> list[Outbound]:
        db, out = self.store.db, []
        sent = {r["device_id"]: r["version"] for r in db.query("select device_id, version from pin_deliveries")}
        for dev, version in sorted(pins.items()):
            if sent.get(dev) != version:
                out.append(Outbound(dev, PinCommand(dev, version, signed_release(self.store, version))))
                db["pin_deliveries"].upsert(
                    {"device_id": dev, "version": version, "sent_at": now, "result": None}, pk="device_id"
                )
        for dev, version in sorted(sent.items()):
            if dev not in pins and version:
                out.append(Outbound(dev, PinCommand(dev, "", None)))
                db["pin_deliveries"].upsert(
                    {"device_id": dev, "version": "", "sent_at": now, "result": None}, pk="device_id"
                )
        return out

    def _late_enrollees(self, pins: dict[str, str], now: float) -> list[Outbound]:
        """Devices that joined a cohort after its rollout completed get that rollout's release."""
        db, out = self.store.db, []
        done = list(
            db.query("select rollout_id from rollouts where status = 'completed' order by ended desc, rowid desc")
        )
        if not done:
            return out
        specs = [_load(self.store, r["rollout_id"])[0] for r in done]
        known = {
            s.rollout_id: {
                r["device_id"]
                for r in db.query("select device_id from rollout_devices where rollout_id = ?", [s.rollout_id])
            }
            for s in specs
            if s.target.is_cohort
        }
        covered: set[str] = set()
        for dev in _devices(self.store):
            tags = json.loads(dev["tags"] or "[]")
            d = dev["device_id"]
            for spec in specs:  # newest first: the cohort's active release
                if not (spec.target.is_cohort and spec.target.matches(d, dev["device_class"] or "", tags)):
                    continue
                if d in covered or d in pins:
                    break
                if d not in known[spec.rollout_id]:
                    db["rollout_devices"].insert(
                        {
                            "rollout_id": spec.rollout_id,
                            "device_id": d,
                            "phase": len(spec.phases) - 1,
                            "state": DeviceState.SENT.value,
                            "sent_at": now,
                            "late": 1,
                        }
                    )
                    out.append(
                        Outbound(d, InstallCommand(d, spec.rollout_id, signed_release(self.store, spec.version)))
                    )
                    log.info("late enrollee gets %s (rollout %s)", spec.version, spec.rollout_id, extra={"device": d})
                covered.add(d)
                break
        return out


def retained_rotations(store: Store) -> list[tuple[str, KeyRotation]]:
    """(topic, message) for every release-key rotation: the service publishes them retained."""
    return [(topics.release_key_rotation(r.sequence), r) for r in rotations(store)]
