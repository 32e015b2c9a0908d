"""Device profiles: what one class of device (Pi 4, phone, car head unit) may do, as frozen config.

A profile is a TOML file (see ``firmware_configs/``) with the sections below. It is loaded once
per process with :func:`load_profile` and validated strictly: unknown keys, wrong types, missing
fields and out-of-range values are :class:`ConfigError` naming the file, the dotted field and
what was expected. Paths are kept as written (relative ones resolve against the working
directory of the process that uses them); files are not opened here.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import tomllib
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fedge.agent.core.errors import ConfigError
from fedge.agent.core.schema import build, rule, show
from fedge.agent.core.secagg.params import SUITE, SUITE_AES, SUITE_PQ

PRIVACY_MODES = ("off", "local", "distributed")
MODEL_NAMES = ("logreg", "mlp", "cnn")
BROKER_SCHEMES = {"mqtt": 1883, "mqtts": 8883}
_URL_WHAT = "an mqtt:// or mqtts:// URL with a host (e.g. mqtts://broker.example:8883)"
_URLS_WHAT = "mqtt:// or mqtts:// URLs with a host, one scheme for all"
#: brokers one profile may list (a device tries each in turn; more is a cluster's job, not a list's)
MAX_BROKERS = 16


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """``[device]``: which class of device this profile describes."""

    class_: str = rule(pattern=r"[a-z0-9][a-z0-9_-]{0,31}", pattern_what='a lowercase name like "pi4"')
    description: str = rule("")


@dataclasses.dataclass(frozen=True)
class ComputeLimits:
    """``[compute]``: how much of the device one local training run may use."""

    memory_mb: int = rule(lo=16, hi=1 << 20)
    max_train_seconds: float = rule(lo=0, lo_open=True, hi=86400)
    threads: int = rule(1, lo=1, hi=256)
    epochs: int = rule(1, lo=1, hi=1000)
    batch_size: int = rule(32, lo=1, hi=65536)
    learning_rate: float = rule(0.01, lo=0, lo_open=True, hi=10)


@dataclasses.dataclass(frozen=True)
class Eligibility:
    """``[eligibility]``: when the device may train, and where on Linux to read its state."""

    requires_charging: bool = rule()
    requires_idle: bool = rule()
    requires_unmetered: bool = rule()
    min_battery_pct: float = rule(lo=0, hi=100)
    max_temperature_c: float = rule(lo=-40, hi=125)
    power_supply_dir: str = rule("/sys/class/power_supply", min_len=1)
    thermal_dir: str = rule("/sys/class/thermal", min_len=1)
    #: 1-minute load average per core below which the device counts as idle.
    idle_load_max: float = rule(0.5, lo=0, lo_open=True, hi=64)
    #: Optional file whose content "1" means the current network is metered.
    metered_flag_file: str | None = rule(None, min_len=1)


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """``[network]``: the MQTT broker (or the brokers of one cluster) and how to reach it.

    Exactly one of ``broker_url`` and ``broker_urls``. With several, the agent connects to the one
    its device id ranks first and fails over to the next in its ranking after ``failover_after``
    failed attempts (agent/core/transport/failover.py); docs/scale.md, "Devices on more than one broker".
    """

    broker_url: str | None = rule(None, pattern_what=_URL_WHAT)
    broker_urls: tuple[str, ...] | None = rule(None, min_len=1, max_len=MAX_BROKERS, pattern_what=_URLS_WHAT)
    failover_after: int = rule(3, lo=1, hi=100)
    tls_ca: str | None = rule(None, min_len=1)
    tls_cert: str | None = rule(None, min_len=1)
    tls_key: str | None = rule(None, min_len=1)
    keepalive_s: int = rule(60, lo=5, hi=65535)
    max_payload_bytes: int = rule(4 << 20, lo=1024, hi=268_435_455)  # MQTT's own ceiling
    username: str | None = rule(None, min_len=1)
    #: MQTT protocol version: "auto" (default: 5, else 3.1.1 when the broker refuses 5 or never
    #: answers it, as the embedded amqtt broker does), or pinned to "5" or "3.1.1"
    protocol: str = rule("auto", choices=("auto", "5", "3.1.1"))

    def __post_init__(self) -> None:
        if self.broker_url is None and self.broker_urls is None:
            raise ConfigError(f"broker_url: missing; expected {_URL_WHAT} (or broker_urls, a list of them)")
        if self.broker_url is not None and self.broker_urls is not None:
            raise ConfigError("broker_urls: expected either broker_url or broker_urls, not both")
        if self.broker_url is not None:
            _check_url("broker_url", self.broker_url)
        else:
            for i, url in enumerate(self.urls):
                _check_url(f"broker_urls[{i}]", url)
            if len(set(self.urls)) != len(self.urls):
                raise ConfigError(f"broker_urls: expected each broker once, got {show(self.urls)}")
            if len({urlsplit(u).scheme for u in self.urls}) > 1:
                raise ConfigError(
                    f"broker_urls: expected one scheme for all (TLS for all or none), got {show(self.urls)}"
                )
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_cert"
            raise ConfigError(f"{missing}: missing; expected tls_cert and tls_key together (client certificate)")
        if not self.tls:
            for name in ("tls_ca", "tls_cert", "tls_key"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{name}: expected only with an mqtts:// broker_url, got {show(self.urls[0])}")

    @property
    def urls(self) -> tuple[str, ...]:
        """Every broker listed: ``broker_urls``, or ``broker_url`` alone."""
        if self.broker_urls is not None:
            return self.broker_urls
        assert self.broker_url is not None
        return (self.broker_url,)

    @property
    def tls(self) -> bool:
        """Whether the broker connections use TLS (one scheme for all)."""
        return urlsplit(self.urls[0]).scheme == "mqtts"

    @property
    def host(self) -> str:
        """The first listed broker's host name or address."""
        return urlsplit(self.urls[0]).hostname or ""

    @property
    def port(self) -> int:
        """The first listed broker's port: the one in the URL, else 1883 (mqtt) or 8883 (mqtts)."""
        parts = urlsplit(self.urls[0])
        return parts.port or BROKER_SCHEMES[parts.scheme]


def _check_url(field: str, url: str) -> None:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme not in BROKER_SCHEMES
        or not parts.hostname
        or port == -1
        or parts.password is not None
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ConfigError(f"{field}: expected {_URL_WHAT}, no credentials or path, got {show(url)}")


@dataclasses.dataclass(frozen=True)
class PrivacyConfig:
    """``[privacy]``: how the update is clipped and noised, and the device's epsilon budget."""

    mode: str = rule(choices=PRIVACY_MODES)
    clip_norm: float = rule(lo=0, lo_open=True, hi=1e6)
    noise_multiplier: float = rule(lo=0, hi=1e3)
    epsilon_budget: float = rule(lo=0, lo_open=True, hi=1e4)
    delta: float = rule(1e-5, lo=0, lo_open=True, hi=0.1)

    def __post_init__(self) -> None:
        if self.mode != "off" and self.noise_multiplier == 0:
            raise ConfigError(f"noise_multiplier: expected a number > 0 when mode is {self.mode!r}, got 0")


@dataclasses.dataclass(frozen=True)
class SecAggPolicy:
    """``[secagg]``: which SecAgg+ suite this device insists on (docs/secagg.md, "Negotiation").

    With ``require_suite`` set the device reports that suite alone at check-in and refuses any
    round configured with another (e.g. the hybrid post-quantum suite, never a classic round)."""

    require_suite: str | None = rule(None, choices=(SUITE, SUITE_AES, SUITE_PQ))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """``[model]``: which model of the zoo this device trains, and its shapes."""

    name: str = rule(choices=MODEL_NAMES)
    input_shape: tuple[int, ...] = rule(lo=1, hi=65536, min_len=1, max_len=4)
    num_classes: int = rule(lo=2, hi=100_000)


@dataclasses.dataclass(frozen=True)
class StorageConfig:
    """``[storage]``: where the agent keeps its SQLite database.

    None (the default): ``$STATE_DIRECTORY/agent.db`` under systemd (the shipped unit's
    ``StateDirectory=fedge`` gives /var/lib/fedge), else ``$XDG_STATE_HOME/fedge/agent.db``
    (``~/.local/state/fedge/agent.db``); see :func:`fedge.agent.config.default_db_path`."""

    db_path: str | None = rule(None, min_len=1)


@dataclasses.dataclass(frozen=True)
class DropoutRates:
    """``[simulation.dropout]``: probability that a device of this class drops at each SecAgg+ stage."""

    advertise_keys: float = rule(0.0, lo=0, hi=1)
    share_keys: float = rule(0.0, lo=0, hi=1)
    masked_input: float = rule(0.0, lo=0, hi=1)
    consistency_check: float = rule(0.0, lo=0, hi=1)
    unmask: float = rule(0.0, lo=0, hi=1)


@dataclasses.dataclass(frozen=True)
class SimulationTraits:
    """``[simulation]``: how the simulator models a fleet of this class."""

    #: Train-time multiplier against a reference device (1.0); 2.0 means twice as slow.
    relative_speed: float = rule(1.0, lo=0, lo_open=True, hi=1000)
    #: Probability that the device is eligible when a round starts.
    availability: float = rule(1.0, lo=0, hi=1)
    uplink_mbps: float = rule(10.0, lo=0, lo_open=True, hi=100_000)
    downlink_mbps: float = rule(50.0, lo=0, lo_open=True, hi=100_000)
    dropout: DropoutRates = rule(DropoutRates())


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
    """One validated device profile; every section is frozen."""

    device: DeviceInfo
    compute: ComputeLimits
    eligibility: Eligibility
    network: NetworkConfig
    privacy: PrivacyConfig
    model: ModelSpec
    storage: StorageConfig = StorageConfig()
    simulation: SimulationTraits = SimulationTraits()
    secagg: SecAggPolicy = SecAggPolicy()


def parse_profile(mapping: Mapping[str, Any], source: str = "<profile>") -> DeviceProfile:
    """Validate an already-parsed TOML mapping; errors name ``source`` and the field."""
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{source}: expected a table of sections, got {type(mapping).__name__}")
    return build(DeviceProfile, mapping, source)


#: The folder holding ``agent/``: ``fedge/`` in an installed wheel, the repository in a checkout.
_INSTALL_ROOT = Path(__file__).resolve().parents[2]


def shipped_profiles() -> Path:
    """Where the shipped profiles are: ``fedge/profiles/`` (package data) in an installed wheel,
    ``firmware_configs/`` in a checkout or an editable install."""
    for d in (_INSTALL_ROOT / "profiles", _INSTALL_ROOT / "firmware_configs"):
        if (d / "pi4.toml").is_file():
            return d
    raise ConfigError(f"no shipped profiles under {_INSTALL_ROOT} (profiles/ or firmware_configs/): a broken install?")


#: A profile is a page of TOML; anything larger is not one (and is never read whole).
MAX_PROFILE_BYTES = 64 * 1024


def load_profile(path: str | PathLike[str]) -> DeviceProfile:
    """Read and validate one profile file; a missing, non-regular (``/dev/zero``, a FIFO) or
    oversized file, or bad TOML, is a ConfigError too."""
    source = str(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused right after.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise ConfigError(f"{source}: not a regular file")
            raw = fh.read(MAX_PROFILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{source}: cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_PROFILE_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_PROFILE_BYTES // 1024} KiB; not a device profile")
    try:
        mapping = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: not UTF-8 (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None
    return parse_profile(mapping, source)
