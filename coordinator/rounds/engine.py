"""One training round on the coordinator, as a pure state machine: messages and clock ticks in,
messages out. The MQTT service and the simulator both drive this same object.

Flow: the engine sends each selected device a :class:`Task` (plan + global weights). Devices
train, then either upload a :class:`PlainUpdate` (secure aggregation off) or run the SecAgg+
stages. A stage closes when ``goal`` devices answered the first stage, or at its deadline with
whoever answered, as long as the thresholds hold; otherwise the round is abandoned with a reason
that names the stage and the counts. The engine never blocks and never does I/O.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fedge.agent.core.errors import ProtocolError, RoundFailed
from fedge.agent.core.messages.common import Outbound
from fedge.agent.core.messages.rounds import Decline, DeclineKind, PlainUpdate, RoundPlan, Task
from fedge.agent.core.privacy.adaptive import next_clip_norm
from fedge.agent.core.secagg.quantize import to_signed
from fedge.agent.core.update import Aggregate, decode_aggregate, extra_coordinates
from fedge.coordinator.rounds.stages import RoundStage, check_round_transition

log = logging.getLogger(__name__)


class RoundStatus(enum.Enum):
    RUNNING = "running"
    COMPLETED = "completed"
    ABANDONED = "abandoned"


@dataclasses.dataclass(frozen=True)
class RoundSettings:
    """Coordinator-side knobs of a round (the device-side ones are in the RoundPlan)."""

    goal: int
    min_clients: int
    #: deadline of every SecAgg stage after the first (the first one includes training: plan.deadline_s)
    stage_timeout_s: float

    def __post_init__(self) -> None:
        if not 1 <= self.min_clients <= self.goal:
            raise ValueError(f"need 1 <= min_clients <= goal, got {self.min_clients} and {self.goal}")
        if not self.stage_timeout_s > 0:
            raise ValueError("stage_timeout_s must be > 0")


@dataclasses.dataclass(frozen=True)
class RoundOutcome:
    status: RoundStatus
    reason: str
    aggregate: Aggregate | None
    participants: int
    dropped: dict[str, int]
    new_weights: np.ndarray | None
    #: adaptive clipping: the next round's C from this round's noisy clip-bit sum; None when off
    next_clip_norm: float | None = None
    #: devices caught misbehaving in this round (e.g. a forged share at unmask), with the reason
    flagged: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: the devices whose inputs are in the aggregate (empty when abandoned)
    survivors: tuple[str, ...] = ()


class Aggregation:
    """How uploads become one integer sum: in the clear, or through SecAgg+ (:mod:`.secure`)."""

    first_stage: str

    def start(self, cohort: Sequence[str], now: float) -> list[Outbound]:
        raise NotImplementedError

    def receive(self, device_id: str, msg: Any, now: float) -> list[Outbound]:
        raise NotImplementedError

    def answered_first_stage(self) -> int:
        raise NotImplementedError

    def answered(self) -> set[str]:
        """Devices that answered the first stage."""
        raise NotImplementedError

    def close_stage(self, now: float) -> list[Outbound]:
        """Proceed with whoever answered; raise RoundFailed when a threshold no longer holds."""
        raise NotImplementedError

    @property
    def stage(self) -> str:
        raise NotImplementedError

    @property
    def finished(self) -> bool:
        raise NotImplementedError

    def result(self) -> tuple[np.ndarray, list[str]]:
        """The exact integer sum and the devices whose inputs it holds."""
        raise NotImplementedError

    def dropped(self) -> dict[str, int]:
        raise NotImplementedError

    def flagged(self) -> dict[str, str]:
        """Devices caught misbehaving so far, with the reason."""
        return {}

    def exclude(self, device_id: str, now: float) -> bool:
        """Leave ``device_id`` out from the current stage on, as if it had dropped out; False when its
        input can no longer be taken out (already in the sum)."""
        raise NotImplementedError

    def ready_to_close(self, now: float) -> list[Outbound]:
        """After an exclusion: close the stage when every reply it still waits for is in."""
        return []


class PlainAggregation(Aggregation):
    """Secure aggregation off: sum the quantized vectors as they arrive (wrapping uint arithmetic)."""

    first_stage = "report"

    def __init__(self, length: int, bits: int, goal: int, min_clients: int, max_abs: int | None = None) -> None:
        """``max_abs``: the largest |quantized value| the plan allows (``max_abs_int(range, scale)``);
        an upload outside it, or with a weight coordinate <= 0, is refused, so one device cannot
        wrap the sum or outweigh the others. Under SecAgg+ this cannot be checked (inputs are masked)."""
        self.length, self.bits, self.goal, self.min_clients = length, bits, goal, min_clients
        self.max_abs = max_abs
        self._sum = np.zeros(length, dtype=np.uint64)
        self._from: list[str] = []
        self._cohort: set[str] = set()
        self._closed = False

    @property
    def stage(self) -> str:
        return "done" if self._closed else "report"

    @property
    def finished(self) -> bool:
        return self._closed

    def start(self, cohort: Sequence[str], now: float) -> list[Outbound]:
        self._cohort = set(cohort)
        return []

    def receive(self, device_id: str, msg: Any, now: float) -> list[Outbound]:
        if not isinstance(msg, PlainUpdate):
            raise ProtocolError(f"unexpected {type(msg).__name__} in the report stage")
        if self._closed:
            raise ProtocolError("report stage is closed")
        if device_id in self._from:
            raise ProtocolError("duplicate update")
        v = msg.vector
        if v.shape != (self.length,):
            raise ProtocolError(f"update has shape {v.shape}, expected ({self.length},)")
        if self.bits < 32 and int(v.max(initial=0)) >> self.bits:
            raise ProtocolError(f"update has values outside Z_2^{self.bits}")
        if self.max_abs is not None:
            signed = to_signed(v, self.bits)
            if int(np.abs(signed).max(initial=0)) > self.max_abs or signed[-1] <= 0:
                raise ProtocolError("update is outside the plan's quantization range or has no positive weight")
        self._sum += v
        self._from.append(device_id)
        if len(self._from) >= self.goal:
            self._closed = True
        return []

    def answered_first_stage(self) -> int:
        return len(self._from)

    def answered(self) -> set[str]:
        return set(self._from)

    def close_stage(self, now: float) -> list[Outbound]:
        if len(self._from) < self.min_clients:
            raise RoundFailed(
                f"stage report: {len(self._from)} of {len(self._cohort)} devices reported, "
                f"minimum cohort is {self.min_clients}"
            )
        self._closed = True
        return []

    def result(self) -> tuple[np.ndarray, list[str]]:
        mask = np.uint64((1 << self.bits) - 1)
        return (self._sum & mask).astype(np.uint32), list(self._from)

    def dropped(self) -> dict[str, int]:
        return {"report": len(self._cohort) - len(self._from)}

    def exclude(self, device_id: str, now: float) -> bool:
        if device_id in self._from:
            return False  # already summed
        self._cohort.discard(device_id)
        return True


class RoundEngine:
    """One round: tasks out, uploads in, deadlines, then FedAvg of the unmasked sum."""

    def __init__(
        self,
        round_id: int,
        plan: RoundPlan,
        settings: RoundSettings,
        weights: np.ndarray,
        cohort: Sequence[str],
        aggregation: Aggregation,
        clock: Callable[[], float],
    ) -> None:
        if len(set(cohort)) != len(cohort):
            raise ValueError("cohort has duplicate devices")
        self.round_id = round_id
        self.plan = plan
        self.settings = settings
        self.weights = np.ascontiguousarray(weights, dtype=np.float32)
        self.cohort = list(cohort)
        self._members = set(cohort)
        self.aggregation = aggregation
        self.clock = clock
        self.status = RoundStatus.RUNNING
        self.reason = ""
        self.outcome: RoundOutcome | None = None
        self.declined: dict[str, str] = {}
        #: why each declined device declined, as the device classified it
        self.decline_kinds: dict[str, DeclineKind] = {}
        #: devices left out mid-round (a cloned device), with the reason
        self.excluded: dict[str, str] = {}
        #: devices caught when they could no longer be left out (they finish the round), with the reason
        self.flagged_late: dict[str, str] = {}
        self._deadline = 0.0
        self._stage = RoundStage.TRAINING.value

    # -------------------------------------------------------------- driving

    @property
    def stage(self) -> str:
        return self._stage

    @property
    def deadline(self) -> float:
        return self._deadline

    def start(self) -> list[Outbound]:
        """Tasks for every selected device; the first stage's deadline includes training."""
        now = self.clock()
        self._deadline = now + self.plan.deadline_s
        out = [Outbound(d, Task(self.round_id, d, self.plan, self.weights)) for d in self.cohort]
        out += self.aggregation.start(self.cohort, now)
        self._move_to(self.aggregation.stage)
        log.info("round started: %d devices selected", len(self.cohort), extra={"round": self.round_id})
        return out

    def receive(self, device_id: str, msg: Any) -> list[Outbound]:
        """Handle one message from a device; ProtocolError when it is illegal here (caller logs it)."""
        if self.status is not RoundStatus.RUNNING:
            raise ProtocolError(f"round {self.round_id} is {self.status.value}")
        if device_id not in self._members:
            raise ProtocolError(f"device {device_id!r} is not in round {self.round_id}")
        if getattr(msg, "round_id", self.round_id) != self.round_id:
            raise ProtocolError(f"message for round {msg.round_id} in round {self.round_id}")
        if getattr(msg, "device_id", device_id) != device_id:
            raise ProtocolError("message names another device")
        if device_id in self.excluded:
            raise ProtocolError(f"device is excluded from round {self.round_id}: {self.excluded[device_id]}")
        if isinstance(msg, Decline):
            if device_id in self.declined or device_id in self.aggregation.answered():
                raise ProtocolError("decline from a device that already answered")
            self.declined[device_id] = msg.reason
            self.decline_kinds[device_id] = msg.kind
            log.info("device declined: %s", msg.reason, extra={"round": self.round_id, "device": device_id})
            out = self._maybe_close_early()
            return out + self._maybe_finish()
        now = self.clock()
        before = self.aggregation.stage
        try:
            out = self.aggregation.receive(device_id, msg, now)
        except RoundFailed as e:
            return self._abandon(str(e))
        out += self._maybe_close_early()
        if self.aggregation.stage != before:
            self._enter_stage(now)
        return out + self._maybe_finish()

    def tick(self) -> list[Outbound]:
        """Call when the clock may have passed the stage deadline."""
        if self.status is not RoundStatus.RUNNING or self.clock() < self._deadline:
            return []
        now = self.clock()
        stage = self.aggregation.stage
        log.info("stage %s deadline", stage, extra={"round": self.round_id})
        try:
            out = self.aggregation.close_stage(now)
        except RoundFailed as e:
            return self._abandon(self._declines_reason(str(e)) if stage == self.aggregation.first_stage else str(e))
        self._enter_stage(now)
        return out + self._maybe_finish()

    def abandon(self, reason: str) -> list[Outbound]:
        """Abandon from outside (operator, shutdown, restart without state)."""
        return self._abandon(reason)

    def exclude(self, device_id: str, reason: str) -> list[Outbound]:
        """Leave a device out of this round from now on (a cloned device): its messages are refused,
        and the aggregation drops it at the current stage when its input is not yet in the sum.
        The round goes on; a stage that now has every reply it waits for closes at once."""
        if (
            self.status is not RoundStatus.RUNNING
            or device_id not in self._members
            or device_id in self.excluded
            or device_id in self.flagged_late
        ):
            return []
        now = self.clock()
        before = self.aggregation.stage
        if not self.aggregation.exclude(device_id, now):
            # too late to leave it out (its input is in the sum, or its shares are needed): it finishes
            # the round, flagged, and is quarantined with the outcome
            self.flagged_late[device_id] = reason
            log.warning(
                "device flagged too late to leave it out of this round",
                extra={"round": self.round_id, "device": device_id},
            )
            return []
        self.excluded[device_id] = reason
        try:
            out = self.aggregation.ready_to_close(now)
        except RoundFailed as e:
            return self._abandon(str(e))
        out += self._maybe_close_early()
        if self.aggregation.stage != before:
            self._enter_stage(now)
        return out + self._maybe_finish()

    # -------------------------------------------------------------- internals

    def _move_to(self, stage: str) -> None:
        """The only way the round's stage changes: forward, or to its end (:mod:`.stages`)."""
        self._stage = check_round_transition(self._stage, stage).value

    def _enter_stage(self, now: float) -> None:
        self._move_to(self.aggregation.stage)
        self._deadline = now + self.settings.stage_timeout_s

    def _maybe_close_early(self) -> list[Outbound]:
        """The first stage closes as soon as ``goal`` devices answered, or nobody else can."""
        agg = self.aggregation
        if agg.stage != agg.first_stage or agg.finished:
            return []
        answered = agg.answered_first_stage()
        gone = len(self.declined) + sum(1 for d in self.excluded if d not in self.declined)
        outstanding = len(self._members) - answered - gone
        if answered >= self.settings.goal or outstanding <= 0:
            now = self.clock()
            try:
                out = agg.close_stage(now)
            except RoundFailed as e:
                return self._abandon(self._declines_reason(str(e)))
            self._enter_stage(now)
            return out
        return []

    def _maybe_finish(self) -> list[Outbound]:
        if self.status is not RoundStatus.RUNNING or not self.aggregation.finished:
            return []
        try:
            total, survivors = self.aggregation.result()
            agg = decode_aggregate(total, self.plan, self.weights.size)
        except (RoundFailed, ProtocolError) as e:
            return self._abandon(str(e))
        if not np.all(np.isfinite(agg.mean_delta)):
            return self._abandon("aggregate is not finite")
        new = (self.weights + agg.mean_delta).astype(np.float32)
        self.status = RoundStatus.COMPLETED
        self._move_to(RoundStage.COMPLETED)
        self.reason = f"{len(survivors)} devices aggregated"
        self.outcome = RoundOutcome(
            RoundStatus.COMPLETED,
            self.reason,
            agg,
            len(survivors),
            self._dropped(),
            new,
            self._next_clip_norm(agg, len(survivors)),
            self._flagged(),
            tuple(survivors),
        )
        log.info("round completed: %s", self.reason, extra={"round": self.round_id})
        return []

    def _next_clip_norm(self, agg: Aggregate, contributions: int) -> float | None:
        """C for the next round (Andrew et al. 2021), from the noisy bit sum over ``contributions``.

        The paper divides by the expected count because the actual one is not privatized; here
        the un-noised weight coordinate already reveals it (docs/privacy.md, known gaps), and
        dividing by it keeps b_bar unbiased when devices drop out.
        """
        p = self.plan.privacy
        if agg.clip_bit_sum is None or contributions < 1 or p.adaptive is None:
            return None
        a = p.adaptive
        return next_clip_norm(p.clip_norm, agg.clip_bit_sum, contributions, a.target_quantile, a.learning_rate)

    def _dropped(self) -> dict[str, int]:
        """Devices that did not make it into the aggregate, by where they were lost; each device once.

        The aggregation counts every device missing at its first stage, declined ones included; they
        are counted under ``declined`` instead (excluded ones the aggregation has already let go)."""
        d = dict(self.aggregation.dropped())
        declined = [x for x in self.declined if x not in self.excluded]
        first = self.aggregation.first_stage
        if declined and first in d:
            d[first] = max(0, d[first] - len(declined))
            if not d[first]:
                del d[first]
        if declined:
            d["declined"] = len(declined)
        if self.excluded:
            d["excluded"] = len(self.excluded)
        return d

    def _declines_reason(self, failure: str) -> str:
        """The reason of a first stage that failed: the declines' own reasons when they are why."""
        declined = [(d, r) for d, r in self.declined.items() if d not in self.excluded]
        if not declined:
            return failure
        kinds: dict[str, int] = {}
        for d, r in declined:
            kind = "out of privacy budget" if self.decline_kinds.get(d) is DeclineKind.BUDGET else r
            kinds[kind] = kinds.get(kind, 0) + 1
        why = ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
        answered = self.aggregation.answered_first_stage()
        silent = len(self.cohort) - answered - len(declined) - len(self.excluded)
        quiet = f", {silent} did not answer" if silent > 0 else ""
        return (
            f"{len(declined)} of {len(self.cohort)} devices declined ({why}){quiet}; {answered} answered, "
            f"minimum cohort is {self.settings.min_clients}"
        )

    def _flagged(self) -> dict[str, str]:
        return {**self.flagged_late, **self.excluded, **self.aggregation.flagged()}

    def _abandon(self, reason: str) -> list[Outbound]:
        if self.status is RoundStatus.RUNNING:
            self.status = RoundStatus.ABANDONED
            self._move_to(RoundStage.ABANDONED)
            self.reason = reason
            self.outcome = RoundOutcome(
                RoundStatus.ABANDONED, reason, None, 0, self._dropped(), None, flagged=self._flagged()
            )
            log.warning("round abandoned: %s", reason, extra={"round": self.round_id})
        return []


def expected_length(weights: np.ndarray, plan: RoundPlan | None = None) -> int:
    """Length of an encoded update: the model's parameters plus the weight coordinate, plus the
    clip-bit coordinate when ``plan`` clips adaptively (see ``agent/core/update.py``)."""
    return int(weights.size) + (extra_coordinates(plan) if plan is not None else 1)


def identities_for(cohort: Sequence[str], lookup: Mapping[str, bytes]) -> dict[str, bytes]:
    """The identity public keys of a cohort; ProtocolError for a device without one."""
    missing = [d for d in cohort if d not in lookup]
    if missing:
        raise ProtocolError(f"devices without an enrolled identity key: {missing[:5]}")
    return {d: lookup[d] for d in cohort}
