"""A user's model as a layer spec (TOML): parsed, checked, shapes inferred, initial weights drawn.

The spec is what ``fedge-coordinator models build`` turns into a trainable ``.tflite``
(``agent/training/modelgen/custom.py``) and what the numpy reference
(:mod:`fedge.agent.training.layer_reference`) computes, so both read the same :class:`Network`.
No TensorFlow here: devices and tests read specs too. The format is documented in
``docs/training.md`` ("Building a model from a layer spec").

One-dimensional layers (``conv1d``, pools over ``[time, channels]``) are two-dimensional ones of
height 1; :attr:`Layer.p` holds the two-dimensional parameters (``kh, kw, sh, sw``, padding).
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedge.agent.core.errors import ConfigError, TrainingError
from fedge.agent.training.models import load_spec

LOSSES = ("softmax_cross_entropy", "binary_cross_entropy", "mean_squared_error")
ACTIVATIONS = ("relu", "relu6", "tanh", "sigmoid")
#: Layer types a spec may use, in the order docs/training.md lists them.
LAYERS = (
    "dense",
    "flatten",
    *ACTIVATIONS,
    "conv2d",
    "conv1d",
    "depthwise_conv2d",
    "maxpool",
    "avgpool",
    "global_avgpool",
    "dropout",
    "embedding",
    "gru",
)
#: Layers the issue asks for that are not built yet: refused with a message naming them.
NOT_YET: tuple[str, ...] = ()
#: Initial embedding rows are uniform in +-EMBEDDING_INIT (Keras's default for Embedding).
EMBEDDING_INIT = 0.05
NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
#: Bumped when the builder's graphs change (recorded in the metadata: ``generator.builder``).
BUILDER_VERSION = 1


@dataclass(frozen=True)
class Weight:
    """One trainable tensor: its name (a signature input of ``set_weights``), shape and initialiser."""

    name: str
    shape: tuple[int, ...]
    init: str  # "zeros", "he_uniform", "glorot_uniform", "uniform_0.05" (embedding rows) or "keras" (given)


@dataclass(frozen=True)
class Layer:
    """One layer after parsing: type, name, its input and output shape (one example) and weights."""

    kind: str
    name: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    p: dict[str, Any] = field(default_factory=dict)
    weights: tuple[Weight, ...] = ()

    def describe(self) -> dict[str, Any]:
        """The layer as recorded in the model's metadata."""
        return {"type": self.kind, "name": self.name, **self.p, "output_shape": list(self.out_shape)}


@dataclass(frozen=True)
class Network:
    """A parsed spec: the layer stack, the loss, and what the model file will say about itself."""

    name: str
    version: int
    seed: int
    input_shape: tuple[int, ...]
    loss: str
    layers: tuple[Layer, ...]
    description: str

    @property
    def weights(self) -> tuple[Weight, ...]:
        return tuple(w for layer in self.layers for w in layer.weights)

    @property
    def num_outputs(self) -> int:
        return self.layers[-1].out_shape[0]

    @property
    def num_params(self) -> int:
        return sum(math.prod(w.shape) for w in self.weights)

    @property
    def target(self) -> dict[str, Any]:
        """The ``y`` input of ``train``: class ids for softmax, float targets per output otherwise."""
        if self.loss == "softmax_cross_entropy":
            return {"dtype": "int32", "shape": [None]}
        return {"dtype": "float32", "shape": [None, self.num_outputs]}

    @property
    def architecture(self) -> str:
        parts = []
        for layer in self.layers:
            if layer.kind in ("dense",):
                parts.append(f"dense {layer.p['units']}")
            elif layer.kind in ("conv2d", "conv1d"):
                k = f"{layer.p['kw']}" if layer.kind == "conv1d" else f"{layer.p['kh']}x{layer.p['kw']}"
                parts.append(f"{layer.kind} {k}x{layer.p['filters']} {layer.p['padding']}")
            elif layer.kind == "depthwise_conv2d":
                parts.append(f"depthwise {layer.p['kh']}x{layer.p['kw']} {layer.p['padding']}")
            elif layer.kind in ("maxpool", "avgpool"):
                k = f"{layer.p['kw']}" if len(layer.in_shape) == 2 else f"{layer.p['kh']}x{layer.p['kw']}"
                parts.append(f"{layer.kind} {k}")
            elif layer.kind == "dropout":
                parts.append(f"dropout {layer.p['rate']}")
            elif layer.kind == "embedding":
                parts.append(f"embedding {layer.p['vocab']}x{layer.p['dim']}")
            elif layer.kind == "gru":
                parts.append(f"gru {layer.p['units']}" + (" sequence" if layer.p["return_sequences"] else ""))
            else:
                parts.append(layer.kind)
        dims = "x".join(str(d) for d in self.input_shape)
        return f"{dims} -> " + " -> ".join(parts) + f" ({self.loss})"


def metadata(net: Network, tensorflow: str) -> dict[str, Any]:
    """What a model built from ``net`` says about itself (the zoo's keys, plus loss, target and layers);
    ``tensorflow`` is the version that converted it. The builder embeds this in the ``.tflite`` and writes
    it beside it (with the file's sha256), so a built file can be matched to its spec without TensorFlow
    (:func:`built_mismatch`)."""
    return {
        "name": net.name,
        "architecture": net.architecture,
        "description": net.description,
        "version": net.version,
        "input_shape": [None, *net.input_shape],
        "num_classes": net.num_outputs,
        "loss": net.loss,
        "target": net.target,
        "layers": [layer.describe() for layer in net.layers],
        "weights": [{"name": w.name, "shape": list(w.shape), "init": w.init} for w in net.weights],
        "num_params": net.num_params,
        "signatures": {
            "train": f"x float32[batch,...], y {net.target['dtype']}{net.target['shape']}, lr float32 scalar "
            "-> loss (one SGD step)".replace("None", "batch"),
            "infer": "x -> logits float32[batch,num_classes]",
            "get_weights": "-> one float32 tensor per weight name",
            "set_weights": "one float32 tensor per weight name -> count",
        },
        "generator": {"tensorflow": tensorflow, "seed": net.seed, "builder": BUILDER_VERSION},
    }


def built_mismatch(net: Network, tflite: str | Path) -> str | None:
    """Why the built model at ``tflite`` (its ``.json`` beside it) is not ``net`` built by this builder, or
    None when it is: its sidecar and embedded metadata agree with the file's sha256, and every key of the
    metadata (layers, weight names, shapes and initialisers, seed, builder version) is what ``net``
    gives, whichever TensorFlow converted it."""
    p = Path(tflite)
    if not p.is_file() or not p.with_suffix(".json").is_file():
        return f"no built model {p.name} with its {p.with_suffix('.json').name}"
    try:
        load_spec(p)  # the sidecar's sha256 and the embedded copy of the metadata
    except TrainingError as e:
        return str(e)
    have = json.loads(p.with_suffix(".json").read_text())
    want = metadata(net, str(have.get("generator", {}).get("tensorflow", "")))
    have.pop("sha256", None)
    if have != want:
        keys = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        return f"{p.name} was built from a different spec or builder (differs in {', '.join(keys)})"
    return None


def _int(v: Any, where: str, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{where}: expected an integer >= {lo}, got {v!r}")
    return v


def _pair(v: Any, where: str) -> tuple[int, int]:
    if isinstance(v, list):
        if len(v) != 2:
            raise ConfigError(f"{where}: expected an integer or two, got {v!r}")
        return _int(v[0], where), _int(v[1], where)
    return _int(v, where), _int(v, where)


def _out_len(size: int, k: int, s: int, padding: str, where: str) -> tuple[int, int, int]:
    """Output length and (before, after) padding of a window of ``k`` at stride ``s`` over ``size``."""
    if padding == "valid":
        if size < k:
            raise ConfigError(f"{where}: window {k} is larger than the input ({size})")
        return (size - k) // s + 1, 0, 0
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return out, total // 2, total - total // 2


class _Parser:
    def __init__(self, source: str):
        self.source = source
        self.counts: dict[str, int] = {}
        self.names: set[str] = set()

    def layer_name(self, kind: str, given: Any, where: str) -> str:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        name = given if given is not None else f"{kind}{self.counts[kind]}"
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ConfigError(f"{where}: name must match {NAME.pattern}, got {name!r}")
        if name in self.names:
            raise ConfigError(f"{where}: duplicate layer name {name!r}")
        self.names.add(name)
        return name


_KEYS = {
    "dense": {"units", "activation"},
    "conv2d": {"filters", "kernel", "stride", "padding", "activation"},
    "conv1d": {"filters", "kernel", "stride", "padding", "activation"},
    "depthwise_conv2d": {"kernel", "stride", "padding", "activation"},
    "maxpool": {"size", "stride"},
    "avgpool": {"size", "stride"},
    "dropout": {"rate"},
    "embedding": {"vocab", "dim"},
    "gru": {"units", "return_sequences"},
}


def _check_keys(raw: dict[str, Any], kind: str, where: str) -> None:
    extra = set(raw) - {"type", "name"} - _KEYS.get(kind, set())
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(extra))} for a {kind} layer")


def _one(ps: _Parser, raw: dict[str, Any], shape: tuple[int, ...], where: str) -> list[Layer]:
    """The layer(s) of one ``[[layers]]`` table (a layer with ``activation`` adds the activation)."""
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise ConfigError(f"{where}: every layer needs a type (one of {', '.join(LAYERS)})")
    kind = kind.lower()
    if kind not in LAYERS:
        why = "not supported yet" if kind in NOT_YET else "unsupported"
        raise ConfigError(f"{where}: {why} layer {raw['type']!r}; supported: {', '.join(LAYERS)}")
    _check_keys(raw, kind, where)
    name = ps.layer_name(kind, raw.get("name"), where)
    out: list[Layer] = []
    if kind == "dense":
        if len(shape) != 1:
            raise ConfigError(f"{where}: dense takes a flat input, got shape {list(shape)}; add a flatten layer first")
        units = _int(raw.get("units"), f"{where}: units")
        ws = (Weight(f"{name}_w", (shape[0], units), "he_uniform"), Weight(f"{name}_b", (units,), "zeros"))
        out.append(Layer(kind, name, shape, (units,), {"units": units}, ws))
    elif kind in ("conv2d", "conv1d"):
        one_d = kind == "conv1d"
        if len(shape) != (2 if one_d else 3):
            want = "[time, channels]" if one_d else "[height, width, channels]"
            raise ConfigError(f"{where}: {kind} takes {want} inputs, got {list(shape)}")
        filters = _int(raw.get("filters"), f"{where}: filters")
        padding = str(raw.get("padding", "valid")).lower()
        if padding not in ("valid", "same"):
            raise ConfigError(f"{where}: padding must be 'valid' or 'same', got {raw.get('padding')!r}")
        if one_d:
            kh, kw, sh, sw = (
                1,
                _int(raw.get("kernel"), f"{where}: kernel"),
                1,
                _int(raw.get("stride", 1), f"{where}: stride"),
            )
            h, w, c = 1, shape[0], shape[1]
            wshape: tuple[int, ...] = (kw, c, filters)
        else:
            (kh, kw), (sh, sw) = (
                _pair(raw.get("kernel"), f"{where}: kernel"),
                _pair(raw.get("stride", 1), f"{where}: stride"),
            )
            h, w, c = shape
            wshape = (kh, kw, c, filters)
        oh, pt, pb = _out_len(h, kh, sh, padding, where)
        ow, pl, pr = _out_len(w, kw, sw, padding, where)
        p = {"filters": filters, "kh": kh, "kw": kw, "sh": sh, "sw": sw, "padding": padding, "pads": [pt, pb, pl, pr]}
        oshape = (ow, filters) if one_d else (oh, ow, filters)
        ws = (Weight(f"{name}_w", wshape, "he_uniform"), Weight(f"{name}_b", (filters,), "zeros"))
        out.append(Layer(kind, name, shape, oshape, p, ws))
    elif kind == "depthwise_conv2d":  # one kernel per channel (depth multiplier 1)
        if len(shape) != 3:
            raise ConfigError(f"{where}: depthwise_conv2d takes [height, width, channels] inputs, got {list(shape)}")
        padding = str(raw.get("padding", "valid")).lower()
        if padding not in ("valid", "same"):
            raise ConfigError(f"{where}: padding must be 'valid' or 'same', got {raw.get('padding')!r}")
        (kh, kw), (sh, sw) = (
            _pair(raw.get("kernel"), f"{where}: kernel"),
            _pair(raw.get("stride", 1), f"{where}: stride"),
        )
        h, w, c = shape
        oh, pt, pb = _out_len(h, kh, sh, padding, where)
        ow, pl, pr = _out_len(w, kw, sw, padding, where)
        p = {"filters": c, "kh": kh, "kw": kw, "sh": sh, "sw": sw, "padding": padding, "pads": [pt, pb, pl, pr]}
        ws = (Weight(f"{name}_w", (kh, kw, c), "he_uniform"), Weight(f"{name}_b", (c,), "zeros"))
        out.append(Layer(kind, name, shape, (oh, ow, c), p, ws))
    elif kind in ("maxpool", "avgpool"):
        if len(shape) == 2:
            kh, kw = 1, _int(raw.get("size"), f"{where}: size")
            sh, sw = 1, _int(raw.get("stride", kw), f"{where}: stride")
            h, w, c = 1, *shape
        elif len(shape) == 3:
            kh, kw = _pair(raw.get("size"), f"{where}: size")
            sh, sw = _pair(raw.get("stride", [kh, kw]), f"{where}: stride")
            h, w, c = shape
        else:
            raise ConfigError(f"{where}: {kind} takes [time, channels] or [height, width, channels], got {list(shape)}")
        oh, _, _ = _out_len(h, kh, sh, "valid", where)
        ow, _, _ = _out_len(w, kw, sw, "valid", where)
        oshape = (ow, c) if len(shape) == 2 else (oh, ow, c)
        out.append(Layer(kind, name, shape, oshape, {"kh": kh, "kw": kw, "sh": sh, "sw": sw, "padding": "valid"}))
    elif kind == "global_avgpool":
        if len(shape) not in (2, 3):
            raise ConfigError(
                f"{where}: global_avgpool takes [time, channels] or [height, width, channels], got {list(shape)}"
            )
        out.append(Layer(kind, name, shape, (shape[-1],)))
    elif kind == "flatten":
        out.append(Layer(kind, name, shape, (math.prod(shape),)))
    elif kind == "dropout":
        rate = raw.get("rate")
        if not isinstance(rate, float | int) or isinstance(rate, bool) or not 0 <= rate < 1:
            raise ConfigError(f"{where}: rate must be a number in [0, 1), got {rate!r}")
        out.append(Layer(kind, name, shape, shape, {"rate": float(rate)}))
    elif kind == "embedding":
        if len(shape) != 1:
            raise ConfigError(
                f"{where}: embedding takes a sequence of token ids (input_shape [length]), got {list(shape)}"
            )
        vocab, dim = _int(raw.get("vocab"), f"{where}: vocab", lo=2), _int(raw.get("dim"), f"{where}: dim")
        ws = (Weight(f"{name}_w", (vocab, dim), f"uniform_{EMBEDDING_INIT}"),)
        out.append(Layer(kind, name, shape, (shape[0], dim), {"vocab": vocab, "dim": dim}, ws))
    elif kind == "gru":
        if len(shape) != 2:
            raise ConfigError(f"{where}: gru takes [time, features] inputs, got {list(shape)}")
        units = _int(raw.get("units"), f"{where}: units")
        seq = raw.get("return_sequences", False)
        if not isinstance(seq, bool):
            raise ConfigError(f"{where}: return_sequences must be true or false, got {seq!r}")
        # Keras's GRU (reset_after=True): gates z, r, n side by side; bias row 0 input, row 1 recurrent
        ws = (
            Weight(f"{name}_w", (shape[1], 3 * units), "glorot_uniform"),
            Weight(f"{name}_u", (units, 3 * units), "glorot_uniform"),
            Weight(f"{name}_b", (2, 3 * units), "zeros"),
        )
        oshape = (shape[0], units) if seq else (units,)
        out.append(Layer(kind, name, shape, oshape, {"units": units, "return_sequences": seq}, ws))
    else:  # an activation layer
        out.append(Layer(kind, name, shape, shape))
    act = raw.get("activation")
    if act is not None:
        if not isinstance(act, str) or act.lower() not in ACTIVATIONS:
            raise ConfigError(f"{where}: unsupported activation {act!r}; supported: {', '.join(ACTIVATIONS)}")
        act = act.lower()
        out.append(Layer(act, ps.layer_name(act, None, where), out[-1].out_shape, out[-1].out_shape))
    return out


def _initialisers(layers: list[Layer]) -> list[Layer]:
    """As the field does: biases and the head (the last kernel) at zero; a hidden kernel Glorot-uniform
    when the next non-dropout layer is tanh or sigmoid, else He-uniform."""
    kernels = [i for i, layer in enumerate(layers) if layer.weights]
    fixed = []
    for i, layer in enumerate(layers):
        if not layer.weights or layer.kind in ("embedding", "gru"):  # their own (see _one), as Keras's
            fixed.append(layer)
            continue
        nxt = next((n.kind for n in layers[i + 1 :] if n.kind != "dropout"), None)
        kernel_init = "zeros" if i == kernels[-1] else "glorot_uniform" if nxt in ("tanh", "sigmoid") else "he_uniform"
        ws = tuple(Weight(w.name, w.shape, kernel_init if len(w.shape) > 1 else "zeros") for w in layer.weights)
        fixed.append(Layer(layer.kind, layer.name, layer.in_shape, layer.out_shape, layer.p, ws))
    return fixed


def parse(text: str, source: str = "<spec>") -> Network:
    """A :class:`Network` from spec TOML text; :class:`ConfigError` names the file, layer and field."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML ({e})") from None
    return from_dict(raw, source)


def from_dict(raw: dict[str, Any], source: str = "<spec>") -> Network:
    """A :class:`Network` from a spec's tables as TOML decodes them (what a Keras model translates to)."""
    allowed = {"name", "version", "seed", "input_shape", "loss", "layers", "description"}
    extra = set(raw) - allowed
    if extra:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(sorted(extra))}; allowed: {', '.join(sorted(allowed))}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"{source}: name must match {NAME.pattern}, got {name!r}")
    version = _int(raw.get("version", 1), f"{source}: version")
    seed = _int(raw.get("seed", 0), f"{source}: seed", lo=0)
    shape_raw = raw.get("input_shape")
    if not isinstance(shape_raw, list) or not 1 <= len(shape_raw) <= 3:
        raise ConfigError(f"{source}: input_shape must be a list of 1 to 3 sizes (one example), got {shape_raw!r}")
    shape = tuple(_int(d, f"{source}: input_shape") for d in shape_raw)
    loss = raw.get("loss", "softmax_cross_entropy")
    if loss not in LOSSES:
        raise ConfigError(f"{source}: unsupported loss {loss!r}; supported: {', '.join(LOSSES)}")
    tables = raw.get("layers")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{source}: needs at least one [[layers]] table")
    ps = _Parser(source)
    layers: list[Layer] = []
    cur = shape
    for i, t in enumerate(tables, 1):
        for layer in _one(ps, t, cur, f"{source}: layer {i} ({t.get('type', '?')})"):
            layers.append(layer)
            cur = layer.out_shape
    late = [layer.name for layer in layers[1:] if layer.kind == "embedding"]
    if late:
        raise ConfigError(f"{source}: embedding must be the first layer (it reads the input's token ids): {late[0]}")
    if layers[-1].kind != "dense":
        raise ConfigError(f"{source}: the last layer must be dense (the head giving the logits), not {layers[-1].kind}")
    if loss == "softmax_cross_entropy" and layers[-1].p["units"] < 2:
        raise ConfigError(f"{source}: softmax cross-entropy needs a head of 2 or more units")
    names = [w.name for layer in layers for w in layer.weights]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: duplicate weight names {names}")
    desc = raw.get("description", "")
    if not isinstance(desc, str):
        raise ConfigError(f"{source}: description must be a string")
    return Network(name, version, seed, shape, loss, tuple(_initialisers(layers)), desc)


def load(path: str | Path) -> Network:
    """Parse the spec file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the spec ({e.strerror})") from None
    return parse(text, str(p))


def initial_weights(net: Network) -> dict[str, np.ndarray]:
    """The network's initial weights from its seed, each by its recorded initialiser (float32)."""
    rng = np.random.default_rng(net.seed)
    out = {}
    for w in net.weights:
        if w.init == "zeros":
            out[w.name] = np.zeros(w.shape, np.float32)
            continue
        if w.init.startswith("uniform_"):
            limit = float(w.init[len("uniform_") :])
            out[w.name] = rng.uniform(-limit, limit, size=w.shape).astype(np.float32)
            continue
        if w.init not in ("he_uniform", "glorot_uniform"):
            raise ConfigError(f"{net.name}: weight {w.name} has no initialiser to draw from ({w.init!r})")
        fan_in = math.prod(w.shape[:-1])
        fan_out = w.shape[-1] * math.prod(w.shape[:-2]) if len(w.shape) > 2 else w.shape[-1]
        limit = math.sqrt(6.0 / fan_in) if w.init == "he_uniform" else math.sqrt(6.0 / (fan_in + fan_out))
        out[w.name] = rng.uniform(-limit, limit, size=w.shape).astype(np.float32)
    return out
