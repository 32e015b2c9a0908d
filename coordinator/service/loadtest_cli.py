"""``fedge-coordinator loadtest``: options become one LoadtestConfig; one library call."""

from __future__ import annotations

import click


@click.command("loadtest")
@click.option("--agents", type=int, required=True, help="Agents to run (the real agent code, many per process).")
@click.option("--rounds", type=int, default=3, show_default=True, help="Rounds to run.")
@click.option(
    "--churn",
    type=float,
    default=0.0,
    show_default=True,
    help="Fraction of agents whose connection is reset at a random moment of each round.",
)
@click.option("--broker-restart", is_flag=True, help="Restart the broker once, mid-round (SIGTERM, then start).")
@click.option(
    "--broker-crash",
    is_flag=True,
    help="Crash the broker once, mid-round (SIGKILL, then start: what it had not autosaved is gone).",
)
@click.option("--broker", "broker_url", default=None, help="Use this broker URL instead of starting Mosquitto.")
@click.option(
    "--agents-per-worker",
    type=int,
    default=250,
    show_default=True,
    help="Agents per worker process (at most 1,000; they share one network loop, about 6 descriptors each).",
)
@click.option("--checkin-window", type=float, default=30.0, show_default=True, help="Check-in window (s).")
@click.option(
    "--stage-timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds a SecAgg+ stage waits for replies: N agents on one machine share its cores, so large N needs more.",
)
@click.option(
    "--workdir",
    default=None,
    type=click.Path(file_okay=False),
    help="Fresh directory for the stores and logs [default: a new temporary directory].",
)
@click.option(
    "--json", "json_path", default=None, type=click.Path(dir_okay=False), help="Write the result here as JSON."
)
def loadtest(
    agents: int,
    rounds: int,
    churn: float,
    broker_restart: bool,
    broker_crash: bool,
    broker_url: str | None,
    agents_per_worker: int,
    checkin_window: float,
    stage_timeout: float,
    workdir: str | None,
    json_path: str | None,
) -> None:
    """Run N real agents against a real broker and the real coordinator; print the result as JSON."""
    from fedge.agent.core.errors import ConfigError
    from fedge.coordinator.service.loadtest import LoadtestConfig, run_loadtest

    try:
        cfg = LoadtestConfig(
            agents=agents,
            rounds=rounds,
            churn=churn,
            broker_restart=broker_restart,
            broker_crash=broker_crash,
            broker_url=broker_url,
            agents_per_worker=agents_per_worker,
            checkin_window_s=checkin_window,
            stage_timeout_s=stage_timeout,
            workdir=workdir,
        )
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None
    text = run_loadtest(cfg).to_json()
    if json_path:
        with open(json_path, "w") as f:
            f.write(text + "\n")
    click.echo(text)


COMMANDS = [loadtest]
