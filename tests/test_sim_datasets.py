"""Offline data sets: Synthetic(α, β) against the FedProx procedure, digits, MNIST-5k, .npz checks."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.agent.core.errors import ConfigError
from fedge.simulations.datasets import (
    DatasetSpec,
    check_model_fits,
    digits,
    from_npz,
    mnist5k,
    parse_dataset_spec,
    synthetic,
    synthetic_device,
)


def _pooled_within_device(alpha: float, beta: float, devices: range, seed: int = 11) -> np.ndarray:
    """Samples of several devices, each centred on its own mean (removes v_k)."""
    parts = []
    for k in devices:
        x, _ = synthetic_device(alpha, beta, seed, k)
        parts.append(x - x.mean(axis=0))
    return np.concatenate(parts).astype(np.float64)


def _dominant_share(alpha: float, beta: float, devices: int = 300) -> float:
    """Mean over devices of the share of a device's most common label: 0.1 is balanced, 1 is one label."""
    shares = []
    for k in range(devices):
        _, y = synthetic_device(alpha, beta, 7, k)
        shares.append(np.bincount(y, minlength=10).max() / len(y))
    return float(np.mean(shares))


def test_synthetic_covariance_is_diagonal_with_power_law_variances() -> None:
    x = _pooled_within_device(1.0, 1.0, range(40))
    assert len(x) > 5000
    var = x.var(axis=0)
    expected = np.arange(1, 61) ** -1.2
    # ~>5,000 samples: the variance estimate's relative std is ~2%; allow 10%.
    np.testing.assert_allclose(var, expected, rtol=0.10)
    corr = np.corrcoef(x.T)
    off = corr[~np.eye(60, dtype=bool)]
    assert np.abs(off).max() < 0.08


def test_synthetic_shapes_labels_and_sample_counts() -> None:
    sizes = []
    for k in range(200):
        x, y = synthetic_device(1.0, 1.0, 3, k)
        assert x.shape == (len(y), 60) and x.dtype == np.float32
        assert y.min() >= 0 and y.max() < 10
        sizes.append(len(y))
    sizes = np.array(sizes)
    assert sizes.min() >= 50  # lognormal(4, 2) + 50
    # log(n - 50) ~ N(4, 2) before truncation to an integer: the median of n - 50 is e^4 ~ 55.
    assert 30 < np.median(sizes - 50) < 100
    assert np.std(np.log(np.maximum(sizes - 50, 1))) > 1.5


def test_synthetic_beta_increases_label_skew_and_alpha_changes_nothing() -> None:
    # β shifts each device's input mean, so one class dominates more often.
    assert _dominant_share(0.0, 2.0) > _dominant_share(0.0, 0.0) + 0.03
    # α shifts every entry of W_k and b_k by the same u_k: all logits move together, the argmax
    # (the label) does not. This is a property of the published procedure, kept as is.
    for k in range(20):
        x0, y0 = synthetic_device(0.0, 1.0, 5, k)
        x1, y1 = synthetic_device(3.0, 1.0, 5, k)
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)


def test_synthetic_is_reproducible_and_lazy_equals_eager() -> None:
    a = synthetic(1.0, 1.0, 100_000, np.random.default_rng(42))
    b = synthetic(1.0, 1.0, 100_000, np.random.default_rng(42))
    c = synthetic(1.0, 1.0, 100_000, np.random.default_rng(43))
    assert a.base_seed == b.base_seed != c.base_seed
    # Eager: devices 0..49 in order. Lazy: a few picked alone, in reverse order, from another object.
    eager = [a.device(k) for k in range(50)]
    for k in (49, 17, 3, 0):
        x, y = b.device(k)
        np.testing.assert_array_equal(x, eager[k][0])
        np.testing.assert_array_equal(y, eager[k][1])
    x99, _ = b.device(99_999)  # the last device costs the same as the first
    assert x99.shape[1] == 60
    assert not np.array_equal(c.device(0)[0][:5], eager[0][0][:5])
    with pytest.raises(IndexError):
        a.device(100_000)


def test_synthetic_train_test_split_is_80_20_and_test_set_is_fixed() -> None:
    d = synthetic(1.0, 1.0, 1000, np.random.default_rng(1), test_devices=30)
    for k in range(5):
        xtr, ytr = d.device(k)
        xte, yte = d.device_test(k)
        full, _ = synthetic_device(1.0, 1.0, d.base_seed, k)
        np.testing.assert_array_equal(np.concatenate([xtr, xte]), full)
        assert abs(len(yte) / len(full) - 0.2) < 0.01 + 1 / len(full)
    ids = d.test_ids()
    assert len(ids) == 30 and len(set(ids.tolist())) == 30
    x1, y1 = d.test_set()
    x2, y2 = d.test_set()
    np.testing.assert_array_equal(y1, y2)
    assert len(y1) == sum(len(d.device_test(int(k))[1]) for k in ids)


def test_digits_and_mnist_declare_shapes_and_are_scaled() -> None:
    g = digits(np.random.default_rng(0))
    assert g.input_shape == (64,) and g.num_classes == 10
    assert g.x_train.shape[1:] == (64,) and len(g.y_train) + len(g.y_test) == 1797
    assert 0.0 <= g.x_train.min() and g.x_train.max() <= 1.0
    m = mnist5k(np.random.default_rng(0))
    assert m.input_shape == (28, 28, 1) and m.num_classes == 10
    assert len(m.y_train) == 4000 and len(m.y_test) == 1000
    assert m.x_train.max() == 1.0 and m.x_train.min() == 0.0


def test_model_mismatch_is_an_error_never_padding() -> None:
    g = digits(np.random.default_rng(0))
    check_model_fits("mlp", (64,), 10, g)
    with pytest.raises(ConfigError, match=r"shape \(60,\).*\(64,\)"):
        check_model_fits("mlp", (60,), 10, g)
    m = mnist5k(np.random.default_rng(0))
    with pytest.raises(ConfigError, match="28, 28, 1"):
        check_model_fits("cnn", (28, 28, 1), 10, g)
    check_model_fits("mlp", (784,), 10, m, flat=True)
    with pytest.raises(ConfigError, match="classes"):
        check_model_fits("logreg", (64,), 5, g)


def test_parse_dataset_spec() -> None:
    assert parse_dataset_spec("synthetic:1,1") == DatasetSpec("synthetic", 1.0, 1.0)
    assert parse_dataset_spec("synthetic:0.5,0") == DatasetSpec("synthetic", 0.5, 0.0)
    assert parse_dataset_spec("digits").kind == "digits"
    assert parse_dataset_spec("mnist").kind == "mnist"
    assert parse_dataset_spec("/data/mine.npz") == DatasetSpec("npz", path="/data/mine.npz")
    for bad in ("synthetic:1", "synthetic:a,b", "synthetic:-1,1", "cifar", "data.csv"):
        with pytest.raises(ConfigError, match="--dataset"):
            parse_dataset_spec(bad)


def test_from_npz_accepts_good_files_and_names_what_is_wrong(tmp_path) -> None:
    rng = np.random.default_rng(0)
    good = tmp_path / "good.npz"
    np.savez(good, x=rng.random((50, 6)), y=np.arange(50) % 3, writer=np.arange(50) // 5)
    d = from_npz(good, rng)
    assert d.input_shape == (6,) and d.num_classes == 3 and len(d.writers) == len(d.y_train) == 40

    cases = {
        "nokeys.npz": ({"a": np.zeros((3, 2)), "y": np.zeros(3, int)}, "missing array"),
        "ylen.npz": ({"x": np.zeros((4, 2)), "y": np.zeros(3, int)}, "'y' must have shape"),
        "yfloat.npz": ({"x": np.zeros((4, 2)), "y": np.array([0.5, 1, 0, 1])}, "integer class labels"),
        "yneg.npz": ({"x": np.zeros((4, 2)), "y": np.array([-1, 1, 0, 1])}, "integer class labels"),
        "xflat.npz": ({"x": np.zeros(4), "y": np.array([0, 1, 0, 1])}, "'x' must have shape"),
        "xnan.npz": ({"x": np.full((4, 2), np.nan), "y": np.array([0, 1, 0, 1])}, "finite"),
        "oneclass.npz": ({"x": np.zeros((4, 2)), "y": np.zeros(4, int)}, "single class"),
        "pickled.npz": ({"x": np.array([{"a": 1}] * 4, dtype=object), "y": np.array([0, 1, 0, 1])}, "pickles"),
    }
    for name, (arrays, message) in cases.items():
        path = tmp_path / name
        np.savez(path, **arrays)
        with pytest.raises(ConfigError, match=message):
            from_npz(path, rng)
    with pytest.raises(ConfigError, match="no such file"):
        from_npz(tmp_path / "absent.npz", rng)


def test_pooled_synthetic_is_tested_on_the_devices_it_pooled() -> None:
    """Re-partitioned Synthetic trains on devices 0..m-1 and tests on their own held-out 20%."""
    d = synthetic(1.0, 1.0, 100_000, np.random.default_rng(3))
    pool = d.pooled(12)
    held = [d.device_test(k) for k in range(12)]
    np.testing.assert_array_equal(pool.y_test, np.concatenate([h[1] for h in held]))
    np.testing.assert_array_equal(pool.x_test, np.concatenate([h[0] for h in held]))
    assert len(pool.y_train) == sum(len(d.device(k)[1]) for k in range(12))
