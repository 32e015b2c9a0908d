"""Sequence models built from specs (embedding + GRU), checked on the installed runtime without TensorFlow.

``shakespeare_gru`` (embedding 80x8, GRU 64 unrolled over 80 characters, dense 80) and
``tokens_stacked_gru`` (two GRUs, the first returning its sequence) are held to the numpy
reference of their specs (``acceptance.check``: forward, 6 SGD steps, gradients against float64
finite differences, tolerances stated there) and train; their ops (version-1 builtins) are checked
with every committed model's in test_training_zoo.py.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from fedge.agent.core.errors import ConfigError
from fedge.agent.training import acceptance, layer_reference, layerspec
from fedge.agent.training.models import MODELS_DIR, load_spec
from fedge.agent.training.runtime import load_interpreter
from fedge.agent.training.trainer import Trainer

SPECS = MODELS_DIR / "specs"
NAMES = ["shakespeare_gru", "tokens_stacked_gru"]
HAS_TF = importlib.util.find_spec("tensorflow") is not None


def net_of(name: str) -> layerspec.Network:
    return layerspec.load(SPECS / f"{name}.toml")


def interp(name: str):
    return load_interpreter(SPECS / f"{name}.tflite")


def test_shakespeare_spec_is_leafs_task():
    net = net_of("shakespeare_gru")
    assert net.input_shape == (80,) and net.num_outputs == 80 and net.loss == "softmax_cross_entropy"
    assert [layer.kind for layer in net.layers] == ["embedding", "gru", "dense"]
    assert [w.shape for w in net.weights] == [(80, 8), (8, 192), (64, 192), (2, 192), (64, 80), (80,)]
    assert net.num_params == 20_048


@pytest.mark.parametrize("name", NAMES)
def test_matches_its_numpy_reference_and_finite_differences(name):
    report = acceptance.check(interp(name), net_of(name), seed=5)
    # measured on tflite-runtime 2.14: logits 3e-7, weights 6e-8, gradients 3e-8 of the differences
    assert report.logits_gap <= 1e-5 and report.weights_gap <= 1e-5 and report.grad_vs_fd <= 1e-5
    assert report.ref_grad_vs_fd <= acceptance.REF_GRAD_TOL


@pytest.mark.parametrize("name", NAMES)
def test_initial_weights_as_recorded(name):
    net = net_of(name)
    got = interp(name).get_signature_runner("get_weights")()
    want = layerspec.initial_weights(net)
    for w in net.weights:
        np.testing.assert_array_equal(got[w.name], want[w.name])
    inits = {w.name: w.init for w in net.weights}
    emb = net.layers[0].name
    assert inits[f"{emb}_w"] == "uniform_0.05" and np.abs(got[f"{emb}_w"]).max() <= 0.05
    for layer in net.layers:
        if layer.kind == "gru":
            assert (inits[f"{layer.name}_w"], inits[f"{layer.name}_u"], inits[f"{layer.name}_b"]) == (
                "glorot_uniform",
                "glorot_uniform",
                "zeros",
            )
    assert not got[net.weights[-2].name].any() and not got[net.weights[-1].name].any()  # the head at zero


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


def test_reference_gru_is_kerass_equations_at_one_step():
    """One step from h = 0 by hand: h = (1 - z) * tanh(x W_n + b_n + r * c_n), z, r from their gates."""
    net = layerspec.parse(spec('type = "gru"\nunits = 2', 'type = "dense"\nunits = 2', shape="[1, 3]"))
    rng = np.random.default_rng(3)
    w = acceptance.random_weights(net, rng)
    x = rng.standard_normal((4, 1, 3))
    kw, b = w["gru1_w"].astype(np.float64), w["gru1_b"].astype(np.float64)
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    a = x[:, 0] @ kw + b[0]
    z, r = sig(a[:, :2] + b[1, :2]), sig(a[:, 2:4] + b[1, 2:4])
    h = (1 - z) * np.tanh(a[:, 4:] + r * b[1, 4:])
    want = h @ w["dense1_w"] + w["dense1_b"]
    np.testing.assert_allclose(layer_reference.logits(net, w, x, np.float64), want, rtol=1e-12)


def cyclic_text(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of 80 characters of a repeated phrase and the character after each."""
    phrase = "to be, or not to be, that is the question: "
    ids = np.array([sorted(set(phrase)).index(c) for c in phrase])
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(ids), n)
    stream = np.tile(ids, 81 // len(ids) + 3)
    x = np.stack([stream[s : s + 80] for s in starts]).astype(np.float32)
    y = np.array([stream[s + 80] for s in starts], np.int32)
    return x, y


def test_shakespeare_gru_trains_through_the_trainer():
    """From its initial weights, 30 epochs on 64 windows of a repeated phrase (batch 16, lr 1): the
    loss falls below 0.5 of the start (ln 80 = 4.38 with the head at zero; measured 0.12 of it)."""
    trainer = Trainer(load_spec(SPECS / "shakespeare_gru.tflite"))
    x, y = cyclic_text(64, seed=2)
    w0 = trainer.initial_weights()
    before = trainer.evaluate(w0, x, y).loss
    res = trainer.train(w0, x, y, epochs=30, batch_size=16, learning_rate=1.0, rng=np.random.default_rng(0))
    after = trainer.evaluate(w0 + res.delta, x, y)
    print(f"shakespeare_gru: loss {before:.4f} -> {after.loss:.4f}, accuracy {after.accuracy:.3f}")
    assert abs(before - np.log(80)) < 1e-5
    assert after.loss < 0.5 * before


# ------------------------------------------------------------------ the spec parser


def spec(*layers: str, shape: str = "[8]", extra: str = "") -> str:
    body = "\n".join(f"[[layers]]\n{layer}" for layer in layers)
    return f'name = "t"\ninput_shape = {shape}\n{extra}\n{body}\n'


def test_sequence_shapes():
    net = layerspec.parse(
        spec(
            'type = "embedding"\nvocab = 30\ndim = 5',
            'type = "gru"\nunits = 7\nreturn_sequences = true',
            'type = "gru"\nunits = 4',
            'type = "dense"\nunits = 3',
            shape="[9]",
        )
    )
    assert [layer.out_shape for layer in net.layers] == [(9, 5), (9, 7), (4,), (3,)]
    assert net.architecture == "9 -> embedding 30x5 -> gru 7 sequence -> gru 4 -> dense 3 (softmax_cross_entropy)"


def test_sequence_refusals_name_the_problem():
    with pytest.raises(ConfigError, match="embedding must be the first layer"):
        layerspec.parse(
            spec(
                'type = "dense"\nunits = 4',
                'type = "embedding"\nvocab = 3\ndim = 2',
                'type = "flatten"',
                'type = "dense"\nunits = 2',
            )
        )
    with pytest.raises(ConfigError, match=r"embedding takes a sequence of token ids"):
        layerspec.parse(
            spec(
                'type = "embedding"\nvocab = 3\ndim = 2',
                'type = "flatten"',
                'type = "dense"\nunits = 2',
                shape="[4, 2]",
            )
        )
    with pytest.raises(ConfigError, match=r"gru takes \[time, features\]"):
        layerspec.parse(spec('type = "gru"\nunits = 3', 'type = "dense"\nunits = 2'))
    with pytest.raises(ConfigError, match="return_sequences must be true or false"):
        layerspec.parse(
            spec(
                'type = "gru"\nunits = 3\nreturn_sequences = 1',
                'type = "flatten"',
                'type = "dense"\nunits = 2',
                shape="[4, 2]",
            )
        )
    with pytest.raises(ConfigError, match="vocab: expected an integer >= 2"):
        layerspec.parse(spec('type = "embedding"\nvocab = 1\ndim = 2', 'type = "flatten"', 'type = "dense"\nunits = 2'))


@pytest.mark.skipif(not HAS_TF, reason="needs TensorFlow (the modelgen extra)")
@pytest.mark.parametrize("name", NAMES)
def test_specs_rebuild_byte_for_byte(name):
    from fedge.agent.training.modelgen.custom import build_file, same_as_written

    assert same_as_written(build_file(SPECS / f"{name}.toml"), SPECS)
