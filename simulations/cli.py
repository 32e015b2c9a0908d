"""``fedge-sim``: the researcher's command. Thin: each command is one library call."""

from __future__ import annotations

import click

from agent.core.cliutil import logging_options, run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fedge", prog_name="fedge-sim")
@logging_options
def cli() -> None:
    """fedge simulator: accuracy, privacy and cost of a federated deployment, before deploying it."""


def main(argv: list[str] | None = None) -> None:
    raise SystemExit(run(cli, "fedge-sim", argv))
