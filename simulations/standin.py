"""STAND-IN round engine: plain FedAvg with the zoo's numpy reference models. Not the fedge protocol.

It exists so data sets, partitions, populations and reports can be exercised end to end while the
real driver (agent and coordinator protocol code: DP clipping and noise, SecAgg+ masking) is being
written. It applies no DP noise and no masking and accounts no ε, whatever the config says; the
summary says so. Replace it by passing another :data:`simulations.runner.RoundEngine`.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from agent.training import reference
from agent.training.models import load_spec
from simulations.federation import Federation
from simulations.population import RoundBehaviour

log = logging.getLogger(__name__)

Weights = dict[str, np.ndarray]
DESCRIPTION = "stand-in FedAvg (numpy reference SGD): no DP noise, no SecAgg masking, no ε accounting"


def init_weights(model: str, input_shape: tuple[int, ...], rng: np.random.Generator) -> Weights:
    """Glorot-uniform weights (zero biases) for zoo model ``model``, its input layer sized to ``input_shape``.

    logreg and mlp take any flat input (their first matrix gets ``prod(input_shape)`` rows); cnn
    keeps the zoo's 28x28x1 shapes.
    """
    spec = load_spec(model)
    shapes = dict(zip(spec.weight_names, spec.weight_shapes))
    if model in ("logreg", "mlp"):
        first = spec.weight_names[0]
        shapes[first] = (math.prod(input_shape), *shapes[first][1:])
    out = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            out[name] = np.zeros(shape, np.float32)
        else:
            fan_in, fan_out = math.prod(shape[:-1]), shape[-1]
            lim = math.sqrt(6.0 / (fan_in + fan_out))
            out[name] = rng.uniform(-lim, lim, shape).astype(np.float32)
    return out


def model_input_shape(model: str, weights: Weights) -> tuple[int, ...]:
    """The input shape these weights take (flat for logreg/mlp, the zoo's for cnn)."""
    if model == "cnn":
        return load_spec(model).input_shape
    return (next(iter(weights.values())).shape[0],)


def _flat(model: str, x: np.ndarray) -> np.ndarray:
    return x if model == "cnn" else x.reshape(len(x), -1)


def local_train(model: str, weights: Weights, x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int,
                lr: float, rng: np.random.Generator) -> Weights:
    """Minibatch SGD over the local data for ``epochs`` passes (FedAvg's ClientUpdate)."""
    x = _flat(model, x)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for i in range(0, len(y), batch_size):
            b = order[i : i + batch_size]
            _, weights = reference.sgd_step(model, weights, x[b], y[b], lr)
    return weights


def evaluate(model: str, weights: Weights, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-sample correctness and the mean cross-entropy of the model on ``(x, y)``."""
    correct = np.empty(len(y), bool)
    loss = 0.0
    for i in range(0, len(y), 4096):
        z = reference.logits(model, weights, _flat(model, x[i : i + 4096]))
        part, _ = reference.softmax_xent(z, y[i : i + 4096], z.shape[1])
        loss += float(part) * len(z)
        correct[i : i + 4096] = z.argmax(axis=1) == y[i : i + 4096]
    return correct, loss / max(1, len(y))


class StandInFedAvg:
    """One FedAvg round: every client whose update would reach the server trains locally; sample-weighted mean."""

    description = DESCRIPTION

    def __init__(self, model: str, epochs: int, batch_size: int, lr: float) -> None:
        self.model, self.epochs, self.batch_size, self.lr = model, epochs, batch_size, lr

    def __call__(self, round_: int, weights: Weights, behaviour: RoundBehaviour, federation: Federation,
                 rng: np.random.Generator) -> tuple[Weights, dict[str, float]]:
        """New global weights from the cohort's local updates, and wall-clock seconds per stage."""
        t0 = time.perf_counter()
        total = {k: np.zeros_like(v, dtype=np.float64) for k, v in weights.items()}
        n_total = 0
        for k in behaviour.client_ids[behaviour.submitted_input()]:
            x, y = federation.client(int(k))
            if len(y) == 0:
                continue
            local = local_train(self.model, weights, x, y, self.epochs, self.batch_size, self.lr, rng)
            for name, v in local.items():
                total[name] += len(y) * v
            n_total += len(y)
        t1 = time.perf_counter()
        if n_total == 0:
            log.warning("no client update reached the server; the model is unchanged", extra={"round": round_})
            return weights, {"train": t1 - t0, "aggregate": 0.0}
        new = {k: (v / n_total).astype(np.float32) for k, v in total.items()}
        return new, {"train": t1 - t0, "aggregate": time.perf_counter() - t1}
