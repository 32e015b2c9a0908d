"""Quantile-based adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy, NeurIPS 2021).

Each client reports a clip bit b_i - 1/2 (b_i = 1 if its update norm was <= C), so one client
moves the bit sum by at most 1/2. The server adds N(0, sigma_b^2) to the sum (or the clients add
shares of it under secure aggregation), estimates the unclipped fraction and moves C
geometrically toward the target quantile: C <- C * exp(-eta (b_bar - gamma)).
Both queries are Gaussian mechanisms on the same clients, so their composition is accounted as
one with z = (z_Delta^-2 + (2 sigma_b)^-2)^(-1/2) (the paper's Theorem 1; composing the two
Gaussian events in dp-accounting gives exactly the same RDP); the update gets z_Delta, solved
from the configured total z by :func:`update_noise_multiplier`.
"""

from __future__ import annotations

import math

import numpy as np

from fedge.agent.core.errors import ConfigError


def update_noise_multiplier(total_noise_multiplier: float, clip_count_stddev: float) -> float:
    """z_Delta such that (z_Delta^-2 + (2 sigma_b)^-2)^(-1/2) equals the accounted total z."""
    z, sb = total_noise_multiplier, clip_count_stddev
    inv = z**-2 - (2.0 * sb) ** -2
    if not inv > 0:
        raise ConfigError(
            f"adaptive clipping: 2*sigma_b ({2 * sb}) must exceed the noise multiplier ({z}) "
            "for any noise to be left for the update"
        )
    return inv**-0.5


def effective_noise_multiplier(update_noise_multiplier: float, clip_count_stddev: float) -> float:
    """The single Gaussian z equivalent to the update query (z_Delta) plus the bit query (sigma_b)."""
    return (update_noise_multiplier**-2 + (2.0 * clip_count_stddev) ** -2) ** -0.5


def clip_bit(norm: float, clip_norm: float) -> float:
    """+1/2 if the unclipped norm fit within C, else -1/2 (centred so the sensitivity is 1/2)."""
    return 0.5 if norm <= clip_norm else -0.5


def noised_bit_sum(bits: np.ndarray, clip_count_stddev: float, rng: np.random.Generator) -> float:
    """Central mode: the sum of the clients' clip bits plus N(0, sigma_b^2)."""
    return float(np.sum(bits)) + float(rng.normal(0.0, clip_count_stddev))


def bit_share_stddev(clip_count_stddev: float, min_clients: int) -> float:
    """Distributed mode: one client's share of the clip-bit noise."""
    return clip_count_stddev / math.sqrt(min_clients)


def next_clip_norm(
    clip_norm: float, noisy_bit_sum: float, expected_clients: float, target_quantile: float, learning_rate: float
) -> float:
    """The geometric update: C * exp(-eta * (b_bar - gamma)), b_bar the estimated fraction within C.

    Divide by the *expected* (planned) number of clients, as the paper does, not the actual
    count: the actual count is not privatized.
    """
    if not expected_clients > 0:
        raise ValueError("expected_clients must be > 0")
    b_bar = noisy_bit_sum / expected_clients + 0.5
    return clip_norm * math.exp(-learning_rate * (b_bar - target_quantile))
