"""Where fedge's interpreters run without the runtime's default XNNPACK delegate, and why.

With the delegate, tflite-runtime 2.14 writes out of bounds when an interpreter goes from training to
inference and back (valgrind: 46 invalid-write sites under ``xnn_run_operator_with_index``):
``fedge-sim run ... --batch-size 4`` on the Shakespeare GRU died of "corrupted double-linked list"
(SIGABRT) or SIGSEGV in its second round, and on a device the same would take down the agent. So on
tflite-runtime fedge runs the builtin kernels only; ai-edge-litert 2.3's delegate showed no invalid
write on the same calls and is kept. CI runs this file on both runtimes. Each case is a fresh process:
the first interpreter of a process decides what the runtime prints.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parent.parent / "agent" / "models"
GRU = MODELS / "specs" / "shakespeare_gru.tflite"
COMMITTED = sorted(MODELS.glob("*.tflite")) + sorted((MODELS / "specs").glob("*.tflite"))


def python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def test_load_interpreter_applies_the_default_delegate_only_where_it_is_safe() -> None:
    """The runtime announces the XNNPACK delegate when it applies it; fedge's filter for that line is
    switched off here, so the line shows exactly when the delegate is applied."""
    from fedge.agent.training.runtime import WITHOUT_DEFAULT_DELEGATES, runtime_name

    code = (
        "import logging\n"
        "import fedge.agent.training.runtime as rt\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        "rt.XNNPACK_BANNER = b'(filter off)'\n"
        f"i = rt.load_interpreter({str(GRU)!r})\n"
        "print(sorted(i.get_signature_list()))\n"
    )
    r = python(code)
    assert r.returncode == 0, r.stderr
    assert "train" in r.stdout
    applied = "XNNPACK delegate" in r.stderr
    assert applied == (runtime_name() not in WITHOUT_DEFAULT_DELEGATES), (runtime_name(), r.stderr)


# Ten clients a round at batch 2, then the held-out set at the evaluation's batch of 256: the calls
# fedge-sim makes. With the delegate this process died in its second round (SIGSEGV, or SIGABRT from
# glibc's heap check) on tflite-runtime 2.14, every time; ai-edge-litert 2.3 did not.
TRAIN_THEN_EVALUATE = f"""
import numpy as np
from fedge.agent.training.models import load_spec
from fedge.agent.training.trainer import Trainer

spec = load_spec({str(GRU)!r})
trainer = Trainer(spec)
w = trainer.initial_weights()
rng = np.random.default_rng(0)
x_test = rng.integers(0, 80, size=(300, 80)).astype(np.float32)
for _ in range(2):
    for _ in range(10):
        n = int(rng.integers(10, 129))
        x = rng.integers(0, 80, size=(n, 80)).astype(np.float32)
        y = rng.integers(0, spec.num_classes, size=n)
        trainer.train(w, x, y, epochs=1, batch_size=2, learning_rate=1.0, rng=rng)
    trainer.logits(w, x_test)
    junk = [np.ones(1000) for _ in range(1000)]  # a thousand allocations: glibc walks the heap it corrupted
print("done")
"""


def test_a_gru_trains_at_small_batches_between_evaluations_without_corrupting_the_heap() -> None:
    r = python(TRAIN_THEN_EVALUATE, MALLOC_CHECK_="3", PYTHONFAULTHANDLER="1")
    assert r.returncode == 0 and "done" in r.stdout, f"exit {r.returncode}: {r.stderr[-2000:]}"


# A round's training at batch 10, an evaluation at batch 256, the next round's training, then the
# process ends. With the delegate, tflite-runtime 2.14 died on this for 7 of the 12 committed models:
# the zoo's cnn, digits_cnn, digits_depthwise, har_cnn1d, sensor_multilabel, shakespeare_gru and
# tokens_stacked_gru (SIGSEGV, or SIGABRT when glibc found its heap corrupted).
TRAIN_EVALUATE_TRAIN = """
import json, sys
from pathlib import Path
import numpy as np
from fedge.agent.training.models import load_spec
from fedge.agent.training.trainer import Trainer

path = Path(sys.argv[1])
spec = load_spec(str(path))
first = (json.loads(path.with_suffix(".json").read_text()).get("layers") or [{}])[0]
rng = np.random.default_rng(0)
n = 2560
if first.get("type") == "embedding":
    x = rng.integers(0, first["vocab"], (n, *spec.input_shape)).astype(np.float32)
else:
    x = rng.standard_normal((n, *spec.input_shape)).astype(np.float32)
if spec.class_labels:
    y = rng.integers(0, spec.num_classes, n)
else:
    y = rng.integers(0, 2, (n, spec.num_classes)).astype(np.float32)
trainer = Trainer(spec)
w = trainer.initial_weights()
trainer.train(w, x[:80], y[:80], epochs=1, batch_size=10, learning_rate=0.001, rng=rng)
trainer.logits(w, x)
trainer.train(w, x[:80], y[:80], epochs=1, batch_size=10, learning_rate=0.001, rng=rng)
print("done")
"""


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_every_committed_model_trains_evaluates_and_trains_again_in_one_process(path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-c", TRAIN_EVALUATE_TRAIN, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MALLOC_CHECK_": "3", "PYTHONFAULTHANDLER": "1"},
    )
    assert r.returncode == 0 and "done" in r.stdout, f"exit {r.returncode}: {r.stderr[-2000:]}"
