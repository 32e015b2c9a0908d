"""Statistics that turn a distinguishing experiment into an epsilon lower bound.

A mechanism M is (epsilon, delta)-DP only if every test that tells M(D) from M(D') has
TPR <= e^epsilon * FPR + delta (Kairouz, Oh, Viswanath 2015). Counting how often a test fires
on each side gives Clopper-Pearson bounds on both rates, hence a lower bound on epsilon that
holds with the stated confidence (the approach of Jagielski et al. 2020 and Nasr et al. 2021).
scipy (a dependency of dp-accounting) gives the beta quantiles.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats


def clopper_pearson(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval for a binomial rate at ``confidence``."""
    if trials < 1 or not 0 <= successes <= trials or not 0 < confidence < 1:
        raise ValueError(f"bad binomial counts {successes}/{trials} or confidence {confidence}")
    alpha = 1.0 - confidence
    lo = 0.0 if successes == 0 else float(stats.beta.ppf(alpha / 2, successes, trials - successes + 1))
    hi = 1.0 if successes == trials else float(stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return lo, hi


@dataclasses.dataclass(frozen=True)
class DistinguishingResult:
    """Counts of one threshold test on both neighbours, and the epsilon they prove."""

    threshold: float
    true_positives: int
    positives: int
    false_positives: int
    negatives: int
    epsilon_lower_bound: float


def epsilon_lower_bound(tp: int, n_pos: int, fp: int, n_neg: int, delta: float, confidence: float) -> float:
    """The largest epsilon the counts prove at ``confidence`` (0 when they prove nothing).

    Each rate gets a one-sided bound at level sqrt(confidence) per side via the two-sided
    interval at 2*sqrt(confidence) - 1, so both hold together with probability ``confidence``.
    """
    per_side = 2 * math.sqrt(confidence) - 1
    tpr_lo, _ = clopper_pearson(tp, n_pos, per_side)
    _, fpr_hi = clopper_pearson(fp, n_neg, per_side)
    if tpr_lo - delta <= 0 or fpr_hi <= 0:
        return 0.0
    return max(0.0, math.log((tpr_lo - delta) / fpr_hi))


def threshold_test(
    positive: np.ndarray, negative: np.ndarray, threshold: float, delta: float, confidence: float = 0.95
) -> DistinguishingResult:
    """Lower-bound epsilon from the test "score > threshold" on scores of M(D) and of M(D').

    ``threshold`` must be chosen before the scores are seen (or on other samples), or the
    bound is not valid. The better of the test and its mirror (score < -threshold with the
    sides swapped) is not taken: one pre-registered test, one bound.
    """
    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    tp, fp = int(np.sum(positive > threshold)), int(np.sum(negative > threshold))
    eps = epsilon_lower_bound(tp, positive.size, fp, negative.size, delta, confidence)
    return DistinguishingResult(threshold, tp, positive.size, fp, negative.size, eps)
