"""``fedge-sim run --model SPEC.toml``: a layer spec as the built ``.tflite`` the simulation trains.

Built models are paired with their spec by name: ``fedge-coordinator models build SPEC --out DIR``
writes ``DIR/<name>.tflite`` and ``DIR/<name>.json`` (the shipped examples sit beside their specs in
``agent/models/specs/``). The builder records no hash of the spec file; what it records is the
metadata the spec gives (layers, weight names, shapes and initialisers, seed, builder version:
:func:`fedge.agent.training.layerspec.metadata`), so the pair is matched on that, without TensorFlow.

In order: the ``.tflite`` beside the spec if its metadata is the spec's; else one built earlier into
``$XDG_CACHE_HOME/fedge/models/<name>-<spec sha256>/``; else it is built there when the ``modelgen``
extra (TensorFlow) is importable; else one :class:`ConfigError` naming the extra.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

from fedge.agent.core.errors import ConfigError
from fedge.agent.training import layerspec

log = logging.getLogger(__name__)

SPEC_SUFFIX = ".toml"


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fedge/models`` (``~/.cache/fedge/models`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path(os.environ.get("HOME", str(Path.home()))) / ".cache")
    return Path(base) / "fedge" / "models"


def is_spec(model: str) -> bool:
    return model.endswith(SPEC_SUFFIX)


def resolve(spec: str | Path, cache: Path | None = None) -> Path:
    """The built ``.tflite`` of the layer spec at ``spec`` (see the module's docstring)."""
    p = Path(spec)
    if not p.is_file():
        raise ConfigError(f"--model: no layer spec at {p}")
    net = layerspec.load(p)  # ConfigError names the file, layer and field
    beside = p.parent / f"{net.name}.tflite"
    why = layerspec.built_mismatch(net, beside)
    if why is None:
        return beside
    built_dir = (cache or cache_dir()) / f"{net.name}-{hashlib.sha256(p.read_bytes()).hexdigest()[:16]}"
    cached = built_dir / f"{net.name}.tflite"
    if layerspec.built_mismatch(net, cached) is None:
        return cached
    if importlib.util.find_spec("tensorflow") is None:
        raise ConfigError(
            f"--model: {p}: the built model beside it does not match ({why}); building it needs the "
            "'modelgen' extra (TensorFlow is not installed): pip install 'fedge[modelgen]', or build it "
            f"elsewhere with fedge-coordinator models build {p.name} --out {p.parent}"
        )
    from fedge.agent.training.modelgen.custom import build, write

    log.info("building %s (%s) into %s", p, why, built_dir)
    built = build(net)
    tfl, _ = write(built, built_dir)
    return tfl
