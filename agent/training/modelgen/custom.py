"""``fedge-coordinator models build``: a layer spec -> a checked, trainable ``.tflite`` and its sidecar.

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

import tensorflow as tf

from fedge.agent.core.errors import TrainingError
from fedge.agent.training import acceptance, layerspec
from fedge.agent.training.layerspec import Network
from fedge.agent.training.modelgen.build import embed_metadata
from fedge.agent.training.modelgen.layers import SpecModel
from fedge.agent.training.tflite_file import read_model_file

#: Bumped when the builder's graphs change (recorded in the metadata).
BUILDER_VERSION = 1


@dataclass(frozen=True)
class Built:
    """A built model: file bytes, sidecar metadata (with sha256), the check's report, timings."""

    net: Network
    data: bytes
    meta: dict[str, Any]
    report: acceptance.Report
    runtime: str
    seconds: float


def metadata(net: Network) -> dict[str, Any]:
    """What the model file says about itself (the zoo's keys, plus loss, target and layers)."""
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
        "generator": {"tensorflow": tf.__version__, "seed": net.seed, "builder": BUILDER_VERSION},
    }


def convert(net: Network) -> bytes:
    """SavedModel -> TFLite with builtin ops only and resource variables."""
    module = SpecModel(net, layerspec.initial_weights(net))
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


def build(net: Network) -> Built:
    """Convert ``net``, embed its metadata and check it against the reference; raise if it differs."""
    t0 = time.monotonic()
    meta = metadata(net)
    data = embed_metadata(convert(net), meta)
    custom = [op.custom_code for op in read_model_file(data).op_codes if op.is_custom]
    if custom:
        raise TrainingError(f"{net.name}: conversion produced custom/Flex ops {custom}; refusing the model")
    interp, runtime = interpreter(data)
    twin = None
    if any(layer.kind == "dropout" and layer.p["rate"] > 0 for layer in net.layers):
        twin = interpreter(convert(without_dropout(net)))[0]
    report = acceptance.check(interp, net, train_interp=twin)
    return Built(
        net, data, {**meta, "sha256": hashlib.sha256(data).hexdigest()}, report, runtime, time.monotonic() - t0
    )


def build_file(spec: str | Path) -> Built:
    """Parse and build the spec at ``spec``."""
    return build(layerspec.load(spec))


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
