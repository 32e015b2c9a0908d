"""The runtime's stderr: the XNNPACK banner never reaches the terminal, anything else the runtime (or
another thread) writes while an interpreter is built still does. Each case is a fresh process, since
the runtime prints the banner once per process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fedge.agent.training.runtime import XNNPACK_BANNER

MODEL = Path(__file__).resolve().parent.parent / "agent" / "models" / "mlp.tflite"
BANNER = XNNPACK_BANNER.decode()


def python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert r.returncode == 0, r.stderr
    return r


def test_the_runtime_prints_the_banner_whatever_tf_cpp_min_log_level_says() -> None:
    """Why the banner is captured: the bare runtime prints it even at TF_CPP_MIN_LOG_LEVEL=3."""
    code = (
        "from fedge.agent.training.runtime import interpreter_module\n"
        f"i = interpreter_module().Interpreter(model_path={str(MODEL)!r}, num_threads=1)\n"
        "i.allocate_tensors()\n"
    )
    assert BANNER in python(code, TF_CPP_MIN_LOG_LEVEL="3").stderr


def test_load_interpreter_keeps_the_banner_off_stderr() -> None:
    code = (
        "from fedge.agent.training.runtime import load_interpreter\n"
        f"i = load_interpreter({str(MODEL)!r})\n"
        "print(sorted(i.get_signature_list()))\n"
    )
    r = python(code)
    assert "train" in r.stdout
    assert "XNNPACK" not in r.stderr, r.stderr


def test_what_else_is_written_on_stderr_during_the_build_still_surfaces() -> None:
    """A runtime line (written as the runtime writes, through C's stderr) reaches logging at its level;
    a line that is not the runtime's reaches stderr unchanged; the banner, printed by a real interpreter
    inside the same capture, does not."""
    code = (
        "import ctypes, logging, os\n"
        "from fedge.agent.training.runtime import interpreter_module, runtime_stderr\n"
        "logging.basicConfig(format='%(levelname)s %(name)s %(message)s')\n"
        "libc = ctypes.CDLL(None)\n"
        "c_stderr = ctypes.c_void_p.in_dll(libc, 'stderr')\n"
        "with runtime_stderr():\n"
        f"    i = interpreter_module().Interpreter(model_path={str(MODEL)!r}, num_threads=1)\n"
        "    i.allocate_tensors()\n"
        "    libc.fputs(b'ERROR: Failed to apply the delegate.\\n', c_stderr)\n"
        "    os.write(2, b'some other thread was here\\n')\n"
    )
    err = python(code).stderr
    assert "XNNPACK" not in err, err
    assert "ERROR fedge.agent.training.runtime TFLite runtime: Failed to apply the delegate." in err.splitlines(), err
    assert "some other thread was here" in err.splitlines(), err
