"""The headline path says only what it is doing: ``fedge-coordinator demo --agents 8 --rounds 5`` prints its
own lines and no warning, traceback or runtime banner."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.mqtt_fixtures import needs_mosquitto
from tests.service_fixtures import ROOT

PY = [sys.executable, "-c"]


def test_the_tflite_banner_is_dropped_and_other_stderr_is_passed_on() -> None:
    code = (
        "import os\n"
        "import fedge.agent.training.runtime as rt\n"
        "from fedge.agent.training.models import MODELS_DIR\n"
        "from fedge.coordinator.service.demo import quiet_tflite_banner\n"
        "orig = rt.load_interpreter\n"
        "def noisy(model, **kw):\n"
        "    os.write(2, b'E real error from the runtime\\n')\n"
        "    return orig(model, **kw)\n"
        "rt.load_interpreter = noisy\n"
        "quiet_tflite_banner()\n"
        "rt.load_interpreter = orig\n"
        "orig(MODELS_DIR / 'mlp.tflite')\n"  # a later interpreter: the runtime does not print it again
        "print('done')\n"
    )
    r = subprocess.run([*PY, code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "done\n"
    assert r.stderr == "E real error from the runtime\n"


def test_without_quieting_the_runtime_prints_its_banner() -> None:
    # the premise: if the runtime stopped printing it, the filter above would be dead code
    code = (
        "from fedge.agent.training.runtime import load_interpreter\n"
        "from fedge.agent.training.models import MODELS_DIR\n"
        "load_interpreter(MODELS_DIR / 'logreg.tflite')\n"
    )
    r = subprocess.run([*PY, code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert "Created TensorFlow Lite XNNPACK delegate" in r.stderr


@needs_mosquitto
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_of_8_agents_and_5_rounds_prints_no_warning(tmp_path) -> None:
    r = subprocess.run(
        [
            *PY,
            "from fedge.coordinator.service.cli import main; main()",
            "demo",
            "--agents",
            "8",
            "--rounds",
            "5",
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stderr == ""
    assert "warning" not in r.stdout.lower() and "traceback" not in r.stdout.lower()
    rounds = [ln for ln in r.stdout.splitlines() if ln.startswith("round ")]
    assert len(rounds) == 5 and all("participants 8 dropped 0" in ln for ln in rounds), r.stdout
