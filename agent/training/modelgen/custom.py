"""``fedge-coordinator models build``: a layer spec -> a checked, trainable ``.tflite`` and its sidecar.

A Keras ``Sequential`` saved as ``.keras`` is first translated into the same spec
(:mod:`fedge.agent.training.modelgen.from_keras`), its weights becoming the initial weights; from
there one code path builds both.

The library call behind the command (the CLI is in ``coordinator/service/models_cli.py``). The
converted model is accepted only after :func:`fedge.agent.training.acceptance.check` finds it
equal to the numpy reference of the same spec on the installed TFLite runtime (tflite-runtime or
ai-edge-litert; TensorFlow's own interpreter, the same kernels, when neither is installed).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from fedge.agent.core.errors import ConfigError, TrainingError
from fedge.agent.training import acceptance, layerspec
from fedge.agent.training.layerspec import Network
from fedge.agent.training.modelgen import from_keras
from fedge.agent.training.modelgen.build import embed_metadata
from fedge.agent.training.modelgen.layers import SpecModel
from fedge.agent.training.tflite_file import read_model_file

#: Bumped when the builder's graphs change (recorded in the metadata).
BUILDER_VERSION = layerspec.BUILDER_VERSION
#: A Keras model's built outputs against Keras's own (float32, two different graphs).
KERAS_ATOL, KERAS_RTOL = 1e-5, 1e-4


@dataclass(frozen=True)
class Built:
    """A built model: file bytes, sidecar metadata (with sha256), the check's report, timings."""

    net: Network
    data: bytes
    meta: dict[str, Any]
    report: acceptance.Report
    runtime: str
    seconds: float
    #: Checks beyond the numpy reference's (a Keras model's: against Keras's own outputs).
    checks: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """What was checked, one line each (the CLI prints them)."""
        return [*self.report.lines(), *self.checks]


def metadata(net: Network) -> dict[str, Any]:
    """What the model file says about itself (the zoo's keys, plus loss, target and layers)."""
    return layerspec.metadata(net, tf.__version__)


def convert(net: Network, init: dict[str, np.ndarray] | None = None) -> bytes:
    """SavedModel -> TFLite with builtin ops only and resource variables, starting from ``init``
    (default: the spec's initialisers drawn from its seed)."""
    module = SpecModel(net, init if init is not None else layerspec.initial_weights(net))
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures=module.signatures())
        conv = tf.lite.TFLiteConverter.from_saved_model(
            tmp, signature_keys=["train", "infer", "get_weights", "set_weights"]
        )
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        conv.experimental_enable_resource_variables = True
        try:
            return bytes(conv.convert())
        except Exception as e:  # the converter raises ConverterError and friends
            raise TrainingError(f"{net.name}: TFLite conversion failed: {str(e).splitlines()[0]}") from None


def interpreter(data: bytes) -> tuple[Any, str]:
    """An interpreter for ``data`` on the installed runtime, and the runtime's name."""
    from fedge.agent.training.runtime import load_interpreter, runtime_name

    try:
        return load_interpreter(data), runtime_name()
    except TrainingError as e:
        if "no TFLite runtime installed" not in str(e):
            raise
    interp = tf.lite.Interpreter(model_content=data, num_threads=1)
    interp.allocate_tensors()
    return interp, f"tensorflow.lite {tf.__version__}"


def without_dropout(net: Network) -> Network:
    """The same network with every dropout rate at 0: its training is deterministic."""
    layers = tuple(replace(layer, p={"rate": 0.0}) if layer.kind == "dropout" else layer for layer in net.layers)
    return replace(net, layers=layers)


def build(net: Network, init: dict[str, np.ndarray] | None = None) -> Built:
    """Convert ``net`` (from ``init``, default its seeded initialisers), embed its metadata and check
    it against the reference; raise if it differs."""
    t0 = time.monotonic()
    meta = metadata(net)
    data = embed_metadata(convert(net, init), meta)
    custom = [op.custom_code for op in read_model_file(data).op_codes if op.is_custom]
    if custom:
        raise TrainingError(f"{net.name}: conversion produced custom/Flex ops {custom}; refusing the model")
    interp, runtime = interpreter(data)
    twin = None
    if any(layer.kind == "dropout" and layer.p["rate"] > 0 for layer in net.layers):
        twin = interpreter(convert(without_dropout(net), init))[0]
    report = acceptance.check(interp, net, train_interp=twin)
    return Built(
        net, data, {**meta, "sha256": hashlib.sha256(data).hexdigest()}, report, runtime, time.monotonic() - t0
    )


def build_file(spec: str | Path) -> Built:
    """Build the layer spec (``.toml``) or Keras ``Sequential`` (``.keras``) at ``spec``."""
    suffix = Path(spec).suffix
    if suffix in (".h5", ".hdf5"):
        raise ConfigError(
            f"{spec}: a Keras HDF5 file, which can carry code that runs on loading; save the model as "
            ".keras (model.save('NAME.keras')) and build that"
        )
    if suffix == ".keras":
        return build_keras_file(spec)
    return build(layerspec.load(spec))


def compare_with_keras(built: Built, model: Any, output: str | None, n: int = 9, seed: int = 0) -> float:
    """The largest gap between the built model's outputs and Keras's on ``n`` random inputs;
    raises TrainingError beyond KERAS_ATOL + KERAS_RTOL * |keras|."""
    interp, _ = interpreter(built.data)
    x, _ = acceptance.batch(built.net, n, np.random.default_rng(seed))
    logits = np.asarray(interp.get_signature_runner("infer")(x=x)["logits"], np.float64)
    got = from_keras.Translated(built.net, {}, output).outputs(logits)
    want = np.asarray(model(x, training=False), np.float64)
    gap = float(np.abs(got - want).max(initial=0.0))
    if got.shape != want.shape or not np.all(np.abs(got - want) <= KERAS_ATOL + KERAS_RTOL * np.abs(want)):
        raise TrainingError(f"{built.net.name}: the built model's outputs differ from Keras's by up to {gap:.3g}")
    return gap


def build_keras(model: Any, name: str, source: str = "<keras>") -> Built:
    """Translate, build (one code path with the TOML specs) and hold the result to Keras's own outputs."""
    tr = from_keras.translate(model, name, source)
    built = build(tr.net, tr.weights)
    gap = compare_with_keras(built, model, tr.output)
    folded = f", its {tr.output} folded into the loss" if tr.output else ""
    return replace(built, checks=(*built.checks, f"keras: outputs within {gap:.2e} of the Keras model's own{folded}"))


def build_keras_file(path: str | Path) -> Built:
    """Build the ``.keras`` file at ``path``; the model is named after the file (``har.keras``: ``har``)."""
    p = Path(path)
    if not layerspec.NAME.fullmatch(p.stem):
        raise ConfigError(f"{p}: the file name gives the model's name and must match {layerspec.NAME.pattern}")
    return build_keras(from_keras.load(p), p.stem, str(p))


def write(built: Built, out: str | Path) -> tuple[Path, Path]:
    """Write ``<name>.tflite`` and ``<name>.json`` into directory ``out``; return both paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tfl, js = out / f"{built.net.name}.tflite", out / f"{built.net.name}.json"
    tfl.write_bytes(built.data)
    js.write_text(sidecar_text(built.meta))
    return tfl, js


def sidecar_text(meta: dict[str, Any]) -> str:
    return json.dumps(meta, indent=2, sort_keys=True) + "\n"


def same_as_written(built: Built, out: str | Path) -> bool:
    """True if ``out`` already holds this model's ``.tflite`` and ``.json``, byte for byte."""
    tfl, js = Path(out) / f"{built.net.name}.tflite", Path(out) / f"{built.net.name}.json"
    return (
        tfl.exists() and js.exists() and tfl.read_bytes() == built.data and js.read_text() == sidecar_text(built.meta)
    )
