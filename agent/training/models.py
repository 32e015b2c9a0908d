"""The model zoo: a :class:`ModelSpec` per ``agent/models/<name>.tflite`` and its JSON sidecar.

The sidecar names the architecture, version, input shape, number of classes and the weights in
the fixed order every flat weight vector uses. :func:`load_spec` checks it against the file's
sha256 and against the copy embedded in the model's ``fedge_model`` metadata entry.

Names are ``<family><width>`` for flat models of a non-default width (``logreg60``, ``mlp60``);
:func:`model_for` picks the member of a family that takes a given number of features.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedge.agent.core.errors import ConfigError, TrainingError
from fedge.agent.training.tflite_file import read_model_file

#: Where the committed zoo lives (shipped as package data).
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
METADATA_NAME = "fedge_model"
_NAME = re.compile(r"(?P<family>.*?)(?P<width>\d*)")


def family_of(name: str) -> str:
    """The architecture family of a zoo model name: ``"mlp60"`` -> ``"mlp"``, ``"cnn"`` -> ``"cnn"``."""
    m = _NAME.fullmatch(name)
    return m.group("family") if m and m.group("family") else name


@dataclass(frozen=True)
class ModelSpec:
    """One trainable model: where it is, what it is, and its weights in flat-vector order."""

    name: str
    path: Path
    architecture: str
    version: int
    input_shape: tuple[int, ...]  # one example, without the (dynamic) batch dimension
    num_classes: int
    weight_names: tuple[str, ...]
    weight_shapes: tuple[tuple[int, ...], ...]
    num_params: int
    sha256: str
    #: Built models (``fedge-coordinator models build``) record their loss; the zoo's is softmax.
    loss: str = "softmax_cross_entropy"

    @property
    def class_labels(self) -> bool:
        """True when ``train`` takes class ids (softmax); else float targets ``[batch, num_classes]``."""
        return self.loss == "softmax_cross_entropy"

    @property
    def family(self) -> str:
        """The architecture family (``logreg``, ``mlp``, ``cnn``): same layers, any input width."""
        return family_of(self.name)

    @property
    def example_size(self) -> int:
        """Number of features in one example."""
        return math.prod(self.input_shape)

    def split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """A flat float32 vector as named weight arrays (views, in the fixed order)."""
        flat = np.asarray(flat)
        if flat.shape != (self.num_params,):
            raise TrainingError(
                f"{self.name}: expected a flat vector of {self.num_params} weights, got shape {flat.shape}"
            )
        out, start = {}, 0
        for name, shape in zip(self.weight_names, self.weight_shapes):
            size = math.prod(shape)
            out[name] = flat[start : start + size].reshape(shape)
            start += size
        return out

    def flatten(self, weights: dict[str, np.ndarray]) -> np.ndarray:
        """Named weight arrays as one flat float32 vector in the fixed order."""
        parts = []
        for name, shape in zip(self.weight_names, self.weight_shapes):
            a = np.asarray(weights[name], dtype=np.float32)
            if a.shape != shape:
                raise TrainingError(f"{self.name}: weight {name} has shape {a.shape}, expected {shape}")
            parts.append(a.ravel())
        return np.concatenate(parts)


def list_models() -> tuple[str, ...]:
    """Names of the committed zoo models."""
    return tuple(sorted(p.stem for p in MODELS_DIR.glob("*.json") if p.with_suffix(".tflite").exists()))


def load_spec(name_or_path: str | Path) -> ModelSpec:
    """The spec of a zoo model by name (``"mlp"``) or of any ``.tflite`` with its ``.json`` beside it."""
    p = Path(name_or_path)
    if p.suffix != ".tflite":
        p = MODELS_DIR / f"{name_or_path}.tflite"
    js = p.with_suffix(".json")
    if not p.exists() or not js.exists():
        known = ", ".join(list_models())
        raise TrainingError(f"no model {name_or_path!r} (need {p.name} and {js.name}; zoo: {known})")
    data = p.read_bytes()
    try:
        meta = json.loads(js.read_text())
        embedded = json.loads(read_model_file(data).metadata[METADATA_NAME])
        spec = ModelSpec(
            name=str(meta["name"]),
            path=p,
            architecture=str(meta["architecture"]),
            version=int(meta["version"]),
            input_shape=tuple(int(d) for d in meta["input_shape"][1:]),
            num_classes=int(meta["num_classes"]),
            weight_names=tuple(str(w["name"]) for w in meta["weights"]),
            weight_shapes=tuple(tuple(int(d) for d in w["shape"]) for w in meta["weights"]),
            num_params=int(meta["num_params"]),
            sha256=str(meta["sha256"]),
            loss=str(meta.get("loss", "softmax_cross_entropy")),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise TrainingError(f"{js}: malformed model metadata ({type(e).__name__}: {e})") from None
    if hashlib.sha256(data).hexdigest() != spec.sha256:
        raise TrainingError(f"{p}: sha256 does not match {js.name}; regenerate or restore the pair")
    if {k: v for k, v in meta.items() if k != "sha256"} != embedded:
        raise TrainingError(f"{p}: embedded metadata differs from {js.name}")
    if spec.num_params != sum(math.prod(s) for s in spec.weight_shapes):
        raise TrainingError(f"{js}: num_params does not match the weight shapes")
    return spec


def model_for(family: str, input_width: int) -> ModelSpec:
    """The zoo model of ``family`` (``"logreg"``, ``"mlp"``, ...) taking ``input_width`` features per example.

    Lets a caller with flat data of some width (Synthetic has 60) pick the TFLite model built for
    it instead of padding or truncating. Raises :class:`ConfigError` naming the widths the zoo has.
    """
    specs = [load_spec(n) for n in list_models() if family_of(n) == family]
    if not specs:
        families = ", ".join(sorted({family_of(n) for n in list_models()}))
        raise ConfigError(f"no model family {family!r} in the zoo (families: {families})")
    fits = [s for s in specs if s.example_size == input_width]
    if not fits:
        have = ", ".join(f"{s.name} takes {s.example_size}" for s in sorted(specs, key=lambda s: s.example_size))
        raise ConfigError(
            f"no zoo {family} model takes {input_width} input features ({have}); "
            "add a recipe to agent/training/modelgen/build.py and regenerate"
        )
    return fits[0]
