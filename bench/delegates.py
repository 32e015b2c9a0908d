"""What leaving out the runtime's default XNNPACK delegate costs: for every committed model (the zoo and
agent/models/specs/), train steps and inference with the installed runtime's default delegates (the
baseline: what ``fedge.agent.training.runtime.load_interpreter`` builds on ai-edge-litert) and with
the builtin kernels only (what it builds on tflite-runtime 2.14), measured in the same run,
alternating; the ratio is builtin-only over baseline (above 1: slower without the delegate).

Each measurement is a fresh process. It trains ``--steps`` steps at ``--batch-size`` on one
interpreter and runs inference over 2,560 examples at batch 256 on a second one, so neither changes
its input shape: with the delegate, tflite-runtime 2.14 corrupts the heap when one interpreter goes
from training to inference and back (``tests/test_training_delegates.py``). Per model the median of
``--repeats`` processes per mode; random inputs of the model's shape (token ids for an embedding).
The last line is JSON.

Run: ``nice .venv/bin/python bench/delegates.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from built_models import random_examples  # bench/ is this script's sys.path[0]

ROOT = Path(__file__).resolve().parent.parent
MODELS = sorted((ROOT / "agent" / "models").glob("*.tflite")) + sorted(
    (ROOT / "agent" / "models" / "specs").glob("*.tflite")
)


def _interpreter(path: Path, delegates: bool) -> Any:
    from fedge.agent.training.runtime import interpreter_module, runtime_stderr

    mod = interpreter_module()
    kw = {} if delegates else {"experimental_op_resolver_type": mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    with runtime_stderr():
        interp = mod.Interpreter(model_path=str(path), num_threads=1, **kw)
        interp.allocate_tensors()
    return interp


def _time_train(interp: Any, x: np.ndarray, y: np.ndarray, steps: int, batch: int) -> float:
    train = interp.get_signature_runner("train")
    lr = np.float32(0.001)
    t0 = time.perf_counter()
    for s in range(steps):
        lo = (s * batch) % (len(x) - batch)
        train(x=x[lo : lo + batch], y=y[lo : lo + batch], lr=lr)
    return (time.perf_counter() - t0) / steps


def _time_infer(interp: Any, x: np.ndarray) -> float:
    infer = interp.get_signature_runner("infer")
    t0 = time.perf_counter()
    for lo in range(0, len(x), 256):
        infer(x=x[lo : lo + 256])
    return time.perf_counter() - t0


def probe(path: Path, delegates: bool, steps: int, batch: int) -> dict:
    """In a fresh process: seconds per train step and for one inference pass, on two interpreters."""
    rng = np.random.default_rng(0)
    x, y = random_examples(path, 2560, rng)
    trainer, evaluator = _interpreter(path, delegates), _interpreter(path, delegates)
    _time_train(trainer, x, y, 3, batch)  # first calls allocate
    _time_infer(evaluator, x[:256])
    return {"train": _time_train(trainer, x, y, steps, batch), "infer": _time_infer(evaluator, x)}


def measure(path: Path, steps: int, batch: int, repeats: int) -> dict:
    runs: dict[bool, list[dict]] = {True: [], False: []}
    for _ in range(repeats):
        for delegates in (True, False):
            cmd = [sys.executable, __file__, "_probe", str(path), str(int(delegates)), str(steps), str(batch)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise SystemExit(f"{path.stem} (delegates={delegates}) exited {res.returncode}: {res.stderr[-500:]}")
            runs[delegates].append(json.loads(res.stdout.strip().splitlines()[-1]))
    tb, tn = (statistics.median(r["train"] for r in runs[d]) for d in (True, False))
    ib, in_ = (statistics.median(r["infer"] for r in runs[d]) for d in (True, False))
    return {
        "model": path.stem,
        "train_ms_per_step_delegate": round(1000 * tb, 3),
        "train_ms_per_step_builtin": round(1000 * tn, 3),
        "train_ratio": round(tn / tb, 2),
        "infer_ms_2560_delegate": round(1000 * ib, 1),
        "infer_ms_2560_builtin": round(1000 * in_, 1),
        "infer_ratio": round(in_ / ib, 2),
    }


def main() -> None:
    if sys.argv[1:2] == ["_probe"]:
        path, delegates, steps, batch = sys.argv[2:6]
        print(json.dumps(probe(Path(path), delegates == "1", int(steps), int(batch))), flush=True)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from fedge.agent.training.runtime import runtime_name

    rows = []
    for path in MODELS:
        r = measure(path, args.steps, args.batch_size, args.repeats)
        print(
            f"{r['model']:20s} train {r['train_ms_per_step_delegate']:8.3f} -> {r['train_ms_per_step_builtin']:8.3f} "
            f"ms/step (x{r['train_ratio']:.2f})   infer {r['infer_ms_2560_delegate']:7.1f} -> "
            f"{r['infer_ms_2560_builtin']:7.1f} ms (x{r['infer_ratio']:.2f})",
            flush=True,
        )
        rows.append(r)
    print(json.dumps({"runtime": runtime_name(), "batch_size": args.batch_size, "models": rows}))


if __name__ == "__main__":
    main()
