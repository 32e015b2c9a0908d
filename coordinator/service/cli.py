"""``fedge-coordinator``: the fleet operator's command. Thin: each command is one library call."""

from __future__ import annotations

import json

import click

from fedge.agent.core.cliutil import logging_options, require_extra, run

#: What every coordinator command imports from the ``coordinator`` extra.
COORDINATOR_EXTRA = ("dp_accounting", "cryptography")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fedge", prog_name="fedge-coordinator")
@logging_options
def cli() -> None:
    """fedge coordinator: runs training rounds, releases and rollouts for a device fleet."""


@cli.group("privacy")
def privacy() -> None:
    """Privacy accounting: epsilon for planned settings, and per round of a campaign."""


@privacy.command("epsilon")
@click.option("--noise-multiplier", "-z", type=float, required=True, help="Noise std / clip norm (z).")
@click.option("--sampling-rate", "-q", type=float, required=True, help="Share of the population sampled per round.")
@click.option("--rounds", type=int, required=True, help="Number of rounds.")
@click.option("--delta", type=float, required=True, help="Target delta (keep it below 1/population).")
@click.option("--sampling", type=click.Choice(["poisson", "fixed"]), default="poisson", show_default=True)
@click.option("--population", type=int, default=None, help="Population size (needed for --sampling fixed).")
@click.option("--accountant", type=click.Choice(["rdp", "pld"]), default="rdp", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a line.")
def privacy_epsilon(
    noise_multiplier: float,
    sampling_rate: float,
    rounds: int,
    delta: float,
    sampling: str,
    population: int | None,
    accountant: str,
    as_json: bool,
) -> None:
    """Print the epsilon (dp-accounting) of ROUNDS sampled Gaussian rounds."""
    from fedge.coordinator.rounds.accounting import RELATION_NAMES, epsilon

    eps = epsilon(
        noise_multiplier, sampling_rate, rounds, delta, sampling=sampling, population=population, accountant=accountant
    )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "epsilon": eps,
                    "delta": delta,
                    "accountant": accountant,
                    "sampling": sampling,
                    "relation": RELATION_NAMES[sampling],
                    "rounds": rounds,
                    "noise_multiplier": noise_multiplier,
                    "sampling_rate": sampling_rate,
                }
            )
        )
        return
    click.echo(
        f"epsilon {eps:.6g} at delta {delta:g} ({accountant}, {sampling} sampling, {RELATION_NAMES[sampling]}, "
        f"{rounds} rounds)"
    )


@privacy.command("history")
@click.option(
    "--db",
    default="./fedge-coordinator.db",
    show_default=True,
    type=click.Path(dir_okay=False, exists=True),
    help="The coordinator's SQLite store.",
)
@click.option("--campaign", required=True, help="Campaign id.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines.")
def privacy_history(db: str, campaign: str, as_json: bool) -> None:
    """Print epsilon so far after each accounted round of a campaign, with its delta and neighbouring relation."""
    import sqlite_utils

    from fedge.coordinator.service.privacy_budget import CAMPAIGNS, campaign_history, campaign_relations

    store = sqlite_utils.Database(db)
    history = campaign_history(store, campaign)
    relations = campaign_relations(store, campaign)
    delta = store.table(CAMPAIGNS).get(campaign)["delta"]
    if as_json:
        rounds = [{"round": r, "epsilon": e, "relation": rel} for (r, e), rel in zip(history, relations)]
        relation = relations[-1] if relations else None
        click.echo(json.dumps({"campaign": campaign, "delta": delta, "relation": relation, "rounds": rounds}, indent=2))
        return
    for (round_id, eps), relation in zip(history, relations):
        click.echo(f"round {round_id} epsilon {eps:.6g} at delta {delta:g} ({relation})")


from fedge.coordinator.service.service_cli import COMMANDS as _SERVICE_COMMANDS  # noqa: E402

for _command in _SERVICE_COMMANDS:
    cli.add_command(_command)

import fedge.coordinator.service.quarantine_cli  # noqa: E402,F401  (devices unquarantine)
from fedge.coordinator.service.fleet_cli import COMMANDS as _FLEET_COMMANDS  # noqa: E402

for _command in _FLEET_COMMANDS:
    cli.add_command(_command)

from fedge.coordinator.service.models_cli import COMMANDS as _MODELS_COMMANDS  # noqa: E402

for _command in _MODELS_COMMANDS:
    cli.add_command(_command)


from fedge.coordinator.service.loadtest_cli import COMMANDS as _LOADTEST_COMMANDS  # noqa: E402

for _command in _LOADTEST_COMMANDS:
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    missing = require_extra("fedge-coordinator", COORDINATOR_EXTRA)
    raise SystemExit(missing if missing is not None else run(cli, "fedge-coordinator", argv))
