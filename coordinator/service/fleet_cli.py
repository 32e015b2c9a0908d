"""``fedge-coordinator releases|rollouts|dashboard``: thin commands over :mod:`fedge.coordinator.fleet.releases`,
:mod:`fedge.coordinator.fleet.controller` and :mod:`fedge.coordinator.fleet.dashboard`; tables for people, ``--json`` for scripts."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from fedge.coordinator.service.service_cli import db_option, json_option, new_db_option


@contextmanager
def _store(db: str) -> Iterator[Any]:
    from fedge.coordinator.store import Store

    store = Store(db)
    try:
        yield store
    finally:
        store.close()


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))


def _echo_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


# ---------------------------------------------------------------------- releases


@click.group("releases")
def releases() -> None:
    """Signed model releases: every published global model, or one imported from a file."""


def _release_row(d: dict[str, Any]) -> list[str]:
    acc = d["metrics"].get("accuracy")
    return [
        d["version"],
        d["parent"] or "-",
        d["architecture"],
        d["sha256"][:12],
        "-" if acc is None else f"{acc:.3f}",
        ",".join(map(str, d["produced_by"])) or d["source"],
        d["key_id"],
        _when(d["created"]),
    ]


@releases.command("list")
@db_option
@json_option
def releases_list(db: str, as_json: bool) -> None:
    """List releases: version, parent, architecture, hash, accuracy, origin, signing key."""
    from fedge.coordinator.fleet.releases import list_releases

    with _store(db) as store:
        rows = [r.to_dict() for r in list_releases(store)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _echo_table(
        ["version", "parent", "arch", "sha256", "accuracy", "rounds/source", "key", "created"],
        [_release_row(d) for d in rows],
    )


@releases.command("show")
@click.argument("version")
@db_option
@json_option
def releases_show(version: str, db: str, as_json: bool) -> None:
    """Show one release's manifest."""
    from fedge.coordinator.fleet.releases import get_release

    with _store(db) as store:
        d = get_release(store, version).to_dict()
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    for k, v in d.items():
        click.echo(f"{k:<12} {v}")


@releases.command("import")
@click.argument("path", type=click.Path(dir_okay=False, exists=True))
@click.option("--version", "version", required=True, help="Release version to give it.")
@click.option("--architecture", required=True, help="Zoo model it is for (logreg, mlp, cnn).")
@click.option("--parent", default=None, help="The release it derives from.")
@new_db_option
def releases_import(path: str, version: str, architecture: str, parent: str | None, db: str) -> None:
    """Import flat float32 weights (.npz with array 'weights', or .npy) as a signed release."""
    from fedge.coordinator.fleet.releases import import_release

    with _store(db) as store:
        rel = import_release(store, path, version=version, architecture=architecture, parent=parent)
    click.echo(
        f"release {rel.version} ({rel.manifest.architecture}, sha256 {rel.manifest.sha256[:12]}) signed with key {rel.manifest.key_id}"
    )


@releases.command("import-model")
@click.argument("path", type=click.Path(exists=True))
@click.option("--version", "version", required=True, help="Release version to give it.")
@new_db_option
def releases_import_model(path: str, version: str, db: str) -> None:
    """Import a built model (a `models build` output directory, or its .tflite) as a signed release that
    carries the model file, starting from its built weights; a rollout of it moves devices to it."""
    from fedge.coordinator.fleet.releases import import_model

    with _store(db) as store:
        rel = import_model(store, path, version=version)
    m = rel.manifest
    click.echo(
        f"release {rel.version} ({m.architecture}, {m.num_params} weights, model sha256 {m.model_sha256[:12]}) "
        f"signed with key {m.key_id}"
    )


@releases.command("sign")
@click.argument("version")
@db_option
def releases_sign(version: str, db: str) -> None:
    """Make stored model VERSION a release, or re-sign release VERSION with the current key."""
    from fedge.coordinator.fleet.releases import create_release, sign_release_version

    with _store(db) as store:
        exists = store.db["releases"].count_where("version = ?", [version])
        rel = sign_release_version(store, version) if exists else create_release(store, version)
    click.echo(f"release {rel.version} signed with key {rel.manifest.key_id}")


@releases.command("rotate-key")
@click.option("--keep-old", is_flag=True, help="Keep trusting the old key (default: retire it).")
@db_option
def releases_rotate_key(keep_old: bool, db: str) -> None:
    """New release key, announced to devices signed by the old one (no re-enrollment)."""
    from fedge.agent.core.release import key_id
    from fedge.coordinator.fleet.releases import rotate_key

    with _store(db) as store:
        rot = rotate_key(store, retire_old=not keep_old)
    click.echo(
        f"release key {key_id(rot.new_public)} (rotation {rot.sequence}); retired: {', '.join(rot.retire) or 'none'}"
    )


# ---------------------------------------------------------------------- rollouts


@click.group("rollouts")
def rollouts() -> None:
    """Send a release to a cohort in phases, with abort criteria, pause/resume, rollback and pins."""


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(p) / 100.0 for p in text.split(","))
    except ValueError:
        raise click.BadParameter("comma-separated percentages, e.g. 5,25,100") from None


@rollouts.command("create")
@click.option("--release", "version", required=True, help="Release version to roll out.")
@click.option("--class", "device_class", default="", help="Target a device class.")
@click.option("--tag", "tags", multiple=True, help="Target devices with this tag (repeatable; all must match).")
@click.option("--device", "devices", multiple=True, help="Target these devices (repeatable).")
@click.option("--phases", default="100", show_default=True, help="Cumulative percentages per phase, e.g. 5,25,100.")
@click.option("--rate", type=float, default=None, help="At most this many devices per minute.")
@click.option(
    "--max-failure-pct", type=float, default=10.0, show_default=True, help="Abort above this failure percentage..."
)
@click.option("--min-executed", type=int, default=5, show_default=True, help="...once this many installs ran.")
@click.option(
    "--max-metric-drop",
    type=float,
    default=0.05,
    show_default=True,
    help="Abort when on-device accuracy drops more than this on average (negative: never).",
)
@click.option(
    "--min-evaluated", type=int, default=5, show_default=True, help="Devices evaluated before the metric counts."
)
@click.option("--phase-wait", type=float, default=0.0, show_default=True, help="Seconds to soak before the next phase.")
@click.option(
    "--report-timeout",
    type=float,
    default=600.0,
    show_default=True,
    help="Seconds before a silent device is timed out.",
)
@click.option("--id", "rollout_id", default=None, help="Rollout id [default: r<N>].")
@db_option
def rollouts_create(
    version: str,
    device_class: str,
    tags: tuple[str, ...],
    devices: tuple[str, ...],
    phases: str,
    rate: float | None,
    max_failure_pct: float,
    min_executed: int,
    max_metric_drop: float,
    min_evaluated: int,
    phase_wait: float,
    report_timeout: float,
    rollout_id: str | None,
    db: str,
) -> None:
    """Create a rollout; the serving coordinator sends it."""
    from fedge.coordinator.fleet.controller import create_rollout
    from fedge.coordinator.fleet.rollouts import Criteria, Spec, Target

    with _store(db) as store:
        rid = rollout_id or f"r{store.db['rollouts'].count + 1}"
        spec = Spec(
            rid,
            version,
            Target(device_class, tuple(tags), tuple(devices)),
            _fractions(phases),
            rate,
            Criteria(max_failure_pct, min_executed, None if max_metric_drop < 0 else max_metric_drop, min_evaluated),
            phase_wait,
            report_timeout,
        )
        view = create_rollout(store, spec)
    click.echo(
        f"rollout {rid}: {version} to {spec.target.describe()}, {view.counts['total']} devices, "
        f"phases {', '.join(f'{p * 100:g}%' for p in spec.phases)}"
    )


def _rollout_row(d: dict[str, Any]) -> list[str]:
    c = d["devices"]
    return [
        d["rollout_id"],
        d["version"],
        d["target"],
        d["status"],
        f"{d['phase']}/{len(d['phases'])}",
        str(c["installed"]),
        str(c["failed"]),
        str(c["sent"] + c["waiting"]),
        str(c["total"]),
        d["reason"],
    ]


@rollouts.command("list")
@db_option
@json_option
def rollouts_list(db: str, as_json: bool) -> None:
    """List rollouts with status, phase and device counts."""
    from fedge.coordinator.fleet.controller import list_rollouts

    with _store(db) as store:
        rows = [v.to_dict() for v in list_rollouts(store)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _echo_table(
        ["rollout", "release", "target", "status", "phase", "installed", "failed", "pending", "devices", "reason"],
        [_rollout_row(d) for d in rows],
    )


@rollouts.command("show")
@click.argument("rollout_id")
@db_option
@json_option
def rollouts_show(rollout_id: str, db: str, as_json: bool) -> None:
    """One rollout, phase by phase."""
    from fedge.coordinator.fleet.controller import get_rollout

    with _store(db) as store:
        d = get_rollout(store, rollout_id).to_dict()
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(
        f"rollout {d['rollout_id']}: {d['version']} to {d['target']}, {d['status']}"
        + (f" ({d['reason']})" if d["reason"] else "")
    )
    _echo_table(
        [
            "phase",
            "percent",
            "devices",
            "installed",
            "failed",
            "skipped",
            "pending",
            "timed out",
            "rolled back",
            "rollback failed",
        ],
        [
            [
                str(p["phase"]),
                f"{p['percent']:g}%",
                str(p["devices"]),
                str(p["installed"]),
                str(p["failed"]),
                str(p["skipped"]),
                str(p["sent"] + p["waiting"]),
                str(p["timed_out"]),
                str(p["rolled_back"]),
                str(p["rollback_failed"]),
            ]
            for p in d["phases"]
        ],
    )


def _transition(name: str, fn_name: str, doc: str) -> click.Command:
    @click.argument("rollout_id")
    @db_option
    def command(rollout_id: str, db: str) -> None:
        from fedge.coordinator.fleet import controller as fleet

        fn: Callable[..., Any] = getattr(fleet, fn_name)
        with _store(db) as store:
            view = fn(store, rollout_id)
        click.echo(f"rollout {rollout_id}: {view.progress.status.value}")

    command.__doc__ = doc
    return rollouts.command(name)(command)


_transition("pause", "pause", "Stop sending ROLLOUT_ID to more devices.")
_transition("resume", "resume", "Continue ROLLOUT_ID.")
_transition("rollback", "rollback", "Abort ROLLOUT_ID: devices that got it go back to their previous release.")


@rollouts.command("pin")
@click.argument("selector")
@click.argument("version", required=False)
@click.option("--unpin", is_flag=True, help="Remove the pin.")
@db_option
def rollouts_pin(selector: str, version: str | None, unpin: bool, db: str) -> None:
    """Pin SELECTOR (device:ID, class:CLASS or tag:TAG) to release VERSION; rollouts skip it."""
    from fedge.coordinator.fleet.controller import pin

    if not unpin and not version:
        raise click.UsageError("give a VERSION, or --unpin")
    with _store(db) as store:
        pinned = pin(store, selector, None if unpin else version)
    click.echo(f"{'unpinned' if unpin else f'pinned to {version}:'} {selector}; {len(pinned)} devices pinned in all")


# ---------------------------------------------------------------------- dashboard


@click.command("dashboard")
@db_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (keep it local).")
@click.option("--port", type=int, default=8765, show_default=True, help="Port (0: any free port).")
def dashboard_cmd(db: str, host: str, port: int) -> None:
    """Serve a read-only web page: round charts, releases, rollout progress by phase (Ctrl-C stops)."""
    from fedge.coordinator.fleet.dashboard import Dashboard, DashboardConfig

    dash = Dashboard(DashboardConfig(db_path=db, host=host, port=port)).start()
    click.echo(f"dashboard on {dash.url} (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        dash.stop()


COMMANDS = (releases, rollouts, dashboard_cmd)
