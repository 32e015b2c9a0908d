"""A population of simulated devices: profiles mixed in proportions, and who shows up and drops each round.

Each client id maps to one device profile (``firmware_configs/<name>.toml``, its ``[simulation]``
section) through one array of small ints. Per round, :func:`draw_round_behaviour` decides, for a
whole cohort at once, who is available and at which SecAgg+ stage each client drops, if any.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedge.agent.core.errors import ConfigError
from fedge.agent.core.profiles import SimulationTraits, load_profile, shipped_profiles

log = logging.getLogger(__name__)

#: SecAgg+ stages in protocol order, as named in the profiles' ``[simulation.dropout]``.
STAGES = ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmask")
#: ``drop_stage`` value of a client that completes the round.
NO_DROP = -1
#: Where the shipped profiles live: the installed package's ``profiles/``, or a checkout's ``firmware_configs/``.
DEFAULT_PROFILE_DIR = shipped_profiles()
#: The profile of ``--profiles`` left out: always available, never drops, reference speed.
IDEAL = SimulationTraits()


def parse_profile_mix(spec: str) -> tuple[tuple[str, float], ...]:
    """Parse ``pi4=0.5,phone=0.3,car=0.2`` into (name, share) pairs; shares must be > 0 and sum to 1."""
    pairs = []
    for item in spec.split(","):
        name, sep, share = item.strip().partition("=")
        try:
            value = float(share) if sep else float("nan")
        except ValueError:
            value = float("nan")
        if not name or not (np.isfinite(value) and value > 0):
            raise ConfigError(f"--profiles {spec!r}: expected NAME=SHARE,... with shares > 0, e.g. pi4=0.5,phone=0.5")
        pairs.append((name, value))
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise ConfigError(f"--profiles {spec!r}: a profile is named twice")
    total = sum(v for _, v in pairs)
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"--profiles {spec!r}: shares sum to {total:g}, expected 1")
    return tuple(pairs)


def load_traits(name: str, profile_dir: Path = DEFAULT_PROFILE_DIR) -> SimulationTraits:
    """The ``[simulation]`` section of profile ``name`` (``<profile_dir>/<name>.toml``)."""
    path = Path(profile_dir) / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(profile_dir).glob("*.toml"))
        raise ConfigError(f"--profiles: no profile {name!r} in {profile_dir} (known: {', '.join(known) or 'none'})")
    return load_profile(path).simulation


@dataclass(frozen=True, eq=False)
class Population:
    """Client id -> profile index (``assignment``), and each profile's traits as arrays for vector lookups."""

    names: tuple[str, ...]
    traits: tuple[SimulationTraits, ...]
    assignment: np.ndarray  # uint8, one entry per client

    @property
    def size(self) -> int:
        return len(self.assignment)

    def column(self, field: str) -> np.ndarray:
        """One trait per profile as an array (e.g. ``availability``)."""
        return np.array([getattr(t, field) for t in self.traits], dtype=np.float64)

    def dropout_table(self) -> np.ndarray:
        """(profiles, stages) drop probabilities, in :data:`STAGES` order."""
        return np.array([[getattr(t.dropout, s) for s in STAGES] for t in self.traits], dtype=np.float64)

    def profile_of(self, ids: np.ndarray) -> np.ndarray:
        """Profile index of each client id."""
        return self.assignment[np.asarray(ids)]


def make_population(
    size: int,
    mix: tuple[tuple[str, float], ...],
    rng: np.random.Generator,
    traits: dict[str, SimulationTraits] | None = None,
    profile_dir: Path = DEFAULT_PROFILE_DIR,
) -> Population:
    """Assign profiles to ``size`` clients in exactly the mix's proportions (largest remainder), shuffled.

    ``traits`` supplies profiles by name (tests, library users); the rest are loaded from ``profile_dir``.
    An empty mix is one ideal profile.
    """
    if not mix:
        return Population(("ideal",), (IDEAL,), np.zeros(size, dtype=np.uint8))
    if len(mix) > 255:
        raise ConfigError("--profiles: at most 255 profiles can be mixed")
    names = tuple(n for n, _ in mix)
    given = traits or {}
    loaded = tuple(given[n] if n in given else load_traits(n, profile_dir) for n in names)
    shares = np.array([s for _, s in mix]) / sum(s for _, s in mix)
    exact = shares * size
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(counts - exact)[: size - counts.sum()]] += 1
    assignment = rng.permutation(np.repeat(np.arange(len(names), dtype=np.uint8), counts))
    return Population(names, loaded, assignment)


@dataclass(frozen=True, eq=False)
class RoundBehaviour:
    """What a cohort does in one round: ``available`` per client and ``drop_stage`` (index into STAGES or NO_DROP).

    On the simulated clock (:mod:`fedge.simulations.clock`): ``seconds`` from being sent the model
    to having the update ready, and ``upload_seconds`` to send it, per client (None: not timed).
    """

    client_ids: np.ndarray
    available: np.ndarray
    drop_stage: np.ndarray
    seconds: np.ndarray | None = None
    upload_seconds: np.ndarray | None = None

    def completed(self) -> np.ndarray:
        """Clients that are available and never drop."""
        return self.available & (self.drop_stage == NO_DROP)

    def submitted_input(self) -> np.ndarray:
        """Clients whose (masked) update reaches the server: available and not dropped before it is sent.

        In SecAgg+ a client that drops after sending its masked input (at consistency_check or
        unmask) still counts in the sum; its mask is recovered from the others' shares.
        """
        sent = STAGES.index("masked_input")
        return self.available & ((self.drop_stage == NO_DROP) | (self.drop_stage > sent))

    def dropped_per_stage(self) -> dict[str, int]:
        """How many clients were unavailable, and how many dropped at each stage."""
        counts = {"unavailable": int((~self.available).sum())}
        stages = self.drop_stage[self.available]
        for i, s in enumerate(STAGES):
            counts[s] = int((stages == i).sum())
        return counts


def draw_round_behaviour(
    population: Population, client_ids: np.ndarray, round_: int, rng: np.random.Generator
) -> RoundBehaviour:
    """Who of ``client_ids`` is available this round, and where each available client drops (vectorised).

    Each client is available with its profile's ``availability``; an available client then drops at
    each stage with that stage's probability, given it survived the earlier stages.
    """
    ids = np.asarray(client_ids, dtype=np.int64)
    prof = population.profile_of(ids)
    available = rng.random(len(ids)) < population.column("availability")[prof]
    drops = rng.random((len(ids), len(STAGES))) < population.dropout_table()[prof]
    first = np.argmax(drops, axis=1)
    drop_stage = np.where(drops.any(axis=1), first, NO_DROP).astype(np.int8)
    drop_stage[~available] = NO_DROP
    log.debug("round behaviour drawn: %d of %d available", int(available.sum()), len(ids), extra={"round": round_})
    return RoundBehaviour(ids, available, drop_stage)
