"""The zoo's model families as TensorFlow modules with hand-written backward passes.

Why by hand: autodiff emits ``ReluGrad``, ``Conv2DBackpropFilter``, ``MaxPoolGrad`` and
``BroadcastGradientArgs``, which are Flex ops. The maths here mirrors
:mod:`fedge.agent.training.reference` line for line; the tests hold them to 1e-5.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

FLOAT = tf.float32


def softmax_xent(z: tf.Tensor, y: tf.Tensor, num_classes: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean softmax cross-entropy over the (dynamic) batch and its gradient w.r.t. the logits."""
    n = tf.cast(tf.shape(z)[0], FLOAT)
    m = tf.reduce_max(z, axis=1, keepdims=True)
    e = tf.exp(z - m)
    s = tf.reduce_sum(e, axis=1, keepdims=True)
    lse = tf.math.log(s) + m
    onehot = tf.one_hot(y, num_classes, dtype=FLOAT)
    loss = tf.reduce_sum(lse[:, 0] - tf.reduce_sum(onehot * z, axis=1)) / n
    dz = (e / s - onehot) / n
    return loss, dz


def dense_backward(x: tf.Tensor, w: tf.Tensor, dz: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Gradients of ``z = x @ w + b``: (dx, dw, db)."""
    dx = tf.matmul(dz, w, transpose_b=True)
    dw = tf.matmul(x, dz, transpose_a=True)
    db = tf.reduce_sum(dz, axis=0)
    return dx, dw, db


def relu_backward(pre: tf.Tensor, dh: tf.Tensor) -> tf.Tensor:
    """ReLU gradient as TensorFlow defines it: zero where the input was not positive."""
    return dh * tf.cast(pre > 0, FLOAT)


def maxpool2_backward(r: tf.Tensor, p: tf.Tensor, dp: tf.Tensor) -> tf.Tensor:
    """2x2/2 max-pool gradient, routed to the first maximum of each window (row-major), as TF does."""
    a, b = r[:, 0::2, 0::2, :], r[:, 0::2, 1::2, :]
    c = r[:, 1::2, 0::2, :]
    ma = tf.equal(a, p)
    mb = tf.logical_and(tf.equal(b, p), tf.logical_not(ma))
    seen = tf.logical_or(ma, mb)
    mc = tf.logical_and(tf.equal(c, p), tf.logical_not(seen))
    md = tf.logical_not(tf.logical_or(seen, mc))
    ga, gb, gc, gd = (dp * tf.cast(m, FLOAT) for m in (ma, mb, mc, md))
    h, w, ch = p.shape[1], p.shape[2], p.shape[3]
    top = tf.reshape(tf.stack([ga, gb], axis=3), [-1, h, 2 * w, ch])
    bottom = tf.reshape(tf.stack([gc, gd], axis=3), [-1, h, 2 * w, ch])
    return tf.reshape(tf.stack([top, bottom], axis=2), [-1, 2 * h, 2 * w, ch])


def conv3x3_filter_grad(x: tf.Tensor, dc: tf.Tensor) -> tf.Tensor:
    """Filter gradient of a VALID 3x3 convolution over one input channel, via explicit patches."""
    oh, ow, f = dc.shape[1], dc.shape[2], dc.shape[3]
    patches = tf.stack([x[:, i : i + oh, j : j + ow, 0] for i in range(3) for j in range(3)], axis=-1)
    dk = tf.matmul(tf.reshape(patches, [-1, 9]), tf.reshape(dc, [-1, f]), transpose_a=True)
    return tf.reshape(dk, [3, 3, 1, f])


class ZooModel(tf.Module):
    """Variables in a fixed order plus the four signatures; subclasses define forward and grads.

    ``input_shape`` is one example's shape (no batch dimension); the flat families take any width.
    """

    num_classes = 10

    def __init__(self, init: dict[str, np.ndarray], input_shape: tuple[int, ...]):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.names = tuple(init)
        self.vars = [tf.Variable(v.astype(np.float32), name=k) for k, v in init.items()]

    def logits(self, x: tf.Tensor, w: list[tf.Tensor]) -> tf.Tensor:
        raise NotImplementedError

    def loss_and_grads(self, x: tf.Tensor, y: tf.Tensor, w: list[tf.Tensor]) -> tuple[tf.Tensor, list[tf.Tensor]]:
        raise NotImplementedError

    def target_spec(self) -> tf.TensorSpec:
        """The ``y`` input of ``train``: class ids (models built from a spec may take float targets)."""
        return tf.TensorSpec([None], tf.int32, name="y")

    def signatures(self) -> dict[str, object]:
        xs = tf.TensorSpec([None, *self.input_shape], FLOAT, name="x")
        ys = self.target_spec()
        lrs = tf.TensorSpec([], FLOAT, name="lr")

        @tf.function(input_signature=[xs, ys, lrs])
        def train(x, y, lr):
            w = [v.read_value() for v in self.vars]
            loss, grads = self.loss_and_grads(x, y, w)
            for v, g in zip(self.vars, grads):
                v.assign_sub(lr * g)
            return {"loss": loss}

        @tf.function(input_signature=[xs])
        def infer(x):
            return {"logits": self.logits(x, [v.read_value() for v in self.vars])}

        @tf.function(input_signature=[])
        def get_weights():
            return {k: v.read_value() for k, v in zip(self.names, self.vars)}

        specs = [tf.TensorSpec(v.shape, FLOAT, name=k) for k, v in zip(self.names, self.vars)]

        @tf.function(input_signature=specs)
        def set_weights(*values):
            for v, val in zip(self.vars, values):
                v.assign(val)
            return {"count": tf.constant(len(values), tf.int32)}

        return {"train": train, "infer": infer, "get_weights": get_weights, "set_weights": set_weights}


class LogReg(ZooModel):
    """Multinomial logistic regression: ``input_shape[0]`` inputs, 10 classes."""

    def logits(self, x, w):
        return tf.matmul(x, w[0]) + w[1]

    def loss_and_grads(self, x, y, w):
        loss, dz = softmax_xent(self.logits(x, w), y, self.num_classes)
        _, dw, db = dense_backward(x, w[0], dz)
        return loss, [dw, db]


class MLP(ZooModel):
    """``input_shape[0]`` -> hidden (ReLU) -> 10; the hidden width comes from the weights."""

    def _forward(self, x, w):
        a1 = tf.matmul(x, w[0]) + w[1]
        h1 = tf.nn.relu(a1)
        return a1, h1, tf.matmul(h1, w[2]) + w[3]

    def logits(self, x, w):
        return self._forward(x, w)[2]

    def loss_and_grads(self, x, y, w):
        a1, h1, z = self._forward(x, w)
        loss, dz = softmax_xent(z, y, self.num_classes)
        dh1, dw2, db2 = dense_backward(h1, w[2], dz)
        da1 = relu_backward(a1, dh1)
        _, dw1, db1 = dense_backward(x, w[0], da1)
        return loss, [dw1, db1, dw2, db2]


class CNN(ZooModel):
    """28x28x1 -> conv 3x3x8 VALID (ReLU) -> 2x2 max-pool -> flatten (HWC) -> dense 10 (fixed shape)."""

    def __init__(self, init: dict[str, np.ndarray], input_shape: tuple[int, ...]):
        if tuple(input_shape) != (28, 28, 1):
            raise ValueError(f"CNN takes 28x28x1 inputs, not {input_shape}")
        super().__init__(init, input_shape)

    def _forward(self, x, w):
        c = tf.nn.conv2d(x, w[0], strides=1, padding="VALID") + w[1]
        r = tf.nn.relu(c)
        p = tf.nn.max_pool2d(r, ksize=2, strides=2, padding="VALID")
        flat = tf.reshape(p, [-1, 13 * 13 * 8])
        return c, r, p, flat, tf.matmul(flat, w[2]) + w[3]

    def logits(self, x, w):
        return self._forward(x, w)[4]

    def loss_and_grads(self, x, y, w):
        c, r, p, flat, z = self._forward(x, w)
        loss, dz = softmax_xent(z, y, self.num_classes)
        dflat, dw2, db2 = dense_backward(flat, w[2], dz)
        dp = tf.reshape(dflat, [-1, 13, 13, 8])
        dc = relu_backward(c, maxpool2_backward(r, p, dp))
        dk = conv3x3_filter_grad(x, dc)
        dcb = tf.reduce_sum(dc, axis=[0, 1, 2])
        return loss, [dk, dcb, dw2, db2]
