"""``fedge-agent``: the device-side command. Thin: each command is one library call."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from fedge.agent.core.cliutil import logging_options, run
from fedge.agent.core.errors import ConfigError
from fedge.agent.core.profiles import load_profile

if TYPE_CHECKING:
    from fedge.agent.store import Store

#: The one place every command's help names for the default store.
STORE_DEFAULT = (
    "the profile's storage.db_path, else $STATE_DIRECTORY/agent.db under systemd, else ~/.local/state/fedge/agent.db"
)


def open_store(path: str, *, create: bool) -> Store:
    """The device's store at ``path``; a missing one is created only when ``create`` (init, data import)."""
    from fedge.agent.store import Store, StoreError

    if not os.path.exists(path):
        if not create:
            raise StoreError(
                f"{path}: no agent store there; create it with `fedge-agent init` or `fedge-agent data import`, "
                "or name the right one with --db/--profile"
            )
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        except OSError as e:
            raise StoreError(f"{path}: cannot create its directory: {e.strerror or e}") from None
    return Store(path)


def device_store_path(profile: str | None, db: str | None) -> str:
    """``--db``, else the store the profile names, else the default one (as ``run`` resolves it)."""
    from fedge.agent.config import store_path

    return store_path(load_profile(profile) if profile and not db else None, db)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fedge", prog_name="fedge-agent")
@logging_options
def cli() -> None:
    """fedge device agent: trains the global model on local data, privately, when eligible."""


@cli.command("check-config")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.pass_context
def check_config(ctx: click.Context, files: tuple[str, ...]) -> None:
    """Validate device profiles (TOML); one line per file, exit 2 if any is invalid."""
    failed = 0
    for path in files:
        try:
            profile = load_profile(path)
        except ConfigError as e:
            failed += 1
            if len(files) == 1:
                raise
            click.echo(f"{ctx.find_root().info_name}: error: {e}", err=True)
            continue
        click.echo(f"OK {path} ({profile.device.class_}, model {profile.model.name})")
        from fedge.agent.config import missing_tls_files

        for m in missing_tls_files(profile):  # fine where the profile is written; run refuses it on the device
            click.echo(f"{ctx.find_root().info_name}: warning: {path}: {m}: not readable on this machine", err=True)
    if failed:
        ctx.exit(ConfigError.exit_code)


@cli.group("data")
def data() -> None:
    """Local training data kept in the device's SQLite store."""


db_option = click.option(
    "--db", default=None, type=click.Path(dir_okay=False), help=f"The agent's SQLite store [default: {STORE_DEFAULT}]."
)
optional_profile = click.option(
    "--profile",
    "profile",
    default=None,
    type=click.Path(dir_okay=False),
    help="The device profile (TOML), for its store.",
)
#: For commands whose output is JSON already, so every listing command takes ``--json``.
json_already = click.option("--json", "as_json", is_flag=True, help="Print JSON (the default; accepted for scripts).")


@data.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--model", "model", required=True, help="Zoo model name (logreg, mlp, cnn) or a .tflite path the data must fit."
)
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option(
    "--test-fraction", type=float, default=0.0, show_default=True, help="Hold out this share at random as test data."
)
@optional_profile
@db_option
def data_import(file: str, model: str, split: str, test_fraction: float, profile: str | None, db: str | None) -> None:
    """Import FILE (.npz with arrays x, y; or .csv/.csv.gz with the label last) into the store."""
    import numpy as np

    from fedge.agent.local_data import import_examples
    from fedge.agent.training.models import load_spec

    db = device_store_path(profile, db)
    with open_store(db, create=True) as store:
        r = import_examples(
            store, file, load_spec(model), split=split, test_fraction=test_fraction, rng=np.random.default_rng()
        )
    click.echo(f"imported {r.train + r.test} examples from {file} ({r.train} train, {r.test} test) into {db}")


@data.command("stats")
@optional_profile
@db_option
@json_already
def data_stats(profile: str | None, db: str | None, as_json: bool) -> None:
    """Print the number of examples, shapes and label counts per split, as JSON."""
    import json

    from fedge.agent.local_data import example_stats

    with open_store(device_store_path(profile, db), create=False) as store:
        click.echo(json.dumps(example_stats(store), indent=2))


@cli.group("privacy")
def privacy() -> None:
    """The device's privacy ledger: what it contributed and the epsilon that adds up to."""


@privacy.command("status")
@optional_profile
@db_option
@click.option("--delta", type=float, default=1e-5, show_default=True, help="Delta at which epsilon is reported.")
@json_already
def privacy_status(profile: str | None, db: str | None, delta: float, as_json: bool) -> None:
    """Print the number of contributions and the epsilon spent so far, as JSON."""
    import json

    from fedge.agent.core.privacy.ledger import LEDGER_RELATION, DeviceLedger

    with open_store(device_store_path(profile, db), create=False) as store:
        ledger = DeviceLedger(store.db)
        status = {
            "contributions": len(ledger.contributions()),
            "epsilon_spent": ledger.epsilon_spent(delta),
            "delta": delta,
            "relation": LEDGER_RELATION,
        }
    click.echo(json.dumps(status))


#: Exit code when the daemon cannot start (bad profile, store, identity or data): systemd's
#: unit lists it in RestartPreventExitStatus, so a misconfigured device does not restart-loop.
EXIT_STARTUP = 78

profile_option = click.option(
    "--profile", "profile", required=True, type=click.Path(dir_okay=False), help="The device profile (TOML)."
)
db_override = db_option


@cli.command("run")
@profile_option
@click.option("--device-id", default=None, help="Device id [default: the one stored by init].")
@db_override
@click.option("--broker", default=None, help="Broker URL (mqtt:// or mqtts://) instead of the profile's.")
@click.option(
    "--data",
    default=None,
    type=click.Path(dir_okay=False),
    help="Train on this .npz/CSV instead of the store's examples.",
)
@click.option("--authority", default=None, help="Enrollment authority public key (hex) instead of the stored one.")
@click.pass_context
def run_agent(
    ctx: click.Context,
    profile: str,
    device_id: str | None,
    db: str | None,
    broker: str | None,
    data: str | None,
    authority: str | None,
) -> None:
    """Run the agent daemon until SIGTERM/SIGINT: check in, train when eligible, upload exactly once."""
    import sys

    from fedge.agent.core.errors import FedgeError

    # sqlite-utils imports pandas when it is installed; the daemon never uses it (RSS budget).
    if "pandas" not in sys.modules:
        sys.modules["pandas"] = None  # type: ignore[assignment]
    from fedge.agent.config import check_tls_files, resolve
    from fedge.agent.daemon import AgentDaemon

    try:
        cfg = resolve(
            profile,
            device_id=device_id,
            db_path=db,
            broker_url=broker,
            data_path=data,
            log_format=ctx.find_root().meta.get("log_format", "text"),
            authority_hex=authority,
        )
        check_tls_files(cfg)  # a missing certificate: one line naming it, 78
        open_store(cfg.db_path, create=False).close()  # a missing, corrupt or foreign store: one line, 78
        daemon = AgentDaemon(cfg)
        daemon.startup()
    except FedgeError as e:
        click.echo(f"{ctx.find_root().info_name}: startup failed: {e}", err=True)
        ctx.exit(EXIT_STARTUP)
    ctx.exit(daemon.serve(started=True))


@cli.command("init")
@profile_option
@click.option("--device-id", required=True, help="This device's id ([A-Za-z0-9_.-], at most 64).")
@db_override
@click.option("--authority", default=None, help="Enrollment authority public key (hex) to trust for SecAgg+ peers.")
@click.option(
    "--release-key", "release_keys", multiple=True, help="Release key (hex) to trust for model releases (repeatable)."
)
def init(
    profile: str, device_id: str, db: str | None, authority: str | None, release_keys: tuple[str, ...] = ()
) -> None:
    """Create the store and the device's Ed25519 identity (kept if it exists); print the public key."""
    from fedge.agent.config import resolve
    from fedge.agent.identity import load_or_create, set_authority

    cfg = resolve(profile, device_id=device_id, db_path=db, authority_hex=authority)
    with open_store(cfg.db_path, create=True) as store:
        key = load_or_create(store.db, device_id)
        if authority:
            set_authority(store.db, bytes.fromhex(authority))
        if release_keys:
            from fedge.agent.releases import trust_release_keys

            trust_release_keys(store.db, device_id, release_keys)
    click.echo(f"store {cfg.db_path}", err=True)
    click.echo(f"{device_id} {key.public_bytes().hex()}")


@cli.command("identity")
@profile_option
@db_override
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a line.")
def identity_cmd(profile: str, db: str | None, as_json: bool) -> None:
    """Print the device id and its identity public key (hex), for enrollment."""
    import json

    from fedge.agent.config import resolve
    from fedge.agent.identity import load

    cfg = resolve(profile, db_path=db)
    with open_store(cfg.db_path, create=False) as store:
        device_id, key = load(store.db)
    if as_json:
        click.echo(json.dumps({"device_id": device_id, "identity": key.public_bytes().hex(), "store": cfg.db_path}))
        return
    click.echo(f"{device_id} {key.public_bytes().hex()}")


@cli.command("status")
@profile_option
@db_override
@json_already
def status(profile: str, db: str | None, as_json: bool) -> None:
    """Print the latest round states, the outbox length and the epsilon spent, as JSON."""
    import json

    from fedge.agent.config import resolve
    from fedge.agent.status import agent_status

    cfg = resolve(profile, db_path=db)
    with open_store(cfg.db_path, create=False) as store:
        click.echo(json.dumps(agent_status(store, delta=cfg.profile.privacy.delta), indent=2))


def main(argv: list[str] | None = None) -> None:
    raise SystemExit(run(cli, "fedge-agent", argv))
