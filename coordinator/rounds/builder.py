"""One round, assembled once: plan, settings, plain or secure aggregation, the engine and its privacy event.

The service and the simulator both call :func:`build_round`, so the simulator runs what the
service runs by construction. What differs between them arrives as data: who was drawn and how
(:class:`Draw`), which keys the cohort holds, and the SecAgg+ risk assumptions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fedge.agent.core.messages.rounds import RoundPlan
from fedge.agent.core.secagg.params import SUITE, choose_suite
from fedge.agent.core.secagg.quantize import max_abs_int
from fedge.agent.core.update import noise_plan
from fedge.coordinator.rounds.accounting import RoundEvent, round_event_for
from fedge.coordinator.rounds.engine import Aggregation, PlainAggregation, RoundEngine, RoundSettings, expected_length
from fedge.coordinator.rounds.grouped import Group, GroupedAggregation, Parallel, serial, split_cohort
from fedge.coordinator.rounds.plan import TrainingConfig, make_plan
from fedge.coordinator.rounds.remote import GroupHosts, RemoteGroup
from fedge.coordinator.rounds.secure import CertificateLookup, GroupSpec, SecureAggregation, secure_spec


@dataclasses.dataclass(frozen=True)
class Draw:
    """How a round's cohort was drawn, as the accountant must be told.

    ``poisson``: each of ``population`` candidates joined independently with ``sampling_rate``.
    ``fixed``: exactly ``sample_size`` of ``population`` uniformly without replacement (the
    cohort may then be thinned by availability, which only removes devices).
    """

    sampling: str
    population: int
    sampling_rate: float
    sample_size: int | None = None

    @classmethod
    def poisson(cls, population: int, sampling_rate: float) -> Draw:
        return cls("poisson", population, sampling_rate)

    @classmethod
    def fixed(cls, population: int, sample_size: int) -> Draw:
        return cls("fixed", population, sample_size / population, sample_size)


@dataclasses.dataclass(frozen=True)
class SecureRisk:
    """What SecAgg+ derives its graph degree and threshold from."""

    dropout_rate: float = 0.1
    corrupt_fraction: float = 0.05


@dataclasses.dataclass(frozen=True)
class BuiltRound:
    """Everything a driver needs to run one round and to account it."""

    plan: RoundPlan
    settings: RoundSettings
    aggregation: Aggregation
    engine: RoundEngine
    #: the accountant's event for this round, or None with DP off
    event: RoundEvent | None
    #: the SecAgg+ cipher suite of every group (None: secure aggregation off)
    suite: str | None = None


def round_event(plan: RoundPlan, dimension: int, draw: Draw, groups: int = 1) -> RoundEvent | None:
    """The privacy event of a round run with ``plan`` over a cohort drawn as ``draw`` (None: DP off),
    aggregated in ``groups`` SecAgg+ groups (each group sum carrying the plan's noise on its own)."""
    if plan.privacy.mode == "off":
        return None
    discrete = noise_plan(plan, dimension)  # local and distributed: both noise on the integer grid
    event = round_event_for(
        plan.privacy,
        sampling_rate=draw.sampling_rate,
        population=draw.population,
        sample_size=draw.sample_size,
        discrete=discrete,
    )
    return dataclasses.replace(event, groups=groups) if groups != 1 else event


def build_round(
    round_id: int,
    training: TrainingConfig,
    model_version: str,
    weights: np.ndarray,
    cohort: Sequence[str],
    draw: Draw,
    clock: Callable[[], float],
    *,
    clip_norm: float | None = None,
    roster: Mapping[str, bytes] | None = None,
    certificates: CertificateLookup | None = None,
    risk: SecureRisk = SecureRisk(),
    suites: Mapping[str, Sequence[str]] | None = None,
    group_size: int = 0,
    parallel: Parallel = serial,
    hosts: GroupHosts | None = None,
    prefer_hybrid: bool = False,
    canaries: int = 0,
) -> BuiltRound:
    """Plan, settings, aggregation and engine of one round over ``cohort``, and its privacy event.

    ``roster`` maps each cohort member to its identity key (needed with SecAgg+); ``clip_norm``
    is the round's C under adaptive clipping (None: the config's); ``suites`` the SecAgg+ cipher
    suites each member reported at check-in (AES masks when every member runs them; None or a
    missing member: ChaCha20; the X25519 + ML-KEM-768 hybrid when every member runs it and either
    ``prefer_hybrid`` or a member requires it).

    ``group_size`` G > 0 with SecAgg+: the cohort is split into SecAgg+ groups of at least G devices
    (:mod:`.grouped`), each held to its share of the minimum cohort, with distributed noise split
    over the smallest group floor so every group sum carries all of it; ``parallel`` runs the
    groups' stage closes (unmasking) side by side; ``hosts`` (None: this process) runs each group's
    SecAgg+ server in a worker process or Ray actor (:mod:`.remote`). :class:`~.grouped.GroupRefused` when
    the cohort cannot make one group.

    ``canaries`` k > 0: the last k members of ``cohort`` are a privacy audit's canary clients, run by
    the coordinator (which knows their randomness) and adding no distributed-DP noise share. The
    noise is planned over ``training.min_clients`` real devices as without canaries, so the real
    devices' shares alone carry the round's promise; the engine and the SecAgg+ floor wait for
    ``min_clients + k`` inputs, so every released sum holds at least ``min_clients`` real shares
    however many canaries it holds. The goal is the caller's (canaries included). Not with groups.
    """
    n = len(cohort)
    if canaries < 0 or canaries >= n:
        raise ValueError(f"canaries: expected 0 <= k < cohort size ({n}), got {canaries}")
    if canaries and group_size:
        raise ValueError("audit canaries cannot run in SecAgg+ groups (a group's floor would count them as noise)")
    rate = draw.sampling_rate if draw.sampling == "poisson" else None
    settings = RoundSettings(min(training.goal, n), min(training.min_clients + canaries, n), training.stage_timeout_s)
    grouping = split_cohort(cohort, group_size, settings.min_clients) if group_size and training.secagg else None
    shares = grouping.min_clients if grouping is not None and training.dp_mode == "distributed" else None
    plan = make_plan(
        training,
        model_version,
        n,
        max(draw.population, n),
        clip_norm=clip_norm,
        sampling_rate=rate,
        min_clients=shares,
        sampling=draw.sampling,
    )
    length = expected_length(weights, plan)
    aggregation: Aggregation
    suite: str | None = None
    if plan.secagg:
        if roster is None:
            raise ValueError("secure aggregation needs the cohort's identity keys (roster)")
        suite = (
            choose_suite([suites.get(d, ()) for d in cohort], prefer_hybrid=prefer_hybrid)
            if suites is not None
            else SUITE
        )

        def spec(members: Sequence[str], floor: int) -> GroupSpec:
            return secure_spec(
                plan,
                round_id,
                {d: roster[d] for d in members},
                length,
                min_clients=floor,
                dropout_rate=risk.dropout_rate,
                corrupt_fraction=risk.corrupt_fraction,
                certificates=certificates,
                suite=suite,
            )

        def group(i: int, members: Sequence[str], floor: int) -> Group:
            if hosts is None:
                return SecureAggregation.from_spec(spec(members, floor), clock)
            return RemoteGroup(spec(members, floor), hosts.channel(i), f"{round_id}/{i}", clock())

        if grouping is None:
            aggregation = SecureAggregation.from_spec(spec(cohort, settings.min_clients), clock)
        else:
            aggregation = GroupedAggregation(
                [group(i, m, f) for i, (m, f) in enumerate(zip(grouping.groups, grouping.floors))],
                grouping.floors,
                min_total=settings.min_clients,
                parallel=parallel,
            )
    else:
        aggregation = PlainAggregation(
            length,
            plan.quantization.bits,
            settings.goal,
            settings.min_clients,
            max_abs=max_abs_int(plan.quantization.range, plan.quantization.scale),
        )
    engine = RoundEngine(round_id, plan, settings, weights, list(cohort), aggregation, clock)
    groups = len(grouping.groups) if grouping is not None else 1
    return BuiltRound(plan, settings, aggregation, engine, round_event(plan, weights.size, draw, groups), suite)
