"""How much memory training a model takes on this device, measured, not estimated.

:func:`training_peak_bytes` starts a fresh Python process (this interpreter, ``-m`` this module)
that imports the runtime, reads its resident set, creates the model's interpreter and runs one
training step on a batch of zero examples, then reads its peak resident set (``VmHWM`` on Linux,
else ``ru_maxrss``). The difference is what the model adds to a process that trains: the model
file, the interpreter's tensor arena, activations and gradients for that batch size. A fresh
process keeps memory freed by earlier work in the agent from hiding part of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fedge.agent.core.errors import TrainingError

#: seconds the probe process may take (import, interpreter, one step)
PROBE_TIMEOUT_S = 120.0


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _peak_kib() -> int:
    import resource

    hwm = _status_kib("VmHWM")
    return hwm if hwm is not None else int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _probe(path: str, batch_size: int, threads: int) -> dict[str, int]:
    """In the probe process: peak resident set before and after one training step, in KiB."""
    import numpy as np

    from fedge.agent.training.models import load_spec
    from fedge.agent.training.runtime import interpreter_module
    from fedge.agent.training.trainer import Trainer

    spec = load_spec(path)
    interpreter_module()  # the runtime is loaded before the baseline, as it is in a running agent
    before = _peak_kib()

    trainer = Trainer(spec, num_threads=threads)
    x = np.zeros((batch_size, *spec.input_shape), np.float32)
    y = np.zeros(batch_size, np.int32) if spec.class_labels else np.zeros((batch_size, spec.num_classes), np.float32)
    trainer.train(
        trainer.initial_weights(),
        x,
        y,
        epochs=1,
        batch_size=batch_size,
        learning_rate=1e-9,
        rng=np.random.default_rng(0),
    )
    return {"before_kib": before, "peak_kib": _peak_kib()}


def training_peak_bytes(model_path: str | Path, batch_size: int, num_threads: int = 1) -> int:
    """Bytes that creating the interpreter of ``model_path`` and one training step on a batch of
    ``batch_size`` add to a process's peak resident set, measured in a fresh process.

    TrainingError if the probe fails (the model cannot be trained here at all).
    """
    cmd = [sys.executable, "-m", __name__, str(model_path), str(int(batch_size)), str(int(num_threads))]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TrainingError(f"memory probe did not run: {e}") from None
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise TrainingError(f"memory probe failed: {tail[:200]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return max(0, int(r["peak_kib"]) - int(r["before_kib"])) * 1024


if __name__ == "__main__":
    print(json.dumps(_probe(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
