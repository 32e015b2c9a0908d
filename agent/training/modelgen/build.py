"""Builds one zoo model: seeded initial weights, SavedModel, builtin-only conversion, metadata."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

from fedge.agent.training.modelgen import graphs

#: Name of the metadata entry embedded in every .tflite file (JSON, UTF-8).
METADATA_NAME = "fedge_model"


@dataclass(frozen=True)
class Recipe:
    """What defines one zoo model: its graph class, input shape, version, seed and weight shapes in order."""

    name: str
    architecture: str
    version: int
    seed: int
    model: type[graphs.ZooModel]
    input_shape: tuple[int, ...]
    weights: tuple[tuple[str, tuple[int, ...]], ...]


def logreg(name: str, width: int, seed: int, version: int = 1) -> Recipe:
    """Multinomial logistic regression taking ``width`` flat features."""
    return Recipe(
        name,
        f"multinomial logistic regression {width}->10",
        version,
        seed,
        graphs.LogReg,
        (width,),
        (("w", (width, 10)), ("b", (10,))),
    )


def mlp(name: str, width: int, seed: int, hidden: int = 32, version: int = 1) -> Recipe:
    """``width`` -> ``hidden`` (ReLU) -> 10."""
    return Recipe(
        name,
        f"mlp {width}->{hidden} relu->10",
        version,
        seed,
        graphs.MLP,
        (width,),
        (("w1", (width, hidden)), ("b1", (hidden,)), ("w2", (hidden, 10)), ("b2", (10,))),
    )


#: Every zoo model. Flat families are named ``<family><width>``, except the original 64-input pair.
#: Seeds are fixed per model: changing one changes that model's bytes (bump its version then).
RECIPES = {
    r.name: r
    for r in (
        logreg("logreg", 64, 101, version=2),
        mlp("mlp", 64, 102, version=2),
        Recipe(
            "cnn",
            "cnn 28x28x1 conv3x3x8 valid relu -> maxpool2x2 -> dense 10",
            2,
            103,
            graphs.CNN,
            (28, 28, 1),
            (("conv_w", (3, 3, 1, 8)), ("conv_b", (8,)), ("dense_w", (1352, 10)), ("dense_b", (10,))),
        ),
        # 60 features, 10 classes: Synthetic(α, β) of Li et al. (FedProx, MLSys 2020)
        logreg("logreg60", 60, 104, version=2),
        mlp("mlp60", 60, 105, version=2),
    )
}


def initialisers(recipe: Recipe) -> dict[str, str]:
    """How each weight starts, as the field does: the linear head (the last kernel) and every bias
    at zero, hidden kernels He-uniform (they feed ReLUs). Recorded in the model's metadata."""
    kernels = [name for name, shape in recipe.weights if len(shape) > 1]
    return {name: "zeros" if len(shape) == 1 or name == kernels[-1] else "he_uniform" for name, shape in recipe.weights}


def initial_weights(recipe: Recipe) -> dict[str, np.ndarray]:
    """The recipe's initial weights (:func:`initialisers`) from its fixed seed."""
    rng = np.random.default_rng(recipe.seed)
    out = {}
    for name, shape in recipe.weights:
        if initialisers(recipe)[name] == "zeros":
            out[name] = np.zeros(shape, np.float32)
        else:
            fan_in = int(np.prod(shape[:-1]))
            limit = np.sqrt(6.0 / fan_in)
            out[name] = rng.uniform(-limit, limit, size=shape).astype(np.float32)
    return out


def metadata(recipe: Recipe) -> dict:
    """The self-description stored inside the model and beside it as JSON."""
    return {
        "name": recipe.name,
        "architecture": recipe.architecture,
        "version": recipe.version,
        "input_shape": [None, *recipe.input_shape],
        "num_classes": recipe.model.num_classes,
        "weights": [{"name": n, "shape": list(s), "init": initialisers(recipe)[n]} for n, s in recipe.weights],
        "num_params": int(sum(np.prod(s) for _, s in recipe.weights)),
        "signatures": {
            "train": "x float32[batch,...], y int32[batch], lr float32 scalar -> loss (one SGD step)",
            "infer": "x -> logits float32[batch,num_classes]",
            "get_weights": "-> one float32 tensor per weight name",
            "set_weights": "one float32 tensor per weight name -> count",
        },
        "generator": {"tensorflow": tf.__version__, "seed": recipe.seed},
    }


def convert(recipe: Recipe) -> bytes:
    """SavedModel -> TFLite with builtin ops only and resource variables; returns the flatbuffer."""
    module = recipe.model(initial_weights(recipe), recipe.input_shape)
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures=module.signatures())
        conv = tf.lite.TFLiteConverter.from_saved_model(
            tmp, signature_keys=["train", "infer", "get_weights", "set_weights"]
        )
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        conv.experimental_enable_resource_variables = True
        return bytes(conv.convert())


def embed_metadata(flatbuffer: bytes, meta: dict) -> bytes:
    """Append a ``fedge_model`` metadata entry (JSON) to the model flatbuffer."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    buf = schema.BufferT()
    buf.data = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    model.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def verify_gradients(recipe: Recipe, tolerance: float = 1e-5) -> float:
    """Check the hand-written gradients against TF autodiff on tie-rich data; return the largest gap.

    Autodiff cannot be converted (Flex ops) but runs fine here, so it is the ground truth for
    the backward passes that are converted, max-pool tie-breaking included.
    """
    rng = np.random.default_rng(recipe.seed)
    module = recipe.model(initial_weights(recipe), recipe.input_shape)
    x = rng.uniform(0, 1, (16, *module.input_shape)).astype(np.float32)
    x[x < 0.5] = 0.0  # blank regions make exact ties in the pool windows
    y = rng.integers(0, module.num_classes, 16).astype(np.int32)
    w = [tf.constant(v.numpy() + 0.05) for v in module.vars]
    with tf.GradientTape() as tape:
        tape.watch(w)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, module.logits(x, w)))
    auto = tape.gradient(loss, w)
    hand_loss, hand = module.loss_and_grads(tf.constant(x), tf.constant(y), w)
    gap = max([abs(float(loss - hand_loss))] + [float(tf.reduce_max(tf.abs(a - h))) for a, h in zip(auto, hand)])
    if gap > tolerance:
        raise AssertionError(f"{recipe.name}: hand-written gradients differ from autodiff by {gap}")
    return gap


def build(name: str) -> tuple[bytes, dict]:
    """The .tflite bytes and the JSON sidecar (metadata plus the file's sha256) of zoo model ``name``."""
    recipe = RECIPES[name]
    verify_gradients(recipe)
    meta = metadata(recipe)
    data = embed_metadata(convert(recipe), meta)
    return data, {**meta, "sha256": hashlib.sha256(data).hexdigest()}
