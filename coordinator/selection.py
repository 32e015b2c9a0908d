"""Choosing a round's cohort: uniform sampling with over-selection, skipping ineligible devices."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from agent.core.errors import ConfigError


def over_selected(goal: int, over_selection: float) -> int:
    """How many devices to select so that ``goal`` are likely to report (at least ``goal``)."""
    if goal < 1 or not (over_selection >= 1.0 and math.isfinite(over_selection)):
        raise ConfigError(f"goal must be >= 1 and over_selection >= 1, got {goal} and {over_selection}")
    return max(goal, math.ceil(goal * over_selection))


def select_cohort(
    candidates: Sequence[str], goal: int, over_selection: float, rng: np.random.Generator
) -> list[str]:
    """Uniformly sample ``ceil(goal * over_selection)`` of the candidates (all of them if fewer)."""
    want = over_selected(goal, over_selection)
    if len(candidates) <= want:
        picked = list(candidates)
        rng.shuffle(picked)
        return picked
    idx = rng.choice(len(candidates), size=want, replace=False)
    return [candidates[i] for i in idx]
