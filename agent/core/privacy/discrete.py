"""Distributed discrete Gaussian (DDG) noise in the SecAgg integer ring, and its parameters.

Chosen mechanism: the distributed discrete Gaussian of Kairouz, Liu, Steinke (ICML 2021).
After quantization (x_int = stochastic_round(x * scale), two's complement mod 2^bits, see
``agent/core/secagg/quantize.py``) each client adds N_Z(0, sigma_i^2) with
sigma_i = z * C * scale / sqrt(min_clients), so the sum of ``min_clients`` shares has variance
about (z C scale)^2. Noise is added mod 2^bits: a wrap-around only hurts utility, never privacy
(it is post-processing of the noised sum).

Sensitivity: one client's quantized vector has L2 norm at most scale*C + sqrt(d) whatever the
rounding did (each coordinate moves by less than 1): the deterministic bound of the DDG paper's
Theorem 1 with beta = 0. We use it rather than the conditional-rounding bound because our
quantizer rounds unconditionally.

Accounting: the sum of n discrete Gaussians is not exactly discrete Gaussian; Theorem 1 /
Proposition 14 of the paper bound its Renyi DP by alpha * Delta^2 / (2 sigma^2) + tau * d with
tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 sigma_i^2 k / (k + 1)). The first term is exactly the RDP
of a Gaussian with :attr:`DiscreteNoisePlan.effective_noise_multiplier`; ``tau * d`` is carried
as an additive RDP offset (:attr:`DiscreteNoisePlan.rdp_offset`) that the accountant adds to
epsilon. See ``docs/privacy.md`` for what this does and does not cover with sampling.

Dropouts: if fewer than ``min_clients`` shares reach the sum, its variance shrinks by
survivors/min_clients and the guarantee weakens; the coordinator must call
:func:`require_min_survivors` before unmasking.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np

from fedge.agent.core.errors import ConfigError, RoundFailed

if TYPE_CHECKING:
    from fedge.agent.core.privacy.config import PrivacyConfig

#: Plans whose tau * d exceeds this are refused: raise the scale (finer quantization).
MAX_RDP_OFFSET = 1e-6


def sample_discrete_gaussian(sigma: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` draws of N_Z(0, sigma^2): P(x) proportional to exp(-x^2 / (2 sigma^2)), x integer.

    Rejection from a discrete Laplace of scale t = floor(sigma) + 1 (Canonne, Kamath, Steinke
    2020, Algorithm 3), vectorized. The acceptance test uses floating point rather than the
    paper's exact arithmetic; the resulting bias is far below anything the accounting sees.
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
    t = math.floor(sigma) + 1
    p = -math.expm1(-1.0 / t)  # success probability of each geometric
    out = np.empty(size, dtype=np.int64)
    filled = 0
    while filled < size:
        n = max(64, int((size - filled) * 1.6))
        y = (rng.geometric(p, n) - 1) - (rng.geometric(p, n) - 1)
        accept = rng.random(n) < np.exp(-((np.abs(y) - sigma**2 / t) ** 2) / (2 * sigma**2))
        take = y[accept][: size - filled]
        out[filled : filled + take.size] = take
        filled += take.size
    return out


@dataclasses.dataclass(frozen=True)
class DiscreteNoisePlan:
    """Everything needed to add and account DDG noise in one round.

    ``central_stddev`` is the target std of the summed noise in float units (z * C);
    ``scale`` maps floats to integers; ``dimension`` is the update length d.
    """

    clip_norm: float
    central_stddev: float
    scale: float
    bits: int
    min_clients: int
    dimension: int

    def __post_init__(self) -> None:
        for name in ("clip_norm", "central_stddev", "scale"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"discrete noise: {name} must be a finite number > 0, got {v!r}")
        if not 2 <= self.bits <= 62 or self.min_clients < 1 or self.dimension < 1:
            raise ConfigError("discrete noise: bits must be in [2, 62], min_clients and dimension >= 1")
        if self.rdp_offset > MAX_RDP_OFFSET:
            raise ConfigError(
                f"discrete noise: per-client sigma {self.client_sigma:.3g} (integer units) is too small; "
                f"tau*d = {self.rdp_offset:.3g} > {MAX_RDP_OFFSET}. Raise the quantization scale"
            )

    @property
    def client_sigma(self) -> float:
        """sigma_i of one client's share, in integer units."""
        return self.central_stddev * self.scale / math.sqrt(self.min_clients)

    @property
    def l2_sensitivity(self) -> float:
        """One client's quantized contribution bound, integer units: scale*C + sqrt(d)."""
        return self.scale * self.clip_norm + math.sqrt(self.dimension)

    @property
    def tau(self) -> float:
        """The DDG paper's tau for ``min_clients`` summed shares of sigma_i."""
        s2 = self.client_sigma**2
        if math.exp(-(math.pi**2) * s2) == 0.0:
            # the largest term (k = 1) underflows, so every term does: the sum is exactly 0.0
            # (skips ~min_clients exp() calls that every simulated client's plan check paid)
            return 0.0
        return 10.0 * sum(
            math.exp(-2.0 * math.pi**2 * s2 * k / (k + 1)) for k in range(1, min(self.min_clients, 10_000))
        ) + (10.0 * max(0, self.min_clients - 10_000) * math.exp(-(math.pi**2) * s2))

    @property
    def rdp_offset(self) -> float:
        """tau * d: added to every RDP order, hence at most to epsilon, per round."""
        return self.tau * self.dimension

    @property
    def effective_noise_multiplier(self) -> float:
        """sqrt(min_clients) * sigma_i / Delta_2: the Gaussian z whose RDP the sum's RDP matches."""
        return math.sqrt(self.min_clients) * self.client_sigma / self.l2_sensitivity


def add_noise_share(quantized: np.ndarray, plan: DiscreteNoisePlan, rng: np.random.Generator) -> np.ndarray:
    """Add this client's N_Z(0, sigma_i^2) share to a quantized vector, mod 2^bits (same dtype)."""
    q = np.asarray(quantized)
    if q.ndim != 1 or q.size != plan.dimension:
        raise ValueError(f"expected a flat vector of {plan.dimension} integers, got shape {q.shape}")
    if q.dtype.kind != "u":
        raise ValueError(f"expected an unsigned integer vector, got {q.dtype}")
    noise = sample_discrete_gaussian(plan.client_sigma, q.size, rng)
    modulus = 1 << plan.bits
    noised = (q.astype(np.int64) + noise) % modulus
    return noised.astype(q.dtype)


def require_min_survivors(survivors: int, plan: DiscreteNoisePlan) -> None:
    """Refuse to unmask a sum holding fewer noise shares than planned (:class:`RoundFailed`)."""
    if survivors < plan.min_clients:
        raise RoundFailed(
            f"unmask refused: {survivors} clients survived but the noise was planned for at least "
            f"{plan.min_clients}; the sum would carry too little noise for the accounted epsilon"
        )


def survivor_noise_multiplier(plan: DiscreteNoisePlan, survivors: int) -> float:
    """The effective z if only ``survivors`` shares reached the sum: z_eff * sqrt(survivors/min)."""
    return plan.effective_noise_multiplier * math.sqrt(survivors / plan.min_clients)


def bit_noise_plan(clip_count_stddev: float, update: DiscreteNoisePlan) -> DiscreteNoisePlan:
    """The DDG plan of the adaptive-clipping bit coordinate, on the update plan's ring and scale.

    The bit b_i - 1/2 has sensitivity 1/2, so after rounding 0.5*scale + 1 integer units; the
    summed shares carry sigma_b * scale.
    """
    return DiscreteNoisePlan(
        clip_norm=0.5,
        central_stddev=clip_count_stddev,
        scale=update.scale,
        bits=update.bits,
        min_clients=update.min_clients,
        dimension=1,
    )


def accounted_noise(config: PrivacyConfig, discrete: DiscreteNoisePlan | None = None) -> tuple[float, float]:
    """(z, RDP offset) to account for one round run with ``config``.

    Mode off gives z = 0 (non-private). With a discrete plan (distributed: shares; local: one
    whole discrete Gaussian per report, ``min_clients`` 1), z shrinks by the rounding inflation (``scale*C / (scale*C + sqrt(d))``) and the offset is the plan's tau*d.
    With adaptive clipping z is the configured total (update and clip-bit queries composed);
    on the ring, ``discrete`` must carry the update's z_Delta (as ``fedge.agent.core.update.noise_plan``
    builds it) and the two discrete queries are composed with their own rounding inflation.
    """
    z = 0.0 if config.mode == "off" else config.noise_multiplier
    if config.mode not in ("local", "distributed") or discrete is None:
        return z, 0.0
    if config.adaptive is not None:
        bit = bit_noise_plan(config.adaptive.clip_count_stddev, discrete)
        z_total = (discrete.effective_noise_multiplier**-2 + bit.effective_noise_multiplier**-2) ** -0.5
        return z_total, discrete.rdp_offset + bit.rdp_offset
    ratio = discrete.effective_noise_multiplier / (discrete.central_stddev / discrete.clip_norm)
    return z * ratio, discrete.rdp_offset
