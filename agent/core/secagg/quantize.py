"""Fixed-point quantization for SecAgg: signed two's complement modulo 2^bits, stochastic rounding.

Contract (the DP step relies on it): inputs are already clipped to [-r, r]; ``quantize`` maps
x to round_stochastic(x * scale) stored mod 2^bits in uint32; sums of such vectors are exact
modulo 2^bits and :func:`dequantize_sum` reads them back signed, which is correct while
|sum| < 2^(bits-1). :func:`check_no_wrap` refuses configurations where n clients could wrap.
"""

from __future__ import annotations

import math

import numpy as np

from fedge.agent.core.errors import ConfigError


def _check_bits(bits: int) -> None:
    if type(bits) is not int or not 2 <= bits <= 32:
        raise ConfigError(f"quantization bits {bits!r} must be an int in 2..32")


def max_abs_int(clip_range: float, scale: float) -> int:
    """The largest |quantized value| of an input clipped to [-clip_range, clip_range]."""
    return int(math.ceil(clip_range * scale))


def check_no_wrap(n: int, max_abs: int, bits: int) -> None:
    """Raise :class:`ConfigError` if the sum of n values of magnitude <= max_abs could wrap."""
    _check_bits(bits)
    if n < 1 or max_abs < 0:
        raise ConfigError(f"invalid wrap check n={n} max_abs={max_abs}")
    limit = 2 ** (bits - 1) - 1
    if n * max_abs > limit:
        raise ConfigError(
            f"{n} clients x max |value| {max_abs} = {n * max_abs} exceeds the signed {bits}-bit range {limit}: "
            "the sum could wrap; lower the scale or raise the bits"
        )


def choose_scale(clip_range: float, bits: int, n: int, headroom: float = 1.0) -> float:
    """The largest scale for which n inputs in [-clip_range, clip_range] cannot wrap.

    ``headroom`` >= 1 divides the available range (e.g. 2.0 leaves room for DP noise).
    """
    _check_bits(bits)
    if not clip_range > 0 or n < 1 or not headroom >= 1.0:
        raise ConfigError(f"invalid scale request clip_range={clip_range} n={n} headroom={headroom}")
    per_client = (2 ** (bits - 1) - 1) / (n * headroom)
    scale = (math.floor(per_client) - 1) / clip_range  # ceil(r*scale) <= floor(per_client)
    if scale <= 0:
        raise ConfigError(f"{bits} bits cannot hold the sum of {n} clients at any scale")
    check_no_wrap(n, max_abs_int(clip_range, scale), bits)
    return scale


def quantize(x: np.ndarray, scale: float, bits: int, rng: np.random.Generator) -> np.ndarray:
    """Stochastically round x*scale (unbiased) and store it mod 2^bits as uint32."""
    _check_bits(bits)
    y = np.asarray(x, dtype=np.float64) * scale
    if not np.isfinite(y).all():
        raise ConfigError("cannot quantize non-finite values")
    lo = np.floor(y)
    q = lo + (rng.random(y.shape) < (y - lo))
    if q.size and np.abs(q).max() >= 2 ** (bits - 1):
        raise ConfigError(f"values exceed the signed {bits}-bit range at scale {scale}")
    mask = np.int64((1 << bits) - 1)
    return (q.astype(np.int64) & mask).astype(np.uint32)


def to_signed(s: np.ndarray, bits: int) -> np.ndarray:
    """Read values mod 2^bits as signed two's complement int64."""
    _check_bits(bits)
    v = np.asarray(s).astype(np.int64) & np.int64((1 << bits) - 1)
    return np.where(v >= (1 << (bits - 1)), v - (1 << bits), v)


def dequantize_sum(s: np.ndarray, scale: float, bits: int) -> np.ndarray:
    """The float64 value of a sum of quantized vectors (signed interpretation / scale)."""
    return to_signed(s, bits).astype(np.float64) / scale
