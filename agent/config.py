"""The agent daemon's one frozen config: resolved once from the device profile and CLI flags.

Nothing reads the environment or the profile later; the daemon and the CLI pass this object down.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from fedge.agent.core.errors import ConfigError
from fedge.agent.core.profiles import DeviceProfile, load_profile
from fedge.agent.core.topics import check_device_id
from fedge.agent.core.transport.base import TransportConfig
from fedge.agent.core.transport.failover import broker_order

LOG_FORMATS = ("text", "json")
#: The store's file name in the state directory.
STORE_NAME = "agent.db"


def default_db_path(env: Mapping[str, str] | None = None) -> str:
    """Where the device's store lives when neither ``--db`` nor ``[storage] db_path`` says.

    Under systemd, ``$STATE_DIRECTORY`` (the shipped unit's ``StateDirectory=fedge``:
    /var/lib/fedge); otherwise the user's state directory per the XDG base directories,
    ``$XDG_STATE_HOME/fedge`` (``~/.local/state/fedge``), writable without root.
    """
    env = os.environ if env is None else env
    systemd = env.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return os.path.join(systemd, STORE_NAME)
    xdg = env.get("XDG_STATE_HOME", "")
    if not os.path.isabs(xdg):  # the spec says: ignore a relative value
        xdg = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(xdg, "fedge", STORE_NAME)


def store_path(profile: DeviceProfile | None = None, db_path: str | None = None) -> str:
    """The one store of this device: ``--db``, else the profile's ``[storage] db_path``, else the default."""
    if db_path:
        return db_path
    if profile is not None and profile.storage.db_path:
        return profile.storage.db_path
    return default_db_path()


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Everything ``fedge-agent run`` needs; ``device_id`` None means "the id stored by init"."""

    profile: DeviceProfile
    profile_path: str
    db_path: str
    #: the brokers, as listed (``--broker`` or the profile's); each device tries them in its own order
    broker_urls: tuple[str, ...]
    device_id: str | None = None
    data_path: str | None = None
    log_format: str = "text"
    #: hex Ed25519 public key of the enrollment authority (SecAgg+ peers); None: use the stored one
    authority_hex: str | None = None
    #: seconds between eligibility re-checks while training
    recheck_s: float = 1.0
    #: seconds to wait before retrying the outbox or the broker after a failure (doubles up to 60)
    retry_s: float = 2.0
    #: bound on a graceful stop: a publish in flight is given at most this long
    shutdown_timeout_s: float = 10.0
    #: how long one connection attempt may take before it is retried later
    connect_timeout_s: float = 10.0
    #: per-core 1-minute load average file (tests point it elsewhere)
    loadavg_path: str = "/proc/loadavg"

    def __post_init__(self) -> None:
        if self.device_id is not None:
            check_device_id(self.device_id)
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log format: expected one of {LOG_FORMATS}, got {self.log_format!r}")
        if not self.broker_urls:
            raise ConfigError("broker: expected at least one mqtt:// or mqtts:// URL")
        for url in self.broker_urls:
            if urlsplit(url).scheme not in ("mqtt", "mqtts"):
                raise ConfigError(f"broker: expected an mqtt:// or mqtts:// URL, got {url!r}")
        if self.authority_hex is not None:
            try:
                if len(bytes.fromhex(self.authority_hex)) != 32:
                    raise ValueError
            except ValueError:
                raise ConfigError("authority: expected 64 hex digits (an Ed25519 public key)") from None
        for name in ("recheck_s", "retry_s", "shutdown_timeout_s", "connect_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: expected a positive number of seconds")

    def transport(self, device_id: str) -> TransportConfig:
        """The broker connection: a persistent session named after the device, on the broker its id
        ranks first, failing over to the others in that ranking (rendezvous hashing: a fleet spreads
        evenly, and a dead broker's devices spread evenly over the rest)."""
        net = self.profile.network
        first, *others = broker_order(self.broker_urls, device_id)
        tls = urlsplit(first).scheme == "mqtts"
        return TransportConfig(
            broker_url=first,
            fallback_urls=tuple(others),
            failover_after=net.failover_after,
            client_id=device_id,
            username=net.username,
            password=None,
            tls_ca=net.tls_ca if tls else None,
            tls_cert=net.tls_cert if tls else None,
            tls_key=net.tls_key if tls else None,
            keepalive_s=net.keepalive_s,
            clean_start=False,
            protocol=net.protocol,
            max_payload_bytes=net.max_payload_bytes,
            chunk_bytes=min(1024 * 1024, net.max_payload_bytes),
            max_reassembly_bytes=max(256 * 1024 * 1024, net.max_payload_bytes),
            connect_timeout_s=self.connect_timeout_s,
            publish_timeout_s=self.shutdown_timeout_s,
        )


def missing_tls_files(profile: DeviceProfile, broker_urls: tuple[str, ...] | None = None) -> list[str]:
    """``field: path`` of every TLS file an ``mqtts://`` broker of the profile needs and this machine
    cannot read (empty when no broker uses TLS)."""
    net = profile.network
    urls = broker_urls if broker_urls is not None else net.urls
    if not any(urlsplit(u).scheme == "mqtts" for u in urls):
        return []
    named = (("tls_ca", net.tls_ca), ("tls_cert", net.tls_cert), ("tls_key", net.tls_key))
    return [f"{name}: {path}" for name, path in named if path and not os.access(path, os.R_OK)]


def check_tls_files(cfg: AgentConfig) -> None:
    """ConfigError naming each TLS file the daemon's brokers need and cannot read (paho's own error
    names no file)."""
    missing = missing_tls_files(cfg.profile, cfg.broker_urls)
    if missing:
        raise ConfigError(
            f"{'; '.join(missing)}: no such readable file (needed for mqtts://; profile {cfg.profile_path})"
        )


def resolve(
    profile_path: str | os.PathLike[str],
    *,
    device_id: str | None = None,
    db_path: str | None = None,
    broker_url: str | None = None,
    data_path: str | None = None,
    log_format: str = "text",
    authority_hex: str | None = None,
    **overrides: object,
) -> AgentConfig:
    """Load the profile and apply the CLI's overrides (flags win over the profile)."""
    profile = load_profile(profile_path)
    if data_path is not None and not os.path.isfile(data_path):
        raise ConfigError(f"data: {data_path}: no such file")
    return AgentConfig(
        profile=profile,
        profile_path=str(profile_path),
        db_path=store_path(profile, db_path),
        broker_urls=(broker_url,) if broker_url else profile.network.urls,
        device_id=device_id,
        data_path=data_path,
        log_format=log_format,
        authority_hex=authority_hex,
        **overrides,  # type: ignore[arg-type]
    )
