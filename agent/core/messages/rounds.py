"""Round-level messages: check-in, the task a selected device receives, plain uploads, round end.

Secure-aggregation stage messages live in :mod:`fedge.agent.core.messages.secagg`; with secure
aggregation off, a device answers its task with one :class:`PlainUpdate` holding the same
quantized vector it would otherwise mask, so both paths aggregate with the same arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedge.agent.core.errors import ConfigError
from fedge.agent.core.names import ValueEnum
from fedge.agent.core.privacy.config import AdaptiveClipping, DpMode, PrivacyConfig
from fedge.agent.core.wire import message


class Weighting(ValueEnum):
    """FedAvg's client weights: capped example counts, or 1 each (always under DP)."""

    EXAMPLES = "examples"
    UNIFORM = "uniform"


WEIGHTINGS = tuple(w.value for w in Weighting)


def _positive(**values: float) -> None:
    for name, v in values.items():
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive finite number")


@dataclass(frozen=True)
class TrainingPlan:
    """How a device trains in one round: local epochs, batch size and learning rate, and FedProx's
    proximal coefficient mu (Li et al., MLSys 2020; 0 is plain FedAvg local training)."""

    epochs: int
    batch_size: int
    learning_rate: float
    prox_mu: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        _positive(learning_rate=self.learning_rate)
        if not (math.isfinite(self.prox_mu) and self.prox_mu >= 0):
            raise ValueError("prox_mu must be a finite number >= 0")


@dataclass(frozen=True)
class QuantizationPlan:
    """The fixed-point encoding both sides share: every coordinate is clipped to
    [-range, range], multiplied by ``scale`` and rounded into Z_2^bits, sized so that the round's
    sum (plus distributed noise) cannot wrap."""

    bits: int
    scale: float
    range: float

    def __post_init__(self) -> None:
        if not 16 <= self.bits <= 32:
            raise ValueError("quantization bits must be in [16, 32]")
        _positive(scale=self.scale, range=self.range)


@dataclass(frozen=True)
class RoundPlan:
    """Everything a device needs to know to train and report for one round.

    ``privacy`` is the round's :class:`PrivacyConfig` as the device applies it: its ``clip_norm``
    is the round's C (adaptive clipping moves it between rounds), ``min_clients`` the number of
    clients whose distributed noise shares add up to the central noise, ``delta`` always set.
    """

    model_name: str
    model_version: str
    training: TrainingPlan
    privacy: PrivacyConfig
    quantization: QuantizationPlan
    #: ``examples``: FedAvg weighted by (capped) example counts; ``uniform``: every client 1
    weighting: Weighting
    example_cap: int
    secagg: bool
    #: the rate the cohort was drawn with (Poisson q, or m/N for a fixed-size draw)
    sampling_rate: float
    deadline_s: float
    #: with DP on, FedAvg divides the noised sum by this fixed count (the round's goal) rather
    #: than by the number of survivors, so the released mean does not reveal that count
    #: (DP-FedAvg, McMahan et al. 2018); 0 when DP is off
    dp_denominator: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RoundPlan:
        """A plan from its ``dataclasses.asdict`` form (as the coordinator's store keeps it in JSON)."""
        privacy = dict(d["privacy"])
        if privacy.get("adaptive") is not None:
            privacy["adaptive"] = AdaptiveClipping(**privacy["adaptive"])
        return cls(
            **{
                **d,
                "training": TrainingPlan(**d["training"]),
                "privacy": PrivacyConfig(**privacy),
                "quantization": QuantizationPlan(**d["quantization"]),
            }
        )

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}")
        object.__setattr__(self, "weighting", Weighting(self.weighting))
        if self.example_cap < 1:
            raise ValueError("example_cap must be >= 1")
        _positive(deadline_s=self.deadline_s)
        if not 0 < self.sampling_rate <= 1:
            raise ValueError("sampling_rate must be in (0, 1]")
        p = self.privacy
        _positive(clip_norm=p.clip_norm)
        if not (math.isfinite(p.noise_multiplier) and p.noise_multiplier >= 0):
            raise ValueError("noise_multiplier must be >= 0")
        if p.delta is None or not 0 < p.delta < 1:
            raise ValueError("a round's delta must be set, in (0, 1)")
        if p.min_clients < 1:
            raise ValueError("min_clients must be >= 1")
        if (p.mode == DpMode.OFF) != (self.dp_denominator == 0) or self.dp_denominator < 0:
            raise ValueError("dp_denominator must be > 0 exactly when DP is on")
        a = p.adaptive
        if a is not None:
            if not all(math.isfinite(v) for v in (a.target_quantile, a.learning_rate, a.clip_count_stddev)):
                raise ValueError("adaptive clipping settings must be finite")
            if p.mode == DpMode.OFF:
                raise ValueError("adaptive clipping requires DP on")
        try:
            p.validate(secagg_enabled=self.secagg)
        except ConfigError as e:
            raise ValueError(str(e)) from e


@message("round.checkin")
@dataclass(frozen=True)
class CheckIn:
    """A device is eligible (or not) for the announced round and says what it holds, and which
    SecAgg+ cipher suites it runs (``fedge.agent.core.secagg.params.supported_suites``)."""

    device_id: str
    round_id: int
    device_class: str
    model_version: str
    eligible: bool
    num_examples: int
    epsilon_spent: float
    #: random per agent process: two processes claiming one identity (a cloned device) send two
    #: different check-ins for one round, which the coordinator quarantines
    session: str = ""
    secagg_suites: tuple[str, ...] = ()


@message("round.announce")
@dataclass(frozen=True)
class RoundAnnounce:
    """A new round is open for check-in until ``checkin_deadline`` (coordinator clock, unix s).

    ``sent_at`` is the coordinator's clock when it was published: a device reads the deadline as
    the duration ``checkin_deadline - sent_at`` from receipt, and measures its clock's offset from
    the coordinator's as ``sent_at`` minus its own clock at receipt, so a skewed device clock
    cannot misread the deadline (0: an older coordinator that sent no timestamp).
    """

    round_id: int
    model_name: str
    model_version: str
    checkin_deadline: float
    sent_at: float = 0.0

    @property
    def window_s(self) -> float | None:
        """The check-in window as a duration (None without ``sent_at``)."""
        return self.checkin_deadline - self.sent_at if self.sent_at > 0 else None


@message("round.task")
@dataclass(frozen=True)
class Task:
    """A selected device's assignment: the plan and the global weights to start from."""

    round_id: int
    device_id: str
    plan: RoundPlan
    weights: np.ndarray
    #: buffered asynchronous aggregation (``serve --mode buffered``), defaulted so a task from an
    #: older coordinator still decodes. A *training task* has ``base_version`` >= 0 (the index of
    #: the model version ``weights`` are) and ``trained_in`` 0: the device trains, keeps its delta
    #: and answers :class:`Trained`. A *group task* names in ``trained_in`` the training task whose
    #: kept delta it aggregates (``weights`` may then be empty) and carries the device's staleness
    #: weight s(target - base_version), applied before masking. -1 / 0: a synchronous round.
    base_version: int = -1
    staleness_weight: float = 1.0
    trained_in: int = 0

    def __post_init__(self) -> None:
        if self.weights.dtype != np.float32 or self.weights.ndim != 1:
            raise ValueError("weights must be a flat float32 vector")
        if not 0 < self.staleness_weight <= 1:
            raise ValueError("staleness_weight must be in (0, 1]")
        if self.trained_in < 0 or self.base_version < -1:
            raise ValueError("trained_in must be >= 0 and base_version >= -1")

    @property
    def holds_update(self) -> bool:
        """A buffered training task: train now, keep the delta for a later group task."""
        return self.base_version >= 0 and self.trained_in == 0


@message("round.trained")
@dataclass(frozen=True)
class Trained:
    """Buffered mode: the device finished a training task and keeps its delta (nothing of it is sent)
    until its SecAgg+ group's task arrives; the coordinator admits it to a group or refuses it."""

    round_id: int
    device_id: str
    base_version: int
    num_examples: int


@message("round.plain_update")
@dataclass(frozen=True)
class PlainUpdate:
    """Secure aggregation off: the device's quantized update, in the clear."""

    round_id: int
    device_id: str
    vector: np.ndarray

    def __post_init__(self) -> None:
        if self.vector.dtype not in (np.dtype("<u4"), np.dtype("<u2")) or self.vector.ndim != 1:
            raise ValueError("vector must be a flat uint32 or uint16 vector")


class DeclineKind(ValueEnum):
    """Why a selected device will not take part, for the coordinator to act on (``reason`` is for people)."""

    BUDGET = "budget"  # its privacy budget is spent: never select it again in this campaign
    SECAGG_UNAVAILABLE = "secagg_unavailable"  # no enrollment authority to check its peers
    RESTARTED = "restarted"  # the agent restarted mid-round and lost the round's secrets
    FAILED = "failed"  # training or encoding failed, or it stopped being eligible


@message("round.decline")
@dataclass(frozen=True)
class Decline:
    """A selected device will not take part (budget spent, no longer eligible, training failed)."""

    round_id: int
    device_id: str
    reason: str
    #: what the coordinator acts on; last, with a default, so a decline from an older agent still decodes
    kind: DeclineKind = DeclineKind.FAILED


@message("round.end")
@dataclass(frozen=True)
class RoundEnd:
    """The round is over for everyone: ``completed`` with a new model version, or ``abandoned``."""

    round_id: int
    status: str
    reason: str
    model_version: str


@message("round.peers")
@dataclass(frozen=True)
class Peers:
    """The identity keys of a device's SecAgg+ neighbours, each certified by the enrollment authority."""

    round_id: int
    device_ids: tuple[str, ...]
    identity_keys: tuple[bytes, ...]
    certificates: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not len(self.device_ids) == len(self.identity_keys) == len(self.certificates):
            raise ValueError("one identity key and one certificate per device")
