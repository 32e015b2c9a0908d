"""Buffered asynchronous aggregation (FedBuff) as a pure state machine: arrivals in, SecAgg+ groups out.

Devices train on whichever model version is newest when they start. When one finishes it is
admitted to the open group, in arrival order; a group holds ``size`` (K) devices and is then
closed and run as one SecAgg+ round (:func:`fedge.coordinator.rounds.builder.build_round`), whose
unmasked sum is one buffered update applied with the server learning rate.

Every group is applied to one model version, its *target*: the newest version plus the groups
closed before it and not yet applied (each assumed to succeed). The target is known when the
group opens, so it is sent to each device with the group's configuration and the device scales
its clipped delta by s(target - base) before it masks (:mod:`.staleness`): the sum stays exact. An
update older than ``max_staleness`` versions is refused at admission and never masked. If a
closed group fails, the groups behind it were weighted for a target one higher than the version
they are applied to: their staleness was over-estimated, so their weights are smaller, never larger.

Privacy (:func:`group_event`): who arrives when is not a uniform sample the coordinator draws,
so no amplification by sampling is claimed. Each applied group is one Gaussian mechanism on the
sum (sensitivity C: a weighted update is at most C), accounted as ``RoundEvent(z, 1, "none")``;
a device contributes to at most ``max_contributions`` groups per campaign, so a device's loss is at
most the composition of that many events (:class:`GroupLedger`).
"""

from __future__ import annotations

import collections
import dataclasses
import logging

from fedge.agent.core.errors import ConfigError, ProtocolError
from fedge.agent.core.messages.rounds import RoundPlan
from fedge.agent.core.update import noise_plan
from fedge.coordinator.rounds.accounting import PrivacyAccountant, RoundEvent, accounted_noise
from fedge.coordinator.rounds.staleness import Staleness

log = logging.getLogger(__name__)


class StaleUpdate(ProtocolError):
    """An update trained on a version more than ``max_staleness`` versions behind its group's target."""


class ContributionCap(ProtocolError):
    """A device that already contributed ``max_contributions`` updates in this campaign."""


@dataclasses.dataclass(frozen=True)
class Admission:
    """One device in a group: the version it trained on, the group's target, and its weight s(tau)."""

    device: str
    base_version: int
    target_version: int
    staleness: int
    weight: float


@dataclasses.dataclass(frozen=True)
class Group:
    """A closed group: ``index`` (0, 1, ...), its target version and its members in arrival order."""

    index: int
    target_version: int
    members: tuple[Admission, ...]


class UpdateBuffer:
    """Admits finished devices into groups of ``size`` in arrival order; tracks versions and caps.

    ``version`` is the newest applied version (0: the initial model); ``pending`` counts groups
    closed and not yet applied. Call :meth:`applied` when a closed group's round ends.
    """

    def __init__(self, size: int, max_staleness: int, staleness: Staleness, max_contributions: int = 0) -> None:
        if size < 1:
            raise ConfigError(f"--buffer: expected >= 1, got {size}")
        if max_staleness < 0:
            raise ConfigError(f"--max-staleness: expected >= 0, got {max_staleness}")
        if max_contributions < 0:
            raise ConfigError(f"--max-contributions: expected >= 0 (0: no cap), got {max_contributions}")
        self.size, self.max_staleness, self.staleness = size, max_staleness, staleness
        self.max_contributions = max_contributions
        self.version = 0
        self.pending = 0
        self.groups_closed = 0
        self.refused: collections.Counter[str] = collections.Counter()  # reason -> count
        self.contributions: collections.Counter[str] = collections.Counter()
        self._open: list[Admission] = []

    @property
    def target_version(self) -> int:
        """The version the open group will be applied to."""
        return self.version + self.pending

    def may_start(self, device: str) -> bool:
        """False when ``device`` has used up its contributions (it is then not sent a model)."""
        return not self.max_contributions or self.contributions[device] < self.max_contributions

    def admit(self, device: str, base_version: int) -> Admission:
        """Put a finished device into the open group, or refuse it (StaleUpdate, ContributionCap)."""
        target = self.target_version
        if not 0 <= base_version <= target:
            raise ProtocolError(f"device trained on version {base_version}, newest is {target}")
        tau = target - base_version
        if tau > self.max_staleness:
            self.refused["stale"] += 1
            log.info("stale update refused: %d versions old, max %d", tau, self.max_staleness, extra={"device": device})
            raise StaleUpdate(f"update is {tau} versions old, at most {self.max_staleness} are accepted")
        if not self.may_start(device):
            self.refused["cap"] += 1
            raise ContributionCap(f"device already contributed {self.max_contributions} updates")
        self.contributions[device] += 1
        a = Admission(device, base_version, target, tau, self.staleness.weight(tau))
        self._open.append(a)
        return a

    @property
    def full(self) -> bool:
        return len(self._open) >= self.size

    def close(self) -> Group:
        """Close the open group (normally when it is full) and count it as pending."""
        if not self._open:
            raise ProtocolError("no device in the open group")
        group = Group(self.groups_closed, self.target_version, tuple(self._open))
        self._open = []
        self.groups_closed += 1
        self.pending += 1
        return group

    def applied(self, ok: bool) -> None:
        """A closed group's round ended: ``ok`` made a new version, else the model is unchanged."""
        if self.pending < 1:
            raise ProtocolError("no group is pending")
        self.pending -= 1
        if ok:
            self.version += 1


def group_event(plan: RoundPlan, dimension: int) -> RoundEvent | None:
    """One group's privacy event: the plan's Gaussian (discrete, on the grid) without amplification."""
    if plan.privacy.mode == "off":
        return None
    z, offset = accounted_noise(plan.privacy, noise_plan(plan, dimension))
    return RoundEvent(z, 1.0, "none", rdp_offset=offset)


class GroupLedger:
    """ε after each applied group, with at most ``max_contributions`` groups per device (0: every group).

    Every group of a campaign has the same plan, hence the same event, so the worst device is one
    that took part in ``min(groups, max_contributions)`` of them: that many events are composed.
    """

    def __init__(self, max_contributions: int = 0) -> None:
        self.max_contributions = max_contributions
        self.accountant = PrivacyAccountant("rdp")
        self.groups = 0

    def record(self, event: RoundEvent) -> None:
        self.groups += 1
        if self.accountant.events and event != self.accountant.events[0]:
            raise ConfigError("buffered accounting needs every group to have the same event (no adaptive clipping)")
        if not self.max_contributions or len(self.accountant.events) < self.max_contributions:
            self.accountant.record(event)

    def epsilon(self, delta: float) -> float | None:
        return self.accountant.epsilon(delta) if self.accountant.events else None
