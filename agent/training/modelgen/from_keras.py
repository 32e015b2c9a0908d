"""A Keras ``Sequential`` -> the layer spec the TOML path parses, and its weights as initial weights.

:func:`translate` reads each layer's class and config and writes the ``[[layers]]`` table a user
would have written in TOML; :func:`fedge.agent.training.layerspec.from_dict` then parses it with
the same checks and shape inference, and ``custom.build`` builds it (``custom.build_keras``): one
code path after the translation. What the builder cannot train as Keras would (another layer
class, an activation other than ReLU, ReLU6, tanh, sigmoid and a softmax on the output, a
regulariser, a constraint, a frozen layer, dilation, a bias switched off...) is refused with a
:class:`ConfigError` naming the layer.

The Keras model's own weights become the built model's initial weights (recorded as ``init =
"keras"``), so a model trained centrally can be fine-tuned on devices. The head's softmax or
sigmoid is folded into the loss (``infer`` gives logits, as every fedge model does); the loss is
the compiled one, or the head's activation's when the model is not compiled. After the build, the
built model's outputs (through that softmax or sigmoid) must match Keras's own on random inputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from fedge.agent.core.errors import ConfigError
from fedge.agent.training import layerspec

L = tf.keras.layers
#: Layer classes the builder takes (exactly these classes; a subclass is another layer).
KIND = {
    L.Dense: "dense",
    L.Conv1D: "conv1d",
    L.Conv2D: "conv2d",
    L.DepthwiseConv2D: "depthwise_conv2d",
    L.MaxPooling1D: "maxpool",
    L.MaxPooling2D: "maxpool",
    L.AveragePooling1D: "avgpool",
    L.AveragePooling2D: "avgpool",
    L.GlobalAveragePooling1D: "global_avgpool",
    L.GlobalAveragePooling2D: "global_avgpool",
    L.Flatten: "flatten",
    L.Dropout: "dropout",
    L.Embedding: "embedding",
    L.GRU: "gru",
    L.Activation: "activation",
    L.ReLU: "relu",
}
#: Keras activation names the spec has ("linear" is none).
ACTIVATIONS = {"linear": None, "relu": "relu", "relu6": "relu6", "tanh": "tanh", "sigmoid": "sigmoid"}
#: Keras loss names -> spec loss.
LOSSES = {
    "sparse_categorical_crossentropy": "softmax_cross_entropy",
    "categorical_crossentropy": "softmax_cross_entropy",
    "binary_crossentropy": "binary_cross_entropy",
    "mean_squared_error": "mean_squared_error",
    "mse": "mean_squared_error",
}


class _Refuse:
    def __init__(self, where: str):
        self.where = where

    def __call__(self, what: str) -> ConfigError:
        return ConfigError(f"{self.where}: {what}")


def _spec_name(keras_name: str) -> str:
    """A Keras layer name as a spec name ([a-z][a-z0-9_]*, at most 40 characters)."""
    name = re.sub(r"[^a-z0-9_]", "_", keras_name.lower())
    if not name or not name[0].isalpha():
        name = "l" + name
    return name[:40]


def _activation(cfg: dict[str, Any], refuse: _Refuse, *, last: bool) -> str | None:
    """The spec activation of a layer's ``activation`` (``softmax`` only on the output: into the loss)."""
    act = cfg.get("activation", "linear")
    if not isinstance(act, str):
        raise refuse(f"unsupported activation {act!r}")
    if act == "softmax" and last:
        return "softmax"
    if act not in ACTIVATIONS:
        hint = " (softmax only on the output layer)" if act == "softmax" else ""
        raise refuse(
            f"unsupported activation {act!r}{hint}; supported: {', '.join(a for a in ACTIVATIONS if a != 'linear')}"
        )
    return ACTIVATIONS[act]


def _plain(cfg: dict[str, Any], refuse: _Refuse, **want: Any) -> None:
    """Refuse every option that changes training and the spec has no key for."""
    for key in ("kernel_regularizer", "bias_regularizer", "activity_regularizer", "recurrent_regularizer",
                "embeddings_regularizer", "depthwise_regularizer", "kernel_constraint", "bias_constraint",
                "recurrent_constraint", "embeddings_constraint", "depthwise_constraint"):  # fmt: skip
        if cfg.get(key) is not None:
            raise refuse(f"{key} is not supported (the device trains the plain loss, unconstrained)")
    for key, value in want.items():
        got = cfg.get(key, value)
        if isinstance(got, list | tuple) and not isinstance(value, list | tuple):
            ok = all(g == value for g in got)
        else:
            ok = got == value
        if not ok:
            raise refuse(f"{key}={got!r} is not supported (only {value!r})")


def _single(v: Any) -> int:
    return int(v[0]) if isinstance(v, list | tuple) else int(v)


def _table(layer: Any, kind: str, refuse: _Refuse, *, last: bool) -> tuple[dict[str, Any], str | None]:
    """One Keras layer as a spec table, and the output activation folded into the loss (if any)."""
    cfg = layer.get_config()
    name = _spec_name(layer.name)
    t: dict[str, Any] = {"name": name}
    head = None
    if kind in ("dense", "conv1d", "conv2d", "depthwise_conv2d"):
        _plain(cfg, refuse, use_bias=True, data_format="channels_last", dilation_rate=1, groups=1, depth_multiplier=1)
        act = _activation(cfg, refuse, last=last)
        if last and act in ("softmax", "sigmoid"):
            head = act
        elif act is not None:
            t["activation"] = act
    if kind == "dense":
        t |= {"type": "dense", "units": int(cfg["units"])}
    elif kind in ("conv1d", "conv2d", "depthwise_conv2d"):
        padding = cfg["padding"]
        if padding not in ("valid", "same"):
            raise refuse(f"padding={padding!r} is not supported (valid or same)")
        t |= {"type": kind, "padding": padding}
        if kind == "conv1d":
            t |= {
                "filters": int(cfg["filters"]),
                "kernel": _single(cfg["kernel_size"]),
                "stride": _single(cfg["strides"]),
            }
        else:
            t |= {"kernel": [int(k) for k in cfg["kernel_size"]], "stride": [int(s) for s in cfg["strides"]]}
            if kind == "conv2d":
                t["filters"] = int(cfg["filters"])
    elif kind in ("maxpool", "avgpool"):
        _plain(cfg, refuse, padding="valid", data_format="channels_last")
        one_d = isinstance(layer, L.MaxPooling1D | L.AveragePooling1D)
        size, stride = cfg["pool_size"], cfg["strides"] or cfg["pool_size"]
        if one_d:
            t |= {"type": kind, "size": _single(size), "stride": _single(stride)}
        else:
            t |= {"type": kind, "size": [int(k) for k in size], "stride": [int(s) for s in stride]}
    elif kind == "global_avgpool":
        _plain(cfg, refuse, keepdims=False, data_format="channels_last")
        t["type"] = kind
    elif kind == "flatten":
        _plain(cfg, refuse, data_format="channels_last")
        t["type"] = kind
    elif kind == "dropout":
        _plain(cfg, refuse, noise_shape=None)
        t |= {"type": kind, "rate": float(cfg["rate"])}
    elif kind == "embedding":
        _plain(cfg, refuse, mask_zero=False)
        t |= {"type": kind, "vocab": int(cfg["input_dim"]), "dim": int(cfg["output_dim"])}
    elif kind == "gru":
        _plain(
            cfg, refuse, activation="tanh", recurrent_activation="sigmoid", use_bias=True, dropout=0.0,
            recurrent_dropout=0.0, return_state=False, go_backwards=False, stateful=False, time_major=False,
            reset_after=True,
        )  # fmt: skip
        t |= {"type": kind, "units": int(cfg["units"]), "return_sequences": bool(cfg["return_sequences"])}
    elif kind == "activation":
        act = _activation(cfg, refuse, last=last)
        if act is None:
            return {}, None  # linear: nothing
        if last and act in ("softmax", "sigmoid"):
            return {}, act
        t["type"] = act
    elif kind == "relu":
        if float(cfg.get("negative_slope", 0.0)) != 0.0 or float(cfg.get("threshold", 0.0)) != 0.0:
            raise refuse("ReLU with negative_slope or threshold is not supported")
        top = cfg.get("max_value")
        if top is not None and float(top) != 6.0:
            raise refuse(f"ReLU(max_value={float(top):g}) is not supported (None: relu, 6: relu6)")
        t["type"] = "relu" if top is None else "relu6"
    return t, head


def _loss(model: Any, head: str | None, where: str) -> str:
    """The spec loss: the compiled loss, checked against the output's activation; or the activation's."""
    loss = getattr(model, "loss", None)
    if isinstance(loss, str):
        try:
            loss = tf.keras.losses.get(loss)
        except ValueError:
            raise ConfigError(f"{where}: unsupported loss {loss!r}; supported: {', '.join(LOSSES)}") from None
    if loss is None:
        if head is None:
            raise ConfigError(
                f"{where}: the output is linear and the model has no loss: compile it with one "
                "(e.g. SparseCategoricalCrossentropy(from_logits=True) or 'mse') before saving"
            )
        return "softmax_cross_entropy" if head == "softmax" else "binary_cross_entropy"
    if isinstance(loss, tf.keras.losses.Loss):
        cfg = loss.get_config()
        name = cfg.get("fn") or cfg.get("name") or type(loss).__name__
    elif callable(loss):
        name, cfg = getattr(loss, "__name__", repr(loss)), {}
    else:
        raise ConfigError(f"{where}: one loss for one output is supported, got {loss!r}")
    name = name.lower()
    if name not in LOSSES:
        raise ConfigError(f"{where}: unsupported loss {name!r}; supported: {', '.join(LOSSES)}")
    for key in ("label_smoothing", "ignore_class", "axis"):
        if cfg.get(key) not in (None, 0, 0.0, -1):
            raise ConfigError(f"{where}: loss option {key}={cfg[key]!r} is not supported")
    if cfg.get("reduction", "auto") not in ("auto", "sum_over_batch_size"):
        raise ConfigError(f"{where}: loss reduction {cfg['reduction']!r} is not supported (the batch mean)")
    spec_loss = LOSSES[name]
    from_logits = bool(cfg.get("from_logits", False))
    want = {"softmax_cross_entropy": "softmax", "binary_cross_entropy": "sigmoid"}.get(spec_loss)
    if want is None:  # mean squared error on the linear output
        if head is not None:
            raise ConfigError(f"{where}: {name} on a {head} output is not supported; end with a linear dense layer")
    elif from_logits and head is not None:
        raise ConfigError(f"{where}: {name}(from_logits=True) after a {head} output applies {head} twice")
    elif not from_logits and head != want:
        raise ConfigError(
            f"{where}: {name} on {'a ' + head if head else 'a linear'} output; end with a {want} "
            f"or use {name}(from_logits=True)"
        )
    return spec_loss


@dataclass(frozen=True)
class Translated:
    """A Keras model as a spec: the network, its Keras weights by spec weight name, and the
    activation Keras applies to the logits (``softmax``, ``sigmoid``, or None), folded into the loss."""

    net: layerspec.Network
    weights: dict[str, np.ndarray]
    output: str | None

    def outputs(self, logits: np.ndarray) -> np.ndarray:
        """What the Keras model outputs for these logits."""
        if self.output == "softmax":
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        if self.output == "sigmoid":
            return 1.0 / (1.0 + np.exp(-logits))
        return logits


def translate(model: Any, name: str, source: str = "<keras>") -> Translated:
    """The spec of a Keras ``Sequential``, its current weights and its output activation.

    Raises :class:`ConfigError` naming the first layer the builder cannot take.
    """
    if type(model) is not tf.keras.Sequential:
        raise ConfigError(f"{source}: expected a keras.Sequential model, got {type(model).__name__}")
    if not model.built or model.input_shape is None:
        raise ConfigError(f"{source}: the model has no input shape; start it with keras.Input((...))")
    shape = model.input_shape
    if not isinstance(shape, tuple) or any(d is None for d in shape[1:]):
        raise ConfigError(f"{source}: every input dimension but the batch must be known, got {shape}")
    layers = list(model.layers)
    if not layers:
        raise ConfigError(f"{source}: the model has no layers")
    tables: list[dict[str, Any]] = []
    keras_of: dict[str, Any] = {}
    head = None
    for i, layer in enumerate(layers, 1):
        cls = type(layer)
        refuse = _Refuse(f"{source}: layer {i} ({layer.name}, {cls.__name__})")
        kind = KIND.get(cls)
        if kind is None:
            supported = ", ".join(sorted({c.__name__ for c in KIND}))
            raise refuse(f"unsupported layer {cls.__name__}; supported: {supported}")
        if not layer.trainable:
            raise refuse("trainable=False is not supported (every weight trains on the device)")
        if layer.dtype != "float32" or layer.compute_dtype != "float32":
            raise refuse(f"dtype {layer.compute_dtype} is not supported (float32)")
        table, head = _table(layer, kind, refuse, last=i == len(layers))
        if table:
            tables.append(table)
            keras_of[table["name"]] = layer
    where = f"{source} ({model.name})"
    raw = {
        "name": name,
        "version": 1,
        "seed": 0,
        "description": f"Keras Sequential {model.name!r}",
        "input_shape": [int(d) for d in shape[1:]],
        "loss": _loss(model, head, where),
        "layers": tables,
    }
    net = layerspec.from_dict(raw, source)
    weights: dict[str, np.ndarray] = {}
    for layer in net.layers:
        if not layer.weights:
            continue
        values = [np.asarray(v, np.float32) for v in keras_of[layer.name].get_weights()]
        if layer.kind == "depthwise_conv2d":  # Keras [h, w, c, 1] -> [h, w, c]
            values[0] = values[0][..., 0]
        for w, v in zip(layer.weights, values, strict=True):
            if v.shape != w.shape:
                raise ConfigError(f"{source}: layer {layer.name}: weight of shape {v.shape}, the spec's {w.shape}")
            weights[w.name] = v
    given = tuple(replace(la, weights=tuple(replace(w, init="keras") for w in la.weights)) for la in net.layers)
    return Translated(replace(net, layers=given), weights, head)


def load(path: str | Path) -> Any:
    """A ``.keras`` file's model, loaded in Keras's safe mode (no code from the file runs)."""
    p = Path(path)
    try:
        return tf.keras.models.load_model(p, compile=True, safe_mode=True)
    except Exception as e:  # Keras raises ValueError, TypeError, OSError... with long texts
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{p}: cannot load the Keras model ({first})") from None
