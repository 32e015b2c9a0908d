"""``fedge-agent``: the device-side command. Thin: each command is one library call."""

from __future__ import annotations

import click

from agent.core.cliutil import logging_options, run
from agent.core.errors import ConfigError
from agent.core.profiles import load_profile


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
    if failed:
        ctx.exit(ConfigError.exit_code)


def main(argv: list[str] | None = None) -> None:
    raise SystemExit(run(cli, "fedge-agent", argv))
