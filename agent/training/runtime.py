"""Loads a TFLite interpreter from whichever runtime is installed: tflite-runtime or ai-edge-litert.

Both expose the same ``Interpreter`` API (signature runners, resource variables). tflite-runtime
2.14 has no wheel past Python 3.11; ai-edge-litert is its successor for newer Pythons.
Default ``num_threads=1``: with 2 threads tflite-runtime 2.14 was erratic and up to 200x slower.
On tflite-runtime 2.14 interpreters run the builtin kernels only, without the runtime's default
XNNPACK delegate: its delegate writes out of bounds when an interpreter goes from training to inference
and back (valgrind: 46 invalid-write sites under ``xnn_run_operator_with_index``; 7 of the 12 committed
models died of it, ``tests/test_training_delegates.py``). ai-edge-litert 2.3's delegate showed no invalid
write on the same calls and trains 1.3 to 6.3 times faster, so it keeps it (``bench/delegates.py``).

The C++ runtime writes its log straight to file descriptor 2, and the first interpreter allocated in a
process prints :data:`XNNPACK_BANNER` there. Neither tflite-runtime 2.14 nor ai-edge-litert 2.3 honours
``TF_CPP_MIN_LOG_LEVEL`` for it (measured: the line is printed at every level, 0 to 3), so
:func:`load_interpreter` builds interpreters inside :func:`runtime_stderr`, which drops that one line and
hands every other line on (the runtime's own lines to ``logging``, anything else back to stderr).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from fedge.agent.core.errors import TrainingError

log = logging.getLogger(__name__)

#: Interpreter modules in order of preference; the first importable one is used.
RUNTIMES = ("tflite_runtime.interpreter", "ai_edge_litert.interpreter")
#: What both runtimes print on stderr when the first interpreter of a process is allocated.
XNNPACK_BANNER = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
#: The severities of the runtime's log lines (``SEVERITY: message``), as logging levels.
RUNTIME_LEVELS = {
    b"VERBOSE": logging.DEBUG,
    b"INFO": logging.INFO,
    b"WARNING": logging.WARNING,
    b"ERROR": logging.ERROR,
}
#: Runtimes whose default (XNNPACK) delegate fedge leaves out, by distribution name: see the module docstring.
WITHOUT_DEFAULT_DELEGATES = frozenset({"tflite_runtime"})
#: Descriptor 2 is one per process: one capture at a time (nested ones, in one thread, hand on to the outer).
_capturing = threading.RLock()


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
        with runtime_stderr():
            kw: dict[str, Any] = {"num_threads": num_threads}
            if runtime_name(runtime) in WITHOUT_DEFAULT_DELEGATES:
                kw["experimental_op_resolver_type"] = mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            if isinstance(model, bytes):
                interp = mod.Interpreter(model_content=model, **kw)
            else:
                interp = mod.Interpreter(model_path=str(model), **kw)
            interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise TrainingError(
            f"cannot load TFLite model {model if not isinstance(model, bytes) else '<bytes>'}: {e}"
        ) from None
    return interp


@contextlib.contextmanager
def runtime_stderr() -> Iterator[None]:
    """Capture what is written on file descriptor 2 while the block runs, then pass it on without
    :data:`XNNPACK_BANNER`: the runtime's lines (``ERROR: ...``) to this module's logger at their level,
    any other bytes (another thread's output) back to stderr unchanged. Without a descriptor 2 or a
    temporary file, the block runs uncaptured."""
    with _capturing, contextlib.ExitStack() as stack:
        try:
            sink = stack.enter_context(tempfile.TemporaryFile())
            saved = os.dup(2)
        except OSError:
            saved = -1
        if saved < 0:
            yield
            return
        _flush_stderr()
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            _pass_on(sink.read())


def _flush_stderr() -> None:
    if sys.stderr is not None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()


def _pass_on(captured: bytes) -> None:
    other = []
    for line in captured.splitlines(keepends=True):
        text = line.rstrip(b"\r\n")
        severity, sep, message = text.partition(b": ")
        if text == XNNPACK_BANNER:
            continue
        if sep and severity in RUNTIME_LEVELS:
            log.log(RUNTIME_LEVELS[severity], "TFLite runtime: %s", message.decode(errors="replace"))
        else:
            other.append(line)
    if other:
        with contextlib.suppress(OSError):
            os.write(2, b"".join(other))
