"""Shipped device profiles and a table of broken ones, for the profile and CLI tests."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROFILE_DIR = ROOT / "firmware_configs"
SHIPPED = sorted(PROFILE_DIR.glob("*.toml"))
BASE = PROFILE_DIR / "pi4.toml"


@dataclass(frozen=True)
class Broken:
    """One way to break ``pi4.toml``: replace the line matching ``line`` (None: delete it)."""

    id: str
    line: str
    replacement: str | None
    field: str  # what the error must name
    words: tuple[str, ...] = ()  # and what else it must say


BROKEN = [
    Broken("wrong_type", r"threads = .*", 'threads = "two"', "compute.threads", ("integer", 'got "two"')),
    Broken(
        "bool_as_string",
        r"requires_idle = .*",
        'requires_idle = "yes"',
        "eligibility.requires_idle",
        ("true or false",),
    ),
    Broken("missing_field", r"memory_mb = .*", None, "compute.memory_mb", ("missing", "integer")),
    Broken("missing_broker", r"broker_url = .*", None, "network.broker_url", ("missing", "mqtt")),
    Broken("unknown_key", r"epochs = 1", "epoch = 1", "compute.epoch", ("unknown field", "epochs")),
    Broken("unknown_section", r"\[privacy\]", "[privacyy]", "privacyy", ("unknown field", "privacy")),
    Broken(
        "out_of_range",
        r"min_battery_pct = .*",
        "min_battery_pct = 120",
        "eligibility.min_battery_pct",
        ("[0, 100]", "120"),
    ),
    Broken("negative_clip", r"clip_norm = .*", "clip_norm = -1.0", "privacy.clip_norm", ("(0, ", "-1.0")),
    Broken("nested_range", r"masked_input = .*", "masked_input = 1.5", "simulation.dropout.masked_input", ("[0, 1]",)),
    Broken("list_item", r"input_shape = .*", "input_shape = [28, 0, 1]", "model.input_shape[1]", ("integer",)),
    Broken("bad_choice", r'mode = "local".*', 'mode = "central"', "privacy.mode", ('"distributed"',)),
    Broken(
        "bad_url_scheme",
        r"broker_url = .*",
        'broker_url = "http://broker.fleet.example"',
        "network.broker_url",
        ("mqtts://",),
    ),
    Broken(
        "url_with_password",
        r"broker_url = .*",
        'broker_url = "mqtts://dev:secret@broker.example"',
        "network.broker_url",
        ("no credentials",),
    ),
    Broken(
        "tls_without_mqtts",
        r"broker_url = .*",
        'broker_url = "mqtt://broker.fleet.example"',
        "network.tls_ca",
        ("mqtts://",),
    ),
    Broken("tls_key_alone", r"tls_key = .*", None, "network.tls_key", ("tls_cert",)),
    Broken("noise_off_with_dp", r"noise_multiplier = .*", "noise_multiplier = 0", "privacy.noise_multiplier", ("> 0",)),
    Broken("toml_syntax", r"\[model\]", "[model", "invalid TOML", ("line",)),
]


def broken_text(case: Broken) -> str:
    """The text of pi4.toml broken as ``case`` says; fails loudly if the line is not there."""
    text = BASE.read_text()
    pattern = re.compile(rf"^{case.line}$\n", re.MULTILINE)
    replacement = "" if case.replacement is None else case.replacement + "\n"
    out, n = pattern.subn(lambda _m: replacement, text, count=1)
    assert n == 1, f"{case.id}: no line matches {case.line!r} in {BASE}"
    return out


def write_broken(dir_: Path, case: Broken) -> Path:
    path = dir_ / f"{case.id}.toml"
    path.write_text(broken_text(case))
    return path


def line_of(text: str, pattern: str) -> int:
    """1-based number of the first line matching ``pattern``."""
    for i, line in enumerate(text.splitlines(), 1):
        if re.fullmatch(pattern, line):
            return i
    raise AssertionError(pattern)
