"""Staleness weights of buffered asynchronous aggregation (FedBuff, Nguyen et al., AISTATS 2022).

An update trained on model version b and aggregated into the update applied to version t has
staleness tau = t - b. Its delta is scaled by s(tau) on the device, after clipping and before
quantization and masking, so the SecAgg+ sum is exactly the weighted sum. Every s is in (0, 1]:
a weighted, clipped update never exceeds the clip norm, so DP sensitivity is unchanged.

- ``poly:A``: s = 1 / (1 + tau)^A (FedBuff's polynomial, FLSim's ``PolynomialStalenessWeight``;
  A = 0.5 is FedBuff's choice and fedge's default),
- ``constant``: s = 1 (no down-weighting; staleness is only bounded by ``--max-staleness``),
- ``hinge:A,B``: s = 1 for tau <= B, else 1 / (A (tau - B) + 1) (FedBuff's hinge).

NVIDIA FLARE's edge FedBuff uses 1 / (1 + tau^0.5), which halves an update that is a single
version old. Staleness is large in practice: with C devices training and groups of K, about C / K
versions are made while a device trains, and its target also counts the groups still in their
SecAgg+ stages; measured on the simulated clock (C = 12, K = 5) the mean was 6.5-7.2. There
1 / (1 + tau)^0.5 keeps 0.36 of an update, and it reached the synchronous accuracy in half the
time on 6 of 8 seeds, against 1 of 8 for 1 / (1 + tau) and 0 of 8 for ``constant``
(docs/simulations.md, "Buffered against synchronous").
"""

from __future__ import annotations

import dataclasses
import math

from fedge.agent.core.errors import ConfigError

KINDS = ("poly", "constant", "hinge")


@dataclasses.dataclass(frozen=True)
class Staleness:
    """One staleness function: ``kind`` and its parameters ``a`` (and ``b`` for the hinge)."""

    kind: str = "poly"
    a: float = 0.5
    b: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"--staleness: expected one of {', '.join(KINDS)}, got {self.kind!r}")
        if not (math.isfinite(self.a) and self.a >= 0) or not (math.isfinite(self.b) and self.b >= 0):
            raise ConfigError(f"--staleness {self.spec}: parameters must be finite and >= 0")

    @property
    def spec(self) -> str:
        """The flag's spelling of this function."""
        if self.kind == "constant":
            return "constant"
        if self.kind == "poly":
            return f"poly:{self.a:g}"
        return f"hinge:{self.a:g},{self.b:g}"

    def weight(self, tau: int) -> float:
        """s(tau) in (0, 1] for a staleness tau >= 0."""
        if tau < 0:
            raise ValueError(f"staleness must be >= 0, got {tau}")
        if self.kind == "constant":
            return 1.0
        if self.kind == "poly":
            return float((1.0 + tau) ** -self.a)
        return 1.0 if tau <= self.b else float(1.0 / (self.a * (tau - self.b) + 1.0))


def parse_staleness(spec: str) -> Staleness:
    """``poly:0.5``, ``constant`` or ``hinge:A,B`` (ConfigError naming the flag otherwise)."""
    kind, _, rest = spec.strip().partition(":")
    try:
        if kind == "constant" and not rest:
            return Staleness("constant", 0.0)
        if kind == "poly":
            return Staleness("poly", float(rest))
        if kind == "hinge":
            a, b = rest.split(",")
            return Staleness("hinge", float(a), float(b))
    except ValueError:
        pass
    raise ConfigError(f"--staleness {spec!r}: expected poly:A, constant or hinge:A,B (e.g. poly:0.5)")
