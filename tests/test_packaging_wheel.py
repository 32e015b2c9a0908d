"""The built wheel: it carries the shipped profiles, and ``fedge-coordinator demo`` runs from it outside
the checkout (a fresh venv holding the wheel; its dependencies come from this venv through a .pth file,
so the test needs no index)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from tests.checkout import checkout_copy
from tests.profiles_fixtures import PROFILE_DIR


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel . --no-deps`` in a copy of the checkout's files (as a fresh clone would have them): a
    build/ left in the checkout by an earlier build would otherwise leak its stale files into the wheel."""
    src, out = checkout_copy(tmp_path_factory.mktemp("src")), tmp_path_factory.mktemp("wheel")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", str(out)],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    [whl] = out.glob("fedge-*.whl")
    return whl


def test_the_wheel_carries_every_shipped_profile(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(p.relative_to(PROFILE_DIR).as_posix() for p in PROFILE_DIR.rglob("*.toml"))
    assert "trial/local.toml" in shipped and "pi4.toml" in shipped
    missing = [p for p in shipped if f"fedge/profiles/{p}" not in names]
    assert not missing, missing


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_runs_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
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
    scripts = env_dir / "bin" / "fedge-coordinator"
    scripts.write_text(f"#!{py}\nfrom fedge.coordinator.service.cli import main\nmain()\n")
    scripts.chmod(0o755)
    # the dependencies (this venv's site-packages) after the wheel, never the checkout or its editable hook
    (site / "zz-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"
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
