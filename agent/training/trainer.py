"""Local training on the TFLite interpreter: E epochs of shuffled mini-batches, then the weight delta.

One :class:`Trainer` holds one interpreter and serves any number of clients (the simulator
reuses it for thousands per round): every call starts by setting the weights it is given.
Weights cross this API as one flat float32 vector in the spec's fixed order, which is what
FedAvg, clipping and secure aggregation work on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedge.agent.core.errors import ConfigError, TrainingError
from fedge.agent.core.profiles import ComputeLimits
from fedge.agent.training.models import ModelSpec
from fedge.agent.training.runtime import load_interpreter

log = logging.getLogger(__name__)

#: A loss this large has overflowed: tflite-runtime's builtin kernels saturate at float32's largest
#: value where XNNPACK's give inf, and either way the weights have diverged.
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: ``TrainResult.stopped`` reasons.
STOP_TIME_CAP = "time cap"
STOP_ABORTED = "aborted"


@dataclass(frozen=True)
class TrainResult:
    """Outcome of local training; ``delta`` is new minus global weights (flat float32).

    ``loss`` is the example-weighted mean batch loss of the last epoch that ran (NaN if no step
    ran). ``stopped`` is None when every epoch finished, else why training stopped early; the
    delta then holds the steps done so far and the caller decides whether to send it.
    """

    delta: np.ndarray
    num_examples: int
    steps: int
    epochs: float
    loss: float
    stopped: str | None
    seconds: float


@dataclass(frozen=True)
class EvalResult:
    """Mean loss and accuracy over held-out examples (a regression's accuracy is NaN)."""

    loss: float
    accuracy: float
    num_examples: int


class Trainer:
    """Trains and evaluates one zoo model on one interpreter (not thread-safe: one per thread)."""

    def __init__(self, spec: ModelSpec, num_threads: int = 1, runtime: str | None = None):
        self.spec = spec
        self._interp = load_interpreter(spec.path, num_threads=num_threads, runtime=runtime)
        try:
            self._train = self._interp.get_signature_runner("train")
            self._infer = self._interp.get_signature_runner("infer")
            self._get = self._interp.get_signature_runner("get_weights")
            self._set = self._interp.get_signature_runner("set_weights")
        except ValueError as e:
            raise TrainingError(f"{spec.path}: missing a train/infer/get_weights/set_weights signature ({e})") from None
        self._initial = self.flat_weights()

    def flat_weights(self) -> np.ndarray:
        """The interpreter's current weights as one flat float32 vector."""
        return self.spec.flatten(self._get())

    def set_flat_weights(self, vec: np.ndarray) -> None:
        """Load a flat float32 vector (fixed weight order) into the interpreter."""
        vec = np.asarray(vec, dtype=np.float32)
        if not np.all(np.isfinite(vec)):
            raise TrainingError(f"{self.spec.name}: refusing non-finite weights")
        parts = {k: np.ascontiguousarray(v) for k, v in self.spec.split(vec).items()}
        self._set(**parts)

    def initial_weights(self) -> np.ndarray:
        """The weights the model file was generated with (seeded, reproducible)."""
        return self._initial.copy()

    def _check_data(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x)
        y = np.asarray(y)
        shape = self.spec.input_shape
        if x.ndim == 2 and x.shape[1] == self.spec.example_size and x.shape[1:] != shape:
            x = x.reshape(len(x), *shape)
        if x.shape[1:] != shape:
            raise TrainingError(f"{self.spec.name}: examples have shape {x.shape[1:]}, the model takes {shape}")
        if not self.spec.class_labels:  # a built model with float targets (binary cross-entropy, MSE)
            if y.shape != (len(x), self.spec.num_classes):
                raise TrainingError(
                    f"{self.spec.name}: {len(x)} examples need targets of shape "
                    f"{(len(x), self.spec.num_classes)}, got {y.shape}"
                )
            return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.float32)
        if y.shape != (len(x),):
            raise TrainingError(f"{self.spec.name}: {len(x)} examples but labels of shape {y.shape}")
        if len(y) and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= self.spec.num_classes):
            raise TrainingError(f"{self.spec.name}: labels must be integers in [0, {self.spec.num_classes})")
        return np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int32)

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
        max_seconds: float | None = None,
        should_abort: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        prox_mu: float = 0.0,
    ) -> TrainResult:
        """Run ``epochs`` of shuffled mini-batch SGD from ``global_weights`` and return the delta.

        The cap and the abort signal are checked before every step, so training stops within
        one step of either. A non-finite loss, or one saturated at float32's largest value, raises
        TrainingError (the update is useless).

        ``prox_mu`` > 0 adds FedProx's proximal term (mu/2)||w - w_global||^2 (Li et al., MLSys
        2020) exactly: after each TFLite step w' = w - lr grad f(w), the weights become
        w'' = w' - lr mu (w - w_global), one get and one set of the flat weights per step, so the
        model file needs no proximal op.
        """
        if epochs < 1 or batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
        if not (math.isfinite(learning_rate) and learning_rate > 0):
            raise ConfigError(f"learning_rate must be a positive number, got {learning_rate}")
        if not (math.isfinite(prox_mu) and prox_mu >= 0):
            raise ConfigError(f"prox_mu must be a finite number >= 0, got {prox_mu}")
        x, y = self._check_data(x, y)
        n = len(x)
        if n == 0:
            raise TrainingError(f"{self.spec.name}: no training examples")
        start_w = np.asarray(global_weights, dtype=np.float32)
        self.set_flat_weights(start_w)
        lr = np.float32(learning_rate)
        prox = np.float32(learning_rate * prox_mu)
        w = start_w.copy()  # the weights in the interpreter before the next step (FedProx only)
        t0 = clock()
        steps, stopped, loss = 0, None, math.nan
        done_epochs = 0.0
        for _ in range(epochs):
            order = rng.permutation(n)
            total, seen = 0.0, 0
            for lo in range(0, n, batch_size):
                if should_abort is not None and should_abort():
                    stopped = STOP_ABORTED
                elif max_seconds is not None and clock() - t0 >= max_seconds:
                    stopped = STOP_TIME_CAP
                if stopped:
                    break
                idx = order[lo : lo + batch_size]
                batch_loss = float(self._train(x=x[idx], y=y[idx], lr=lr)["loss"])
                if not math.isfinite(batch_loss) or abs(batch_loss) >= FLOAT32_MAX:
                    raise TrainingError(
                        f"{self.spec.name}: loss became {batch_loss} at step {steps + 1}; lower the learning rate"
                    )
                if prox_mu > 0:
                    w = self.flat_weights() - prox * (w - start_w)
                    self.set_flat_weights(w)
                total += batch_loss * len(idx)
                seen += len(idx)
                steps += 1
            if seen:
                loss = total / seen
            done_epochs += seen / n
            if stopped:
                break
        delta = self.flat_weights() - start_w
        seconds = clock() - t0
        log.debug(
            "trained %s: %d steps, %.2f epochs, loss %.4f, stopped=%s",
            self.spec.name,
            steps,
            done_epochs,
            loss,
            stopped,
        )
        return TrainResult(delta, n, steps, done_epochs, loss, stopped, seconds)

    def logits(self, weights: np.ndarray, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits of ``x`` under ``weights`` (flat), computed in batches."""
        x = np.asarray(x)
        x, _ = self._check_data(
            x,
            np.zeros(len(x), np.int32)
            if self.spec.class_labels
            else np.zeros((len(x), self.spec.num_classes), np.float32),
        )
        self.set_flat_weights(weights)
        out = [self._infer(x=x[lo : lo + batch_size])["logits"] for lo in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.spec.num_classes), np.float32)

    def evaluate(self, weights: np.ndarray, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> EvalResult:
        """Mean cross-entropy and accuracy of ``weights`` (flat) on held-out local data."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        x, y = self._check_data(x, y)
        if len(x) == 0:
            raise TrainingError(f"{self.spec.name}: no examples to evaluate")
        z = self.logits(weights, x, batch_size).astype(np.float64)
        if self.spec.loss == "binary_cross_entropy":  # accuracy: share of outputs on the right side of 0.5
            loss = float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))
            return EvalResult(loss, float(np.mean((z > 0) == (y > 0.5))), len(y))
        if self.spec.loss == "mean_squared_error":  # no accuracy for a regression
            return EvalResult(float(np.mean((z - y) ** 2)), math.nan, len(y))
        m = z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z - m).sum(axis=1)) + m[:, 0]
        loss = float(np.mean(lse - z[np.arange(len(y)), y]))
        acc = float(np.mean(z.argmax(axis=1) == y))
        return EvalResult(loss, acc, len(y))


def train_with_limits(
    trainer: Trainer,
    limits: ComputeLimits,
    global_weights: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    rng: np.random.Generator,
    should_abort: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> TrainResult:
    """:meth:`Trainer.train` with epochs, batch size, learning rate and time cap from a device profile.

    Build the trainer with ``Trainer(spec, num_threads=limits.threads)``.
    """
    return trainer.train(
        global_weights,
        x,
        y,
        epochs=limits.epochs,
        batch_size=limits.batch_size,
        learning_rate=limits.learning_rate,
        rng=rng,
        max_seconds=limits.max_train_seconds,
        should_abort=should_abort,
        clock=clock,
    )
