"""Server optimizers after Reddi et al., "Adaptive Federated Optimization" (ICLR 2021).

Each round's aggregate is the mean client delta Delta_t (new local weights minus the global
ones). FedAvg applies ``x + eta * Delta_t`` (eta = 1 is plain FedAvg); FedAvgM keeps momentum;
FedAdagrad, FedAdam and FedYogi keep a second moment per coordinate (Algorithm 2 of the paper,
with Delta_t in the role of the negative gradient). They act on the released mean only, so they
are post-processing: SecAgg+ and DP are untouched.

The state (moments, step count) is plain float64 arrays that :meth:`ServerOptimizer.state`
returns and :meth:`ServerOptimizer.restore` takes back, so a service can persist it across a
restart without pickling.
"""

from __future__ import annotations

import dataclasses
import enum
import math

import numpy as np

from fedge.agent.core.errors import ConfigError


class ServerOptKind(enum.StrEnum):
    """Which update rule the server applies to the mean delta."""

    FEDAVG = "fedavg"
    FEDAVGM = "fedavgm"
    FEDADAGRAD = "fedadagrad"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"


@dataclasses.dataclass(frozen=True)
class ServerOptConfig:
    """The rule and its hyper-parameters. Defaults for the adaptive rules follow the paper's
    recommendations (beta1 0.9, beta2 0.99, tau 1e-3); ``learning_rate`` is the server's eta."""

    kind: ServerOptKind = ServerOptKind.FEDAVG
    learning_rate: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ServerOptKind(self.kind))
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"server learning rate: expected a number > 0, got {self.learning_rate!r}")
        for name in ("momentum", "beta1", "beta2"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ConfigError(f"server optimizer {name}: expected a number in [0, 1), got {v!r}")
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ConfigError(f"server optimizer tau: expected a number > 0, got {self.tau!r}")


class ServerOptimizer:
    """Applies one rule to successive mean deltas; holds its moments between rounds."""

    def __init__(self, config: ServerOptConfig) -> None:
        self.config = config
        self._m: np.ndarray | None = None
        self._v: np.ndarray | None = None
        self.steps = 0

    def apply(self, weights: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        """The new global weights (float32) after one round whose mean delta is ``mean_delta``."""
        c = self.config
        x = np.asarray(weights, np.float64)
        d = np.asarray(mean_delta, np.float64)
        if x.shape != d.shape or not np.all(np.isfinite(d)):
            raise ConfigError(f"server optimizer: delta of shape {d.shape} (finite?) for weights of shape {x.shape}")
        if c.kind is ServerOptKind.FEDAVG:
            self.steps += 1
            # in float32, as the round engine adds: at rate 1 this is exactly its new weights
            return (
                np.asarray(weights, np.float32) + np.float32(c.learning_rate) * np.asarray(mean_delta, np.float32)
            ).astype(np.float32)
        if c.kind is ServerOptKind.FEDAVGM:
            self._m = d if self._m is None else c.momentum * self._m + d
            step = self._m
        else:
            m = np.zeros_like(d) if self._m is None else self._m
            v = np.full_like(d, c.tau**2) if self._v is None else self._v
            m = c.beta1 * m + (1 - c.beta1) * d
            d2 = d * d
            if c.kind is ServerOptKind.FEDADAGRAD:
                v = v + d2
            elif c.kind is ServerOptKind.FEDADAM:
                v = c.beta2 * v + (1 - c.beta2) * d2
            else:  # FedYogi: v moves toward d^2 by at most (1 - beta2) d^2, sign-controlled
                v = v - (1 - c.beta2) * d2 * np.sign(v - d2)
            self._m, self._v = m, v
            step = m / (np.sqrt(v) + c.tau)
        self.steps += 1
        return (x + c.learning_rate * step).astype(np.float32)

    def state(self) -> dict[str, list[float] | int | None]:
        """The moments and step count as plain lists (JSON-ready)."""
        return {
            "steps": self.steps,
            "m": None if self._m is None else self._m.tolist(),
            "v": None if self._v is None else self._v.tolist(),
        }

    def restore(self, state: dict[str, list[float] | int | None]) -> None:
        """Take back what :meth:`state` returned."""
        steps, m, v = state.get("steps"), state.get("m"), state.get("v")
        if not isinstance(steps, int) or steps < 0:
            raise ConfigError("server optimizer state: steps must be an integer >= 0")
        self.steps = steps
        self._m = None if m is None else np.asarray(m, np.float64)
        self._v = None if v is None else np.asarray(v, np.float64)
