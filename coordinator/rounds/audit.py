"""A one-run canary audit of a training run, after Andrew et al., "One-shot Empirical Privacy
Estimation for Federated Learning" (ICLR 2024), with the lower bound of Steinke, Nasr and
Jagielski, "Privacy Auditing with One (1) Training Run" (NeurIPS 2023).

Design. ``pairs`` = M pairs of canary directions, each drawn uniformly on the unit sphere of the
model's dimension d from the audit seed. In each pair a fair coin (also from the seed) picks the
canary that is *inserted*: a client whose update is that direction times the round's clip norm,
and which takes part in rounds through the real protocol path (clipping, noise, quantization,
SecAgg+). Its partner is *withheld*: never inserted. So M canaries are inserted and M are not.
The driver (simulator or service) decides when an inserted canary takes part
(:meth:`CanaryAudit.takes_part`: each round independently with the rate real clients have) and
feeds every completed round's released model delta to :meth:`CanaryAudit.observe`.

Score. For each canary c, its cosine with V = sum over rounds of the unit round deltas
(all rounds released: the accountant's threat model), and its cosine with the final model delta
W = w_T - w_0 (only the final model released: the paper's headline). A withheld direction is
independent of V and W, so its score has exactly the distribution of the cosine between a fixed
vector and a uniform unit vector ((1 + s)/2 ~ Beta((d-1)/2, (d-1)/2), about N(0, 1/d)).

Two numbers, each per threat model (:class:`AuditResult`):

- ``epsilon_empirical``: the paper's Gaussian fit (:func:`audit_stats.gaussian_fit_epsilon`):
  N(m, s1^2) fitted to the inserted canaries' scores against the exact null (mean 0, variance 1/d,
  as in the paper for large d). An *estimate* that assumes the scores are Gaussian with equal spread, and a replace-one
  relation (the simulator's accountant: one device replaced by another) whose worst pair moves
  the sum twice as far as one canary does. Not a bound; it can be above or below the truth.
- ``epsilon_lower_bound``: rigorous at the stated confidence, with no distributional
  assumption (:func:`audit_stats.paired_lower_bound`): swapping the inserted member of a pair is
  a replace-one change of the canary's data, and the coins are independent, so Steinke et al.'s
  Theorem 5.2 applies. It bounds the replace-one epsilon of the event the canaries undergo
  (every round's aggregate seen; the adversary knows the canary directions, not the coins or
  which rounds a canary joined). If a canary's event is the accounted event (every client in
  every round, so no sampling amplification), an accountant that is right never reports less.
  With sampling the canaries join each round independently with the clients' rate, which is
  Poisson sampling, while the simulator draws real cohorts of fixed size: close, not identical.

Canaries are never devices: the drivers keep them out of participant counts and reports.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from fedge.coordinator.rounds.audit_stats import gaussian_fit_epsilon, paired_lower_bound

#: Device ids of canary clients start with this (never a real device id: those are checked names).
CANARY_PREFIX = "canary-"
#: Confidence of every audit lower bound.
CONFIDENCE = 0.95
#: Relation multiple of the Gaussian fit under replace-one (see the module docstring).
REPLACE_ONE_MULTIPLE = 2.0
#: The neighbouring relation of every audit figure (estimate and lower bound), as printed beside it.
AUDIT_RELATION = "replace-one"


def canary_direction(seed: int, index: int, dimension: int) -> np.ndarray:
    """Canary ``index``'s direction: uniform on the unit sphere of R^dimension, from ``seed`` alone."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    v = rng.standard_normal(dimension)
    return v / np.linalg.norm(v)


def canary_update(seed: int, index: int, dimension: int, clip_norm: float) -> np.ndarray:
    """The model delta canary ``index`` reports: its direction at L2 norm ``clip_norm``."""
    return canary_direction(seed, index, dimension) * clip_norm


def canary_id(index: int) -> str:
    """The device id canary ``index`` takes part under."""
    return f"{CANARY_PREFIX}{index:06d}"


def canary_index(device_id: str) -> int | None:
    """The canary index of ``device_id``, or None for a real device."""
    if not device_id.startswith(CANARY_PREFIX):
        return None
    return int(device_id[len(CANARY_PREFIX) :])


def is_canary(device_id: str) -> bool:
    return device_id.startswith(CANARY_PREFIX)


def devices_aggregated(survivors: Sequence[str], participants: int, reason: str, completed: bool) -> tuple[int, str]:
    """A round's participant count and reason with canaries left out: canaries are never devices.
    Without canaries among ``survivors``, ``participants`` and ``reason`` as the engine gave them."""
    devices = sum(1 for d in survivors if not is_canary(d))
    if devices == len(survivors):
        return participants, reason
    if completed:
        reason = f"{devices} devices aggregated (and {len(survivors) - devices} audit canaries)"
    return devices, reason


@dataclasses.dataclass(frozen=True)
class AuditFigures:
    """One threat model's figures: the Gaussian-fit estimate and the one-run lower bound."""

    epsilon_empirical: float
    epsilon_lower_bound: float
    mean_inserted: float
    mean_withheld: float
    stddev: float
    guesses: int
    correct: int


@dataclasses.dataclass(frozen=True)
class AuditResult:
    """The audit after some rounds. ``all_rounds``: every round's aggregate seen (what the
    accountant assumes); ``final_model``: only the model after the last round."""

    rounds: int
    pairs: int
    confidence: float
    all_rounds: AuditFigures
    final_model: AuditFigures

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class CanaryAudit:
    """The coordinator's half of the audit: which canaries exist, and their scores so far.

    Holds 2M directions of the model's dimension d as float32 (8 M d bytes) and two d-vectors.
    """

    def __init__(self, pairs: int, dimension: int, seed: int, delta: float, confidence: float = CONFIDENCE) -> None:
        if pairs < 2 or dimension < 2:
            raise ValueError(f"a canary audit needs at least 2 pairs and dimension 2, got {pairs} and {dimension}")
        self.pairs, self.dimension, self.seed = pairs, dimension, seed
        self.delta, self.confidence = delta, confidence
        coins = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2**31,))).integers(0, 2, pairs)
        #: canary indices (0..2M-1) of the inserted and the withheld member of each pair
        self.inserted = 2 * np.arange(pairs) + coins
        self.withheld = 2 * np.arange(pairs) + 1 - coins
        self._directions = np.stack([canary_direction(seed, i, dimension) for i in range(2 * pairs)]).astype(np.float32)
        self._unit_sum = np.zeros(dimension)
        self._total = np.zeros(dimension)
        self.rounds = 0

    def inserted_ids(self) -> list[str]:
        """Device ids of the inserted canaries."""
        return [canary_id(int(i)) for i in self.inserted]

    def takes_part(self, round_id: int, rate: float) -> list[str]:
        """The inserted canaries in round ``round_id``: each independently with probability ``rate``."""
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(2**31 + 1, round_id)))
        return [canary_id(int(i)) for i, u in zip(self.inserted, rng.random(self.pairs)) if rate >= 1 or u < rate]

    def observe(self, model_delta: np.ndarray) -> None:
        """Take in one completed round's released model delta (new weights minus old)."""
        d = np.asarray(model_delta, dtype=np.float64).ravel()
        if d.size != self.dimension:
            raise ValueError(f"model delta has {d.size} coordinates, the audit {self.dimension}")
        norm = float(np.linalg.norm(d))
        if norm > 0 and math.isfinite(norm):
            self._unit_sum += d / norm
        self._total += d
        self.rounds += 1

    def _cosines(self, v: np.ndarray) -> np.ndarray:
        norm = float(np.linalg.norm(v))
        if norm == 0:
            return np.zeros(2 * self.pairs)
        return (self._directions @ (v / norm).astype(np.float32)).astype(np.float64)

    def _figures(self, v: np.ndarray) -> AuditFigures:
        s = self._cosines(v)
        fit = gaussian_fit_epsilon(
            s[self.inserted], s[self.withheld], self.delta, REPLACE_ONE_MULTIPLE, null_stddev=self.dimension**-0.5
        )
        bound = paired_lower_bound(s[self.inserted], s[self.withheld], self.delta, self.confidence)
        return AuditFigures(
            fit.epsilon,
            bound.epsilon_lower_bound,
            fit.mean_inserted,
            fit.mean_withheld,
            fit.stddev,
            bound.guesses,
            bound.correct,
        )

    def result(self) -> AuditResult:
        """Both threat models' figures over the rounds observed so far."""
        return AuditResult(
            self.rounds, self.pairs, self.confidence, self._figures(self._unit_sum), self._figures(self._total)
        )
