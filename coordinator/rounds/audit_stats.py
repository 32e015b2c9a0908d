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


# --- One-run audits from canary scores --------------------------------------------------------


def gdp_log_delta(mu: float, eps: float) -> float:
    """log delta(epsilon) of mu-GDP: log(Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)), in log space."""
    a = float(stats.norm.logcdf(-eps / mu + mu / 2))
    b = eps + float(stats.norm.logcdf(-eps / mu - mu / 2))
    return -math.inf if b >= a else a + math.log1p(-math.exp(b - a))


def gdp_epsilon(mu: float, delta: float) -> float:
    """Epsilon at ``delta`` of the Gaussian mechanism with mean shift over noise ``mu`` (mu-GDP, exact)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not mu > 0:
        return 0.0
    if math.isinf(mu):
        return math.inf
    log_delta = math.log(delta)
    if gdp_log_delta(mu, 0.0) <= log_delta:
        return 0.0
    hi = 1.0
    while gdp_log_delta(mu, hi) > log_delta:
        hi *= 2.0
    lo = hi / 2 if hi > 1 else 0.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if gdp_log_delta(mu, mid) > log_delta:
            lo = mid
        else:
            hi = mid
    return hi


@dataclasses.dataclass(frozen=True)
class GaussianFit:
    """The one-shot estimate of Andrew et al. (ICLR 2024): scores of inserted and withheld canaries
    fitted by Gaussians of a common spread; ``mu`` = relation multiple * mean shift / spread, and
    ``epsilon`` that of the mu-Gaussian mechanism at the given delta. An estimate, not a bound."""

    mean_inserted: float
    mean_withheld: float
    stddev: float
    mu: float
    epsilon: float


def gaussian_fit_epsilon(
    inserted: np.ndarray,
    withheld: np.ndarray,
    delta: float,
    relation_multiple: float = 1.0,
    null_stddev: float | None = None,
) -> GaussianFit:
    """Fit N(m1, s1^2) to ``inserted`` and N(m0, s0^2) to ``withheld`` scores and return the epsilon at
    ``delta`` of the Gaussian mechanism with mu = relation_multiple * (m1 - m0) / s, s^2 = (s1^2 + s0^2)/2.

    ``null_stddev``: the withheld scores' law is known exactly (a cosine with a uniform direction
    has mean 0 and variance 1/d), so m0 = 0 and s0 = ``null_stddev`` instead of fitted ones; the
    withheld scores' own mean is still returned as a check.

    ``relation_multiple`` is 1 for add-or-remove (one canary is present or not) and 2 for
    replace-one (its worst pair is a canary against its negation, moving the sum twice as far;
    this scaling assumes the linear Gaussian model the fit already assumes).
    """
    a, b = np.asarray(inserted, float), np.asarray(withheld, float)
    if a.size < 2 or b.size < 2:
        raise ValueError("the Gaussian fit needs at least two inserted and two withheld canaries")
    m1, m0 = float(a.mean()), float(b.mean())
    null_mean, null_var = (m0, float(b.var(ddof=1))) if null_stddev is None else (0.0, null_stddev**2)
    s = math.sqrt((float(a.var(ddof=1)) + null_var) / 2)
    shift = m1 - null_mean
    mu = relation_multiple * shift / s if s > 0 else (math.inf if shift > 0 else 0.0)
    return GaussianFit(m1, m0, s, mu, gdp_epsilon(mu, delta))


def one_run_p_value(pairs: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """P[at least ``correct`` of ``guesses`` right] if the mechanism is (epsilon, delta)-DP in each
    of ``pairs`` independent fair coins (Steinke, Nasr, Jagielski, NeurIPS 2023, Thm. 5.2):
    P[Bin(r, p) >= v] + 2 m delta max_i P[v - i <= Bin(r, p) < v] / i with p = e^eps / (1 + e^eps)."""
    if not 0 <= correct <= guesses <= pairs:
        raise ValueError(f"need 0 <= correct ({correct}) <= guesses ({guesses}) <= pairs ({pairs})")
    p = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(correct - 1, guesses, p))
    if delta == 0 or correct == 0:
        return min(1.0, tail)
    pmf = stats.binom.pmf(np.arange(correct - 1, -1, -1), guesses, p)  # P[Bin = v-1], P[Bin = v-2], ...
    alpha = float(np.max(np.cumsum(pmf) / np.arange(1, correct + 1)))
    return min(1.0, tail + 2 * pairs * delta * alpha)


def one_run_epsilon_lower_bound(pairs: int, guesses: int, correct: int, delta: float, confidence: float) -> float:
    """The largest epsilon (to 1e-6) that ``correct`` of ``guesses`` rejects at ``confidence``; 0 if none."""
    alpha = 1.0 - confidence
    if one_run_p_value(pairs, guesses, correct, 0.0, delta) >= alpha:
        return 0.0
    lo, hi = 0.0, 1.0
    while one_run_p_value(pairs, guesses, correct, hi, delta) < alpha:
        lo, hi = hi, hi * 2
        if hi > 1e3:
            return lo
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        if one_run_p_value(pairs, guesses, correct, mid, delta) < alpha:
            lo = mid
        else:
            hi = mid
    return lo


def guess_counts(pairs: int) -> tuple[int, ...]:
    """The pre-registered numbers of guesses: m, m/2, m/4, m/8 (rounded up, at least 1, distinct)."""
    return tuple(sorted({max(1, math.ceil(pairs / 2**k)) for k in range(4)}, reverse=True))


@dataclasses.dataclass(frozen=True)
class PairedAudit:
    """The one-run lower bound from paired canaries, and the guess it came from."""

    pairs: int
    guesses: int
    correct: int
    epsilon_lower_bound: float


def paired_lower_bound(
    inserted: np.ndarray, withheld: np.ndarray, delta: float, confidence: float = 0.95
) -> PairedAudit:
    """Lower-bound epsilon from pairs whose inserted member was picked by a fair coin.

    ``inserted[i]`` and ``withheld[i]`` are the scores of pair i's two canaries. The auditor
    guesses, for the r pairs with the largest score gap, that the higher-scoring canary is the
    inserted one, and abstains on the rest; r runs over :func:`guess_counts` (chosen before any
    score is seen) and each gets confidence 1 - (1 - ``confidence``)/len(counts) (Bonferroni), so
    the best of them holds at ``confidence``. Swapping which canary of a pair is inserted is a
    replace-one change of the data, so the bound is on the replace-one epsilon.
    """
    gap = np.asarray(inserted, float) - np.asarray(withheld, float)
    m = gap.size
    if m < 1:
        raise ValueError("no canary pairs")
    counts = guess_counts(m)
    level = 1.0 - (1.0 - confidence) / len(counts)
    order = np.argsort(-np.abs(gap), kind="stable")
    best = PairedAudit(m, counts[0], int(np.sum(gap > 0)), 0.0)
    for r in counts:
        correct = int(np.sum(gap[order[:r]] > 0))
        eps = one_run_epsilon_lower_bound(m, r, correct, delta, level)
        if eps > best.epsilon_lower_bound:
            best = PairedAudit(m, r, correct, eps)
    return best
