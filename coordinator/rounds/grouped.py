"""SecAgg+ in groups: one round's cohort split into groups of at least G devices, one SecAgg+
instance per group, the group sums added by the coordinator.

This is the "Aggregator per group" of Google's production system (Bonawitz et al., "Towards
Federated Learning at Scale: System Design", MLSys 2019): secure aggregation runs over groups of
at least k devices and a master adds their sums. It bounds the work of one SecAgg+ instance
(its graph, its unmasking) by the group size, not the cohort, and lets the groups' unmasking
run side by side (``parallel``: the driver's worker map; the default runs them one by one).

**What it costs in privacy.** The coordinator learns every group's sum, not only the round's.
So each group is held to the floors a whole round is held to:

- a group has at least ``group_size`` members, else it is refused (:class:`GroupRefused`) before
  anything is sent;
- each group's SecAgg+ server refuses to release a sum of fewer than its floor (its share of the
  round's minimum cohort, and in distributed DP at least ``plan.privacy.min_clients``), so every group
  sum carries the round's whole noise on its own. The builder plans ``min_clients`` as the
  smallest group floor: each device adds a larger share than it would ungrouped, and the model's
  total noise grows with the number of groups (variance up to ``cohort / min_clients`` times
  sigma^2 instead of about sigma^2);
- a group that falls below its floor mid-round is refused with its reason and left out; the round
  goes on with the others and is abandoned when every group is refused or the groups left hold
  fewer devices than the round's minimum cohort.

A device is in exactly one group, so its data moves one group sum (add/remove: by C; replace-one:
by 2C within a group or by C in each of two groups, an L2 move of at most 2C over the released
sums, each with its own noise): the round is the same Gaussian event as ungrouped, which
:class:`~fedge.coordinator.rounds.accounting.RoundEvent` records with ``groups`` set.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from fedge.agent.core.errors import ConfigError, ProtocolError, RoundFailed
from fedge.agent.core.messages.common import Outbound
from fedge.coordinator.rounds.engine import Aggregation
from fedge.coordinator.rounds.remote import RemoteGroup
from fedge.coordinator.rounds.secure import SecureAggregation

log = logging.getLogger(__name__)

T = TypeVar("T")
#: One group: run here, or by a worker process or Ray actor (:mod:`.remote`).
Group = SecureAggregation | RemoteGroup
#: Runs independent jobs (one per group) and returns their results in order: the driver's workers.
Parallel = Callable[[Sequence[Callable[[], Any]]], list[Any]]


def serial(jobs: Sequence[Callable[[], T]]) -> list[T]:
    """The default :data:`Parallel`: one job after the other, in this thread."""
    return [job() for job in jobs]


class GroupRefused(ConfigError):
    """A group below its privacy floor: its sum would reveal too little noise or too few devices."""


@dataclasses.dataclass(frozen=True)
class GroupPlan:
    """How a cohort is grouped: members of each group and the fewest survivors its sum may hold."""

    groups: tuple[tuple[str, ...], ...]
    floors: tuple[int, ...]
    group_size: int

    @property
    def min_clients(self) -> int:
        """The shares distributed noise is split over, so that every group sum carries all of it."""
        return min(self.floors)


def split_cohort(cohort: Sequence[str], group_size: int, min_clients: int) -> GroupPlan:
    """``cohort`` in groups of at least ``group_size`` (as many as fit, sizes differing by at most one,
    in cohort order), each with the floor ``ceil(min_clients * size / n)`` (at least 2).

    :class:`GroupRefused` when the cohort is smaller than one group, with the reason.
    """
    n = len(cohort)
    if group_size < 2:
        raise ConfigError(f"group_size: expected >= 2, got {group_size}")
    if n < group_size:
        raise GroupRefused(
            f"group of {n} devices is below the minimum group size {group_size} (its sum is revealed to the coordinator)"
        )
    count = n // group_size
    bounds = np.linspace(0, n, count + 1).round().astype(int).tolist()
    groups = tuple(tuple(cohort[a:b]) for a, b in zip(bounds, bounds[1:]))
    floors = tuple(max(2, math.ceil(min_clients * len(g) / n - 1e-9)) for g in groups)
    return GroupPlan(groups, floors, group_size)


def _close(agg: Group, now: float) -> tuple[list[Outbound], str | None]:
    try:
        return agg.close_stage(now), None
    except RoundFailed as e:
        return [], str(e)


class GroupedAggregation(Aggregation):
    """Several SecAgg+ groups (each a :class:`SecureAggregation` here or a :class:`RemoteGroup` run by a
    worker) behind one aggregation interface, in lockstep.

    Every group is at the same stage; a stage closes for all groups when every live group has all
    its replies, or at the engine's deadline. Closing runs through ``parallel`` (each group's unmask
    is independent). ``min_total``: the round's minimum cohort over the groups' survivors.
    """

    def __init__(
        self,
        groups: Sequence[Group],
        floors: Sequence[int],
        *,
        min_total: int,
        parallel: Parallel = serial,
    ) -> None:
        if not groups or len(groups) != len(floors):
            raise ValueError("need one floor per group and at least one group")
        self.groups = list(groups)
        self.floors = list(floors)
        self.min_total = min_total
        self.parallel = parallel
        self.first_stage = groups[0].first_stage
        self.group_of: dict[str, int] = {}
        for i, g in enumerate(groups):
            if g.params.min_clients < floors[i]:
                raise GroupRefused(
                    f"group {i}: SecAgg+ would release a sum of {g.params.min_clients} devices, "
                    f"below its floor of {floors[i]}"
                )
            for d in g.roster_ids:
                if d in self.group_of:
                    raise ValueError(f"device {d!r} is in two groups")
                self.group_of[d] = i
        #: groups left out, with the reason (their sums are never revealed)
        self.refused: dict[int, str] = {}

    # ------------------------------------------------------------------ helpers

    def _live(self) -> list[int]:
        return [i for i in range(len(self.groups)) if i not in self.refused]

    def _refuse(self, i: int, reason: str) -> None:
        g = self.groups[i]
        self.refused[i] = f"group {i} ({g.params.num_clients} devices, floor {g.params.min_clients}) refused: {reason}"
        log.warning("%s", self.refused[i], extra={"round": g.round_id})
        g.dispose()

    def _all_ready(self) -> bool:
        return all(self.groups[i].ready() for i in self._live())

    # ------------------------------------------------------------------ interface

    @property
    def params(self) -> Any:
        """The first group's SecAgg+ parameters (each group has its own: ``[g.params for g in groups]``)."""
        return self.groups[0].params

    @property
    def stage(self) -> str:
        live = self._live()
        return self.groups[live[0]].stage if live else "failed"

    @property
    def finished(self) -> bool:
        live = self._live()
        return bool(live) and all(self.groups[i].finished for i in live)

    def start(self, cohort: Sequence[str], now: float) -> list[Outbound]:
        out: list[Outbound] = []
        for g in self.groups:
            out += g.start(list(g.roster_ids), now)
        return out

    def receive(self, device_id: str, msg: Any, now: float) -> list[Outbound]:
        i = self.group_of.get(device_id)
        if i is None:
            raise ProtocolError(f"device {device_id!r} is in no group")
        if i in self.refused:
            raise ProtocolError(self.refused[i])
        try:
            ready = self.groups[i].offer(msg)  # closing waits for every group (lockstep)
        except RoundFailed as e:  # its worker is gone: the group is lost, the others go on
            self._refuse(i, str(e))
            if not self._live():
                raise RoundFailed("every group was refused: " + "; ".join(self.refused.values())) from None
            return self.close_stage(now) if self._all_ready() else []
        if ready and self._all_ready():
            return self.close_stage(now)
        return []

    def answered_first_stage(self) -> int:
        return sum(self.groups[i].answered_first_stage() for i in self._live())

    def answered(self) -> set[str]:
        out: set[str] = set()
        for g in self.groups:
            out |= g.answered()
        return out

    def close_stage(self, now: float) -> list[Outbound]:
        live = self._live()
        results = self.parallel([functools.partial(_close, self.groups[i], now) for i in live])
        out: list[Outbound] = []
        for i, (msgs, error) in zip(live, results):
            if error is not None:
                self._refuse(i, error)
            else:
                out += msgs
        if not self._live():
            raise RoundFailed("every group was refused: " + "; ".join(self.refused.values()))
        return out

    def result(self) -> tuple[np.ndarray, list[str]]:
        live = self._live()
        totals, survivors = [], []
        for i in live:
            t, s = self.groups[i].result()
            totals.append(t)
            survivors += s
        if len(survivors) < self.min_total:
            why = "; ".join(self.refused.values()) or "no group refused"
            raise RoundFailed(
                f"{len(survivors)} devices in the groups' sums, minimum cohort is {self.min_total} ({why})"
            )
        bits = self.groups[live[0]].params.bits
        acc = np.zeros(totals[0].shape, dtype=np.uint64)
        for t in totals:
            acc += t
        return (acc & np.uint64((1 << bits) - 1)).astype(totals[0].dtype), survivors

    def dropped(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for g in self.groups:
            for k, v in g.dropped().items():
                out[k] = out.get(k, 0) + v
        if self.refused:
            out["refused_groups"] = len(self.refused)
        return out

    def exclude(self, device_id: str, now: float) -> bool:
        i = self.group_of.get(device_id)
        if i is None or i in self.refused:
            return i is not None
        return self.groups[i].exclude(device_id, now)

    def ready_to_close(self, now: float) -> list[Outbound]:
        if not self.finished and self._live() and self._all_ready():
            return self.close_stage(now)
        return []

    def flagged(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for g in self.groups:
            out.update(g.flagged())
        return out


def group_rosters(plan: GroupPlan, roster: Mapping[str, bytes]) -> list[dict[str, bytes]]:
    """Each group's identity keys."""
    return [{d: roster[d] for d in members} for members in plan.groups]
