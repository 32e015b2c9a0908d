"""The coordinator service's one frozen config, resolved once by the CLI (or a test) and passed down."""

from __future__ import annotations

import dataclasses
import math

from fedge.agent.core.errors import ConfigError
from fedge.agent.core.transport.base import MQTT_5, MQTT_311, MQTT_AUTO, TransportConfig
from fedge.coordinator.rounds.plan import TrainingConfig
from fedge.coordinator.rounds.server_opt import ServerOptConfig
from fedge.coordinator.rounds.staleness import parse_staleness
from fedge.coordinator.workers import ENGINES as GROUP_ENGINES


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """Everything ``fedge-coordinator serve`` needs.

    ``broker_url`` None starts the embedded broker on loopback (``embedded_port``, 0 = free).
    ``pacing_batch`` bounds how many selected devices may owe us an upload at once, so the broker's
    per-client queue (Mosquitto drops silently past ``max_queued_messages``, 1,000 by default) never
    overflows.
    The accountant's sampling rate is the cohort's share of the eligible check-ins of the round.
    """

    db_path: str
    training: TrainingConfig = TrainingConfig()
    broker_url: str | None = None
    embedded_port: int = 0
    rounds: int = 1
    checkin_window_s: float = 10.0
    round_gap_s: float = 0.0
    pacing_batch: int = 500
    epsilon_budget: float | None = None
    campaign_id: str = "default"
    eval_data: str | None = None
    client_id: str = "coordinator"
    mqtt_protocol: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    username: str | None = None
    password: str | None = None
    max_message_bytes: int = 16 * 1024 * 1024
    #: live privacy audit: M canary pairs (M inserted as in-process clients, M withheld); 0 = none
    audit_canaries: int = 0
    #: the server's update rule on each completed round's mean delta (FedAvg at rate 1: plain FedAvg)
    server_opt: ServerOptConfig = ServerOptConfig()
    shutdown_timeout_s: float = 10.0
    #: ``sync``: announced rounds; ``buffered``: asynchronous training, SecAgg+ groups of ``buffer``
    #: devices, at most ``concurrency`` training at once, updates over ``max_staleness`` versions old
    #: refused, ``staleness`` the weight function, ``max_contributions`` updates per device (0: no cap)
    mode: str = "sync"
    buffer: int = 2
    concurrency: int = 4
    max_staleness: int = 4
    staleness: str = "poly:0.5"
    max_contributions: int = 0
    #: SecAgg+ groups of at least this many devices per round (0: one group), each group's SecAgg+
    #: server run by one of ``group_workers`` workers (0: one per CPU) of ``group_engine`` (worker
    #: processes, Ray actors, or threads of this process); each group sum carries the round's whole noise
    group_size: int = 0
    group_workers: int = 0
    group_engine: str = "process"
    #: SecAgg+ rounds use the X25519 + ML-KEM-768 hybrid suite whenever every device of the cohort runs it
    prefer_hybrid: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("sync", "buffered"):
            raise ConfigError(f"mode: expected 'sync' or 'buffered', got {self.mode!r}")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency: expected >= 1, got {self.concurrency}")
        if self.buffer < 1 or self.max_staleness < 0 or self.max_contributions < 0:
            raise ConfigError(
                f"buffer >= 1, max_staleness >= 0 and max_contributions >= 0 expected, got {self.buffer}, "
                f"{self.max_staleness} and {self.max_contributions}"
            )
        if self.mode == "buffered" and self.training.secagg and self.buffer < 2:
            raise ConfigError("buffer: a SecAgg+ group of one device would reveal its update; use --buffer 2 or more")
        parse_staleness(self.staleness)
        if self.group_size == 1 or self.group_size < 0 or self.group_workers < 0:
            raise ConfigError(
                f"group_size: expected 0 (one group) or >= 2, and group_workers >= 0; got {self.group_size}, "
                f"{self.group_workers}"
            )
        if self.group_engine not in GROUP_ENGINES:
            raise ConfigError(f"group_engine: expected one of {', '.join(GROUP_ENGINES)}, got {self.group_engine!r}")
        if self.group_size and not self.training.secagg:
            raise ConfigError("group_size: groups are SecAgg+ groups; turn secure aggregation on or drop --group-size")
        if self.group_size and self.audit_canaries:
            raise ConfigError("audit_canaries: not with --group-size (a group's noise floor would count canaries)")
        if self.mode == "buffered" and self.training.target_quantile:
            raise ConfigError("adaptive clipping: not in buffered mode (every group must carry the same privacy event)")
        if self.rounds < 0:
            raise ConfigError(f"rounds: expected >= 0, got {self.rounds}")
        for name in ("checkin_window_s", "shutdown_timeout_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{name}: expected a positive number, got {v}")
        if not (math.isfinite(self.round_gap_s) and self.round_gap_s >= 0):
            raise ConfigError(f"round_gap_s: expected >= 0, got {self.round_gap_s}")
        if self.pacing_batch < 1:
            raise ConfigError(f"pacing_batch: expected >= 1, got {self.pacing_batch}")
        if self.epsilon_budget is not None and not (self.epsilon_budget > 0 and math.isfinite(self.epsilon_budget)):
            raise ConfigError(f"epsilon_budget: expected a finite number > 0, got {self.epsilon_budget}")
        if self.mqtt_protocol not in (None, MQTT_5, MQTT_311, MQTT_AUTO):
            raise ConfigError(f"mqtt_protocol: expected '3.1.1', '5' or 'auto', got {self.mqtt_protocol!r}")
        if self.broker_url is not None:
            self.transport(self.broker_url)  # validates the URL and TLS options

    @property
    def embedded(self) -> bool:
        return self.broker_url is None

    def transport(self, url: str, broker_protocol: str | None = None) -> TransportConfig:
        """The transport config for the broker at ``url``: ``mqtt_protocol`` if set, else the one the
        local broker speaks (``broker_protocol``; amqtt: 3.1.1 only), else MQTT 5 falling back to 3.1.1."""
        protocol = self.mqtt_protocol or broker_protocol or (MQTT_311 if self.embedded else MQTT_AUTO)
        return TransportConfig(
            broker_url=url,
            client_id=self.client_id,
            username=self.username,
            password=self.password,
            tls_ca=self.tls_ca,
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
            protocol=protocol,
            max_payload_bytes=self.max_message_bytes,
            max_reassembly_bytes=max(256 * 1024 * 1024, self.max_message_bytes),
            chunk_bytes=min(1024 * 1024, self.max_message_bytes),
        )
