"""Device profiles: every shipped one validates; every broken one is rejected naming its field."""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from typing import Any

import pytest

from fedge.agent.core.errors import ConfigError
from fedge.agent.core.profiles import DeviceProfile, load_profile, parse_profile
from tests.profiles_fixtures import BASE, BROKEN, SHIPPED, line_of, write_broken


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_profile_validates(path):
    profile = load_profile(path)
    assert isinstance(profile, DeviceProfile)
    assert profile.device.class_ == path.stem


def test_the_three_device_classes_ship_with_realistic_limits():
    profiles = {p.stem: load_profile(p) for p in SHIPPED}
    assert {"pi4", "phone", "car"} <= set(profiles)
    pi, phone, car = profiles["pi4"], profiles["phone"], profiles["car"]
    assert pi.compute.memory_mb <= 4096 and pi.compute.threads <= 4
    assert not pi.eligibility.requires_unmetered
    e = phone.eligibility
    assert e.requires_charging and e.requires_idle and e.requires_unmetered
    assert e.min_battery_pct >= 80 and e.max_temperature_c <= 40
    assert car.eligibility.requires_charging and car.eligibility.requires_unmetered
    assert car.eligibility.max_temperature_c >= 60
    for p in profiles.values():
        assert p.privacy.mode != "off" and p.privacy.epsilon_budget <= 10
        assert p.network.tls and p.network.port == 8883
        assert p.model.name in ("logreg", "mlp", "cnn")


@pytest.mark.parametrize("case", BROKEN, ids=lambda c: c.id)
def test_broken_profile_is_rejected_naming_file_and_field(tmp_path, case):
    path = write_broken(tmp_path, case)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: {case.field}"), msg
    for word in case.words:
        assert word in msg, (word, msg)
    assert "\n" not in msg


def test_toml_syntax_error_names_the_line(tmp_path):
    case = next(c for c in BROKEN if c.id == "toml_syntax")
    path = write_broken(tmp_path, case)
    line = line_of(BASE.read_text(), r"\[model\]")
    with pytest.raises(ConfigError, match=rf"invalid TOML: .*\(at line {line}, column \d+\)$"):
        load_profile(path)


def test_unreadable_and_non_utf8_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml: cannot read"):
        load_profile(tmp_path / "nope.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[device]\nclass = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="latin1.toml: invalid TOML: not UTF-8"):
        load_profile(bad)


MINIMAL = {
    "device": {"class": "tiny"},
    "compute": {"memory_mb": 64, "max_train_seconds": 30},
    "eligibility": {
        "requires_charging": False,
        "requires_idle": False,
        "requires_unmetered": False,
        "min_battery_pct": 0,
        "max_temperature_c": 60,
    },
    "network": {"broker_url": "mqtt://localhost"},
    "privacy": {"mode": "off", "clip_norm": 1, "noise_multiplier": 0, "epsilon_budget": 1},
    "model": {"name": "logreg", "input_shape": [4], "num_classes": 2},
}


def test_minimal_profile_gets_the_documented_defaults():
    p = parse_profile(MINIMAL, source="minimal")
    assert p.compute.threads == 1 and p.compute.epochs == 1
    assert p.storage.db_path is None  # the state directory's agent.db (fedge.agent.config.default_db_path)
    assert p.eligibility.power_supply_dir == "/sys/class/power_supply"
    assert p.eligibility.thermal_dir == "/sys/class/thermal"
    assert p.eligibility.metered_flag_file is None
    assert p.network.host == "localhost" and p.network.port == 1883 and not p.network.tls
    assert p.simulation.dropout.unmask == 0.0 and p.simulation.availability == 1.0
    assert p.privacy.clip_norm == 1.0 and type(p.privacy.clip_norm) is float
    assert p.model.input_shape == (4,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.compute.threads = 2  # type: ignore[misc]


def _leaves(table: dict[str, Any], prefix: str = "") -> list[tuple[str, tuple[str, ...], Any]]:
    out = []
    for k, v in table.items():
        if isinstance(v, dict):
            out += _leaves(v, f"{prefix}{k}.")
        else:
            out.append((prefix + k, tuple((prefix + k).split(".")), v))
    return out


def _set(m: dict[str, Any], keys: tuple[str, ...], value: Any) -> dict[str, Any]:
    m = copy.deepcopy(m)
    t = m
    for k in keys[:-1]:
        t = t[k]
    if value is _DELETE:
        del t[keys[-1]]
    else:
        t[keys[-1]] = value
    return m


_DELETE = object()
PI4 = tomllib.loads(BASE.read_text())


def _wrong_values(value: Any) -> list[Any]:
    if isinstance(value, bool):
        return ["yes", 1]
    if isinstance(value, (int, float)):
        return ["1", True, [1]]
    if isinstance(value, str):
        return [7, False, ["x"]]
    if isinstance(value, list):
        return ["28", [28.5], [True]]
    raise AssertionError(value)


@pytest.mark.parametrize("dotted,keys,value", _leaves(PI4), ids=[d for d, _, _ in _leaves(PI4)])
def test_every_field_rejects_a_wrong_type_and_names_itself(dotted, keys, value):
    for wrong in _wrong_values(value):
        with pytest.raises(ConfigError) as info:
            parse_profile(_set(PI4, keys, wrong), source="pi4.toml")
        assert str(info.value).startswith(f"pi4.toml: {dotted}"), (wrong, str(info.value))


@pytest.mark.parametrize("dotted,keys,value", _leaves(PI4), ids=[d for d, _, _ in _leaves(PI4)])
def test_removing_a_field_is_an_error_naming_it_or_falls_back_to_its_default(dotted, keys, value):
    try:
        p = parse_profile(_set(PI4, keys, _DELETE), source="pi4.toml")
    except ConfigError as e:
        assert str(e).startswith(f"pi4.toml: {dotted}: missing; expected "), str(e)
        return
    section = getattr(p, keys[0])
    for k in keys[1:-1]:
        section = getattr(section, k)
    field = next(f for f in dataclasses.fields(section) if f.name.rstrip("_") == keys[-1])
    assert getattr(section, field.name) == field.default, dotted


def test_a_section_that_is_not_a_table_and_a_non_mapping_are_rejected():
    with pytest.raises(ConfigError, match=r"^pi4.toml: compute: expected a table, got 3$"):
        parse_profile({**PI4, "compute": 3}, source="pi4.toml")
    with pytest.raises(ConfigError, match=r"^pi4.toml: model: missing; expected a \[model\] table$"):
        parse_profile({k: v for k, v in PI4.items() if k != "model"}, source="pi4.toml")
    with pytest.raises(ConfigError, match="expected a table of sections"):
        parse_profile([1, 2], source="x")  # type: ignore[arg-type]
    sim = {k: v for k, v in PI4["simulation"].items() if k != "dropout"}
    assert parse_profile({**PI4, "simulation": sim}).simulation.dropout.masked_input == 0.0
