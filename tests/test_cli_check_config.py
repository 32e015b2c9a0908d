"""``fedge-agent check-config``: through the real error mapping in-process, and once as a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedge.agent.cli import cli
from fedge.agent.core.cliutil import run
from tests.profiles_fixtures import BROKEN, ROOT, SHIPPED, write_broken

FEDGE_AGENT = Path(sys.executable).parent / "fedge-agent"
pytestmark = pytest.mark.usefixtures("isolated_logging")


def check(capsys, *files) -> tuple[int, str, str]:
    code = run(cli, "fedge-agent", ["check-config", *map(str, files)])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_shipped_profile_is_ok(capsys):
    code, out, err = check(capsys, *SHIPPED)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == len(SHIPPED) >= 3
    for path, line in zip(SHIPPED, lines):
        assert line.startswith(f"OK {path} ({path.stem}, model ")
    # the shipped device profiles speak mqtts:// with certificates under /etc/fedge: a warning each here
    for line in err.splitlines():
        assert ": warning: " in line and "not readable on this machine" in line, err


def test_a_tls_file_this_machine_lacks_is_a_warning_in_check_config_and_78_naming_it_in_run(tmp_path, capsys):
    ca = tmp_path / "ca.pem"
    profile = tmp_path / "tls.toml"
    text = (ROOT / "firmware_configs" / "pi4.toml").read_text()
    assert 'tls_ca = "/etc/fedge/ca.pem"' in text
    profile.write_text(text.replace('tls_ca = "/etc/fedge/ca.pem"', f'tls_ca = "{ca}"'))
    code, out, err = check(capsys, profile)
    assert code == 0 and out.startswith("OK ")
    assert f"tls_ca: {ca}: not readable on this machine" in err
    code = run(cli, "fedge-agent", ["run", "--profile", str(profile), "--db", str(tmp_path / "agent.db")])
    out, err = capsys.readouterr()
    assert code == 78, err
    assert err.count("\n") == 1 and f"tls_ca: {ca}" in err and "Traceback" not in err, err


@pytest.mark.parametrize("case", BROKEN, ids=lambda c: c.id)
def test_broken_profile_exits_2_with_one_line_naming_the_field(tmp_path, capsys, case):
    path = write_broken(tmp_path, case)
    code, out, err = check(capsys, path)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"fedge-agent: error: {path}: {case.field}"), err


def test_missing_file_and_mixed_files(tmp_path, capsys):
    bad = write_broken(tmp_path, BROKEN[0])
    code, out, err = check(capsys, SHIPPED[0], tmp_path / "missing.toml", bad)
    assert code == 2
    assert out == f"OK {SHIPPED[0]} ({SHIPPED[0].stem}, model {out.split('model ')[1]}"
    assert [line for line in err.splitlines() if ": warning: " not in line] == [
        f"fedge-agent: error: {tmp_path / 'missing.toml'}: cannot read: No such file or directory",
        f'fedge-agent: error: {bad}: {BROKEN[0].field}: expected an integer in [1, 256], got "two"',
    ]


def test_no_file_is_a_usage_error(capsys):
    code, _out, err = check(capsys)
    assert code == 2 and "Missing argument" in err


def test_real_process_accepts_shipped_and_rejects_broken(tmp_path):
    assert FEDGE_AGENT.exists(), "install the project into the venv (pip install -e .)"
    ok = subprocess.run([FEDGE_AGENT, "check-config", *SHIPPED], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("OK ") == len(SHIPPED)
    missing = next(c for c in BROKEN if c.id == "missing_field")
    bad = subprocess.run(
        [FEDGE_AGENT, "check-config", write_broken(tmp_path, missing)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1
    assert f": {missing.field}: missing" in bad.stderr
