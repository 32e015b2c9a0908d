"""L2 clipping of a device update: the clipped vector's norm never exceeds the clip norm C."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Clipped:
    """A clipped update, the norm it had before clipping, and whether it was scaled down."""

    vector: np.ndarray
    norm: float
    was_clipped: bool


def l2_norm(x: np.ndarray) -> float:
    """The L2 norm of ``x``, accumulated in float64."""
    return float(np.linalg.norm(np.asarray(x, dtype=np.float64).ravel()))


def clip_l2(x: np.ndarray, clip_norm: float) -> Clipped:
    """Scale ``x`` down to L2 norm ``clip_norm`` if it is longer; keep its dtype and shape.

    Scaling in float64 and casting back can overshoot C by an ulp, so the factor is nudged down
    until the result, as stored, is within C. Non-finite input is refused: its norm is undefined.
    """
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    arr = np.asarray(x)
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("update holds NaN or infinity; refusing to clip it")
    norm = l2_norm(arr)
    if norm <= clip_norm:
        return Clipped(arr.copy(), norm, False)
    factor = clip_norm / norm
    out = (arr.astype(np.float64) * factor).astype(arr.dtype)
    while l2_norm(out) > clip_norm:
        factor *= 1 - 4 * float(np.finfo(arr.dtype).eps)
        out = (arr.astype(np.float64) * factor).astype(arr.dtype)
    return Clipped(out, norm, True)
