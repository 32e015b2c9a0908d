"""``fedge-coordinator devices unquarantine``: the operator lifts a quarantine. Thin: one library call."""

from __future__ import annotations

import click

from fedge.coordinator.service.service_cli import db_option, devices


@devices.command("unquarantine")
@click.argument("device_id")
@db_option
def devices_unquarantine(device_id: str, db: str) -> None:
    """Lift the quarantine of DEVICE_ID (a cloned device, forged shares): it may be selected again."""
    from fedge.agent.core.errors import ConfigError
    from fedge.coordinator.service.quarantine import lift
    from fedge.coordinator.store import Store

    store = Store(db)
    try:
        reason = lift(store, device_id)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    finally:
        store.close()
    click.echo(f"lifted the quarantine of {device_id} (was: {reason})")
