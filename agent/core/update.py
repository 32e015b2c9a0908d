"""From a trained delta to the integer vector a device uploads, and from their sum back to FedAvg.

Device side (:func:`encode_update`): clip and noise the delta (:mod:`agent.core.privacy`),
weight it, append the weight as one extra coordinate (so the coordinator learns only the total
weight), clip to the quantization range, quantize with stochastic rounding and, in distributed
DP mode, add this client's discrete-Gaussian noise share in the integer ring. The same vector is
masked for secure aggregation or sent in the clear, so both paths share one arithmetic.

Coordinator side (:func:`decode_aggregate`): dequantize the (unmasked) sum and divide by the
total weight: FedAvg. With DP on, every weight is 1 and the divisor is the plan's fixed
``dp_denominator`` (DP-FedAvg), so the released mean does not depend on how many survived.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from agent.core.errors import ProtocolError
from agent.core.messages.rounds import RoundPlan
from agent.core.privacy.config import PrivacyConfig
from agent.core.privacy.discrete import DiscreteNoisePlan, add_noise_share
from agent.core.privacy.noise import privatize
from agent.core.secagg.quantize import dequantize_sum, quantize


def privacy_config(plan: RoundPlan) -> PrivacyConfig:
    """The device's privacy configuration for a round, as the plan states it."""
    return PrivacyConfig(
        mode=plan.dp_mode,
        clip_norm=plan.clip_norm,
        noise_multiplier=plan.noise_multiplier if plan.dp_mode != "off" else 1.0,
        delta=plan.delta,
        min_clients=plan.noise_clients,
    ).validate(secagg_enabled=plan.secagg)


def noise_plan(plan: RoundPlan, dimension: int) -> DiscreteNoisePlan:
    """The distributed discrete-Gaussian plan for a round's ``dimension`` model coordinates."""
    return DiscreteNoisePlan(
        clip_norm=plan.clip_norm,
        central_stddev=plan.noise_multiplier * plan.clip_norm,
        scale=plan.quant_scale,
        bits=plan.quant_bits,
        min_clients=plan.noise_clients,
        dimension=dimension,
    )


def client_weight(num_examples: int, plan: RoundPlan) -> float:
    """FedAvg weight in (0, 1]: capped example count over the cap, or 1 when uniform."""
    if plan.weighting == "uniform":
        return 1.0
    return min(max(num_examples, 1), plan.example_cap) / plan.example_cap


@dataclasses.dataclass(frozen=True)
class EncodedUpdate:
    """The integer vector to upload (length d + 1) and what the device may log about it."""

    vector: np.ndarray
    weight: float
    norm: float
    was_clipped: bool


def encode_update(delta: np.ndarray, num_examples: int, plan: RoundPlan, rng: np.random.Generator) -> EncodedUpdate:
    """Clip, noise, weight, quantize (and in distributed mode noise in the ring) one delta."""
    delta = np.asarray(delta, dtype=np.float64)
    if delta.ndim != 1 or not np.all(np.isfinite(delta)):
        raise ProtocolError("update must be a flat vector of finite numbers")
    priv = privatize(delta, privacy_config(plan), rng, ring=True)
    weight = client_weight(num_examples, plan)
    vec = np.empty(delta.size + 1, dtype=np.float64)
    vec[:-1] = priv.vector * weight
    vec[-1] = weight
    np.clip(vec, -plan.quant_range, plan.quant_range, out=vec)
    q = quantize(vec, plan.quant_scale, plan.quant_bits, rng)
    if plan.dp_mode == "distributed":
        q = np.concatenate([add_noise_share(q[:-1], noise_plan(plan, delta.size), rng), q[-1:]])
    return EncodedUpdate(vector=q, weight=weight, norm=priv.norm, was_clipped=priv.was_clipped)


@dataclasses.dataclass(frozen=True)
class Aggregate:
    """FedAvg of one round: the mean delta and the total weight it averaged over."""

    mean_delta: np.ndarray
    total_weight: float


def decode_aggregate(total: np.ndarray, plan: RoundPlan, dimension: int) -> Aggregate:
    """Dequantize the sum of encoded updates and divide by the summed weight."""
    if total.ndim != 1 or total.size != dimension + 1:
        raise ProtocolError(f"aggregate has {total.size} coordinates, expected {dimension + 1}")
    s = dequantize_sum(total, plan.quant_scale, plan.quant_bits)
    weight = float(s[-1])
    if not (math.isfinite(weight) and weight > 0):
        raise ProtocolError(f"aggregate weight {weight} is not positive")
    denominator = plan.dp_denominator if plan.dp_mode != "off" else weight
    return Aggregate(mean_delta=(s[:-1] / denominator).astype(np.float32), total_weight=weight)
