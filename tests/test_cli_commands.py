"""The three commands as real processes: --help, --version, usage errors, and logging formats."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest

from fedge.agent.core.logs import JsonFormatter, TextFormatter

BIN = Path(sys.executable).parent
COMMANDS = ["fedge-agent", "fedge-coordinator", "fedge-sim"]


def sh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("prog", COMMANDS)
def test_help_and_version(prog):
    for flag in ("--help", "-h"):
        r = sh(str(BIN / prog), flag)
        assert r.returncode == 0, r.stderr
        assert f"Usage: {prog} " in r.stdout and "--log-format" in r.stdout
        assert "Traceback" not in r.stdout + r.stderr
    r = sh(str(BIN / prog), "--version")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.strip() == f"{prog}, version {version('fedge')}"


@pytest.mark.parametrize("prog", COMMANDS)
def test_unknown_command_is_one_usage_error_not_a_traceback(prog):
    r = sh(str(BIN / prog), "no-such-command")
    assert r.returncode == 2
    assert "No such command" in r.stderr and "Traceback" not in r.stderr


# A throwaway command wired exactly like the real ones (logging_options + run), logging with ids.
_PROBE = textwrap.dedent(
    """
    import logging, sys
    import click
    from fedge.agent.core.cliutil import logging_options, run

    @click.group()
    @logging_options
    def cli():
        pass

    @cli.command()
    def probe():
        log = logging.getLogger("agent.probe")
        log.info("upload stored", extra={"device": "pi-7", "round": 12})
        log.debug("hidden at INFO")
        log.warning("no ids")
        from fedge.agent.core import logs
        logs.configure(logging.getLogger().level, "text")  # must not add a second handler
        log.info("after reconfigure", extra={"device": "pi-7", "round": 13, "stage": "unmask"})

    sys.exit(run(cli, "probe", sys.argv[1:]))
    """
)


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    return sh(sys.executable, "-c", _PROBE, *args)


def test_log_format_json_emits_one_object_per_line_with_ids():
    r = _probe("--log-format", "json", "probe")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stderr.splitlines()]
    assert [o["msg"] for o in lines] == ["upload stored", "no ids", "after reconfigure"]
    first, second, third = lines
    assert first["device"] == "pi-7" and first["round"] == 12
    assert first["level"] == "INFO" and first["logger"] == "agent.probe"
    assert isinstance(first["ts"], float)
    assert "device" not in second and "round" not in second
    assert third["stage"] == "unmask" and third["round"] == 13
    assert r.stdout == ""


def test_log_format_text_shows_ids_and_log_level_filters():
    r = _probe("--log-level", "WARNING", "probe")
    assert r.returncode == 0, r.stderr
    assert len(r.stderr.splitlines()) == 1 and "WARNING" in r.stderr and "no ids" in r.stderr
    r = _probe("--log-level", "debug", "probe")
    lines = r.stderr.splitlines()
    assert len(lines) == 4
    assert "[device=pi-7 round=12] upload stored" in lines[0]
    assert "hidden at INFO" in lines[1]


def _record(**extra) -> logging.LogRecord:
    rec = logging.LogRecord("agent.x", logging.ERROR, __file__, 1, "a %s", ("b",), None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_formatters_in_process():
    obj = json.loads(JsonFormatter().format(_record(device="d1", round=3)))
    assert obj["msg"] == "a b" and obj["device"] == "d1" and obj["round"] == 3
    assert TextFormatter().format(_record(round=3)).endswith("ERROR   agent.x [round=3] a b")
    try:
        raise ValueError("boom")
    except ValueError:
        rec = _record()
        rec.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(JsonFormatter().format(rec))["exc"]
