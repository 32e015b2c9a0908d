"""Models built from layer specs (``agent/models/specs/``): checked on the installed runtime, no TensorFlow.

Each committed ``.tflite`` is held to the numpy reference of its spec (forward, SGD steps,
gradients against float64 finite differences: ``acceptance.check``, tolerances stated there),
trains, and loads through ``load_spec`` and the Trainer. The spec parser refuses what it cannot
build. Where TensorFlow is installed (the ``modelgen`` extra), the specs are rebuilt byte for byte.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from fedge.agent.core.errors import ConfigError, TrainingError
from fedge.agent.training import acceptance, layer_reference, layerspec
from fedge.agent.training.models import MODELS_DIR, load_spec
from fedge.agent.training.runtime import load_interpreter
from fedge.agent.training.tflite_file import read_model_file
from fedge.agent.training.trainer import Trainer

SPECS = MODELS_DIR / "specs"
NAMES = ["digits_cnn", "digits_depthwise", "har_cnn1d", "sensor_multilabel", "sensor_regression"]
DROPOUT = {"sensor_multilabel"}
HAS_TF = importlib.util.find_spec("tensorflow") is not None
#: Sequence models over token ids (tests/test_training_sequence.py).
SEQUENCE = ["shakespeare_gru", "tokens_stacked_gru"]


def net_of(name: str) -> layerspec.Network:
    return layerspec.load(SPECS / f"{name}.toml")


def interp(name: str):
    return load_interpreter(SPECS / f"{name}.tflite")


def test_every_spec_has_its_built_model():
    assert sorted(p.stem for p in SPECS.glob("*.toml")) == sorted(NAMES + SEQUENCE)
    assert sorted(p.stem for p in SPECS.glob("*.tflite")) == sorted(NAMES + SEQUENCE)


@pytest.mark.parametrize("name", NAMES)
def test_built_model_loads_by_path_with_its_metadata(name):
    net = net_of(name)
    spec = load_spec(SPECS / f"{name}.tflite")
    assert (spec.name, spec.input_shape, spec.num_classes, spec.loss) == (
        name,
        net.input_shape,
        net.num_outputs,
        net.loss,
    )
    assert spec.weight_names == tuple(w.name for w in net.weights)
    assert spec.weight_shapes == tuple(w.shape for w in net.weights)
    info = read_model_file(spec.path.read_bytes())
    assert [op.custom_code for op in info.op_codes if op.is_custom] == []
    meta = json.loads(info.metadata["fedge_model"])
    assert [w["init"] for w in meta["weights"]] == [w.init for w in net.weights]
    assert meta["target"] == net.target and meta["architecture"] == net.architecture
    sigs = interp(name).get_signature_list()
    assert sorted(sigs) == ["get_weights", "infer", "set_weights", "train"]
    assert sorted(sigs["train"]["inputs"]) == ["lr", "x", "y"]


@pytest.mark.parametrize("name", NAMES)
def test_initial_weights_zero_head_and_biases_he_or_glorot_hidden(name):
    net = net_of(name)
    got = interp(name).get_signature_runner("get_weights")()
    want = layerspec.initial_weights(net)
    kernels = [w for w in net.weights if len(w.shape) > 1]
    for w in net.weights:
        np.testing.assert_array_equal(got[w.name], want[w.name])
        if len(w.shape) == 1 or w is kernels[-1]:
            assert w.init == "zeros" and not got[w.name].any()
        else:
            fan_in = int(np.prod(w.shape[:-1]))
            assert w.init in ("he_uniform", "glorot_uniform") and got[w.name].std() > 0
            assert np.abs(got[w.name]).max() <= np.sqrt(6 / fan_in) + 1e-7


@pytest.mark.parametrize("name", sorted(set(NAMES) - DROPOUT))
def test_built_model_matches_its_numpy_reference_and_finite_differences(name):
    """Forward, 6 SGD steps (batches of 7 and 16) and gradients, at acceptance's stated tolerances."""
    report = acceptance.check(interp(name), net_of(name), seed=5)
    assert report.logits_gap <= 1e-5 and report.weights_gap <= 1e-5 and report.grad_vs_fd <= 1e-5
    assert report.ref_grad_vs_fd <= acceptance.REF_GRAD_TOL


def test_the_check_catches_a_model_that_is_not_its_spec():
    """The same weights under a spec with tanh where the model has relu must be refused."""
    text = (SPECS / "sensor_regression.toml").read_text().replace('activation = "relu"', 'activation = "tanh"')
    with pytest.raises(TrainingError, match="does not match its numpy reference"):
        acceptance.check(interp("sensor_regression"), layerspec.parse(text))


@pytest.mark.parametrize("name", NAMES)
def test_dynamic_batch_forward_matches_reference(name):
    net, it = net_of(name), interp(name)
    rng = np.random.default_rng(1)
    w = acceptance.random_weights(net, rng)
    it.get_signature_runner("set_weights")(**w)
    infer = it.get_signature_runner("infer")
    for n in (1, 3, 33):
        x, _ = acceptance.batch(net, n, rng)
        np.testing.assert_allclose(infer(x=x)["logits"], layer_reference.logits(net, w, x), atol=1e-5, rtol=1e-4)


def test_dropout_mask_is_train_time_only_and_gradients_match_the_reference_with_that_mask():
    """Batch of one at lr 1: rows of the head's gradient are zero exactly for the dropped units.
    With that mask the reference gives every gradient; over 300 steps about 1 - rate are kept."""
    net, it = net_of("sensor_multilabel"), interp("sensor_multilabel")
    rate = next(layer.p["rate"] for layer in net.layers if layer.kind == "dropout")
    train, set_w, get_w = (it.get_signature_runner(k) for k in ("train", "set_weights", "get_weights"))
    rng = np.random.default_rng(9)
    w0 = acceptance.random_weights(net, rng)
    kept = []
    for _ in range(300):
        x, y = acceptance.batch(net, 1, rng)
        set_w(**w0)
        train(x=x, y=y, lr=np.float32(1.0))
        w1 = get_w()
        head = w0["dense2_w"] - w1["dense2_w"]
        mask = (np.abs(head).max(axis=1) > 0).astype(np.float32) / np.float32(1 - rate)
        _, grads = layer_reference.loss_and_grads(net, w0, x, y, masks={"dropout1": mask[None, :]})
        for k in grads:
            np.testing.assert_allclose(w0[k] - w1[k], grads[k], atol=2e-6, rtol=1e-3)
        kept.append(mask > 0)
    share = float(np.mean(kept))
    # 300 x 24 Bernoulli(0.75) draws: standard deviation 0.005; 0.03 is six of them
    assert abs(share - (1 - rate)) < 0.03, share
    assert 0 < np.mean(kept, axis=0).min() and np.mean(kept, axis=0).max() < 1  # every unit is sometimes dropped


def teacher_data(net: layerspec.Network, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs with targets from a fixed random linear teacher: of the features, or for time series
    ``[time, channels]`` of the channel means (what a global average pool keeps)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *net.input_shape)).astype(np.float32)
    f = x.mean(axis=1) * np.sqrt(x.shape[1]) if len(net.input_shape) == 2 else x.reshape(n, -1)
    t = f @ rng.standard_normal((f.shape[1], net.num_outputs)).astype(np.float32) / np.sqrt(f.shape[1])
    if net.loss == "softmax_cross_entropy":
        return x, t.argmax(axis=1).astype(np.int32)
    if net.loss == "binary_cross_entropy":
        return x, (t > 0).astype(np.float32)
    return x, t.astype(np.float32)


@pytest.mark.parametrize("name", NAMES)
def test_built_model_trains_through_the_trainer(name):
    """From its initial weights, 40 epochs on 64 examples (batch 16, lr 0.3): the loss falls by 20%
    (measured: to 0.02 to 0.71 of the start, the dropout model the least)."""
    spec = load_spec(SPECS / f"{name}.tflite")
    net = net_of(name)
    x, y = teacher_data(net, 64, seed=4)
    trainer = Trainer(spec)
    w0 = trainer.initial_weights()
    before = trainer.evaluate(w0, x, y).loss
    res = trainer.train(w0, x, y, epochs=40, batch_size=16, learning_rate=0.3, rng=np.random.default_rng(0))
    after = trainer.evaluate(w0 + res.delta, x, y).loss
    print(f"{name}: loss {before:.4f} -> {after:.4f} ({after / before:.2f})")
    assert res.steps == 160 and np.isfinite(res.loss)
    assert after < 0.8 * before, f"{name}: loss {before:.4f} -> {after:.4f}"


def test_trainer_refuses_targets_of_the_wrong_shape():
    trainer = Trainer(load_spec(SPECS / "sensor_regression.tflite"))
    with pytest.raises(TrainingError, match=r"targets of shape \(4, 2\)"):
        trainer.train(
            trainer.initial_weights(),
            np.zeros((4, 8)),
            np.zeros(4, np.int32),
            epochs=1,
            batch_size=2,
            learning_rate=0.1,
            rng=np.random.default_rng(0),
        )


# ------------------------------------------------------------------ the spec parser


def spec(*layers: str, shape: str = "[8]", extra: str = "") -> str:
    body = "\n".join(f"[[layers]]\n{layer}" for layer in layers)
    return f'name = "t"\ninput_shape = {shape}\n{extra}\n{body}\n'


@pytest.mark.parametrize("kind", ["lstm", "separable_conv2d", "batchnorm"])
def test_unsupported_layer_is_refused_by_name(kind):
    with pytest.raises(ConfigError, match=rf"layer 2 \({kind}\): .*layer '{kind}'; supported: dense, flatten"):
        layerspec.parse(spec('type = "dense"\nunits = 4', f'type = "{kind}"', 'type = "dense"\nunits = 2'))


def test_parser_refusals_name_the_problem():
    with pytest.raises(ConfigError, match="dense takes a flat input.*add a flatten"):
        layerspec.parse(spec('type = "dense"\nunits = 2', shape="[4, 4, 1]"))
    with pytest.raises(ConfigError, match="last layer must be dense"):
        layerspec.parse(spec('type = "dense"\nunits = 2', 'type = "relu"'))
    with pytest.raises(ConfigError, match="unsupported loss 'hinge'"):
        layerspec.parse(spec('type = "dense"\nunits = 2', extra='loss = "hinge"'))
    with pytest.raises(ConfigError, match="unsupported activation 'gelu'"):
        layerspec.parse(spec('type = "dense"\nunits = 2\nactivation = "gelu"'))
    with pytest.raises(ConfigError, match="unknown key.*kernel for a dense"):
        layerspec.parse(spec('type = "dense"\nunits = 2\nkernel = 3'))
    with pytest.raises(ConfigError, match="window 5 is larger than the input"):
        layerspec.parse(
            spec(
                'type = "conv1d"\nfilters = 2\nkernel = 5',
                'type = "flatten"',
                'type = "dense"\nunits = 2',
                shape="[4, 1]",
            )
        )
    with pytest.raises(ConfigError, match="rate must be a number in"):
        layerspec.parse(spec('type = "dropout"\nrate = 1.0', 'type = "dense"\nunits = 2'))


def test_shapes_padding_and_initialisers():
    net = layerspec.parse(
        spec(
            'type = "conv2d"\nfilters = 3\nkernel = [3, 2]\nstride = [2, 1]\npadding = "same"\nactivation = "tanh"',
            'type = "maxpool"\nsize = 2',
            'type = "flatten"',
            'type = "dense"\nunits = 4\nactivation = "relu"',
            'type = "dense"\nunits = 2',
            shape="[9, 8, 2]",
        )
    )
    conv = net.layers[0]
    # SAME as TF: ceil(9/2) = 5 rows, padding (5-1)*2+3-9 = 2 split 1/1; 8 columns, padding 1 split 0/1
    assert conv.out_shape == (5, 8, 3) and conv.p["pads"] == [1, 1, 0, 1]
    assert [layer.out_shape for layer in net.layers[2:]] == [(2, 4, 3), (24,), (4,), (4,), (2,)]
    assert [w.init for w in net.weights] == ["glorot_uniform", "zeros", "he_uniform", "zeros", "zeros", "zeros"]


# ------------------------------------------------------------------ the builder (modelgen extra)


@pytest.mark.skipif(not HAS_TF, reason="needs TensorFlow (the modelgen extra)")
@pytest.mark.parametrize("name", NAMES)
def test_specs_rebuild_byte_for_byte(name):
    from fedge.agent.training.modelgen.custom import build_file, same_as_written

    assert same_as_written(build_file(SPECS / f"{name}.toml"), SPECS)


@pytest.mark.skipif(HAS_TF, reason="checks the message printed without TensorFlow")
def test_models_build_without_tensorflow_names_the_extra(tmp_path: Path, capsys):
    from fedge.agent.core.cliutil import EXIT_MISSING_EXTRA, run
    from fedge.coordinator.service.cli import cli

    code = run(cli, "fedge-coordinator", ["models", "build", str(SPECS / "har_cnn1d.toml"), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_MISSING_EXTRA
    assert err == [
        "fedge-coordinator: error: this needs the 'modelgen' extra (tensorflow is not installed): "
        "pip install 'fedge[modelgen]'"
    ]
    assert list(tmp_path.iterdir()) == []
