"""Whether the device may train right now, read from Linux sysfs/procfs and checked against its profile.

Pure functions over directories passed in (tests build fake sysfs trees in ``tmp_path``): power
supplies (``<power_supply_dir>/*/{type,online,status,capacity}``), thermal zones
(``<thermal_dir>/thermal_zone*/temp`` in millidegrees), the 1-minute load average
(``/proc/loadavg``) and an optional metered-network flag file. Unreadable files count as absent.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from fedge.agent.core.profiles import Eligibility as EligibilityRules

_LINE_POWER = {"Mains", "USB", "USB_C", "USB_PD", "USB_DCP", "USB_CDP", "USB_ACA", "Wireless"}
_CHARGING = {"Charging", "Full"}


@dataclasses.dataclass(frozen=True)
class PowerState:
    """Charging (or on mains with no battery) and the lowest battery charge in percent (None: none)."""

    charging: bool
    battery_pct: float | None


@dataclasses.dataclass(frozen=True)
class DeviceState:
    """What the eligibility rules look at, read once."""

    power: PowerState
    max_temperature_c: float | None
    load_per_core: float | None
    metered: bool


@dataclasses.dataclass(frozen=True)
class Eligibility:
    """The verdict and, when not eligible, one short reason per failed rule."""

    eligible: bool
    reasons: tuple[str, ...]
    state: DeviceState


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def read_power(power_supply_dir: str | os.PathLike[str]) -> PowerState:
    """Line power online (Mains/USB) or a battery Charging/Full means charging; no battery means mains."""
    root = Path(power_supply_dir)
    line_online, battery_charging, capacities = False, False, []
    supplies = sorted(root.iterdir()) if root.is_dir() else []
    for supply in supplies:
        kind = _read(supply / "type")
        if kind == "Battery":
            if _read(supply / "status") in _CHARGING:
                battery_charging = True
            cap = _read(supply / "capacity")
            if cap is not None:
                try:
                    capacities.append(float(cap))
                except ValueError:
                    pass
        elif kind in _LINE_POWER and _read(supply / "online") == "1":
            line_online = True
    has_battery = any(_read(s / "type") == "Battery" for s in supplies)
    charging = line_online or battery_charging or not has_battery
    return PowerState(charging=charging, battery_pct=min(capacities) if capacities else None)


def read_max_temperature(thermal_dir: str | os.PathLike[str]) -> float | None:
    """Hottest thermal zone in degrees Celsius (sysfs reports millidegrees), None without zones."""
    root = Path(thermal_dir)
    temps = []
    for zone in sorted(root.glob("thermal_zone*")) if root.is_dir() else []:
        raw = _read(zone / "temp")
        try:
            if raw is not None:
                temps.append(int(raw) / 1000.0)
        except ValueError:
            continue
    return max(temps) if temps else None


def read_load_per_core(
    loadavg_path: str | os.PathLike[str] = "/proc/loadavg", cores: int | None = None
) -> float | None:
    """1-minute load average divided by the number of cores, None when unreadable."""
    raw = _read(Path(loadavg_path))
    try:
        load = float(raw.split()[0]) if raw else None
    except ValueError:
        load = None
    if load is None:
        return None
    return load / max(1, cores if cores is not None else (os.cpu_count() or 1))


def read_metered(flag_file: str | os.PathLike[str] | None) -> bool:
    """The flag file holds ``1`` while the network is metered; a missing file means unmetered."""
    return flag_file is not None and _read(Path(flag_file)) == "1"


def read_state(
    rules: EligibilityRules, *, loadavg_path: str | os.PathLike[str] = "/proc/loadavg", cores: int | None = None
) -> DeviceState:
    """Read everything the rules need from the directories they name."""
    return DeviceState(
        power=read_power(rules.power_supply_dir),
        max_temperature_c=read_max_temperature(rules.thermal_dir),
        load_per_core=read_load_per_core(loadavg_path, cores),
        metered=read_metered(rules.metered_flag_file),
    )


def judge(rules: EligibilityRules, state: DeviceState) -> Eligibility:
    """Apply the profile's rules to a state; unknown readings (no sensor) never fail a rule."""
    reasons = []
    if rules.requires_charging and not state.power.charging:
        reasons.append("not charging")
    if state.power.battery_pct is not None and state.power.battery_pct < rules.min_battery_pct:
        reasons.append(f"battery {state.power.battery_pct:g}% < {rules.min_battery_pct:g}%")
    if state.max_temperature_c is not None and state.max_temperature_c > rules.max_temperature_c:
        reasons.append(f"temperature {state.max_temperature_c:.1f} C > {rules.max_temperature_c:g} C")
    if rules.requires_idle and state.load_per_core is not None and state.load_per_core > rules.idle_load_max:
        reasons.append(f"busy: load {state.load_per_core:.2f} per core > {rules.idle_load_max:g}")
    if rules.requires_unmetered and state.metered:
        reasons.append("metered network")
    return Eligibility(not reasons, tuple(reasons), state)


def check(
    rules: EligibilityRules, *, loadavg_path: str | os.PathLike[str] = "/proc/loadavg", cores: int | None = None
) -> Eligibility:
    """Read the device state and judge it: the one call the daemon makes."""
    return judge(rules, read_state(rules, loadavg_path=loadavg_path, cores=cores))
