"""From a trained delta to the integer vector a device uploads, and from their sum back to FedAvg.

Device side (:func:`encode_update`): clip the delta (:mod:`fedge.agent.core.privacy`), weight
it, append the weight as one extra coordinate (so the coordinator learns only the total
weight), clip to the quantization range, quantize with stochastic rounding and add discrete
Gaussian noise on the integer grid: in distributed DP mode this client's share, in local mode
the whole N_Z(0, (z C scale)^2), after which a local report is clamped to the plan's box (post-
processing). No float noise is ever added, so the floating-point attacks on Gaussian samplers
(Mironov 2012) do not apply. The same vector is masked for secure aggregation or sent in the
clear, so both paths share one arithmetic.

Vector layout (length d + 1, or d + 2 with adaptive clipping):

    [ weight * delta_1 .. weight * delta_d | clip bit (adaptive only) | weight ]

The weight stays last. With adaptive clipping (Andrew et al. 2021) the clip bit b_i - 1/2
(b_i = [norm before clipping <= the round's C]) is second to last, so under SecAgg+ the
coordinator learns only the noisy *sum* of bits, never one device's bit. Its noise: in
distributed mode each device adds a discrete-Gaussian share sigma_b * scale / sqrt(min_clients)
(integer units) so the sum carries N_Z(0, (sigma_b * scale)^2); in local mode each device adds
the whole N_Z(0, (sigma_b * scale)^2) to its own quantized bit, so each report alone is the
accounted mechanism (the sum is noisier than central DP needs: local mode's price).
With adaptive clipping off the vector is exactly d + 1 long, as before.

Coordinator side (:func:`decode_aggregate`): dequantize the (unmasked) sum and divide by the
total weight: FedAvg. With DP on, every weight is 1 and the divisor is the plan's fixed
``dp_denominator`` (DP-FedAvg), so the released mean does not depend on how many survived.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from fedge.agent.core.errors import ProtocolError
from fedge.agent.core.messages.rounds import RoundPlan
from fedge.agent.core.privacy.config import DpMode
from fedge.agent.core.privacy.discrete import DiscreteNoisePlan, add_noise_share, bit_noise_plan
from fedge.agent.core.privacy.noise import privatize
from fedge.agent.core.secagg.quantize import dequantize_sum, max_abs_int, quantize, to_signed


def extra_coordinates(plan: RoundPlan) -> int:
    """Coordinates after the model's d: the weight, plus the clip bit with adaptive clipping."""
    return 2 if plan.privacy.adaptive is not None else 1


def noise_plan(plan: RoundPlan, dimension: int) -> DiscreteNoisePlan:
    """The discrete-Gaussian plan for a round's ``dimension`` model coordinates.

    Its noise is z_Delta * C: all of z, or with adaptive clipping what the bit query leaves.
    Distributed mode splits it over ``plan.privacy.min_clients`` shares; local mode puts all of it on
    each report (one "share": ``min_clients`` 1, so tau = 0 and the report alone is a discrete
    Gaussian mechanism with the same sensitivity bound, scale*C + sqrt(d)).
    """
    p = plan.privacy
    z = p.update_noise_multiplier if p.mode != DpMode.OFF else p.noise_multiplier
    return DiscreteNoisePlan(
        clip_norm=p.clip_norm,
        central_stddev=z * p.clip_norm,
        scale=plan.quantization.scale,
        bits=plan.quantization.bits,
        min_clients=p.min_clients if p.mode == DpMode.DISTRIBUTED else 1,
        dimension=dimension,
    )


def client_weight(num_examples: int, plan: RoundPlan) -> float:
    """FedAvg weight in (0, 1]: capped example count over the cap, or 1 when uniform."""
    if plan.weighting == "uniform":
        return 1.0
    return min(max(num_examples, 1), plan.example_cap) / plan.example_cap


@dataclasses.dataclass(frozen=True)
class EncodedUpdate:
    """The integer vector to upload (length d + 1, or d + 2 with adaptive clipping) and what the
    device may log about it (``clip_bit``: +-1/2 before noise, None when C is fixed)."""

    vector: np.ndarray
    weight: float
    norm: float
    was_clipped: bool
    clip_bit: float | None = None


def encode_update(
    delta: np.ndarray,
    num_examples: int,
    plan: RoundPlan,
    rng: np.random.Generator,
    staleness_weight: float = 1.0,
    *,
    noise_share: bool = True,
) -> EncodedUpdate:
    """Clip, noise, weight, quantize (and in distributed mode noise in the ring) one delta.

    ``staleness_weight`` s in (0, 1] (buffered aggregation, ``coordinator/rounds/staleness.py``)
    scales the clipped delta only, not the weight coordinate: the mean becomes sum(s w delta) / sum(w),
    FedBuff's sum(s delta) / K with uniform weights, and a scaled update stays within C.

    ``noise_share=False`` (an audit canary run by the coordinator, whose randomness the coordinator
    knows) adds no distributed-DP share, to the update nor to the clip bit: the round's noise is
    planned over the real devices alone, so a canary's share would count for nothing against the
    coordinator. Local mode's noise is each report's own and is always added.
    """
    if not 0 < staleness_weight <= 1:
        raise ProtocolError(f"staleness weight must be in (0, 1], got {staleness_weight!r}")
    delta = np.asarray(delta, dtype=np.float64)
    if delta.ndim != 1 or not np.all(np.isfinite(delta)):
        raise ProtocolError("update must be a flat vector of finite numbers")
    priv = privatize(delta, plan.privacy, rng, ring=True)
    weight = client_weight(num_examples, plan)
    d, extra = delta.size, extra_coordinates(plan)
    vec = np.empty(d + extra, dtype=np.float64)
    vec[:d] = priv.vector * (weight * staleness_weight)
    vec[-1] = weight
    if priv.clip_bit is not None:
        vec[d] = priv.clip_bit
    box = plan.quantization
    np.clip(vec, -box.range, box.range, out=vec)
    q = quantize(vec, box.scale, box.bits, rng)
    if plan.privacy.mode == DpMode.LOCAL or (plan.privacy.mode == DpMode.DISTRIBUTED and noise_share):
        update_plan = noise_plan(plan, d)
        parts = [add_noise_share(q[:d], update_plan, rng)]
        if priv.clip_bit is not None and plan.privacy.adaptive is not None:
            sigma_b = plan.privacy.adaptive.clip_count_stddev
            parts.append(add_noise_share(q[d : d + 1], bit_noise_plan(sigma_b, update_plan), rng))
        q = np.concatenate(parts + [q[-1:]])
        if plan.privacy.mode == DpMode.LOCAL:
            q = clamp_to_box(q, plan)
    return EncodedUpdate(vector=q, weight=weight, norm=priv.norm, was_clipped=priv.was_clipped, clip_bit=priv.clip_bit)


def clamp_to_box(q: np.ndarray, plan: RoundPlan) -> np.ndarray:
    """A locally noised report clamped to the plan's integer box +-ceil(range * scale), so the
    coordinator's range check accepts it (post-processing of the noised report: no privacy cost)."""
    box = plan.quantization
    bound = max_abs_int(box.range, box.scale)
    signed = np.clip(to_signed(q, box.bits), -bound, bound)
    return (signed & np.int64((1 << box.bits) - 1)).astype(q.dtype)


@dataclasses.dataclass(frozen=True)
class Aggregate:
    """FedAvg of one round: the mean delta and the total weight it averaged over, and with
    adaptive clipping the noisy sum of the clip bits (sum of b_i - 1/2 plus noise)."""

    mean_delta: np.ndarray
    total_weight: float
    clip_bit_sum: float | None = None


def decode_aggregate(total: np.ndarray, plan: RoundPlan, dimension: int) -> Aggregate:
    """Dequantize the sum of encoded updates and divide by the summed weight."""
    length = dimension + extra_coordinates(plan)
    if total.ndim != 1 or total.size != length:
        raise ProtocolError(f"aggregate has {total.size} coordinates, expected {length}")
    s = dequantize_sum(total, plan.quantization.scale, plan.quantization.bits)
    weight = float(s[-1])
    if not (math.isfinite(weight) and weight > 0):
        raise ProtocolError(f"aggregate weight {weight} is not positive")
    denominator = plan.dp_denominator if plan.privacy.mode != DpMode.OFF else weight
    bits = float(s[dimension]) if plan.privacy.adaptive is not None else None
    return Aggregate(
        mean_delta=(s[:dimension] / denominator).astype(np.float32), total_weight=weight, clip_bit_sum=bits
    )
