"""The device step that clips one update, and float Gaussian noise for float-only simulations.

Local mode: every report carries noise of std z C per coordinate, so each report alone is
(epsilon, delta)-DP. Distributed mode: each of at least ``min_clients`` clients adds a share
of variance (z C)^2 / min_clients so the securely aggregated sum carries (z C)^2. In the real
pipeline (``ring=True``) both modes add *discrete* Gaussian noise on the quantized integer grid
(:mod:`fedge.agent.core.privacy.discrete`, called by ``agent/core/update.py``), never float noise:
the float samplers here leak through their floating-point outputs (Mironov, CCS 2012) and are
only for ``ring=False`` float-only studies.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from fedge.agent.core.privacy.adaptive import clip_bit
from fedge.agent.core.privacy.clip import clip_l2
from fedge.agent.core.privacy.config import PrivacyConfig

log = logging.getLogger(__name__)


def gaussian_noise(shape: tuple[int, ...], stddev: float, rng: np.random.Generator) -> np.ndarray:
    """Independent N(0, stddev^2) noise of ``shape`` in float64."""
    if not (math.isfinite(stddev) and stddev >= 0):
        raise ValueError(f"stddev must be a finite number >= 0, got {stddev}")
    return rng.normal(0.0, stddev, size=shape) if stddev > 0 else np.zeros(shape)


def local_stddev(noise_multiplier: float, clip_norm: float) -> float:
    """Per-coordinate noise of one local-mode report: z * C."""
    return noise_multiplier * clip_norm


def share_stddev(noise_multiplier: float, clip_norm: float, min_clients: int) -> float:
    """One client's share in distributed mode: the sum of ``min_clients`` shares has std z * C."""
    if min_clients < 1:
        raise ValueError(f"min_clients must be >= 1, got {min_clients}")
    return noise_multiplier * clip_norm / math.sqrt(min_clients)


@dataclasses.dataclass(frozen=True)
class Privatized:
    """A device update after clipping and noising, with what a report needs to say about it.

    ``clip_bit`` is the adaptive-clipping bit (+1/2 if the update fit within C, else -1/2),
    before any noise; ``None`` when clipping is fixed. ``noise_stddev`` is what was added here
    (0 in distributed mode on the integer ring, where the noise comes after quantization).
    """

    vector: np.ndarray
    norm: float
    clip_norm: float
    was_clipped: bool
    noise_stddev: float
    clip_bit: float | None


def privatize(
    update: np.ndarray,
    config: PrivacyConfig,
    rng: np.random.Generator,
    *,
    clip_norm: float | None = None,
    ring: bool = True,
    device: str | None = None,
    round_id: int | None = None,
) -> Privatized:
    """Clip ``update`` to L2 norm C, then add this mode's noise (none when mode is off).

    ``clip_norm`` overrides ``config.clip_norm`` (adaptive clipping sends the round's C).
    With ``ring=True`` (the real pipeline, local and distributed) no float noise is added: the
    caller quantizes and then calls :func:`fedge.agent.core.privacy.discrete.add_noise_share`;
    ``ring=False`` adds float noise instead (float-only studies).
    """
    c = config.clip_norm if clip_norm is None else clip_norm
    if config.mode == "off":
        return Privatized(np.asarray(update).copy(), float(np.linalg.norm(update)), c, False, 0.0, None)
    clipped = clip_l2(update, c)
    bit = clip_bit(clipped.norm, c) if config.adaptive is not None else None
    z = config.update_noise_multiplier
    if ring:
        stddev = 0.0
    elif config.mode == "local":
        stddev = local_stddev(z, c)
    else:
        stddev = share_stddev(z, c, config.min_clients)
    vec = clipped.vector
    if stddev > 0:
        vec = (vec.astype(np.float64) + gaussian_noise(vec.shape, stddev, rng)).astype(vec.dtype)
    log.debug(
        "update privatized: norm %.4g clip %.4g noise std %.4g",
        clipped.norm,
        c,
        stddev,
        extra={"device": device, "round": round_id},
    )
    return Privatized(vec, clipped.norm, c, clipped.was_clipped, stddev, bit)
