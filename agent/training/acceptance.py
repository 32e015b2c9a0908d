"""Is a model built from a layer spec the model its spec describes? Checked on a TFLite interpreter.

:func:`check` is what ``fedge-coordinator models build`` runs on every model before writing it
(and what the tests run on each committed one, on tflite-runtime, without TensorFlow):

1. forward: ``infer`` against the numpy reference (:mod:`layer_reference`) in float32;
2. training: :data:`STEPS` SGD steps with batch sizes 7 and 16 (the batch dimension is dynamic),
   every pre-step loss and the final weights against the reference;
3. gradients: one ``train`` step at ``lr = 1`` gives the model's own gradient (old minus new
   weights); it is compared with central finite differences of the reference loss in float64,
   and the reference's analytic gradient is held to the same differences.

Dropout is random in the model and absent from the reference: a spec with dropout is checked by
its forward pass, and by training with its twin built at rate 0 (see ``modelgen.custom``); what
the mask does is tested separately (mean and rate of the kept units).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedge.agent.core.errors import TrainingError
from fedge.agent.training import layer_reference as ref
from fedge.agent.training.layerspec import Network

#: SGD steps compared one by one (loss before each, weights after the last).
STEPS = 6
LR = 0.05
#: float32 agreement: |model - reference| <= ATOL + RTOL * |reference|.
ATOL, RTOL = 2e-5, 1e-4
#: The model's gradient against float64 central differences (step FD_EPS): float32 rounding of
#: the weights (old minus new at lr 1) and of the forward pass, relative to the gradient's scale.
GRAD_ATOL, GRAD_RTOL, FD_EPS = 5e-5, 2e-3, 1e-6
#: The reference's own float64 gradient against the same differences.
REF_GRAD_TOL = 1e-6
#: Coordinates per weight whose gradient is checked by finite differences.
FD_SAMPLES = 6


@dataclass(frozen=True)
class Report:
    """The largest disagreement found by each check (all within tolerance, else :func:`check` raised)."""

    logits_gap: float
    loss_gap: float
    weights_gap: float
    grad_vs_fd: float
    ref_grad_vs_fd: float
    loss_first: float
    loss_last: float

    def lines(self) -> list[str]:
        return [
            f"forward: logits within {self.logits_gap:.2e} of the numpy reference",
            f"training: {STEPS} SGD steps, losses within {self.loss_gap:.2e}, weights within {self.weights_gap:.2e}",
            f"gradients: within {self.grad_vs_fd:.2e} of float64 finite differences "
            f"(the reference's: {self.ref_grad_vs_fd:.2e})",
        ]


def batch(net: Network, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random inputs and targets of the network's shapes (N(0, 1) features, or token ids uniform
    over the vocabulary when the first layer is an embedding; targets per loss)."""
    first = net.layers[0]
    if first.kind == "embedding":
        x = rng.integers(0, first.p["vocab"], (n, *net.input_shape)).astype(np.float32)
    else:
        x = rng.standard_normal((n, *net.input_shape)).astype(np.float32)
    k = net.num_outputs
    if net.loss == "softmax_cross_entropy":
        return x, rng.integers(0, k, n).astype(np.int32)
    if net.loss == "binary_cross_entropy":
        return x, rng.integers(0, 2, (n, k)).astype(np.float32)
    return x, rng.standard_normal((n, k)).astype(np.float32)


def random_weights(net: Network, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Weights away from the initial zeros (a zero head hides every other gradient): kernels with
    standard deviation 1/sqrt(fan-in), biases 0.1."""
    out = {}
    for w in net.weights:
        scale = 0.1 if len(w.shape) == 1 else 1.0 / math.sqrt(math.prod(w.shape[:-1]))
        out[w.name] = (scale * rng.standard_normal(w.shape)).astype(np.float32)
    return out


def _gap(got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> tuple[float, bool]:
    """Largest |got - want| and whether every element is within atol + rtol*|want|."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    diff = np.abs(got - want)
    return float(diff.max(initial=0.0)), bool(np.all(diff <= atol + rtol * np.abs(want)))


def finite_difference(net: Network, w: dict[str, np.ndarray], x, y, name: str, i: int, eps: float = FD_EPS) -> float:
    """Central difference of the float64 reference loss along coordinate ``i`` of weight ``name``."""
    plus = {k: np.array(v, np.float64) for k, v in w.items()}
    minus = {k: np.array(v, np.float64) for k, v in w.items()}
    plus[name].ravel()[i] += eps
    minus[name].ravel()[i] -= eps
    lp = ref.loss_and_grads(net, plus, x, y, np.float64)[0]
    lm = ref.loss_and_grads(net, minus, x, y, np.float64)[0]
    return (lp - lm) / (2 * eps)


def check(interp: Any, net: Network, seed: int = 0, *, train_interp: Any = None) -> Report:
    """Hold the model on ``interp`` to the numpy reference of ``net``; raise TrainingError if it differs.

    ``train_interp`` (default ``interp``) is the model whose training is compared step by step:
    the rate-0 twin of a spec with dropout.
    """
    problems: list[str] = []
    infer = interp.get_signature_runner("infer")
    tr_interp = train_interp if train_interp is not None else interp
    train = tr_interp.get_signature_runner("train")
    set_w = tr_interp.get_signature_runner("set_weights")
    get_w = tr_interp.get_signature_runner("get_weights")
    names = [w.name for w in net.weights]
    have = get_w()
    if sorted(have) != sorted(names) or any(have[w.name].shape != w.shape for w in net.weights):
        raise TrainingError(
            f"{net.name}: get_weights gives {sorted((k, v.shape) for k, v in have.items())}, "
            f"the spec has {[(w.name, w.shape) for w in net.weights]}"
        )
    rng = np.random.default_rng(seed)
    w0 = random_weights(net, rng)

    # 1. forward
    interp.get_signature_runner("set_weights")(**w0)
    x, _ = batch(net, 7, rng)
    logits_gap, ok = _gap(infer(x=x)["logits"], ref.logits(net, w0, x), ATOL, RTOL)
    if not ok:
        problems.append(f"logits differ from the reference by up to {logits_gap:.3g}")

    # 2. training, step by step
    set_w(**w0)
    w = w0
    loss_gap, losses = 0.0, []
    for step in range(STEPS):
        xb, yb = batch(net, 7 if step % 2 == 0 else 16, rng)
        got = float(train(x=xb, y=yb, lr=np.float32(LR))["loss"])
        want, w = ref.sgd_step(net, w, xb, yb, LR)
        losses.append(got)
        g, ok = _gap(np.float32(got), np.float32(want), ATOL, RTOL)
        loss_gap = max(loss_gap, g)
        if not ok:
            problems.append(f"step {step}: loss {got:.7g}, reference {want:.7g}")
    after = get_w()
    weights_gap = 0.0
    for k in names:
        g, ok = _gap(after[k], w[k], ATOL, RTOL)
        weights_gap = max(weights_gap, g)
        if not ok:
            problems.append(f"weight {k} after {STEPS} steps differs from the reference by up to {g:.3g}")

    # 3. gradients against finite differences
    xg, yg = batch(net, 5, rng)
    set_w(**w0)
    train(x=xg, y=yg, lr=np.float32(1.0))
    stepped = get_w()
    _, ref_grads = ref.loss_and_grads(net, w0, xg, yg, np.float64)
    grad_gap = ref_gap = 0.0
    for k in names:
        model_grad = (w0[k].astype(np.float64) - stepped[k].astype(np.float64)).ravel()
        scale = float(np.abs(ref_grads[k]).max(initial=0.0))
        for i in rng.choice(model_grad.size, size=min(FD_SAMPLES, model_grad.size), replace=False):
            fd = finite_difference(net, w0, xg, yg, k, int(i))
            gap = abs(model_grad[i] - fd)
            grad_gap = max(grad_gap, gap)
            if gap > GRAD_ATOL + GRAD_RTOL * max(abs(fd), scale):
                problems.append(f"gradient of {k}[{i}]: model {model_grad[i]:.6g}, finite differences {fd:.6g}")
            rgap = abs(ref_grads[k].ravel()[i] - fd)
            ref_gap = max(ref_gap, rgap)
            if rgap > REF_GRAD_TOL * max(1.0, abs(fd)):
                problems.append(
                    f"reference gradient of {k}[{i}]: {ref_grads[k].ravel()[i]:.9g}, finite differences {fd:.9g}"
                )
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise TrainingError(f"{net.name}: the built model does not match its numpy reference: {shown}")
    return Report(logits_gap, loss_gap, weights_gap, grad_gap, ref_gap, losses[0], losses[-1])
