"""Eligibility read from fake sysfs trees (real files in tmp_path) and judged against profile rules."""

from __future__ import annotations

import dataclasses

import pytest

from fedge.agent.core.profiles import Eligibility as Rules
from fedge.agent.eligibility import check, read_load_per_core, read_max_temperature, read_power
from tests.agent_fixtures import FakeSysfs


def rules(fs: FakeSysfs, **kw) -> Rules:
    base = Rules(
        requires_charging=True,
        requires_idle=True,
        requires_unmetered=True,
        min_battery_pct=30,
        max_temperature_c=70,
        power_supply_dir=str(fs.power),
        thermal_dir=str(fs.thermal),
        idle_load_max=0.5,
        metered_flag_file=str(fs.metered),
    )
    return dataclasses.replace(base, **kw)


@pytest.fixture
def fs(tmp_path) -> FakeSysfs:
    return FakeSysfs(tmp_path / "sys")


def test_no_battery_counts_as_mains_and_an_empty_device_is_eligible(fs):
    assert read_power(fs.power).charging and read_power(fs.power).battery_pct is None
    assert read_power(fs.root / "missing").charging
    e = check(rules(fs), loadavg_path=fs.loadavg, cores=4)
    assert e.eligible and e.reasons == ()


@pytest.mark.parametrize(
    "supplies,charging",
    [
        ([("AC", "Mains", {"online": 1}), ("BAT0", "Battery", {"status": "Discharging", "capacity": 80})], True),
        ([("AC", "Mains", {"online": 0}), ("BAT0", "Battery", {"status": "Discharging", "capacity": 80})], False),
        ([("usb", "USB", {"online": 1}), ("BAT0", "Battery", {"status": "Not charging", "capacity": 80})], True),
        ([("BAT0", "Battery", {"status": "Charging", "capacity": 10})], True),
        ([("BAT0", "Battery", {"status": "Full", "capacity": 100})], True),
        ([("BAT0", "Battery", {"status": "Discharging", "capacity": 100})], False),
    ],
)
def test_charging_from_line_power_or_battery_status(fs, supplies, charging):
    for name, kind, files in supplies:
        fs.supply(name, kind, **files)
    assert read_power(fs.power).charging is charging
    e = check(rules(fs, min_battery_pct=0), loadavg_path=fs.loadavg, cores=1)
    assert e.eligible is charging
    assert ("not charging" in e.reasons) is (not charging)


def test_low_battery_hot_busy_and_metered_each_fail_with_a_reason(fs):
    fs.supply("AC", "Mains", online=1).supply("BAT0", "Battery", status="Charging", capacity=12)
    fs.zone(0, 45.5).zone(1, 81.25).set_load(3.0).set_metered(True)
    assert read_max_temperature(fs.thermal) == pytest.approx(81.25)
    assert read_load_per_core(fs.loadavg, cores=2) == pytest.approx(1.5)
    e = check(rules(fs), loadavg_path=fs.loadavg, cores=2)
    assert not e.eligible
    assert len(e.reasons) == 4
    assert any(r.startswith("battery 12%") for r in e.reasons)
    assert any(r.startswith("temperature 81.2") for r in e.reasons)
    assert any(r.startswith("busy") for r in e.reasons)
    assert "metered network" in e.reasons
    # the same state passes rules that do not ask for these conditions
    relaxed = rules(fs, requires_idle=False, requires_unmetered=False, min_battery_pct=10, max_temperature_c=90)
    assert check(relaxed, loadavg_path=fs.loadavg, cores=2).eligible


def test_thresholds_are_inclusive_and_load_is_per_core(fs):
    fs.zone(0, 70.0).set_load(2.0)
    assert check(rules(fs), loadavg_path=fs.loadavg, cores=4).eligible  # 70 C is allowed, 0.5 per core is idle
    assert not check(rules(fs), loadavg_path=fs.loadavg, cores=2).eligible


def test_unreadable_or_garbage_files_count_as_absent(fs):
    (fs.thermal / "thermal_zone0").mkdir()
    (fs.thermal / "thermal_zone0" / "temp").write_text("garbage")
    fs.supply("BAT0", "Battery", status="Charging", capacity="n/a")
    fs.loadavg.write_text("")
    assert read_max_temperature(fs.thermal) is None
    assert read_power(fs.power).battery_pct is None
    assert read_load_per_core(fs.loadavg) is None
    assert check(rules(fs, metered_flag_file=None), loadavg_path=fs.loadavg).eligible


def test_metered_flag_only_when_it_says_1(fs):
    assert check(rules(fs), loadavg_path=fs.loadavg).eligible  # no flag file: unmetered
    fs.set_metered(False)
    assert check(rules(fs), loadavg_path=fs.loadavg).eligible
    fs.set_metered(True)
    assert check(rules(fs), loadavg_path=fs.loadavg).reasons == ("metered network",)
