"""Numpy reference of a model built from a layer spec: forward pass, loss, gradients, one SGD step.

Written independently of the TensorFlow graph (``modelgen/layers.py``): convolutions here are
explicit patches (im2col) with a scatter-add backward, where the graph uses builtin convolutions
and a transposed convolution. Works in the dtype of its inputs, so the gradients can be checked
against finite differences in float64 and the .tflite against the same code in float32.
Dropout is the identity here unless its mask is given (the model draws its own at random); see
``acceptance`` for how a spec with dropout is checked.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedge.agent.training.layerspec import Layer, Network

Weights = dict[str, np.ndarray]


def _as4d(layer: Layer, x: np.ndarray) -> np.ndarray:
    """One-dimensional layers run as two-dimensional ones of height 1."""
    return x[:, None] if len(layer.in_shape) == 2 else x


def _windows(x: np.ndarray, p: dict[str, Any], oh: int, ow: int):
    """(i, j, view) for every kernel offset, row-major: ``view[n, a, b] = x[n, a*sh + i, b*sw + j]``."""
    for i in range(p["kh"]):
        for j in range(p["kw"]):
            yield i, j, x[:, i : i + (oh - 1) * p["sh"] + 1 : p["sh"], j : j + (ow - 1) * p["sw"] + 1 : p["sw"]]


def _conv_forward(layer: Layer, w: Weights, x: np.ndarray):
    p = layer.p
    pt, pb, pl, pr = p["pads"]
    xp = np.pad(_as4d(layer, x), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh = (xp.shape[1] - p["kh"]) // p["sh"] + 1
    ow = (xp.shape[2] - p["kw"]) // p["sw"] + 1
    patches = np.concatenate([v for _, _, v in _windows(xp, p, oh, ow)], axis=-1)  # [n, oh, ow, kh*kw*c]
    k = w[f"{layer.name}_w"].reshape(-1, p["filters"])
    out = patches @ k + w[f"{layer.name}_b"]
    return out.reshape(len(x), *layer.out_shape), (xp.shape, patches)


def _conv_backward(layer: Layer, w: Weights, cache, dy: np.ndarray):
    p = layer.p
    xshape, patches = cache
    f = p["filters"]
    dy4 = dy.reshape(len(dy), patches.shape[1], patches.shape[2], f)
    kernel = w[f"{layer.name}_w"]
    dk = (patches.reshape(-1, patches.shape[-1]).T @ dy4.reshape(-1, f)).reshape(kernel.shape)
    db = dy4.sum(axis=(0, 1, 2))
    dpatch = dy4 @ kernel.reshape(-1, f).T  # [n, oh, ow, kh*kw*c]
    c = xshape[-1]
    dxp = np.zeros(xshape, dy.dtype)
    for i, j, view in _windows(dxp, p, dy4.shape[1], dy4.shape[2]):
        t = i * p["kw"] + j
        view += dpatch[..., t * c : (t + 1) * c]  # view of dxp: accumulates in place
    pt, pb, pl, pr = p["pads"]
    dx = dxp[:, pt : xshape[1] - pb, pl : xshape[2] - pr]
    return dx.reshape(len(dy), *layer.in_shape), {f"{layer.name}_w": dk, f"{layer.name}_b": db}


def _depthwise_forward(layer: Layer, w: Weights, x: np.ndarray):
    """Each channel convolved with its own kernel: a weighted sum of the windows' views."""
    p = layer.p
    pt, pb, pl, pr = p["pads"]
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh, ow = layer.out_shape[:2]
    k = w[f"{layer.name}_w"]
    out = sum(view * k[i, j] for i, j, view in _windows(xp, p, oh, ow)) + w[f"{layer.name}_b"]
    return out, xp


def _depthwise_backward(layer: Layer, w: Weights, xp: np.ndarray, dy: np.ndarray):
    p = layer.p
    k = w[f"{layer.name}_w"]
    dk = np.zeros_like(k)
    dxp = np.zeros_like(xp)
    oh, ow = dy.shape[1:3]
    for (i, j, view), (_, _, dview) in zip(_windows(xp, p, oh, ow), _windows(dxp, p, oh, ow)):
        dk[i, j] = (view * dy).sum(axis=(0, 1, 2))
        dview += dy * k[i, j]  # view of dxp: accumulates in place
    pt, pb, pl, pr = p["pads"]
    dx = dxp[:, pt : xp.shape[1] - pb, pl : xp.shape[2] - pr]
    return dx, {f"{layer.name}_w": dk, f"{layer.name}_b": dy.sum(axis=(0, 1, 2))}


def _pool_forward(layer: Layer, x: np.ndarray):
    x4 = _as4d(layer, x)
    oh = (x4.shape[1] - layer.p["kh"]) // layer.p["sh"] + 1
    ow = (x4.shape[2] - layer.p["kw"]) // layer.p["sw"] + 1
    views = [v for _, _, v in _windows(x4, layer.p, oh, ow)]
    out = np.max(views, axis=0) if layer.kind == "maxpool" else np.sum(views, axis=0) / x.dtype.type(len(views))
    return out.reshape(len(x), *layer.out_shape), (x4, out)


def _pool_backward(layer: Layer, cache, dy: np.ndarray):
    x4, out = cache
    dy4 = dy.reshape(out.shape)
    dx = np.zeros_like(x4)
    taken = np.zeros(out.shape, bool)
    scale = dy.dtype.type(layer.p["kh"] * layer.p["kw"])
    views = list(_windows(dx, layer.p, out.shape[1], out.shape[2]))
    for (i, j, dview), (_, _, xview) in zip(views, _windows(x4, layer.p, out.shape[1], out.shape[2])):
        if layer.kind == "maxpool":  # each window's gradient goes to its first maximum, row-major (as TF)
            hit = (xview == out) & ~taken
            taken |= hit
            dview += dy4 * hit
        else:
            dview += dy4 / scale
    return dx.reshape(len(dy), *layer.in_shape)


def _sigmoid(a: np.ndarray) -> np.ndarray:
    one = a.dtype.type(1)
    return one / (one + np.exp(-a))


def _gru_forward(layer: Layer, w: Weights, x: np.ndarray):
    """Keras's GRU (reset_after=True), one time step after another from h = 0:
    z = σ(x W_z + b_z + h U_z + c_z), r = σ(x W_r + b_r + h U_r + c_r),
    n = tanh(x W_n + b_n + r ⊙ (h U_n + c_n)), h' = z ⊙ h + (1 - z) ⊙ n."""
    u = layer.p["units"]
    kw, ku, b = w[f"{layer.name}_w"], w[f"{layer.name}_u"], w[f"{layer.name}_b"]
    h = np.zeros((len(x), u), x.dtype)
    steps = []
    for t in range(x.shape[1]):
        xw = x[:, t] @ kw + b[0]
        hu = h @ ku + b[1]
        z = _sigmoid(xw[:, :u] + hu[:, :u])
        r = _sigmoid(xw[:, u : 2 * u] + hu[:, u : 2 * u])
        n = np.tanh(xw[:, 2 * u :] + r * hu[:, 2 * u :])
        steps.append((h, z, r, n, hu[:, 2 * u :]))
        h = z * h + (x.dtype.type(1) - z) * n
    hs = np.stack([s[0] for s in steps[1:]] + [h], axis=1)  # every step's output [n, T, u]
    out = hs if layer.p["return_sequences"] else h
    return out, (x, steps)


def _gru_backward(layer: Layer, w: Weights, cache, dy: np.ndarray):
    """Backpropagation through time over the cached steps, last to first."""
    x, steps = cache
    u = layer.p["units"]
    one = dy.dtype.type(1)
    kw, ku = w[f"{layer.name}_w"], w[f"{layer.name}_u"]
    dkw, dku, db = np.zeros_like(kw), np.zeros_like(ku), np.zeros_like(w[f"{layer.name}_b"])
    dx = np.zeros_like(x)
    seq = layer.p["return_sequences"]
    dh = np.zeros((len(dy), u), dy.dtype)
    for t in range(len(steps) - 1, -1, -1):
        h, z, r, n, hn = steps[t]
        dh = dh + (dy[:, t] if seq else (dy if t == len(steps) - 1 else 0))
        dz = dh * (h - n) * z * (one - z)
        dn = dh * (one - z) * (one - n * n)
        dr = dn * hn * r * (one - r)
        dxw = np.concatenate([dz, dr, dn], axis=1)
        dhu = np.concatenate([dz, dr, dn * r], axis=1)
        dkw += x[:, t].T @ dxw
        dku += h.T @ dhu
        db[0] += dxw.sum(axis=0)
        db[1] += dhu.sum(axis=0)
        dx[:, t] = dxw @ kw.T
        dh = dh * z + dhu @ ku.T
    return dx, {f"{layer.name}_w": dkw, f"{layer.name}_u": dku, f"{layer.name}_b": db}


def _act(kind: str, a: np.ndarray) -> np.ndarray:
    one = a.dtype.type(1)
    if kind == "relu":
        return np.maximum(a, a.dtype.type(0))
    if kind == "relu6":
        return np.minimum(np.maximum(a, a.dtype.type(0)), a.dtype.type(6))
    if kind == "tanh":
        return np.tanh(a)
    return one / (one + np.exp(-a))


def _act_backward(kind: str, a: np.ndarray, h: np.ndarray, dh: np.ndarray) -> np.ndarray:
    one = a.dtype.type(1)
    if kind == "relu":
        return dh * (a > 0)
    if kind == "relu6":
        return dh * ((a > 0) & (a < 6))
    if kind == "tanh":
        return dh * (one - h * h)
    return dh * h * (one - h)


def forward(
    net: Network, w: Weights, x: np.ndarray, masks: dict[str, np.ndarray] | None = None
) -> tuple[np.ndarray, list]:
    """The logits and every layer's cache for :func:`backward`. Dropout is the identity unless
    ``masks`` gives its layer's mask (already scaled by 1/(1 - rate), as the model applies it)."""
    caches = []
    h = x
    for layer in net.layers:
        if layer.kind == "dense":
            caches.append(h)
            h = h @ w[f"{layer.name}_w"] + w[f"{layer.name}_b"]
        elif layer.kind in ("conv2d", "conv1d"):
            h, cache = _conv_forward(layer, w, h)
            caches.append(cache)
        elif layer.kind == "depthwise_conv2d":
            h, cache = _depthwise_forward(layer, w, h)
            caches.append(cache)
        elif layer.kind in ("maxpool", "avgpool"):
            h, cache = _pool_forward(layer, h)
            caches.append(cache)
        elif layer.kind == "global_avgpool":
            caches.append(h.shape)
            h = h.reshape(len(h), -1, layer.in_shape[-1]).mean(axis=1)
        elif layer.kind == "flatten":
            caches.append(None)
            h = h.reshape(len(h), -1)
        elif layer.kind == "embedding":  # input ids arrive as floats (the model's x is float32)
            ids = np.asarray(h).astype(np.int64)
            caches.append(ids)
            h = w[f"{layer.name}_w"][ids]
        elif layer.kind == "gru":
            h, cache = _gru_forward(layer, w, h)
            caches.append(cache)
        elif layer.kind == "dropout":
            mask = None if masks is None else masks.get(layer.name)
            caches.append(mask)
            h = h if mask is None else h * mask
        else:
            a = h
            h = _act(layer.kind, a)
            caches.append((a, h))
    return h, caches


def loss_and_dlogits(net: Network, z: np.ndarray, y: np.ndarray) -> tuple[Any, np.ndarray]:
    """The batch-mean loss of logits ``z`` and its gradient w.r.t. ``z``."""
    dt = z.dtype.type
    n = dt(len(z))
    if net.loss == "softmax_cross_entropy":
        m = z.max(axis=1, keepdims=True)
        e = np.exp(z - m)
        s = e.sum(axis=1, keepdims=True)
        onehot = np.eye(z.shape[1], dtype=z.dtype)[y]
        loss = ((np.log(s) + m)[:, 0] - (onehot * z).sum(axis=1)).sum() / n
        return dt(loss), (e / s - onehot) / n
    y = y.astype(z.dtype)
    count = dt(z.size)
    if net.loss == "binary_cross_entropy":  # on logits: max(z, 0) - z y + log(1 + exp(-|z|))
        loss = (np.maximum(z, dt(0)) - z * y + np.log(dt(1) + np.exp(-np.abs(z)))).sum() / count
        return dt(loss), (dt(1) / (dt(1) + np.exp(-z)) - y) / count
    d = z - y
    return dt((d * d).sum() / count), dt(2) * d / count


def backward(net: Network, w: Weights, caches: list, dz: np.ndarray) -> Weights:
    """Gradients of every weight given the gradient ``dz`` of the logits."""
    grads: Weights = {}
    d = dz
    for layer, cache in zip(reversed(net.layers), reversed(caches)):
        if layer.kind == "dense":
            grads[f"{layer.name}_w"] = cache.T @ d
            grads[f"{layer.name}_b"] = d.sum(axis=0)
            d = d @ w[f"{layer.name}_w"].T
        elif layer.kind in ("conv2d", "conv1d"):
            d, g = _conv_backward(layer, w, cache, d)
            grads.update(g)
        elif layer.kind == "depthwise_conv2d":
            d, g = _depthwise_backward(layer, w, cache, d)
            grads.update(g)
        elif layer.kind in ("maxpool", "avgpool"):
            d = _pool_backward(layer, cache, d)
        elif layer.kind == "global_avgpool":
            count = d.dtype.type(np.prod(cache[1:-1]))
            d = np.broadcast_to((d / count)[:, None, :], (len(d), int(np.prod(cache[1:-1])), d.shape[1])).reshape(cache)
        elif layer.kind == "flatten":
            d = d.reshape(len(d), *layer.in_shape)
        elif layer.kind == "embedding":  # rows gathered k times get k gradients (scatter-add)
            table = np.zeros_like(w[f"{layer.name}_w"])
            np.add.at(table, cache.ravel(), d.reshape(-1, table.shape[1]))
            grads[f"{layer.name}_w"] = table
            d = None  # nothing flows into token ids
        elif layer.kind == "gru":
            d, g = _gru_backward(layer, w, cache, d)
            grads.update(g)
        elif layer.kind == "dropout":
            d = d if cache is None else d * cache
        else:
            d = _act_backward(layer.kind, cache[0], cache[1], d)
    return grads


def _cast(w: Weights, x: np.ndarray, dtype) -> tuple[Weights, np.ndarray]:
    return {k: np.asarray(v, dtype) for k, v in w.items()}, np.asarray(x, dtype)


def logits(net: Network, w: Weights, x: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Forward pass: logits ``[batch, num_outputs]`` in ``dtype``."""
    w, x = _cast(w, x, dtype)
    return forward(net, w, x)[0]


def loss_and_grads(
    net: Network, w: Weights, x: np.ndarray, y: np.ndarray, dtype=np.float32, masks: dict[str, np.ndarray] | None = None
) -> tuple[float, Weights]:
    """The batch-mean loss and its gradient for every weight, computed in ``dtype`` (``masks``: see :func:`forward`)."""
    w, x = _cast(w, x, dtype)
    z, caches = forward(net, w, x, None if masks is None else {k: np.asarray(m, dtype) for k, m in masks.items()})
    loss, dz = loss_and_dlogits(net, z, np.asarray(y))
    return float(loss), {k: g.astype(dtype) for k, g in backward(net, w, caches, dz).items()}


def sgd_step(net: Network, w: Weights, x: np.ndarray, y: np.ndarray, lr: float) -> tuple[float, Weights]:
    """One SGD step in float32, like the model's ``train``: the pre-step loss and the new weights."""
    loss, grads = loss_and_grads(net, w, x, y)
    lr32 = np.float32(lr)
    return loss, {k: (np.asarray(v, np.float32) - lr32 * grads[k]).astype(np.float32) for k, v in w.items()}
