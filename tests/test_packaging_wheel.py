"""The built wheel: it carries the shipped profiles, and ``fedge-coordinator demo`` and ``fedge-sim
--profiles`` run from it outside the checkout (a fresh venv holding the wheel; its dependencies come from this venv through a .pth file,
so the test needs no index)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedge.agent.training.models import MODELS_DIR
from tests.checkout import checkout_copy
from tests.profiles_fixtures import PROFILE_DIR


@dataclass(frozen=True)
class Built:
    """The wheel and what the build printed (verbose: setuptools' warnings included)."""

    wheel: Path
    log: str


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    """``pip wheel . --no-deps`` in a copy of the checkout's files (as a fresh clone would have them): a
    build/ left in the checkout by an earlier build would otherwise leak its stale files into the wheel."""
    src, out = checkout_copy(tmp_path_factory.mktemp("src")), tmp_path_factory.mktemp("wheel")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-v", "-w", str(out)],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    [whl] = out.glob("fedge-*.whl")
    return Built(whl, r.stdout + r.stderr)


@pytest.fixture(scope="module")
def wheel(built: Built) -> Path:
    return built.wheel


def test_the_wheel_carries_every_shipped_profile(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(p.relative_to(PROFILE_DIR).as_posix() for p in PROFILE_DIR.rglob("*.toml"))
    assert "trial/local.toml" in shipped and "pi4.toml" in shipped
    missing = [p for p in shipped if f"fedge/profiles/{p}" not in names]
    assert not missing, missing


def test_the_wheel_carries_the_zoo_and_the_example_specs_with_their_models(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(
        p.relative_to(MODELS_DIR).as_posix()
        for pattern in ("*.tflite", "*.json", "specs/*.toml", "specs/*.tflite", "specs/*.json")
        for p in MODELS_DIR.glob(pattern)
    )
    assert "mlp.tflite" in shipped and "specs/har_cnn1d.toml" in shipped and "specs/har_cnn1d.tflite" in shipped
    missing = [p for p in shipped if f"fedge/agent/models/{p}" not in names]
    assert not missing, missing


def test_the_build_ignores_no_package_data(built: Built) -> None:
    """Every folder holding package data is a package of the configuration (setuptools warns otherwise)."""
    assert "would be ignored" not in built.log and "absent from the `packages` configuration" not in built.log


@dataclass(frozen=True)
class Installed:
    """A fresh venv holding the wheel, and the environment to run its commands outside the checkout."""

    python: Path
    bin: Path
    site: Path
    env: dict[str, str]

    def command(self, name: str, module: str) -> Path:
        """The console script ``name`` (``fedge-sim``) running ``module``'s ``main``, as pip would write it."""
        script = self.bin / name
        script.write_text(f"#!{self.python}\nfrom {module} import main\nmain()\n")
        script.chmod(0o755)
        return script


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory) -> Installed:
    env_dir = tmp_path_factory.mktemp("installed") / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    with zipfile.ZipFile(wheel) as z:  # what pip would unpack: the package and its metadata
        z.extractall(site)
    # the dependencies (this venv's site-packages) after the wheel, never the checkout or its editable hook
    (site / "zz-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"
    return Installed(py, env_dir / "bin", site, env)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_runs_from_the_installed_wheel(installed: Installed, tmp_path: Path) -> None:
    py, site, env = installed.python, installed.site, installed.env
    scripts = installed.command("fedge-coordinator", "fedge.coordinator.service.cli")
    where = subprocess.run(
        [str(py), "-c", "import fedge.coordinator.service.demo as d; print(d.__file__, d.shipped_profiles())"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    demo_file, profiles = where.stdout.split()
    assert demo_file.startswith(str(site)) and profiles == str(site / "fedge" / "profiles")
    r = subprocess.run(
        [str(scripts), "demo", "--agents", "2", "--rounds", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "round 1/1: accuracy" in r.stdout and "participants 2 dropped 0" in r.stdout, r.stdout


@pytest.mark.timeout(120)
def test_fedge_sim_mixes_the_shipped_profiles_from_the_installed_wheel(installed: Installed, tmp_path: Path) -> None:
    """``--profiles`` names profiles the wheel carries, read from the installed package, not a checkout."""
    sim = installed.command("fedge-sim", "fedge.simulations.cli")
    where = subprocess.run(
        [str(installed.python), "-c", "from fedge.simulations.population import DEFAULT_PROFILE_DIR as d; print(d)"],
        cwd=tmp_path,
        env=installed.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip() == str(installed.site / "fedge" / "profiles")
    r = subprocess.run(
        [str(sim), "run", "--population", "6", "--per-round", "3", "--rounds", "1", "--model", "logreg"]
        + ["--dataset", "digits", "--profiles", "pi4=0.5,phone=0.25,car=0.25", "--workers", "0"],
        cwd=tmp_path,
        env=installed.env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.startswith("round 1: accuracy"), r.stdout


@pytest.mark.timeout(120)
def test_a_shipped_spec_resolves_to_its_model_in_the_installed_wheel(installed: Installed, tmp_path: Path) -> None:
    """``fedge-sim run --model .../specs/har_cnn1d.toml`` outside a checkout: the wheel's spec and .tflite."""
    code = (
        "from fedge.agent.training.models import MODELS_DIR as m; from fedge.simulations.config import SimConfig; "
        "print(SimConfig(population=2, per_round=1, rounds=1, model=str(m / 'specs' / 'har_cnn1d.toml'), "
        "dataset='digits').model)"
    )
    r = subprocess.run(
        [str(installed.python), "-c", code], cwd=tmp_path, env=installed.env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == str(installed.site / "fedge" / "agent" / "models" / "specs" / "har_cnn1d.tflite")
    assert "XNNPACK" not in r.stderr, r.stderr  # the runtime's banner stays off an installed fedge's stderr too
