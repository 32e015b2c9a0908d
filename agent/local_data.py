"""A device's local examples: import from ``.npz``/CSV into the store, load them back for training.

Files: ``.npz`` with arrays ``x`` (examples; any shape whose per-row size matches the model's
input) and ``y`` (integer labels), read without pickle; or CSV (``.csv``/``.csv.gz``), one
example per line, features then the label in the **last** column, an optional header line.
Features are stored as given (float32, no scaling). Rows are stored in the model's input shape.
"""

from __future__ import annotations

import gzip
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedge.agent.core.errors import ConfigError, TrainingError
from fedge.agent.store import Store
from fedge.agent.training.models import ModelSpec

SPLITS = ("train", "test")
_BATCH = 1000


@dataclass(frozen=True)
class ImportResult:
    """How many examples of a file went to each split."""

    path: str
    train: int
    test: int


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as f:
        first = f.readline()
    try:
        [float(v) for v in first.strip().split(",")]
        skip = 0
    except ValueError:
        skip = 1  # a header line
    try:
        data = np.loadtxt(path, delimiter=",", skiprows=skip, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise TrainingError(f"{path}: not a numeric CSV ({e})") from None
    if data.size == 0:
        return np.zeros((0, 0)), np.zeros(0)
    if data.shape[1] < 2:
        raise TrainingError(f"{path}: expected features then a label on each line, got {data.shape[1]} column(s)")
    return data[:, :-1], data[:, -1]


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"x", "y"} - set(z.files)
            if missing:
                raise TrainingError(
                    f"{path}: missing array(s) {sorted(missing)}; expected 'x' and 'y', found {z.files}"
                )
            return z["x"], z["y"]
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise TrainingError(f"{path}: not a readable .npz of plain arrays ({e})") from None


def read_examples(path: str | Path, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate a data file for ``spec``: (x float32 [n, *input_shape], y int64)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file")
    if p.suffix == ".npz":
        x, y = _read_npz(p)
    elif p.suffix == ".csv" or p.name.endswith(".csv.gz"):
        x, y = _read_csv(p)
    else:
        raise ConfigError(f"{p}: unknown data format; expected .npz (arrays x, y) or .csv/.csv.gz (label last)")
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or len(x) == 0:
        raise TrainingError(f"{p}: no examples")
    if y.shape != (len(x),):
        raise TrainingError(f"{p}: {len(x)} examples but labels of shape {y.shape}; expected ({len(x)},)")
    row = math.prod(x.shape[1:])
    if row != spec.example_size:
        raise TrainingError(
            f"{p}: each example has shape {x.shape[1:]} ({row} values); model {spec.name} takes "
            f"{spec.input_shape} ({spec.example_size} values)"
        )
    if not (np.issubdtype(x.dtype, np.number) and np.issubdtype(y.dtype, np.number)):
        raise TrainingError(f"{p}: features and labels must be numeric, got {x.dtype} and {y.dtype}")
    if not np.all(np.isfinite(x)):
        raise TrainingError(f"{p}: features contain NaN or infinity")
    bad = ~np.isfinite(y) | (y != np.round(y)) | (y < 0) | (y >= spec.num_classes)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise TrainingError(f"{p}: label {y[i].item()} of example {i} is not an integer in [0, {spec.num_classes})")
    return x.reshape(len(x), *spec.input_shape).astype(np.float32), y.astype(np.int64)


def import_examples(
    store: Store,
    path: str | Path,
    spec: ModelSpec,
    *,
    split: str = "train",
    test_fraction: float = 0.0,
    rng: np.random.Generator | None = None,
) -> ImportResult:
    """Validate a file and append its examples to ``split``, or hold out ``test_fraction`` at random."""
    if split not in SPLITS:
        raise ConfigError(f"split: expected one of {SPLITS}, got {split!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test_fraction: expected a number in [0, 1), got {test_fraction}")
    if test_fraction and rng is None:
        raise ConfigError("test_fraction needs an rng to choose the held-out examples")
    x, y = read_examples(path, spec)
    splits = np.full(len(x), split, dtype=object)
    if test_fraction:
        held = rng.permutation(len(x))[: int(round(test_fraction * len(x)))]
        splits[held] = "test"
    shape = json.dumps(list(spec.input_shape))
    rows = (
        {
            "split": s,
            "label": int(lab),
            "shape": shape,
            "features": xi.astype("<f4").tobytes(),
            "source": Path(path).name,
        }
        for xi, lab, s in zip(x, y, splits)
    )
    with store.db.conn:
        store.db["examples"].insert_all(rows, batch_size=_BATCH)
    n_test = int(np.sum(splits == "test"))
    return ImportResult(str(path), len(x) - n_test, n_test)


def _stored_shape(store: Store, split: str, spec: ModelSpec | None) -> tuple[int, ...] | None:
    """The shape ``split``'s examples are read in for ``spec`` (None: the split is empty); TrainingError
    when they cannot feed it."""
    if split not in SPLITS:
        raise ConfigError(f"split: expected one of {SPLITS}, got {split!r}")
    shapes = [r["shape"] for r in store.db.query("select distinct shape from examples where split = ?", [split])]
    if len(shapes) > 1:
        raise TrainingError(f"split {split!r} mixes example shapes {shapes}; data was imported for different models")
    if not shapes:
        return None
    shape = tuple(json.loads(shapes[0]))
    if spec is not None and shape != spec.input_shape:
        # the same features in another layout (flat 64 for an 8x8x1 model a release brought) are
        # read in the model's shape, row-major as the model's own input; other sizes are refused
        if len(shape) != 1 or math.prod(shape) != spec.example_size:
            raise TrainingError(
                f"stored {split} examples have shape {shape}; model {spec.name} takes {spec.input_shape}"
            )
        shape = spec.input_shape
    return shape


def check_fits(store: Store, spec: ModelSpec) -> None:
    """TrainingError naming the split when this device's stored examples cannot feed ``spec`` (read no rows)."""
    for split in SPLITS:
        _stored_shape(store, split, spec)


def load_examples(store: Store, split: str, spec: ModelSpec | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All examples of ``split`` in import order: (x float32 [n, *shape], y int32)."""
    shape = _stored_shape(store, split, spec)
    if shape is None:
        empty = tuple(spec.input_shape) if spec else (0,)
        return np.zeros((0, *empty), np.float32), np.zeros(0, np.int32)
    rows = store.db.execute("select features, label from examples where split = ? order by id", [split]).fetchall()
    x = np.frombuffer(b"".join(r[0] for r in rows), dtype="<f4").reshape(len(rows), *shape)
    y = np.fromiter((r[1] for r in rows), dtype=np.int32, count=len(rows))
    return x.astype(np.float32), y


def example_stats(store: Store) -> dict[str, dict[str, object]]:
    """Per split: number of examples, their shape and the count of each label."""
    out: dict[str, dict[str, object]] = {}
    for split in SPLITS:
        rows = list(
            store.db.query(
                "select label, shape, count(*) as n from examples where split = ? group by label, shape order by label",
                [split],
            )
        )
        out[split] = {
            "examples": sum(r["n"] for r in rows),
            "shapes": sorted({r["shape"] for r in rows}),
            "labels": {str(r["label"]): r["n"] for r in rows},
        }
    return out
