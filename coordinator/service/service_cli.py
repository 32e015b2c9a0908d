"""The service's commands of ``fedge-coordinator``: devices, serve, rounds, demo. Thin: options become
one frozen config, then one library call; named errors become one line (``fedge.agent.core.cliutil``)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import click

DEFAULT_DB = "./fedge-coordinator.db"


def _existing_db(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    import os

    if not os.path.isfile(value):
        raise click.BadParameter(f"{value}: no coordinator store there (`serve` and `devices enroll` create one)")
    return value


def _new_db(ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """Say so when the store does not exist yet: a mistyped ``--db`` makes a new store (with new keys)."""
    import os

    if not ctx.resilient_parsing and not os.path.exists(value):
        click.echo(
            f"{ctx.find_root().info_name}: {value}: no coordinator store there yet; creating a new one", err=True
        )
    return value


#: ``--db`` of a command that reads or changes a store: a mistyped path is an error, not a new empty store.
db_option = click.option(
    "--db",
    default=DEFAULT_DB,
    show_default=True,
    type=click.Path(dir_okay=False),
    callback=_existing_db,
    help="The coordinator's SQLite store (must exist).",
)
#: ``--db`` of a command that may start a store: serve, devices enroll, releases import.
new_db_option = click.option(
    "--db",
    default=DEFAULT_DB,
    show_default=True,
    type=click.Path(dir_okay=False),
    callback=_new_db,
    help="The coordinator's SQLite store (created if missing, and said so).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def training_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The campaign knobs ``serve`` and ``demo`` share (one TrainingConfig)."""
    opts = [
        click.option("--model", default="mlp", show_default=True, help="Zoo model to train (logreg, mlp, cnn)."),
        click.option(
            "--goal", type=int, default=None, help="Devices to aggregate per round [serve: 10; demo: --agents]."
        ),
        click.option(
            "--min-clients",
            type=int,
            default=2,
            show_default=True,
            help="Fewest reports a round may aggregate (and, in distributed DP, the shares its noise is split over).",
        ),
        click.option(
            "--dp",
            "dp_mode",
            type=click.Choice(["off", "local", "distributed"]),
            default=None,
            help="Differential privacy: off, local (noise on each device) or distributed (needs SecAgg+) "
            "[serve: off; demo: distributed with SecAgg+, else local].",
        ),
        click.option(
            "--noise-multiplier", type=float, default=None, help="Noise std / clip norm (z) [serve: 1.0; demo: 0.5]."
        ),
        click.option(
            "--clip", "clip_norm", type=float, default=1.0, show_default=True, help="L2 clip norm of an update."
        ),
        click.option(
            "--secagg/--no-secagg", default=None, help="Secure aggregation (SecAgg+) [default: on when available]."
        ),
        click.option(
            "--epsilon-budget",
            type=float,
            default=None,
            help="Campaign epsilon budget (DP on): rounds stop before it is exceeded [serve: 10; demo: 50].",
        ),
        click.option(
            "--checkin-window",
            type=float,
            default=None,
            help="Seconds devices have to check in; it closes early once every enrolled device did [serve: 10; demo: 60].",
        ),
        click.option(
            "--broker",
            "broker_url",
            default=None,
            metavar="URL",
            help="mqtt://HOST:PORT or mqtts://... [default: start a local broker on 127.0.0.1: Mosquitto "
            "when installed, else the embedded amqtt].",
        ),
        click.option(
            "--rounds",
            type=int,
            default=None,
            help="Rounds to run [serve: 1; 0: no training, keep serving releases, rollouts and enrollment; demo: 5].",
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _training(
    model: str,
    goal: int,
    min_clients: int,
    dp_mode: str,
    noise_multiplier: float,
    clip_norm: float,
    secagg: bool | None,
    **kw: Any,
) -> Any:
    from fedge.agent.core.privacy.config import DpMode
    from fedge.coordinator.rounds.plan import TrainingConfig
    from fedge.coordinator.service.service import secure_available

    if secagg is None:
        secagg = secure_available()
    return TrainingConfig(
        model_name=model,
        goal=goal,
        min_clients=min(min_clients, goal),
        dp_mode=DpMode(dp_mode),
        noise_multiplier=noise_multiplier if dp_mode != "off" else 0.0,
        clip_norm=clip_norm,
        secagg=secagg,
        **kw,
    )


def _quiet_broker_logs() -> None:
    """amqtt and its state machine library log every transition at INFO."""
    logging.getLogger("transitions").setLevel(max(logging.WARNING, logging.getLogger().level))
    # amqtt warns about PUBACKs it does not track on every QoS 1 exchange with paho
    logging.getLogger("amqtt").setLevel(max(logging.ERROR, logging.getLogger().level))


# ---------------------------------------------------------------------- devices


@click.group("devices")
def devices() -> None:
    """Enrolled devices: only these may take part; revoked ones are rejected."""


@devices.command("enroll")
@click.option("--device-id", required=True, help="The device's id ([A-Za-z0-9_.-], at most 64).")
@click.option(
    "--identity", "identity_hex", required=True, help="Its Ed25519 identity public key, hex (fedge-agent identity)."
)
@click.option("--class", "device_class", required=True, help="Device class, e.g. pi4, phone, car.")
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
@new_db_option
def devices_enroll(device_id: str, identity_hex: str, device_class: str, tags: tuple[str, ...], db: str) -> None:
    """Enroll a device with its identity key; prints the enrollment authority key the device must trust."""
    from fedge.coordinator.service.enrollment import authority_public_hex, enroll
    from fedge.coordinator.store import Store

    store = Store(db)
    try:
        d = enroll(store, device_id, identity_hex, device_class, tags)
        auth = authority_public_hex(store)
        from fedge.coordinator.fleet.releases import release_key

        release_public = release_key(store).public_bytes().hex()
    finally:
        store.close()
    click.echo(f"enrolled {d.device_id} ({d.device_class}) identity {d.identity_hex[:16]}...")
    click.echo(f"enrollment authority {auth}")
    click.echo(f"release key {release_public}")


@devices.command("list")
@db_option
@json_option
def devices_list(db: str, as_json: bool) -> None:
    """List enrolled devices: last seen, rounds selected/contributed, epsilon, eligibility history, release,
    and why rounds no longer select a device."""
    from fedge.agent.core.privacy.ledger import LEDGER_RELATION
    from fedge.coordinator.service.device_report import activities
    from fedge.coordinator.service.enrollment import list_devices
    from fedge.coordinator.store import Store

    store = Store(db)
    try:
        rows = list_devices(store)
        acts = activities(store)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([{**d.to_dict(), **acts[d.device_id].to_dict()} for d in rows], indent=2))
        return
    click.echo(f"epsilon: {LEDGER_RELATION}, each device's own ledger (unamplified), as it last reported")
    click.echo(
        f"{'device':<24} {'class':<8} {'status':<8} {'identity':<18} {'last seen':<17} {'sel/contrib':<11} "
        f"{'epsilon':>8} {'eligible (old..new)':<19} {'release':<16} tags"
    )
    for d in rows:
        status = d.status
        a = acts[d.device_id]
        seen = "-" if a.last_seen is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(a.last_seen))
        eps = "-" if a.epsilon_spent is None else f"{a.epsilon_spent:.3g}"
        click.echo(
            f"{d.device_id:<24} {d.device_class:<8} {status:<8} {d.identity_hex[:16]:<18} {seen:<17} "
            f"{f'{a.selected}/{a.contributed}':<11} {eps:>8} {a.history():<19} {a.release or '-':<16} {','.join(d.tags)}"
            + (f"  ({d.quarantine_reason})" if d.quarantine_reason else "")
            + (f"  not selected: {a.not_selected}" if a.not_selected else "")
        )


@devices.command("revoke")
@click.argument("device_id")
@db_option
def devices_revoke(device_id: str, db: str) -> None:
    """Revoke DEVICE_ID: its messages are rejected from now on."""
    from fedge.coordinator.service.enrollment import revoke
    from fedge.coordinator.store import Store

    store = Store(db)
    try:
        revoke(store, device_id)
    finally:
        store.close()
    click.echo(f"revoked {device_id}")


# ---------------------------------------------------------------------- serve, rounds


@click.command("serve")
@new_db_option
@training_options
@click.option(
    "--pacing-batch",
    type=int,
    default=500,
    show_default=True,
    help="At most this many devices owe an upload at once (broker queue limits).",
)
@click.option(
    "--eval-data",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Held-out .npz (x, y) to evaluate each new global model on.",
)
@click.option(
    "--local-port",
    type=int,
    default=1883,
    show_default=True,
    help="Without --broker: the port of the local broker on 127.0.0.1 (0: any free port).",
)
@click.option(
    "--mqtt-protocol",
    type=click.Choice(["auto", "5", "3.1.1"]),
    default=None,
    help="MQTT version [default: auto (5, else 3.1.1) for --broker, 3.1.1 for the embedded amqtt broker].",
)
@click.option("--tls-ca", default=None, help="CA file for mqtts://.")
@click.option("--tls-cert", default=None, help="Client certificate for mqtts://.")
@click.option("--tls-key", default=None, help="Client key for mqtts://.")
@click.option(
    "--adaptive-clip",
    "target_quantile",
    type=float,
    default=None,
    metavar="QUANTILE",
    help="Adaptive clipping (DP on): C follows this quantile of the update norms; --clip is the first C.",
)
@click.option(
    "--clip-count-stddev",
    type=float,
    default=0.0,
    metavar="SIGMA",
    help="Adaptive clipping: noise on the clip-bit sum; 2*SIGMA must exceed z [default: goal/20].",
)
@click.option(
    "--server-opt",
    type=click.Choice(["fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi"]),
    default="fedavg",
    show_default=True,
    help="Server update on each round's mean delta (Reddi et al. 2021); post-processing, DP and SecAgg+ untouched.",
)
@click.option(
    "--server-lr", type=float, default=1.0, show_default=True, help="Server learning rate (FedAdam/FedYogi: 0.01-0.1)."
)
@click.option(
    "--prox-mu",
    type=float,
    default=0.0,
    show_default=True,
    help="FedProx's proximal coefficient on the devices (Li et al. 2020); 0: plain local SGD.",
)
@click.option(
    "--audit-canaries",
    type=int,
    default=0,
    show_default=True,
    metavar="M",
    help="Live privacy audit: M canary clients in this process take part through the protocol path "
    "(never counted as devices), M more are withheld; rounds show an empirical epsilon and a 95% lower bound.",
)
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    metavar="PORT",
    help="Serve Prometheus text metrics at http://HOST:PORT/metrics (0: any free port) [default: off].",
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address the metrics endpoint listens on.")
@click.option(
    "--mode",
    type=click.Choice(["sync", "buffered"]),
    default="sync",
    show_default=True,
    help="sync: announced rounds; buffered: devices train as they are free, SecAgg+ groups of --buffer "
    "make the model versions (--rounds versions).",
)
@click.option(
    "--buffer",
    type=int,
    default=2,
    show_default=True,
    metavar="K",
    help="Buffered: devices per SecAgg+ group; each group's sum is one model version.",
)
@click.option(
    "--concurrency",
    type=int,
    default=4,
    show_default=True,
    metavar="C",
    help="Buffered: devices training at any time.",
)
@click.option(
    "--max-staleness",
    type=int,
    default=4,
    show_default=True,
    metavar="S",
    help="Buffered: refuse an update more than S model versions old.",
)
@click.option(
    "--staleness",
    default="poly:0.5",
    show_default=True,
    help="Buffered: staleness weight, poly:A (1/(1+tau)^A), constant or hinge:A,B.",
)
@click.option(
    "--max-contributions",
    type=int,
    default=0,
    show_default=True,
    metavar="M",
    help="Buffered: updates a device may contribute per campaign (0: no cap; DP composes M groups).",
)
@click.option(
    "--group-size",
    type=int,
    default=0,
    show_default=True,
    metavar="G",
    help="SecAgg+ groups of at least G devices per round, unmasked side by side (0: one group); "
    "each group sum carries the round's whole noise.",
)
@click.option(
    "--group-workers",
    type=int,
    default=0,
    metavar="N",
    help="Workers that run the groups of a round [default: one per CPU].",
)
@click.option(
    "--group-engine",
    type=click.Choice(["process", "ray", "thread"]),
    default="process",
    show_default=True,
    help="Where each group's SecAgg+ server runs: worker processes, Ray actors (past one machine: "
    "RAY_ADDRESS names the cluster; the ray extra), or threads of this process.",
)
@click.option(
    "--prefer-hybrid",
    is_flag=True,
    help="SecAgg+ with the X25519 + ML-KEM-768 hybrid suite whenever every device in the round runs it "
    "(needs the pq extra on both sides) [default: only when a device requires it].",
)
def serve_cmd(
    db: str,
    model: str,
    goal: int | None,
    min_clients: int,
    dp_mode: str | None,
    noise_multiplier: float | None,
    clip_norm: float,
    secagg: bool | None,
    epsilon_budget: float | None,
    checkin_window: float | None,
    broker_url: str | None,
    rounds: int | None,
    pacing_batch: int,
    eval_data: str | None,
    local_port: int,
    mqtt_protocol: str | None,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    target_quantile: float | None,
    clip_count_stddev: float,
    server_opt: str,
    server_lr: float,
    prox_mu: float,
    audit_canaries: int,
    metrics_port: int | None,
    metrics_host: str,
    mode: str,
    buffer: int,
    concurrency: int,
    max_staleness: int,
    staleness: str,
    max_contributions: int,
    group_size: int,
    group_workers: int,
    group_engine: str,
    prefer_hybrid: bool,
) -> None:
    """Run training rounds over MQTT (a local broker on 127.0.0.1 unless --broker: Mosquitto when installed,
    else the embedded amqtt); Ctrl-C stops gracefully."""
    from fedge.coordinator.rounds.server_opt import ServerOptConfig, ServerOptKind
    from fedge.coordinator.service.config import ServiceConfig
    from fedge.coordinator.service.service import CoordinatorService, checkin_printer, serve

    _quiet_broker_logs()
    cfg = ServiceConfig(
        db_path=db,
        training=_training(
            model,
            goal or 10,
            min_clients,
            dp_mode or "off",
            noise_multiplier or 1.0,
            clip_norm,
            secagg,
            target_quantile=target_quantile or 0.0,
            clip_count_stddev=clip_count_stddev,
            prox_mu=prox_mu,
        ),
        broker_url=broker_url,
        embedded_port=local_port,
        rounds=1 if rounds is None else rounds,
        checkin_window_s=checkin_window or 10.0,
        pacing_batch=pacing_batch,
        epsilon_budget=epsilon_budget or 10.0,
        eval_data=eval_data,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
        mqtt_protocol=mqtt_protocol,
        audit_canaries=audit_canaries,
        server_opt=ServerOptConfig(ServerOptKind(server_opt), learning_rate=server_lr),
        mode=mode,
        buffer=buffer,
        concurrency=concurrency,
        max_staleness=max_staleness,
        staleness=staleness,
        max_contributions=max_contributions,
        group_size=group_size,
        group_workers=group_workers,
        group_engine=group_engine,
        prefer_hybrid=prefer_hybrid,
    )
    service = CoordinatorService(
        cfg,
        on_round=lambda r: click.echo(format_round(r)),
        on_checkin=checkin_printer(lambda line: click.echo(line, err=True)),
    )
    metrics = None
    if metrics_port is not None:
        from fedge.coordinator.service.metrics import MetricsServer

        metrics = MetricsServer(
            db,
            metrics_host,
            metrics_port,
            broker_connected=lambda: service.transport is not None and service.transport.connected,
        )
        click.echo(f"metrics on {metrics.start().url}")
    try:
        if cfg.rounds == 0:
            serve_fleet(service, echo=click.echo)
            return
        for r in serve(service):
            pass
    finally:
        if metrics is not None:
            metrics.stop()


def serve_fleet(service: Any, *, echo: Callable[[str], None]) -> None:
    """``serve --rounds 0``: no training, only the fleet (releases, rollouts, enrollment) until SIGINT/SIGTERM."""
    from fedge.agent.core.lifecycle import stop_signals

    with stop_signals(lambda _signum: service.request_stop(), lambda: service.stopping):
        try:
            service.start()
            echo(
                f"serving releases, rollouts and enrollment on {service.broker_url}, no training rounds (Ctrl-C stops)"
            )
            while not service.stopping:
                service.idle(1.0)
        finally:
            service.shutdown()


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_round(r: Any) -> str:
    """One line per round for people."""
    line = (
        f"round {r.round_id}: {r.status:<9} accuracy {_num(r.accuracy, '.3f')} loss {_num(r.loss, '.3f')} "
        f"participants {r.participants} dropped {r.dropped} epsilon {_num(r.epsilon, '.3g')}"
    )
    if r.epsilon is not None:
        from fedge.coordinator.service.service import SERVICE_RELATION

        line += (f" at delta {r.delta:g}" if r.delta is not None else "") + f" ({SERVICE_RELATION})"
    if r.epsilon_lower_bound is not None:
        from fedge.coordinator.rounds.audit import AUDIT_RELATION

        line += (
            f" (audit, {AUDIT_RELATION}: estimate {_num(r.epsilon_empirical, '.3g')}, "
            f"95% lower bound {_num(r.epsilon_lower_bound, '.3g')})"
        )
    if r.status != "completed":
        line += f" ({r.reason})"
    return line


@click.command("rounds")
@db_option
@json_option
def rounds_cmd(db: str, as_json: bool) -> None:
    """Table of rounds: status, reason, participants, dropped, accuracy, epsilon."""
    from fedge.coordinator.service.service import round_report
    from fedge.coordinator.store import Store

    store = Store(db)
    try:
        reports = [round_report(r) for r in store.rounds()]
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({"rounds": [r.to_dict() for r in reports]}, indent=2))
        return
    from fedge.coordinator.rounds.audit import AUDIT_RELATION
    from fedge.coordinator.service.service import SERVICE_RELATION

    audit = (
        f"; audit-est, audit-lb: {AUDIT_RELATION} (the canary audit's pairs; bounded by 2 x epsilon)"
        if any(r.epsilon_lower_bound is not None for r in reports)
        else ""
    )
    deltas = sorted({r.delta for r in reports if r.epsilon is not None and r.delta is not None})
    at = f" at delta {', '.join(f'{d:g}' for d in deltas)}" if deltas else ""
    click.echo(f"epsilon{at}: {SERVICE_RELATION} (the service's cohorts are Poisson-sampled){audit}")
    click.echo(
        f"{'round':>5} {'status':<9} {'part':>4} {'drop':>4} {'acc':>6} {'epsilon':>8} {'audit-est':>9} "
        f"{'audit-lb':>8}  reason"
    )
    for r in reports:
        click.echo(
            f"{r.round_id:>5} {r.status:<9} {r.participants:>4} {r.dropped:>4} {_num(r.accuracy, '.3f'):>6} "
            f"{_num(r.epsilon, '.3g'):>8} {_num(r.epsilon_empirical, '.3g'):>9} "
            f"{_num(r.epsilon_lower_bound, '.3g'):>8}  {r.reason}"
        )


# ---------------------------------------------------------------------- demo


@click.command("demo")
@click.option("--agents", type=int, default=8, show_default=True, help="Agent processes to start.")
@training_options
@click.option(
    "--mode",
    type=click.Choice(["sync", "buffered"]),
    default="sync",
    show_default=True,
    help="buffered: every agent trains as soon as it is free; SecAgg+ groups of --buffer make each version.",
)
@click.option("--buffer", type=int, default=2, show_default=True, metavar="K", help="Buffered: devices per group.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help='Write {"rounds": [{round, accuracy, loss, participants, dropped, epsilon}, ...]} here.',
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep the demo's files here [default: a temp dir, removed].",
)
def demo_cmd(
    agents: int,
    model: str,
    goal: int | None,
    min_clients: int,
    dp_mode: str | None,
    noise_multiplier: float | None,
    clip_norm: float,
    secagg: bool | None,
    epsilon_budget: float | None,
    checkin_window: float | None,
    broker_url: str | None,
    rounds: int | None,
    mode: str,
    buffer: int,
    json_path: str | None,
    workdir: str | None,
) -> None:
    """Run a whole federation on this machine: broker, coordinator and AGENTS agent processes on digits."""
    from fedge.coordinator.service.demo import DEMO_TRAINING, DemoConfig, run_demo
    from fedge.coordinator.service.service import secure_available

    root = click.get_current_context().find_root()
    if root.get_parameter_source("log_level") is click.core.ParameterSource.DEFAULT:
        logging.getLogger().setLevel(logging.WARNING)  # the demo prints its own line per round
    _quiet_broker_logs()
    if secagg is None:
        secagg = secure_available()
    if dp_mode is None and mode == "buffered":
        dp_mode = "off"
        click.echo(
            "demo: buffered mode without DP (a group of a few devices cannot hide its noise: "
            "with --dp distributed each version carries the noise of a whole round); pass --dp to change it"
        )
    if dp_mode is None:
        dp_mode = "distributed" if secagg else "local"
    cfg = DemoConfig(
        agents=agents,
        rounds=5 if rounds is None else rounds,
        training=_training(
            model, goal or agents, min_clients, dp_mode, noise_multiplier or 0.5, clip_norm, secagg, **DEMO_TRAINING
        ),
        broker_url=broker_url,
        json_path=json_path,
        workdir=workdir,
        epsilon_budget=epsilon_budget or 50.0,
        checkin_window_s=checkin_window or 60.0,
        mode=mode,
        buffer=buffer,
    )
    run_demo(cfg, echo=click.echo)


COMMANDS = (devices, serve_cmd, rounds_cmd, demo_cmd)
