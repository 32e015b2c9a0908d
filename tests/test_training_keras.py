"""A Keras ``Sequential`` as input to the model builder (``fedge-coordinator models build M.keras``).

The Keras model is translated into the layer spec a TOML file would give and built by the same
code; its weights become the initial weights. Held here: the build from a ``.keras`` file equals
the build from the TOML of the same architecture (same ops; the same losses and weights step by
step from the same initial weights), the built model's outputs equal Keras's own (sequence and
image layers too), and a layer, activation or option the builder cannot train is refused with a
message naming the layer. All of it needs TensorFlow (the ``modelgen`` extra).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from fedge.agent.core.errors import ConfigError

HAS_TF = importlib.util.find_spec("tensorflow") is not None
pytestmark = pytest.mark.skipif(not HAS_TF, reason="needs TensorFlow (the modelgen extra)")

if HAS_TF:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from fedge.agent.training import acceptance, layerspec
    from fedge.agent.training.modelgen.custom import build, build_file, build_keras, interpreter
    from fedge.agent.training.modelgen.from_keras import translate
    from fedge.agent.training.tflite_file import read_model_file

    L = tf.keras.layers

#: The same 1-D CNN as a TOML spec; the Keras model below is its twin.
CNN_TOML = """
name = "cnn_toml"
input_shape = [16, 3]
loss = "softmax_cross_entropy"

[[layers]]
type = "conv1d"
filters = 4
kernel = 3
padding = "same"
activation = "relu"

[[layers]]
type = "maxpool"
size = 2

[[layers]]
type = "conv1d"
filters = 6
kernel = 3
stride = 2
activation = "tanh"

[[layers]]
type = "global_avgpool"

[[layers]]
type = "dense"
units = 8
activation = "relu"

[[layers]]
type = "dense"
units = 5
"""


def keras_cnn():
    tf.keras.utils.set_random_seed(11)
    model = tf.keras.Sequential(
        [
            L.Input((16, 3)),
            L.Conv1D(4, 3, padding="same", activation="relu"),
            L.MaxPooling1D(2),
            L.Conv1D(6, 3, strides=2, activation="tanh"),
            L.GlobalAveragePooling1D(),
            L.Dense(8, activation="relu"),
            L.Dense(5, activation="softmax"),
        ],
        name="har_like",
    )
    model.compile(loss="sparse_categorical_crossentropy")
    return model


def ops(data: bytes) -> list[tuple[str, int]]:
    return sorted((op.builtin_code, op.version) for op in read_model_file(data).op_codes)


def test_a_keras_file_builds_the_model_its_toml_twin_builds(tmp_path: Path):
    from click.testing import CliRunner

    from fedge.coordinator.service.models_cli import models

    model = keras_cnn()
    path = tmp_path / "har_like.keras"
    model.save(path)
    out = tmp_path / "out"
    res = CliRunner().invoke(models, ["build", str(path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "har_like: " in res.output and "keras: outputs within" in res.output
    data = (out / "har_like.tflite").read_bytes()
    meta = json.loads((out / "har_like.json").read_text())
    assert meta["loss"] == "softmax_cross_entropy" and {w["init"] for w in meta["weights"]} == {"keras"}

    toml = tmp_path / "cnn_toml.toml"
    toml.write_text(CNN_TOML)
    twin = build_file(toml)
    assert ops(data) == ops(twin.data)
    assert meta["architecture"] == twin.meta["architecture"]

    k_interp, t_interp = interpreter(data)[0], interpreter(twin.data)[0]
    start = k_interp.get_signature_runner("get_weights")()
    names = [w.name for w in twin.net.weights]
    k_names = [w["name"] for w in meta["weights"]]
    for k, v in zip(k_names, model.get_weights(), strict=True):  # Keras's weights are the initial weights
        np.testing.assert_array_equal(start[k], v)
    t_interp.get_signature_runner("set_weights")(**{t: start[k] for t, k in zip(names, k_names)})
    rng = np.random.default_rng(3)
    for step in range(8):
        x, y = acceptance.batch(twin.net, 5 + step, rng)
        lk = k_interp.get_signature_runner("train")(x=x, y=y, lr=np.float32(0.1))["loss"]
        lt = t_interp.get_signature_runner("train")(x=x, y=y, lr=np.float32(0.1))["loss"]
        assert lk == lt, step
    after_k = k_interp.get_signature_runner("get_weights")()
    after_t = t_interp.get_signature_runner("get_weights")()
    for t, k in zip(names, k_names):
        np.testing.assert_array_equal(after_k[k], after_t[t])
        assert not np.array_equal(after_k[k], start[k])  # it trained

    # deterministic: the same file rebuilds byte for byte
    res = CliRunner().invoke(models, ["build", str(path), "--out", str(out), "--check"])
    assert (res.exit_code, res.output) == (0, "har_like: identical\n")


def keras_sequence():
    tf.keras.utils.set_random_seed(12)
    model = tf.keras.Sequential(
        [L.Input((10,)), L.Embedding(20, 4), L.GRU(8, return_sequences=True), L.GRU(6), L.Dense(3)]
    )
    model.compile(loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def keras_image():
    tf.keras.utils.set_random_seed(13)
    model = tf.keras.Sequential(
        [
            L.Input((8, 8, 1)),
            L.Conv2D(4, 3, padding="same"),
            L.ReLU(max_value=6),
            L.DepthwiseConv2D(3, strides=2, padding="same", activation="relu"),
            L.AveragePooling2D(2),
            L.Flatten(),
            L.Dense(10, activation="sigmoid"),
            L.Dropout(0.25),
            L.Dense(3),
            L.Activation("sigmoid"),
        ]
    )
    model.compile(loss="binary_crossentropy")
    return model


@pytest.mark.parametrize(
    "make, loss, kinds",
    [
        pytest.param(keras_sequence, "softmax_cross_entropy", ["embedding", "gru", "gru", "dense"], id="embedding-gru"),
        pytest.param(
            keras_image,
            "binary_cross_entropy",
            [
                "conv2d",
                "relu6",
                "depthwise_conv2d",
                "relu",
                "avgpool",
                "flatten",
                "dense",
                "sigmoid",
                "dropout",
                "dense",
            ],
            id="conv2d-depthwise-dropout",
        ),
    ],
)
def test_a_keras_model_builds_to_its_own_outputs(make, loss, kinds):
    model = make()
    built = build_keras(model, "kmodel")
    assert built.net.loss == loss and [la.kind for la in built.net.layers] == kinds
    interp = interpreter(built.data)[0]
    x, _ = acceptance.batch(built.net, 6, np.random.default_rng(4))
    logits = interp.get_signature_runner("infer")(x=x)["logits"]
    want = np.asarray(model(x, training=False))
    got = logits if loss == "softmax_cross_entropy" else 1 / (1 + np.exp(-logits))  # the sigmoid head, folded
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    assert any(line.startswith("keras: outputs within") for line in built.lines())


def test_the_translation_is_the_toml_spec():
    tr = translate(keras_cnn(), "cnn_toml")
    twin = layerspec.parse(CNN_TOML)
    assert tr.net.architecture == twin.architecture and tr.output == "softmax"
    assert [w.shape for w in tr.net.weights] == [w.shape for w in twin.weights]
    built = build(tr.net, tr.weights)  # the TOML path's builder, from the Keras weights
    assert built.meta["weights"][0]["init"] == "keras"


def _seq(*layers, loss=None):
    model = tf.keras.Sequential(list(layers))
    if loss is not None:
        model.compile(loss=loss)
    return model


REFUSED = {
    "lstm": (
        lambda: _seq(L.Input((5, 3)), L.LSTM(4, name="lstm_a"), L.Dense(2, activation="softmax")),
        "layer 1 (lstm_a, LSTM): unsupported layer LSTM; supported: Activation,",
    ),
    "batch-norm": (
        lambda: _seq(L.Input((5,)), L.Dense(4), L.BatchNormalization(name="bn"), L.Dense(2, activation="softmax")),
        "layer 2 (bn, BatchNormalization): unsupported layer BatchNormalization",
    ),
    "activation": (
        lambda: _seq(L.Input((5,)), L.Dense(4, activation="elu", name="d1"), L.Dense(2, activation="softmax")),
        "layer 1 (d1, Dense): unsupported activation 'elu'; supported: relu, relu6, tanh, sigmoid",
    ),
    "hidden-softmax": (
        lambda: _seq(L.Input((5,)), L.Dense(4, activation="softmax", name="d1"), L.Dense(2, activation="softmax")),
        "layer 1 (d1, Dense): unsupported activation 'softmax' (softmax only on the output layer)",
    ),
    "no-bias": (
        lambda: _seq(L.Input((5,)), L.Dense(4, use_bias=False, name="d1"), L.Dense(2, activation="softmax")),
        "layer 1 (d1, Dense): use_bias=False is not supported",
    ),
    "causal": (
        lambda: _seq(L.Input((6, 2)), L.Conv1D(3, 2, padding="causal", name="c1"), L.Flatten(), L.Dense(2)),
        "layer 1 (c1, Conv1D): padding='causal' is not supported",
    ),
    "regulariser": (
        lambda: _seq(L.Input((5,)), L.Dense(4, kernel_regularizer="l2", name="d1"), L.Dense(2, activation="softmax")),
        "layer 1 (d1, Dense): kernel_regularizer is not supported",
    ),
    "frozen": (
        lambda: _seq(L.Input((5,)), L.Dense(4, trainable=False, name="d1"), L.Dense(2, activation="softmax")),
        "layer 1 (d1, Dense): trainable=False is not supported",
    ),
    "gru-option": (
        lambda: _seq(L.Input((5, 3)), L.GRU(2, reset_after=False, name="g"), L.Dense(2, activation="softmax")),
        "layer 1 (g, GRU): reset_after=False is not supported",
    ),
    "linear-without-loss": (
        lambda: _seq(L.Input((5,)), L.Dense(2)),
        "the output is linear and the model has no loss",
    ),
    "softmax-twice": (
        lambda: _seq(
            L.Input((5,)),
            L.Dense(2, activation="softmax"),
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        ),
        "sparse_categorical_crossentropy(from_logits=True) after a softmax output applies softmax twice",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_the_builder_cannot_train_is_refused_naming_the_layer(case):
    make, message = REFUSED[case]
    with pytest.raises(ConfigError) as e:
        translate(make(), "refused", "m.keras")
    assert message in str(e.value)


def test_not_a_sequential_or_an_hdf5_file_is_refused(tmp_path: Path):
    inp = tf.keras.Input((5,))
    with pytest.raises(ConfigError, match="expected a keras.Sequential model, got Functional"):
        translate(tf.keras.Model(inp, L.Dense(2)(inp)), "x")
    h5 = tmp_path / "m.h5"
    h5.write_bytes(b"")
    with pytest.raises(ConfigError, match="save the model as .keras"):
        build_file(h5)
    bad = tmp_path / "Model-1.keras"
    keras_cnn().save(bad)
    with pytest.raises(ConfigError, match="the file name gives the model's name"):
        build_file(bad)
