"""Epsilon from Google's ``dp-accounting``: one sampled Gaussian event per round, composed.

Neighbouring relations (dp-accounting's names), the unit being one device's whole data:
- ``poisson`` sampling (each device joins a round independently with probability q):
  ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` under ADD_OR_REMOVE_ONE.
- ``fixed`` sampling (exactly m of N devices, uniformly without replacement):
  ``SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(z / 2))`` under REPLACE_ONE, which is
  the only relation dp-accounting supports for it, and only in its RDP accountant. Replacing one
  device's clipped update by another's moves the sum by up to 2C, not C, so the Gaussian the
  accountant sees has noise sigma / 2C = z / 2 (z = sigma / C is what the plan states).
- ``none`` (the device's own ledger, which knows it took part): ``GaussianDpEvent(z)``.
Both RDP and PLD accountants are available for ``poisson`` and ``none``. A round with z = 0
is non-private and makes epsilon infinite. Each event may carry ``rdp_offset``, an additive
Renyi-DP term (the distributed discrete Gaussian's tau*d) that is added to epsilon, which
upper-bounds its effect in the RDP-to-(epsilon, delta) conversion.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import json
import math
from typing import Any

import dp_accounting
from dp_accounting import pld, rdp

from fedge.agent.core.errors import ConfigError
from fedge.agent.core.privacy.config import PrivacyConfig
from fedge.agent.core.privacy.discrete import DiscreteNoisePlan, accounted_noise  # noqa: F401 (re-exported)

ACCOUNTANTS = ("rdp", "pld")
#: The neighbouring relation each sampling is accounted under, as printed beside every epsilon.
RELATION_NAMES = {"poisson": "add-or-remove-one", "fixed": "replace-one", "none": "add-or-remove-one"}
EVENT_SAMPLINGS = ("poisson", "fixed", "none")
#: PLD discretization: epsilon is over-estimated by at most about this much per composition.
PLD_DISCRETIZATION = 1e-4
_JSON_VERSION = 1


@dataclasses.dataclass(frozen=True)
class RoundEvent:
    """One round's mechanism as seen by the accountant.

    ``sampling_rate`` is q for ``poisson``; for ``fixed`` it is ``sample_size / population`` and
    both of those must be given; ``none`` means no amplification (q must be 1).
    """

    noise_multiplier: float
    sampling_rate: float
    sampling: str = "poisson"
    population: int | None = None
    sample_size: int | None = None
    rdp_offset: float = 0.0
    #: SecAgg+ groups the round was aggregated in (``fedge.coordinator.rounds.grouped``): each group's sum
    #: is revealed and carries this event's noise on its own; a device is in one group, so the event
    #: (its z and sampling) is the same as ungrouped. 1: one sum.
    groups: int = 1

    def __post_init__(self) -> None:
        if self.sampling not in EVENT_SAMPLINGS:
            raise ConfigError(f"sampling: expected one of {EVENT_SAMPLINGS}, got {self.sampling!r}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ConfigError(f"noise_multiplier: expected a finite number >= 0, got {self.noise_multiplier!r}")
        if not 0 <= self.sampling_rate <= 1:
            raise ConfigError(f"sampling_rate: expected a number in [0, 1], got {self.sampling_rate!r}")
        if not (math.isfinite(self.rdp_offset) and self.rdp_offset >= 0):
            raise ConfigError(f"rdp_offset: expected a finite number >= 0, got {self.rdp_offset!r}")
        if not (isinstance(self.groups, int) and self.groups >= 1):
            raise ConfigError(f"groups: expected an integer >= 1, got {self.groups!r}")
        if self.sampling == "none" and self.sampling_rate != 1:
            raise ConfigError("sampling 'none' means every round counts in full: sampling_rate must be 1")
        if self.sampling == "fixed":
            if self.population is None or self.sample_size is None:
                raise ConfigError("fixed-size sampling needs population and sample_size")
            if not 1 <= self.sample_size <= self.population:
                raise ConfigError(f"sample_size must be in [1, population], got {self.sample_size}/{self.population}")
            if not math.isclose(self.sampling_rate, self.sample_size / self.population, rel_tol=1e-9):
                raise ConfigError("fixed-size sampling: sampling_rate must equal sample_size / population")

    @classmethod
    def fixed(cls, noise_multiplier: float, sample_size: int, population: int, rdp_offset: float = 0.0) -> RoundEvent:
        """A round that selects exactly ``sample_size`` of ``population`` devices."""
        return cls(noise_multiplier, sample_size / population, "fixed", population, sample_size, rdp_offset)

    def neighboring_relation(self) -> dp_accounting.NeighboringRelation:
        """The relation dp-accounting accounts this event under."""
        if self.sampling == "fixed":
            return dp_accounting.NeighboringRelation.REPLACE_ONE
        return dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE

    @property
    def relation(self) -> str:
        """The neighbouring relation's printed name (``replace-one`` or ``add-or-remove-one``)."""
        return RELATION_NAMES[self.sampling]

    @property
    def sensitivity_multiple(self) -> int:
        """How many clip norms one neighbouring change moves the sum by: 2 under replace-one."""
        return 2 if self.sampling == "fixed" else 1

    def dp_event(self) -> dp_accounting.DpEvent:
        """The dp-accounting event for this round (the Gaussian's z over the relation's sensitivity)."""
        if self.noise_multiplier == 0:
            return dp_accounting.NonPrivateDpEvent()
        gauss = dp_accounting.GaussianDpEvent(self.noise_multiplier / self.sensitivity_multiple)
        if self.sampling == "none" or (self.sampling == "poisson" and self.sampling_rate == 1):
            return gauss
        if self.sampling == "poisson":
            return dp_accounting.PoissonSampledDpEvent(self.sampling_rate, gauss)
        return dp_accounting.SampledWithoutReplacementDpEvent(self.population, self.sample_size, gauss)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields."""
        return dataclasses.asdict(self)


def _new_accountant(accountant: str, relation: dp_accounting.NeighboringRelation) -> dp_accounting.PrivacyAccountant:
    if accountant == "rdp":
        return rdp.RdpAccountant(neighboring_relation=relation)
    if accountant == "pld":
        if relation is not dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE:
            raise ConfigError(
                "accountant: dp-accounting's PLD accountant does not support fixed-size sampling "
                "(sampling without replacement); use 'rdp'"
            )
        return pld.PLDAccountant(relation, value_discretization_interval=PLD_DISCRETIZATION)
    raise ConfigError(f"accountant: expected one of {ACCOUNTANTS}, got {accountant!r}")


def _common_relation(events: list[RoundEvent]) -> dp_accounting.NeighboringRelation:
    """The one neighbouring relation all ``events`` are accounted under, or :class:`ConfigError`."""
    relations = {e.neighboring_relation() for e in events}
    if len(relations) > 1:
        raise ConfigError(
            "cannot compose fixed-size sampled rounds (replace-one) with Poisson or unsampled rounds "
            "(add-or-remove-one): their neighbouring relations differ"
        )
    return relations.pop() if relations else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE


def _composed(events: list[RoundEvent], accountant: str) -> dp_accounting.PrivacyAccountant:
    """A dp-accounting accountant holding ``events`` (identical ones are self-composed)."""
    acc = _new_accountant(accountant, _common_relation(events))
    counts = collections.Counter(dataclasses.replace(e, rdp_offset=0.0) for e in events)
    for event, count in counts.items():
        acc.compose(event.dp_event(), count)
    return acc


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise ConfigError(f"delta: expected a number in (0, 1), got {delta!r}")


def epsilon_of_events(events: list[RoundEvent], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of the composition of ``events``, plus their RDP offsets."""
    _check_delta(delta)
    if not events:
        return 0.0
    eps = float(_composed(events, accountant).get_epsilon(delta))
    return eps + sum(e.rdp_offset for e in events)


def epsilon(
    noise_multiplier: float,
    sampling_rate: float,
    rounds: int,
    delta: float,
    *,
    sampling: str = "poisson",
    population: int | None = None,
    accountant: str = "rdp",
) -> float:
    """Epsilon after ``rounds`` identical rounds of the sampled Gaussian mechanism.

    ``sampling="fixed"`` needs ``population``; the sample size is ``round(q * population)``.
    """
    if rounds < 0:
        raise ConfigError(f"rounds: expected >= 0, got {rounds}")
    if sampling == "fixed":
        if population is None:
            raise ConfigError("fixed-size sampling needs the population size")
        event = RoundEvent.fixed(noise_multiplier, max(1, round(sampling_rate * population)), population)
    else:
        event = RoundEvent(noise_multiplier, sampling_rate, sampling)
    return epsilon_of_events([event] * rounds, delta, accountant)


class PrivacyAccountant:
    """Epsilon so far over recorded rounds, each with its own event; JSON in, JSON out.

    Keeps a live dp-accounting accountant and composes new rounds into it, so asking for
    epsilon after every round costs one composition, not a replay of the history.
    """

    def __init__(self, accountant: str = "rdp", events: list[RoundEvent] | None = None) -> None:
        if accountant not in ACCOUNTANTS:
            raise ConfigError(f"accountant: expected one of {ACCOUNTANTS}, got {accountant!r}")
        self.accountant = accountant
        self._events: list[RoundEvent] = list(events or [])
        _common_relation(self._events)
        self._live: dp_accounting.PrivacyAccountant | None = None
        self._live_count = 0
        self._cache: dict[tuple[int, float], float] = {}

    @property
    def events(self) -> tuple[RoundEvent, ...]:
        """The recorded rounds, oldest first."""
        return tuple(self._events)

    @property
    def relation(self) -> str:
        """The neighbouring relation every recorded round is accounted under (printed name)."""
        return self._events[-1].relation if self._events else RELATION_NAMES["poisson"]

    def record(self, event: RoundEvent) -> None:
        """Add one round; refuses an event that cannot compose with those already recorded."""
        relation = _common_relation(self._events[-1:] + [event])
        if self.accountant == "pld":
            _new_accountant("pld", relation)
        self._events.append(event)

    def _accountant(self) -> dp_accounting.PrivacyAccountant:
        if self._live is None:
            self._live = _composed(self._events, self.accountant)
        else:
            for event in self._events[self._live_count :]:
                self._live.compose(event.dp_event())
        self._live_count = len(self._events)
        return self._live

    def _offset(self) -> float:
        return sum(e.rdp_offset for e in self._events)

    def epsilon(self, delta: float) -> float:
        """Epsilon at ``delta`` over every recorded round."""
        _check_delta(delta)
        key = (len(self._events), delta)
        if key not in self._cache:
            eps = float(self._accountant().get_epsilon(delta)) if self._events else 0.0
            self._cache[key] = eps + self._offset()
        return self._cache[key]

    def epsilon_if(self, event: RoundEvent, delta: float, times: int = 1) -> float:
        """Epsilon at ``delta`` if ``event`` were recorded next, ``times`` times (nothing is recorded)."""
        _check_delta(delta)
        if times < 1:
            raise ValueError(f"times: expected >= 1, got {times}")
        _common_relation(self._events[-1:] + [event])
        trial = (
            copy.deepcopy(self._accountant())
            if self._events
            else _new_accountant(self.accountant, event.neighboring_relation())
        )
        trial.compose(event.dp_event(), times)
        return float(trial.get_epsilon(delta)) + self._offset() + times * event.rdp_offset

    def to_json(self) -> str:
        """A plain JSON document (never pickle) that :meth:`from_json` restores."""
        return json.dumps(
            {"version": _JSON_VERSION, "accountant": self.accountant, "events": [e.to_dict() for e in self._events]},
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> PrivacyAccountant:
        """Restore an accountant from :meth:`to_json`; malformed input is a :class:`ConfigError`."""
        try:
            doc = json.loads(text)
            if doc.get("version") != _JSON_VERSION:
                raise ConfigError(f"privacy accountant JSON: unsupported version {doc.get('version')!r}")
            fields = {f.name for f in dataclasses.fields(RoundEvent)}
            events = []
            for e in doc["events"]:
                if not isinstance(e, dict) or not fields - {"groups"} <= set(e) <= fields:  # ledgers before groups
                    raise ConfigError("privacy accountant JSON: malformed event")
                events.append(RoundEvent(**e))
            return cls(doc["accountant"], events)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"privacy accountant JSON: {e}") from None


def round_event_for(
    config: PrivacyConfig,
    *,
    sampling_rate: float,
    population: int | None = None,
    sample_size: int | None = None,
    discrete: DiscreteNoisePlan | None = None,
) -> RoundEvent:
    """The population-level event of one round run with ``config``, as the coordinator samples.

    Mode off is non-private (infinite epsilon). Local mode accounts each report's own z, ignoring
    the other clients' noise: valid against observers of the released model, not against the
    coordinator, which sees reports in the clear (see the ledger for that). Distributed mode
    uses z, or with ``discrete`` the DDG plan's effective z and its tau*d offset. With adaptive
    clipping ``config.noise_multiplier`` is already the total z of both queries.
    """
    z, offset = accounted_noise(config, discrete)
    if config.sampling == "fixed":
        if population is None or sample_size is None:
            raise ConfigError("fixed-size sampling: the round event needs population and sample_size")
        return RoundEvent.fixed(z, sample_size, population, offset)
    return RoundEvent(z, sampling_rate, "poisson", rdp_offset=offset)


def local_report_epsilon(noise_multiplier: float, delta: float) -> float:
    """Epsilon of one local-mode report on its own: the Gaussian mechanism with z, at ``delta``."""
    return epsilon_of_events([RoundEvent(noise_multiplier, 1.0, "none")], delta)


def calibrate_noise_multiplier(
    target_epsilon: float,
    sampling_rate: float,
    rounds: int,
    delta: float,
    *,
    sampling: str = "poisson",
    population: int | None = None,
    accountant: str = "rdp",
) -> float:
    """The smallest z (to 1e-3) whose ``rounds`` rounds stay within ``target_epsilon``.

    Uses dp-accounting's own calibration (Brent's method over fresh accountants); the result
    is nudged up to the tolerance so that :func:`epsilon` at it never exceeds the target.
    """
    if not target_epsilon > 0 or rounds < 1:
        raise ConfigError("calibration needs target_epsilon > 0 and rounds >= 1")
    if sampling == "fixed":
        if population is None:
            raise ConfigError("fixed-size sampling needs the population size")
        template = RoundEvent.fixed(1.0, max(1, round(sampling_rate * population)), population)
    else:
        template = RoundEvent(1.0, sampling_rate, sampling)
    relation = template.neighboring_relation()
    tol = 1e-3

    def make_event(z: float) -> dp_accounting.DpEvent:
        return dp_accounting.SelfComposedDpEvent(dataclasses.replace(template, noise_multiplier=z).dp_event(), rounds)

    z = dp_accounting.calibrate_dp_mechanism(
        lambda: _new_accountant(accountant, relation),
        make_event,
        target_epsilon,
        delta,
        dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
        tol=tol,
    )
    return float(z) + tol
