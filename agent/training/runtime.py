"""Loads a TFLite interpreter from whichever runtime is installed: tflite-runtime or ai-edge-litert.

Both expose the same ``Interpreter`` API (signature runners, resource variables). tflite-runtime
2.14 has no wheel past Python 3.11; ai-edge-litert is its successor for newer Pythons.
Default ``num_threads=1``: with 2 threads tflite-runtime 2.14 was erratic and up to 200x slower.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from fedge.agent.core.errors import TrainingError

#: Interpreter modules in order of preference; the first importable one is used.
RUNTIMES = ("tflite_runtime.interpreter", "ai_edge_litert.interpreter")


def interpreter_module(runtime: str | None = None) -> ModuleType:
    """The interpreter module: ``runtime`` if named (one of :data:`RUNTIMES`), else the first installed."""
    candidates = RUNTIMES if runtime is None else (runtime,)
    if runtime is not None and runtime not in RUNTIMES:
        raise TrainingError(f"unknown TFLite runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    for name in candidates:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise TrainingError(f"no TFLite runtime installed (tried {', '.join(candidates)})")


def runtime_name(runtime: str | None = None) -> str:
    """The distribution name of the runtime in use, e.g. ``tflite_runtime``."""
    return interpreter_module(runtime).__name__.split(".")[0]


def load_interpreter(model: Path | str | bytes, *, num_threads: int = 1, runtime: str | None = None) -> Any:
    """An allocated interpreter for a model file or flatbuffer bytes; errors become TrainingError."""
    if num_threads < 1:
        raise TrainingError(f"num_threads must be >= 1, got {num_threads}")
    mod = interpreter_module(runtime)
    try:
        if isinstance(model, bytes):
            interp = mod.Interpreter(model_content=model, num_threads=num_threads)
        else:
            interp = mod.Interpreter(model_path=str(model), num_threads=num_threads)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise TrainingError(
            f"cannot load TFLite model {model if not isinstance(model, bytes) else '<bytes>'}: {e}"
        ) from None
    return interp
