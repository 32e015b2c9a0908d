"""Training overheads as ratios measured in the same run (the machine is shared and noisy).

1. Time per train step through :class:`Trainer` (shuffle, gather, checks, result) against a bare
   ``train`` signature call on the same batch size: ``trainer_step / bare_step``.
2. ``num_threads=2`` against ``num_threads=1`` for the bare call (tflite-runtime 2.14 was erratic).
3. Peak RSS of a process that trains (2,000 examples, 2 epochs, batch 32), and of one that also
   evaluates at batch 256, against one that only imports the runtime and numpy.

Run: ``.venv/bin/python bench/training.py``; the last line is JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedge.agent.training.models import load_spec  # noqa: E402
from fedge.agent.training.runtime import load_interpreter, runtime_name  # noqa: E402
from fedge.agent.training.trainer import Trainer  # noqa: E402

BATCH = 32
STEPS = 300
REPEATS = 5


def data(spec, n: int, rng: np.random.Generator):
    return rng.uniform(0, 1, (n, *spec.input_shape)).astype(np.float32), rng.integers(0, 10, n).astype(np.int32)


def bare_step_seconds(spec, x, y, threads: int) -> float:
    run = load_interpreter(spec.path, num_threads=threads).get_signature_runner("train")
    lr = np.float32(0.01)
    batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, STEPS * BATCH, BATCH)]
    run(x=batches[0][0], y=batches[0][1], lr=lr)  # warm-up (allocation)
    t = time.perf_counter()
    for xb, yb in batches:
        run(x=xb, y=yb, lr=lr)
    return (time.perf_counter() - t) / STEPS


def trainer_step_seconds(spec, x, y) -> float:
    tr = Trainer(spec)
    w = tr.initial_weights()
    tr.train(w, x[:BATCH], y[:BATCH], epochs=1, batch_size=BATCH, learning_rate=0.01, rng=np.random.default_rng(0))
    t = time.perf_counter()
    res = tr.train(w, x, y, epochs=1, batch_size=BATCH, learning_rate=0.01, rng=np.random.default_rng(0))
    assert res.steps == STEPS
    return (time.perf_counter() - t) / STEPS


# Peak RSS is VmHWM of the child's own address space: ru_maxrss survives exec on Linux and would
# report the (larger) parent that forked it.
PEAK = "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
BASE_PROC = "import numpy, {mod}\n" + PEAK
TRAIN_PROC = (
    """
import sys, numpy as np
sys.path.insert(0, {root!r})
from fedge.agent.training.models import load_spec
from fedge.agent.training.trainer import Trainer
spec = load_spec({name!r}); rng = np.random.default_rng(0)
x = rng.uniform(0, 1, (2000, *spec.input_shape)).astype(np.float32); y = rng.integers(0, 10, 2000)
t = Trainer(spec); r = t.train(t.initial_weights(), x, y, epochs=2, batch_size=32, learning_rate=0.01, rng=rng)
if {evaluate}:
    t.evaluate(t.initial_weights() + r.delta, x, y, batch_size=256)
"""
    + PEAK
)


def peak_rss_kb(code: str) -> int:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1])


def main() -> None:
    rng = np.random.default_rng(0)
    result: dict[str, object] = {"runtime": runtime_name(), "batch": BATCH, "steps": STEPS, "models": {}}
    mod = "tflite_runtime.interpreter" if runtime_name() == "tflite_runtime" else "ai_edge_litert.interpreter"
    base_rss = peak_rss_kb(BASE_PROC.format(mod=mod))
    for name in ("logreg", "mlp", "cnn"):
        spec = load_spec(name)
        x, y = data(spec, STEPS * BATCH, rng)
        bare, wrapped, two = [], [], []
        for _ in range(REPEATS):  # interleaved, so drift on the shared machine hits both alike
            bare.append(bare_step_seconds(spec, x, y, 1))
            wrapped.append(trainer_step_seconds(spec, x, y))
            two.append(bare_step_seconds(spec, x, y, 2))
        b, w, t2 = float(np.median(bare)), float(np.median(wrapped)), float(np.median(two))
        rss = peak_rss_kb(TRAIN_PROC.format(root=str(ROOT), name=name, evaluate=False))
        rss_eval = peak_rss_kb(TRAIN_PROC.format(root=str(ROOT), name=name, evaluate=True))
        row = {
            "bare_step_us": round(b * 1e6, 1),
            "trainer_step_us": round(w * 1e6, 1),
            "trainer_over_bare": round(w / b, 2),
            "threads2_over_threads1": round(t2 / b, 2),
            "threads2_spread": [round(min(two) / b, 2), round(max(two) / b, 2)],
            "train_rss_mb": round(rss / 1024, 1),
            "import_rss_mb": round(base_rss / 1024, 1),
            "rss_ratio": round(rss / base_rss, 2),
            "train_eval256_rss_mb": round(rss_eval / 1024, 1),
            "rss_ratio_with_eval256": round(rss_eval / base_rss, 2),
        }
        result["models"][name] = row  # type: ignore[index]
        print(
            f"{name:7s} step: bare {row['bare_step_us']} us, trainer {row['trainer_step_us']} us "
            f"(x{row['trainer_over_bare']}); 2 threads x{row['threads2_over_threads1']} "
            f"(range {row['threads2_spread']}); peak RSS {row['train_rss_mb']} MB vs import-only "
            f"{row['import_rss_mb']} MB (x{row['rss_ratio']}); with evaluate(batch 256) "
            f"x{row['rss_ratio_with_eval256']}"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
