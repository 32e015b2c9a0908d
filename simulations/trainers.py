"""The simulated devices' local trainer, and evaluation of the global model.

Local training is the zoo's :class:`fedge.agent.training.trainer.Trainer` (TFLite) when the data fits a
zoo model. For flat data of another width (Synthetic has 60 features; the zoo's logreg and mlp
take 64) :class:`ReferenceTrainer` runs the zoo's numpy reference formulas
(:mod:`fedge.agent.training.reference`) with the first layer sized to the data, and says so, unless the
zoo holds a model of that width (``<model><features>``, e.g. ``mlp60``), which is then used.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Protocol

import numpy as np

from fedge.agent.training import reference
from fedge.agent.training.models import MODELS_DIR, ModelSpec, load_spec
from fedge.agent.training.trainer import Trainer, TrainResult
from fedge.simulations.datasets import Dataset, check_model_fits

log = logging.getLogger(__name__)

#: Models whose first layer is dense, so a reference copy can take any number of flat features.
FLAT_MODELS = ("logreg", "mlp")


class LocalTrainer(Protocol):
    """What the engine needs of a trainer; :class:`Trainer` and :class:`ReferenceTrainer` both fit."""

    spec: ModelSpec

    def initial_weights(self) -> np.ndarray: ...

    def train(
        self,
        global_weights: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int,
        batch_size: int,
        learning_rate: float,
        rng: np.random.Generator,
        prox_mu: float = 0.0,
    ) -> TrainResult: ...

    def logits(self, weights: np.ndarray, x: np.ndarray, batch_size: int = 256) -> np.ndarray: ...


class ReferenceTrainer:
    """A zoo model's numpy reference behind the :class:`Trainer` interface, for input widths the zoo lacks."""

    def __init__(self, spec: ModelSpec, rng: np.random.Generator) -> None:
        self.spec = spec
        self._initial = spec.flatten(_glorot(spec, rng))

    def initial_weights(self) -> np.ndarray:
        return self._initial.copy()

    def train(
        self,
        global_weights: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int,
        batch_size: int,
        learning_rate: float,
        rng: np.random.Generator,
        prox_mu: float = 0.0,
    ) -> TrainResult:
        """Shuffled mini-batch SGD, as :meth:`Trainer.train` does it, on the numpy formulas (with
        FedProx's proximal step w -= lr * mu * (w - w_global) after each step when ``prox_mu`` > 0)."""
        t0 = time.perf_counter()
        start = np.asarray(global_weights, np.float32)
        w = {k: v.copy() for k, v in self.spec.split(start).items()}
        x = np.asarray(x, np.float32).reshape(len(x), -1)
        steps, loss = 0, math.nan
        for _ in range(epochs):
            order = rng.permutation(len(y))
            total = 0.0
            for lo in range(0, len(y), batch_size):
                b = order[lo : lo + batch_size]
                before = w
                batch_loss, w = reference.sgd_step(self.spec.name, w, x[b], y[b], learning_rate)
                if prox_mu > 0:
                    pull = np.float32(learning_rate * prox_mu)
                    g0 = self.spec.split(start)
                    w = {k: (v - pull * (before[k] - g0[k])).astype(np.float32) for k, v in w.items()}
                total += batch_loss * len(b)
                steps += 1
            loss = total / max(1, len(y))
        return TrainResult(
            self.spec.flatten(w) - start, len(y), steps, float(epochs), loss, None, time.perf_counter() - t0
        )

    def logits(self, weights: np.ndarray, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        w = self.spec.split(np.asarray(weights, np.float32))
        x = np.asarray(x, np.float32).reshape(len(x), -1)
        parts = [reference.logits(self.spec.name, w, x[lo : lo + batch_size]) for lo in range(0, len(x), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.spec.num_classes), np.float32)


def _glorot(spec: ModelSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Glorot-uniform matrices, zero biases."""
    out = {}
    for name, shape in zip(spec.weight_names, spec.weight_shapes):
        if len(shape) == 1:
            out[name] = np.zeros(shape, np.float32)
        else:
            lim = math.sqrt(6.0 / (math.prod(shape[:-1]) + shape[-1]))
            out[name] = rng.uniform(-lim, lim, shape).astype(np.float32)
    return out


def resized_spec(spec: ModelSpec, features: int) -> ModelSpec:
    """The spec of a flat zoo model with its first weight matrix taking ``features`` inputs."""
    shapes = list(spec.weight_shapes)
    shapes[0] = (features, *shapes[0][1:])
    return dataclasses.replace(
        spec,
        input_shape=(features,),
        weight_shapes=tuple(shapes),
        num_params=sum(math.prod(s) for s in shapes),
        architecture=f"{spec.architecture} (first layer resized to {features} inputs)",
    )


def make_trainer(model: str, data: Dataset, rng: np.random.Generator) -> tuple[LocalTrainer, str]:
    """The trainer for ``model`` on ``data`` and a line saying which one: the zoo's TFLite model if it fits."""
    spec = load_spec(model)
    features = math.prod(data.input_shape)
    if model in FLAT_MODELS and spec.example_size != features and (MODELS_DIR / f"{model}{features}.tflite").exists():
        spec = load_spec(f"{model}{features}")  # the zoo's copy for this input width (e.g. mlp60)
    if model in FLAT_MODELS and spec.example_size != features:
        r = resized_spec(spec, features)
        check_model_fits(model, r.input_shape, r.num_classes, data, flat=True)
        log.warning(
            "the zoo's %s takes %s inputs and %s has %s: training a numpy reference copy sized to the data",
            model,
            spec.input_shape,
            data.name,
            data.input_shape,
        )
        return ReferenceTrainer(r, rng), f"numpy reference of {r.architecture}; the zoo has no {features}-input {model}"
    check_model_fits(model, spec.input_shape, spec.num_classes, data, flat=model in FLAT_MODELS)
    return Trainer(spec), f"zoo TFLite {spec.name}: {spec.architecture}"


def evaluate(trainer: LocalTrainer, weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-sample correctness and mean cross-entropy of ``weights`` on ``(x, y)``."""
    if len(y) == 0:
        return np.zeros(0, bool), math.nan
    z = trainer.logits(weights, x).astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z - m).sum(axis=1)) + m[:, 0]
    return z.argmax(axis=1) == y, float(np.mean(lse - z[np.arange(len(y)), y]))
