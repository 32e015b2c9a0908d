"""A model from a layer spec as a TensorFlow module with a hand-written backward pass per layer.

Builtin TFLite ops only: convolutions forward are ``CONV_2D``, their kernel gradient a matmul of
explicit patches and their input gradient a matmul scattered back with ``PAD`` (col2im); pools scatter their gradient with ``PAD`` (max-pool to the first
maximum of each window, row-major, as TensorFlow does). One-dimensional layers run as
two-dimensional ones of height 1. Checked against :mod:`fedge.agent.training.layer_reference`
on the converted model before a build is accepted.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from fedge.agent.training.layerspec import Layer, Network
from fedge.agent.training.modelgen.graphs import FLOAT, ZooModel, softmax_xent


def _to4d(layer: Layer, x: tf.Tensor) -> tf.Tensor:
    shape = layer.in_shape if len(layer.in_shape) == 3 else (1, *layer.in_shape)
    return tf.reshape(x, [-1, *shape])


def _windows(x: tf.Tensor, p: dict, oh: int, ow: int):
    for i in range(p["kh"]):
        for j in range(p["kw"]):
            yield i, j, x[:, i : i + (oh - 1) * p["sh"] + 1 : p["sh"], j : j + (ow - 1) * p["sw"] + 1 : p["sw"], :]


def _dilate(g: tf.Tensor, sh: int, sw: int) -> tf.Tensor:
    """Insert ``s - 1`` zeros between neighbours (4-D pads only): [n, oh, ow, c] -> [n, (oh-1)sh+1, (ow-1)sw+1, c]."""
    _, oh, ow, c = g.shape
    if sw > 1:
        g = tf.pad(tf.reshape(g, [-1, ow, 1, c]), [[0, 0], [0, 0], [0, sw - 1], [0, 0]])
        g = tf.reshape(g, [-1, oh, ow * sw, c])[:, :, : (ow - 1) * sw + 1, :]
        ow = (ow - 1) * sw + 1
    if sh > 1:
        g = tf.pad(tf.reshape(g, [-1, oh, 1, ow * c]), [[0, 0], [0, 0], [0, sh - 1], [0, 0]])
        g = tf.reshape(g, [-1, oh * sh, ow, c])[:, : (oh - 1) * sh + 1, :, :]
    return g


def _scatter(g: tf.Tensor, i: int, j: int, h: int, w: int, p: dict) -> tf.Tensor:
    """``out[n, a*sh + i, b*sw + j] = g[n, a, b]`` in an [n, h, w, c] tensor of zeros."""
    d = _dilate(g, p["sh"], p["sw"])
    return tf.pad(d, [[0, 0], [i, h - i - d.shape[1]], [j, w - j - d.shape[2]], [0, 0]])


class SpecModel(ZooModel):
    """The layers of a :class:`Network`; weights in the network's order, named as in its spec."""

    def __init__(self, net: Network, init: dict[str, np.ndarray]):
        super().__init__(init, net.input_shape)
        self.net = net
        self.num_classes = net.num_outputs
        self.index = {k: i for i, k in enumerate(self.names)}

    def target_spec(self) -> tf.TensorSpec:
        if self.net.loss == "softmax_cross_entropy":
            return tf.TensorSpec([None], tf.int32, name="y")
        return tf.TensorSpec([None, self.net.num_outputs], FLOAT, name="y")

    def _w(self, w, layer: Layer, suffix: str) -> tf.Tensor:
        return w[self.index[f"{layer.name}_{suffix}"]]

    # ------------------------------------------------------------------ forward

    def _forward(self, x, w, train: bool):
        caches = []
        h = x
        for li, layer in enumerate(self.net.layers):
            k = layer.kind
            if k == "dense":
                caches.append(h)
                h = tf.matmul(h, self._w(w, layer, "w")) + self._w(w, layer, "b")
            elif k in ("conv2d", "conv1d"):
                p = layer.p
                pt, pb, pl, pr = p["pads"]
                xp = _to4d(layer, h)
                if any(p["pads"]):
                    xp = tf.pad(xp, [[0, 0], [pt, pb], [pl, pr], [0, 0]])
                kern = tf.reshape(self._w(w, layer, "w"), [p["kh"], p["kw"], -1, p["filters"]])
                c = tf.nn.conv2d(xp, kern, strides=[1, p["sh"], p["sw"], 1], padding="VALID") + self._w(w, layer, "b")
                caches.append((xp, kern))
                h = tf.reshape(c, [-1, *layer.out_shape])
            elif k == "depthwise_conv2d":
                p = layer.p
                pt, pb, pl, pr = p["pads"]
                xp = tf.pad(h, [[0, 0], [pt, pb], [pl, pr], [0, 0]]) if any(p["pads"]) else h
                kern = tf.reshape(self._w(w, layer, "w"), [p["kh"], p["kw"], -1, 1])
                out = tf.nn.depthwise_conv2d(xp, kern, strides=[1, p["sh"], p["sw"], 1], padding="VALID")
                caches.append(xp)
                h = out + self._w(w, layer, "b")
            elif k in ("maxpool", "avgpool"):
                p = layer.p
                x4 = _to4d(layer, h)
                pool = tf.nn.max_pool2d if k == "maxpool" else tf.nn.avg_pool2d
                out = pool(x4, ksize=[p["kh"], p["kw"]], strides=[p["sh"], p["sw"]], padding="VALID")
                caches.append((x4, out))
                h = tf.reshape(out, [-1, *layer.out_shape])
            elif k == "global_avgpool":
                caches.append(None)
                h = tf.reduce_mean(_to4d(layer, h), axis=[1, 2])
            elif k == "flatten":
                caches.append(None)
                h = tf.reshape(h, [-1, layer.out_shape[0]])
            elif k == "embedding":
                ids = tf.cast(h, tf.int32)  # x is float32 like every model's; token ids are exact in it
                caches.append(ids)
                h = tf.gather(self._w(w, layer, "w"), ids)
            elif k == "gru":
                h, cache = self._gru_forward(layer, w, h)
                caches.append(cache)
            elif k == "dropout":
                if train and layer.p["rate"] > 0:
                    rate = layer.p["rate"]
                    u = tf.random.uniform(tf.shape(h), seed=self.net.seed * 1000 + li)
                    mask = tf.cast(u >= rate, FLOAT) * (1.0 / (1.0 - rate))
                    caches.append(mask)
                    h = h * mask
                else:
                    caches.append(None)
            else:
                a = h
                h = {"relu": tf.nn.relu, "relu6": tf.nn.relu6, "tanh": tf.math.tanh, "sigmoid": tf.math.sigmoid}[k](a)
                caches.append((a, h))
        return h, caches

    def logits(self, x, w):
        return self._forward(x, w, train=False)[0]

    # ------------------------------------------------------------------ loss and backward

    def _loss(self, z, y):
        if self.net.loss == "softmax_cross_entropy":
            return softmax_xent(z, y, self.num_classes)
        count = tf.cast(tf.size(z), FLOAT)
        if self.net.loss == "binary_cross_entropy":
            loss = tf.reduce_sum(tf.maximum(z, 0.0) - z * y + tf.math.log(1.0 + tf.exp(-tf.abs(z)))) / count
            return loss, (tf.math.sigmoid(z) - y) / count
        d = z - y
        return tf.reduce_sum(d * d) / count, 2.0 * d / count

    def loss_and_grads(self, x, y, w):
        z, caches = self._forward(x, w, train=True)
        loss, d = self._loss(z, y)
        grads: dict[str, tf.Tensor] = {}
        for li in range(len(self.net.layers) - 1, -1, -1):
            layer, cache, first = self.net.layers[li], caches[li], li == 0
            d = self._backward(layer, cache, w, d, grads, need_dx=not first)
        return loss, [grads[k] for k in self.names]

    def _backward(self, layer: Layer, cache, w, d, grads, need_dx: bool):
        k = layer.kind
        if k == "dense":
            grads[f"{layer.name}_w"] = tf.matmul(cache, d, transpose_a=True)
            grads[f"{layer.name}_b"] = tf.reduce_sum(d, axis=0)
            return tf.matmul(d, self._w(w, layer, "w"), transpose_b=True) if need_dx else None
        if k in ("conv2d", "conv1d"):
            return self._conv_backward(layer, cache, d, grads, need_dx)
        if k == "depthwise_conv2d":
            return self._depthwise_backward(layer, cache, w, d, grads, need_dx)
        if k in ("maxpool", "avgpool"):
            return self._pool_backward(layer, cache, d)
        if k == "global_avgpool":
            shape = layer.in_shape if len(layer.in_shape) == 3 else (1, *layer.in_shape)
            count = float(shape[0] * shape[1])
            spread = tf.reshape(d, [-1, 1, 1, shape[2]]) * tf.ones([1, *shape], FLOAT) * (1.0 / count)
            return tf.reshape(spread, [-1, *layer.in_shape])
        if k == "flatten":
            return tf.reshape(d, [-1, *layer.in_shape])
        if k == "embedding":  # scatter-add of the rows' gradients as a one-hot matmul
            vocab, dim = layer.p["vocab"], layer.p["dim"]
            onehot = tf.one_hot(tf.reshape(cache, [-1]), vocab, dtype=FLOAT)
            grads[f"{layer.name}_w"] = tf.matmul(onehot, tf.reshape(d, [-1, dim]), transpose_a=True)
            return None
        if k == "gru":
            return self._gru_backward(layer, cache, w, d, grads, need_dx)
        if k == "dropout":
            return d if cache is None else d * cache
        a, h = cache
        if k == "relu":
            return d * tf.cast(a > 0, FLOAT)
        if k == "relu6":
            return d * tf.cast(tf.logical_and(a > 0, a < 6), FLOAT)
        if k == "tanh":
            return d * (1.0 - h * h)
        return d * h * (1.0 - h)

    def _conv_backward(self, layer: Layer, cache, d, grads, need_dx: bool):
        p = layer.p
        xp, kern = cache
        _, hp, wp, c = xp.shape
        f = p["filters"]
        oh, ow = (hp - p["kh"]) // p["sh"] + 1, (wp - p["kw"]) // p["sw"] + 1
        d4 = tf.reshape(d, [-1, oh, ow, f])
        patches = tf.concat([v for _, _, v in _windows(xp, p, oh, ow)], axis=-1)
        dk = tf.matmul(tf.reshape(patches, [-1, p["kh"] * p["kw"] * c]), tf.reshape(d4, [-1, f]), transpose_a=True)
        grads[f"{layer.name}_w"] = tf.reshape(dk, self._w(self.vars, layer, "w").shape)
        grads[f"{layer.name}_b"] = tf.reduce_sum(d4, axis=[0, 1, 2])
        if not need_dx:
            return None
        # col2im: each kernel offset's slice of d4 @ kernel^T, scattered back to where it was read.
        # (A full convolution with the flipped kernel is right in TensorFlow but converts wrongly.)
        dpatch = tf.matmul(tf.reshape(d4, [-1, f]), tf.reshape(kern, [-1, f]), transpose_b=True)
        dpatch = tf.reshape(dpatch, [-1, oh, ow, p["kh"] * p["kw"] * c])
        parts = [
            _scatter(dpatch[:, :, :, (i * p["kw"] + j) * c : (i * p["kw"] + j + 1) * c], i, j, hp, wp, p)
            for i in range(p["kh"])
            for j in range(p["kw"])
        ]
        dxp = tf.add_n(parts) if len(parts) > 1 else parts[0]
        pt, pb, pl, pr = p["pads"]
        dx = dxp[:, pt : hp - pb, pl : wp - pr, :]
        return tf.reshape(dx, [-1, *layer.in_shape])

    def _depthwise_backward(self, layer: Layer, xp, w, d, grads, need_dx: bool):
        """Per kernel offset: the kernel's gradient is the window's view times d summed over
        examples and positions; the input's, d times that offset's weights scattered back (col2im)."""
        p = layer.p
        _, hp, wp, _ = xp.shape
        oh, ow = layer.out_shape[:2]
        kern = self._w(w, layer, "w")
        views = list(_windows(xp, p, oh, ow))
        dk = tf.stack([tf.reduce_sum(view * d, axis=[0, 1, 2]) for _, _, view in views])
        grads[f"{layer.name}_w"] = tf.reshape(dk, [p["kh"], p["kw"], layer.in_shape[2]])
        grads[f"{layer.name}_b"] = tf.reduce_sum(d, axis=[0, 1, 2])
        if not need_dx:
            return None
        parts = [_scatter(d * kern[i, j], i, j, hp, wp, p) for i, j, _ in views]
        dxp = tf.add_n(parts) if len(parts) > 1 else parts[0]
        pt, pb, pl, pr = p["pads"]
        return dxp[:, pt : hp - pb, pl : wp - pr, :]

    def _gru_forward(self, layer: Layer, w, x):
        """Static unroll (one set of ops per time step) of Keras's GRU, reset_after=True, from h = 0.

        The input projection of every step is one matmul before the loop; each step then slices
        its gates: z = σ(xw_z + hu_z), r = σ(xw_r + hu_r), n = tanh(xw_n + r ⊙ hu_n),
        h' = n + z ⊙ (h - n), where hu = h U + b[1]."""
        steps_n, feat = layer.in_shape
        u = layer.p["units"]
        kw, ku, b = self._w(w, layer, "w"), self._w(w, layer, "u"), self._w(w, layer, "b")
        xw = tf.reshape(tf.matmul(tf.reshape(x, [-1, feat]), kw) + b[0], [-1, steps_n, 3 * u])
        h = tf.zeros_like(xw[:, 0, :u])
        steps, outs = [], []
        for t in range(steps_n):
            xt = xw[:, t, :]
            hu = tf.matmul(h, ku) + b[1]
            z = tf.math.sigmoid(xt[:, :u] + hu[:, :u])
            r = tf.math.sigmoid(xt[:, u : 2 * u] + hu[:, u : 2 * u])
            hn = hu[:, 2 * u :]
            n = tf.math.tanh(xt[:, 2 * u :] + r * hn)
            steps.append((h, z, r, n, hn))
            h = n + z * (h - n)
            outs.append(h)
        out = tf.stack(outs, axis=1) if layer.p["return_sequences"] else h
        return out, (x, steps)

    def _gru_backward(self, layer: Layer, cache, w, d, grads, need_dx: bool):
        """Backpropagation through time: per step the gate gradients; the weight gradients and the
        input gradient as single matmuls over all steps at the end."""
        x, steps = cache
        steps_n, feat = layer.in_shape
        u = layer.p["units"]
        kw, ku = self._w(w, layer, "w"), self._w(w, layer, "u")
        seq = layer.p["return_sequences"]
        dh = None
        dxws, dhus = [None] * steps_n, [None] * steps_n
        for t in range(steps_n - 1, -1, -1):
            h, z, r, n, hn = steps[t]
            dout = d[:, t, :] if seq else (d if t == steps_n - 1 else None)
            dh = dout if dh is None else (dh if dout is None else dh + dout)
            dz = dh * (h - n) * z * (1.0 - z)
            dn = dh * (1.0 - z) * (1.0 - n * n)
            dr = dn * hn * r * (1.0 - r)
            dxws[t] = tf.concat([dz, dr, dn], axis=1)
            dhus[t] = tf.concat([dz, dr, dn * r], axis=1)
            if t > 0:
                dh = dh * z + tf.matmul(dhus[t], ku, transpose_b=True)
        dxw = tf.reshape(tf.stack(dxws, axis=1), [-1, 3 * u])
        dhu = tf.reshape(tf.stack(dhus, axis=1), [-1, 3 * u])
        hprev = tf.reshape(tf.stack([s[0] for s in steps], axis=1), [-1, u])
        grads[f"{layer.name}_w"] = tf.matmul(tf.reshape(x, [-1, feat]), dxw, transpose_a=True)
        grads[f"{layer.name}_u"] = tf.matmul(hprev, dhu, transpose_a=True)
        grads[f"{layer.name}_b"] = tf.stack([tf.reduce_sum(dxw, axis=0), tf.reduce_sum(dhu, axis=0)])
        if not need_dx:
            return None
        return tf.reshape(tf.matmul(dxw, kw, transpose_b=True), [-1, steps_n, feat])

    def _pool_backward(self, layer: Layer, cache, d):
        p = layer.p
        x4, out = cache
        _, h, wd, _ = x4.shape
        d4 = tf.reshape(d, [-1, *out.shape[1:]])
        parts = []
        taken = None
        for i, j, view in _windows(x4, p, out.shape[1], out.shape[2]):
            if layer.kind == "maxpool":  # the first maximum of each window, row-major
                hit = tf.equal(view, out)
                if taken is not None:
                    hit = tf.logical_and(hit, tf.logical_not(taken))
                taken = hit if taken is None else tf.logical_or(taken, hit)
                parts.append(_scatter(d4 * tf.cast(hit, FLOAT), i, j, h, wd, p))
            else:
                parts.append(_scatter(d4 * (1.0 / (p["kh"] * p["kw"])), i, j, h, wd, p))
        dx = tf.add_n(parts) if len(parts) > 1 else parts[0]
        return tf.reshape(dx, [-1, *layer.in_shape])
