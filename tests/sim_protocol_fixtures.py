"""Shared pieces of the protocol-simulation tests: small configs, profile files, numbers to compare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedge.simulations.config import SimConfig
from fedge.simulations.population import DEFAULT_PROFILE_DIR

#: Dropout large enough that every round sees some, small enough that SecAgg+ rounds complete.
FLAKY = """
[simulation]
relative_speed = 1.0
availability = 0.9

[simulation.dropout]
advertise_keys = 0.04
share_keys = 0.04
masked_input = 0.04
consistency_check = 0.04
unmask = 0.04
"""


def write_profile(directory: Path, name: str, simulation: str) -> Path:
    """The shipped pi4 profile with its ``[simulation]`` sections replaced by ``simulation``."""
    directory.mkdir(parents=True, exist_ok=True)
    shipped = (DEFAULT_PROFILE_DIR / "pi4.toml").read_text()
    path = directory / f"{name}.toml"
    path.write_text(shipped[: shipped.index("[simulation]")] + simulation.lstrip())
    return path


def small_config(**overrides: Any) -> SimConfig:
    """A seconds-long run: digits, logreg, SecAgg+ and distributed DP, flaky devices, in-process hosts."""
    base: dict[str, Any] = dict(
        population=400,
        per_round=40,
        rounds=2,
        model="logreg",
        dataset="digits",
        partition="dirichlet:0.5",
        secagg=True,
        dp="distributed",
        noise_multiplier=0.5,
        clip=1.0,
        delta=1e-5,
        seed=3,
        profiles=(("flaky", 1.0),),
        local_epochs=5,
        learning_rate=0.5,
        workers=0,
    )
    base.update(overrides)
    return SimConfig(**base)


def numbers(summary: Any) -> list[dict[str, Any]]:
    """Every per-round number of a summary except wall-clock seconds."""
    return [{k: v for k, v in r.to_json().items() if not k.startswith("seconds")} for r in summary.rounds]
