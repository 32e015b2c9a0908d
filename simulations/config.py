"""The one frozen configuration of a simulation run, validated when it is built."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from fedge.agent.core.errors import ConfigError
from fedge.agent.core.privacy.config import MODES as DP_MODES
from fedge.coordinator.rounds.server_opt import ServerOptConfig
from fedge.coordinator.rounds.staleness import parse_staleness
from fedge.coordinator.workers import ENGINES as GROUP_ENGINES
from fedge.simulations import spec_model
from fedge.simulations.datasets import parse_dataset_spec
from fedge.simulations.partition import parse_partition_spec

MODELS = ("logreg", "mlp", "cnn")
ENGINES = ("local", "ray")
MODES = ("sync", "buffered")
#: Cohorts from this size on run on worker processes by default (below it, spawning costs more than it saves).
AUTO_WORKERS_FROM = 500
#: How the cohort is drawn; the accountant is told this scheme and ``per_round / population``.
SAMPLING_SCHEME = "uniform_without_replacement"


@dataclass(frozen=True)
class SimConfig:
    """Every knob of ``fedge-sim run``. ``profiles`` is ((name, share), ...); empty means ideal devices."""

    population: int
    per_round: int
    rounds: int
    model: str
    dataset: str
    partition: str = "iid"
    secagg: bool = False
    dp: str = "off"
    noise_multiplier: float = 0.0
    clip: float = 1.0
    delta: float = 1e-5
    seed: int = 0
    profiles: tuple[tuple[str, float], ...] = ()
    local_epochs: int = 1
    batch_size: int = 10
    learning_rate: float = 0.01
    out: str | None = None
    engine: str = "local"
    #: device hosts (worker processes or Ray actors) running the cohort's devices; 0 = in the driver
    #: process; None = 2 when the machine has 2 cores and the cohort is large enough to gain from it
    workers: int | None = None
    #: adaptive clipping (DP on): C follows this quantile of the update norms, ``clip`` is the first C; 0 = off
    target_quantile: float = 0.0
    #: adaptive clipping: sigma_b, the noise on the clip-bit sum (0: expected reports / 20)
    clip_count_stddev: float = 0.0
    #: canary audit (coordinator/rounds/audit.py): M canaries inserted and M withheld; 0 = no audit
    audit_canaries: int = 0
    #: the server's update rule on each round's mean delta (FedAvg at rate 1: plain FedAvg)
    server_opt: ServerOptConfig = ServerOptConfig()
    #: FedProx's proximal coefficient on every device (Li et al., MLSys 2020); 0 = plain local SGD
    prox_mu: float = 0.0
    #: ``sync``: rounds of ``per_round`` sampled clients; ``buffered``: FedBuff groups (``rounds`` groups)
    mode: str = "sync"
    #: buffered: K, devices per SecAgg+ group (one model version each)
    buffer: int = 10
    #: buffered: C, devices training at any time (0: ``per_round``)
    concurrency: int = 0
    #: buffered: S, an update more than S versions behind its group's target is refused
    max_staleness: int = 10
    #: buffered: the staleness weight s(tau) (poly:A, constant, hinge:A,B)
    staleness: str = "poly:0.5"
    #: buffered: updates a device may contribute per campaign (0: no cap); DP accounting composes this many
    max_contributions: int = 0
    #: SecAgg+ groups of at least G devices per round (coordinator/rounds/grouped.py); 0 = one group
    group_size: int = 0
    #: where each group's SecAgg+ server runs: ``process`` (worker processes), ``ray`` (Ray actors) or
    #: ``thread`` (the driver); "" = Ray actors under ``--engine ray``, else worker processes
    group_engine: str = ""

    def __post_init__(self) -> None:
        def need(ok: bool, flag: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"{flag}: {what}")

        need(self.population >= 1, "--population", f"expected >= 1, got {self.population}")
        need(
            1 <= self.per_round <= self.population,
            "--per-round",
            f"expected 1..population ({self.population}), got {self.per_round}",
        )
        need(self.rounds >= 1, "--rounds", f"expected >= 1, got {self.rounds}")
        if spec_model.is_spec(self.model):  # the .tflite built from it (beside it, cached or built now)
            object.__setattr__(self, "model", str(spec_model.resolve(self.model)))
        need(
            self.model in MODELS or (self.model.endswith(".tflite") and os.path.isfile(self.model)),
            "--model",
            f"expected one of {', '.join(MODELS)}, the path of a built .tflite (its .json beside it) "
            f"or of a layer spec (.toml), got {self.model!r}",
        )
        need(self.dp in DP_MODES, "--dp", f"expected one of {', '.join(DP_MODES)}, got {self.dp!r}")
        need(self.workers is None or self.workers >= 0, "--workers", f"expected >= 0, got {self.workers}")
        need(self.engine in ENGINES, "--engine", f"expected one of {', '.join(ENGINES)}, got {self.engine!r}")
        need(
            not (self.dp == "distributed" and not self.secagg),
            "--dp distributed",
            "needs --secagg: each client adds only a share of the noise, so its update must stay masked",
        )
        need(
            self.dp == "off" or self.noise_multiplier > 0,
            "--noise-multiplier",
            f"expected > 0 with --dp {self.dp}, got {self.noise_multiplier}",
        )
        need(self.noise_multiplier >= 0, "--noise-multiplier", f"expected >= 0, got {self.noise_multiplier}")
        need(self.clip > 0, "--clip", f"expected > 0, got {self.clip}")
        need(
            self.target_quantile == 0 or (0 < self.target_quantile < 1 and self.dp != "off"),
            "--adaptive-clip",
            f"expected a quantile in (0, 1) with --dp local or distributed, got {self.target_quantile}",
        )
        need(0 < self.delta < 1, "--delta", f"expected 0 < delta < 1, got {self.delta}")
        need(self.seed >= 0, "--seed", f"expected >= 0, got {self.seed}")
        need(
            self.audit_canaries == 0 or self.audit_canaries >= 2,
            "--audit-canaries",
            f"expected 0 (no audit) or >= 2, got {self.audit_canaries}",
        )
        need(self.local_epochs >= 1, "--local-epochs", f"expected >= 1, got {self.local_epochs}")
        need(self.batch_size >= 1, "--batch-size", f"expected >= 1, got {self.batch_size}")
        need(self.learning_rate > 0, "--learning-rate", f"expected > 0, got {self.learning_rate}")
        need(self.prox_mu >= 0, "--prox-mu", f"expected >= 0, got {self.prox_mu}")
        parse_dataset_spec(self.dataset)
        parse_partition_spec(self.partition)
        need(self.mode in MODES, "--mode", f"expected one of {', '.join(MODES)}, got {self.mode!r}")
        parse_staleness(self.staleness)
        need(self.buffer >= 2, "--buffer", f"expected >= 2 (a SecAgg+ group needs two devices), got {self.buffer}")
        need(
            0 <= self.concurrency <= self.population,
            "--concurrency",
            f"expected 0 (= --per-round) .. population ({self.population}), got {self.concurrency}",
        )
        need(self.max_staleness >= 0, "--max-staleness", f"expected >= 0, got {self.max_staleness}")
        need(
            self.max_contributions >= 0,
            "--max-contributions",
            f"expected >= 0 (0: no cap), got {self.max_contributions}",
        )
        need(self.group_size == 0 or self.group_size >= 2, "--group-size", f"expected 0 or >= 2, got {self.group_size}")
        need(
            self.group_engine in ("", *GROUP_ENGINES),
            "--group-engine",
            f"expected one of {', '.join(GROUP_ENGINES)}, got {self.group_engine!r}",
        )
        if self.group_size:
            need(self.secagg, "--group-size", "needs --secagg (each group is one SecAgg+ instance)")
            need(self.mode == "sync", "--group-size", "not available with --mode buffered (--buffer is its group)")
            need(self.audit_canaries == 0, "--group-size", "not available with --audit-canaries")
        if self.mode == "buffered":
            need(
                self.buffer <= self.training_slots,
                "--buffer",
                f"expected at most --concurrency ({self.training_slots}), got {self.buffer}",
            )
            need(self.audit_canaries == 0, "--audit-canaries", "not available with --mode buffered")
            need(
                self.target_quantile == 0,
                "--adaptive-clip",
                "not available with --mode buffered (every group must have the same privacy event)",
            )

    @property
    def training_slots(self) -> int:
        """Buffered mode's C: devices training at any time."""
        return self.concurrency or self.per_round

    @property
    def sampling_rate(self) -> float:
        """Probability that a given client is in a round's cohort."""
        return self.per_round / self.population

    @property
    def groups_on(self) -> str:
        """Where the groups' SecAgg+ servers run (``group_engine`` resolved)."""
        return self.group_engine or ("ray" if self.engine == "ray" else "process")

    def host_count(self) -> int:
        """How many device hosts run the cohort (``workers`` resolved); results do not depend on it."""
        if self.workers is not None:
            return self.workers
        if self.engine == "ray":
            return 2
        return min(2, os.cpu_count() or 1) if self.per_round >= AUTO_WORKERS_FROM else 0

    def resolved(self) -> dict[str, Any]:
        """The config as written to ``summary.json``, with the sampling the accountant used."""
        d = dataclasses.asdict(self)
        d["profiles"] = {name: share for name, share in self.profiles}
        d["sampling"] = {"scheme": SAMPLING_SCHEME, "rate": self.sampling_rate}
        d["group_engine"] = self.groups_on
        return d
