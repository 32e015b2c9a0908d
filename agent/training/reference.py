"""Numpy reference of the zoo models (forward pass and one SGD step), in float32.

It mirrors ``agent/training/modelgen/graphs.py`` formula by formula, so the tests can hold
the TFLite models to it at 1e-5. Weights are dicts keyed by the spec's weight names. Models are
looked up by name or family (``mlp60`` runs the ``mlp`` formulas; shapes come from the weights).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedge.agent.training.models import family_of

F32 = np.float32
Weights = dict[str, np.ndarray]


def softmax_xent(z: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[np.float32, np.ndarray]:
    """Mean softmax cross-entropy and its gradient w.r.t. the logits."""
    n = F32(len(z))
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    s = e.sum(axis=1, keepdims=True, dtype=F32)
    lse = np.log(s) + m
    onehot = np.eye(num_classes, dtype=F32)[y]
    loss = (lse[:, 0] - (onehot * z).sum(axis=1)).sum(dtype=F32) / n
    return F32(loss), ((e / s - onehot) / n).astype(F32)


def maxpool2(r: np.ndarray) -> np.ndarray:
    """2x2 max-pool, stride 2, over NHWC."""
    return np.maximum(np.maximum(r[:, 0::2, 0::2], r[:, 0::2, 1::2]), np.maximum(r[:, 1::2, 0::2], r[:, 1::2, 1::2]))


def maxpool2_backward(r: np.ndarray, p: np.ndarray, dp: np.ndarray) -> np.ndarray:
    """Route each window's gradient to its first maximum in row-major order (as TensorFlow does)."""
    out = np.zeros_like(r)
    taken = np.zeros(p.shape, bool)
    for di in (0, 1):
        for dj in (0, 1):
            hit = (r[:, di::2, dj::2] == p) & ~taken
            out[:, di::2, dj::2] = dp * hit
            taken |= hit
    return out


def patches3x3(x: np.ndarray) -> np.ndarray:
    """VALID 3x3 patches of a one-channel NHWC batch: shape [N, H-2, W-2, 9], (i, j) row-major."""
    oh, ow = x.shape[1] - 2, x.shape[2] - 2
    return np.stack([x[:, i : i + oh, j : j + ow, 0] for i in range(3) for j in range(3)], axis=-1)


# ------------------------------------------------------------------ the model families (any input width)


def _logreg_logits(w: Weights, x: np.ndarray) -> np.ndarray:
    return x @ w["w"] + w["b"]


def _logreg_grads(w: Weights, x: np.ndarray, y: np.ndarray) -> tuple[np.float32, Weights]:
    loss, dz = softmax_xent(_logreg_logits(w, x), y, 10)
    return loss, {"w": x.T @ dz, "b": dz.sum(axis=0)}


def _mlp_forward(w: Weights, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a1 = x @ w["w1"] + w["b1"]
    h1 = np.maximum(a1, F32(0))
    return a1, h1, h1 @ w["w2"] + w["b2"]


def _mlp_grads(w: Weights, x: np.ndarray, y: np.ndarray) -> tuple[np.float32, Weights]:
    a1, h1, z = _mlp_forward(w, x)
    loss, dz = softmax_xent(z, y, 10)
    da1 = (dz @ w["w2"].T) * (a1 > 0)
    return loss, {"w1": x.T @ da1, "b1": da1.sum(axis=0), "w2": h1.T @ dz, "b2": dz.sum(axis=0)}


def _cnn_forward(w: Weights, x: np.ndarray) -> tuple[np.ndarray, ...]:
    pt = patches3x3(x)
    c = pt @ w["conv_w"].reshape(9, -1) + w["conv_b"]
    r = np.maximum(c, F32(0))
    p = maxpool2(r)
    flat = p.reshape(len(x), -1)
    return pt, c, r, p, flat, flat @ w["dense_w"] + w["dense_b"]


def _cnn_grads(w: Weights, x: np.ndarray, y: np.ndarray) -> tuple[np.float32, Weights]:
    pt, c, r, p, flat, z = _cnn_forward(w, x)
    loss, dz = softmax_xent(z, y, 10)
    dp = (dz @ w["dense_w"].T).reshape(p.shape)
    dc = maxpool2_backward(r, p, dp) * (c > 0)
    nf = dc.shape[-1]
    dk = (pt.reshape(-1, 9).T @ dc.reshape(-1, nf)).reshape(w["conv_w"].shape)
    return loss, {"conv_w": dk, "conv_b": dc.sum(axis=(0, 1, 2)), "dense_w": flat.T @ dz, "dense_b": dz.sum(axis=0)}


_MODELS: dict[str, tuple[Callable[..., np.ndarray], Callable[..., tuple[np.float32, Weights]]]] = {
    "logreg": (_logreg_logits, _logreg_grads),
    "mlp": (lambda w, x: _mlp_forward(w, x)[2], _mlp_grads),
    "cnn": (lambda w, x: _cnn_forward(w, x)[5], _cnn_grads),
}


def _model(name: str):
    try:
        return _MODELS[name] if name in _MODELS else _MODELS[family_of(name)]
    except KeyError:
        raise KeyError(f"no numpy reference for model {name!r}; known: {sorted(_MODELS)}") from None


def _f32(w: Weights) -> Weights:
    return {k: np.asarray(v, F32) for k, v in w.items()}


def logits(name: str, weights: Weights, x: np.ndarray) -> np.ndarray:
    """Forward pass of zoo model ``name``: logits [batch, 10]."""
    return _model(name)[0](_f32(weights), np.asarray(x, F32)).astype(F32)


def loss_and_grads(name: str, weights: Weights, x: np.ndarray, y: np.ndarray) -> tuple[float, Weights]:
    """Mean cross-entropy of the batch and its gradient for every weight."""
    loss, grads = _model(name)[1](_f32(weights), np.asarray(x, F32), np.asarray(y, np.int64))
    return float(loss), {k: g.astype(F32) for k, g in grads.items()}


def sgd_step(name: str, weights: Weights, x: np.ndarray, y: np.ndarray, lr: float) -> tuple[float, Weights]:
    """One SGD step, like the model's ``train`` signature: the pre-step loss and the new weights."""
    loss, grads = loss_and_grads(name, weights, x, y)
    lr32 = F32(lr)
    return loss, {k: (np.asarray(v, F32) - lr32 * grads[k]).astype(F32) for k, v in weights.items()}
