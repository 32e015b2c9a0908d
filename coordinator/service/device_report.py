"""What an operator sees per device beyond enrollment: last seen, participation, epsilon spent,
eligibility history and the release it runs — all read from what the service already stored.

Eligibility and epsilon come from the device's check-ins (``round.checkin`` uploads: eligible flag
and the epsilon its ledger reports); participation counts rounds it was selected for and rounds
its update was accepted in; the release is the last one a rollout or pin reported it installed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from fedge.agent.core import wire
from fedge.agent.core.errors import WireError
from fedge.agent.core.messages.rounds import CheckIn
from fedge.agent.core.privacy.ledger import LEDGER_RELATION
from fedge.coordinator.store import Store

#: Upload stages that carry a device's update.
UPDATE_STAGES = ("round.plain_update", "secagg.masked_input")
#: How many recent check-ins the eligibility history shows.
HISTORY = 10


@dataclass(frozen=True)
class DeviceActivity:
    """One device's activity: rounds selected/contributed, last check-ins' eligibility (oldest first)."""

    device_id: str
    last_seen: float | None
    selected: int
    contributed: int
    epsilon_spent: float | None
    eligibility: tuple[tuple[int, bool], ...]
    release: str | None
    #: why the coordinator no longer selects it (None: it is selectable)
    not_selected: str | None = None

    def history(self) -> str:
        """Eligibility of the last check-ins as a compact string, e.g. ``YYNY`` (Y eligible, N not)."""
        return "".join("Y" if ok else "N" for _, ok in self.eligibility) or "-"

    def to_dict(self) -> dict[str, Any]:
        return {
            "last_seen": self.last_seen,
            "rounds_selected": self.selected,
            "rounds_contributed": self.contributed,
            "epsilon_spent": self.epsilon_spent,
            # the device ledger's relation (its own unamplified figure), None without a figure
            "epsilon_relation": LEDGER_RELATION if self.epsilon_spent is not None else None,
            "eligibility": [{"round": r, "eligible": ok} for r, ok in self.eligibility],
            "release": self.release,
            "not_selected": self.not_selected,
        }


def activity(store: Store, device_id: str) -> DeviceActivity:
    """The activity of one device (zeros and Nones for a device that never took part)."""
    db = store.db
    row = store.device(device_id) or {}
    selected = next(db.query("select count(*) as n from round_members where device_id = ?", [device_id]))["n"]
    marks = ",".join("?" * len(UPDATE_STAGES))
    contributed = next(
        db.query(
            f"select count(distinct round_id) as n from uploads where device_id = ? and stage in ({marks})"
            " and coalesce(status, 'accepted') = 'accepted'",
            [device_id, *UPDATE_STAGES],
        )
    )["n"]
    checkins = []
    for r in db.query(
        "select round_id, payload from uploads where device_id = ? and stage = 'round.checkin'"
        " order by round_id desc limit ?",
        [device_id, HISTORY],
    ):
        try:
            checkins.append(wire.decode(r["payload"], expect=CheckIn))
        except WireError:
            continue
    checkins.reverse()
    eps = checkins[-1].epsilon_spent if checkins else None
    if eps is None and row.get("epsilon_spent"):
        eps = row["epsilon_spent"]
    release = None
    if "rollout_devices" in db.table_names():
        last = next(
            db.query(
                "select d.state, r.version from rollout_devices d join rollouts r using (rollout_id)"
                " where d.device_id = ? and d.state = 'installed' order by d.reported_at desc limit 1",
                [device_id],
            ),
            None,
        )
        release = last["version"] if last else None
    return DeviceActivity(
        device_id,
        row.get("last_seen"),
        int(selected),
        int(contributed),
        eps,
        tuple((c.round_id, c.eligible) for c in checkins),
        release,
        not_selected(store, device_id),
    )


def not_selected(store: Store, device_id: str) -> str | None:
    """Why rounds skip ``device_id`` for good, or None: today, a decline for lack of privacy budget."""
    from fedge.coordinator.service.privacy_budget import EXHAUSTED

    if EXHAUSTED not in store.db.table_names():
        return None
    row = next(store.db.query(f"select marked_at from {EXHAUSTED} where device_id = ?", [device_id]), None)
    if row is None:
        return None
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(row["marked_at"]))
    return f"privacy budget spent (declined for it {when} UTC)"


def activities(store: Store) -> dict[str, DeviceActivity]:
    """Activity of every enrolled device, by id."""
    return {r["device_id"]: activity(store, r["device_id"]) for r in store.db.query("select device_id from devices")}
