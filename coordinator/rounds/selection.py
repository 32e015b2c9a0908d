"""Choosing a round's cohort: Poisson sampling at the over-selected rate, among eligible check-ins.

Each eligible device joins independently with probability q = min(1, ceil(goal * over_selection)
/ eligible), so the cohort is exactly the Poisson-sampled event the accountant composes
(``PoissonSampledDpEvent(q, ...)``, add-or-remove-one), as federated-compute's and TFF's DP
analyses assume. A uniform draw of a fixed number is not Poisson sampling, and Poisson
amplification is not a theorem about it (Chua et al., ICML 2024): the cohort size varies instead.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from fedge.agent.core.errors import ConfigError


def over_selected(goal: int, over_selection: float) -> int:
    """How many devices to select on average so that ``goal`` are likely to report (at least ``goal``)."""
    if goal < 1 or not (over_selection >= 1.0 and math.isfinite(over_selection)):
        raise ConfigError(f"goal must be >= 1 and over_selection >= 1, got {goal} and {over_selection}")
    return max(goal, math.ceil(goal * over_selection))


@dataclasses.dataclass(frozen=True)
class Cohort:
    """The devices drawn for a round, the rate each was drawn with, and how many could have been."""

    members: tuple[str, ...]
    sampling_rate: float
    population: int


def select_cohort(candidates: Sequence[str], goal: int, over_selection: float, rng: np.random.Generator) -> Cohort:
    """Poisson-sample the candidates at q = min(1, over-selected goal / candidates), shuffled."""
    want = over_selected(goal, over_selection)
    if not candidates:
        return Cohort((), 1.0, 0)
    q = min(1.0, want / len(candidates))
    drawn = [c for c, keep in zip(candidates, rng.random(len(candidates)) < q) if keep]
    rng.shuffle(drawn)
    return Cohort(tuple(drawn), q, len(candidates))
