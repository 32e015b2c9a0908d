"""The device's privacy ledger: every contribution it sent, in its SQLite store, and its budget.

The ledger composes one unsampled Gaussian event per contribution (``RoundEvent`` sampling
``none``): the device knows it took part, and rounds it was not sampled in say nothing about
its data when sampling does not depend on it, so this is a sound per-device bound against
whoever sees its reports (in local mode, the coordinator). It does not claim amplification by
sampling, which needs the adversary not to know who took part; the coordinator's campaign
figure (``coordinator/service/privacy_budget.py``) is the population-level one that does.

Composing unsampled Gaussian mechanisms is exactly a Gaussian mechanism again: z_i-noised
reports compose to mu-GDP with mu = sqrt(sum 1/z_i^2) (Dong, Roth, Su 2019, Cor. 3.3), and mu-GDP
is tight (epsilon, delta(epsilon))-DP with the analytic Gaussian formula (Balle, Wang 2018).
So the ledger needs no accountant library at run time, which keeps ``dp-accounting`` (and scipy,
64 MiB) out of the device daemon; ``tests/test_privacy_budget.py`` checks it against
dp-accounting's PLD accountant.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable

import sqlite_utils

from fedge.agent.core.errors import BudgetExhausted, ConfigError, ProtocolError
from fedge.agent.core.privacy.config import MODES, PrivacyConfig
from fedge.agent.core.privacy.discrete import DiscreteNoisePlan, accounted_noise

log = logging.getLogger(__name__)

TABLE = "privacy_ledger"
#: The ledger's figure is for adding or removing this device's data: one local report still tells
#: +u from -u beyond it (a replace-one pair moves the report by 2C; see docs/privacy.md).
LEDGER_RELATION = "add-or-remove-one"


@dataclasses.dataclass(frozen=True)
class Contribution:
    """One report the device sent (or is about to send) and how it was privatized.

    ``noise_multiplier`` is the accounted total z (the effective one in distributed discrete
    mode); ``rdp_offset`` is the discrete mechanism's additive RDP term, 0 otherwise.
    """

    round_id: int
    mode: str
    noise_multiplier: float
    clip_norm: float
    sampling_rate: float
    delta: float
    rdp_offset: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode: expected one of {MODES}, got {self.mode!r}")

    @classmethod
    def of(
        cls,
        config: PrivacyConfig,
        round_id: int,
        *,
        sampling_rate: float,
        delta: float,
        discrete: DiscreteNoisePlan | None = None,
    ) -> Contribution:
        """The contribution a round run with ``config`` (and DDG ``discrete`` plan) makes."""
        z, offset = accounted_noise(config, discrete)
        return cls(
            round_id,
            config.mode,
            z if config.mode != "off" else config.noise_multiplier,
            config.clip_norm,
            sampling_rate,
            delta,
            offset,
        )


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gdp_delta(mu: float, eps: float) -> float:
    """delta(epsilon) of mu-GDP: Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""
    a = _phi(-eps / mu + mu / 2)
    b = _phi(-eps / mu - mu / 2)
    return a - (math.exp(eps + math.log(b)) if b > 0 else 0.0)


def gdp_epsilon(mu: float, delta: float) -> float:
    """The smallest epsilon with delta(epsilon) <= ``delta`` for mu-GDP (bisection, 1e-10 relative)."""
    if not 0 < delta < 1:
        raise ConfigError(f"delta: expected (0, 1), got {delta!r}")
    if math.isinf(mu):
        return math.inf
    if mu <= 0 or gdp_delta(mu, 0.0) <= delta:
        return 0.0
    hi = 1.0
    while gdp_delta(mu, hi) > delta:
        hi *= 2.0
        if hi > 1e6:
            return math.inf
    lo = 0.0
    while hi - lo > 1e-10 * max(1.0, hi):
        mid = (lo + hi) / 2
        if gdp_delta(mu, mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def composed_epsilon(contributions: list[Contribution], delta: float) -> float:
    """Epsilon at ``delta`` of the composed unsampled Gaussian contributions, plus RDP offsets."""
    if not contributions:
        return 0.0
    inv = 0.0
    for c in contributions:
        if c.mode == "off" or c.noise_multiplier <= 0:
            return math.inf
        inv += c.noise_multiplier**-2
    return gdp_epsilon(math.sqrt(inv), delta) + sum(c.rdp_offset for c in contributions)


class DeviceLedger:
    """Contributions recorded in ``db`` and the epsilon they add up to (exact Gaussian composition).

    ``db`` is an agent store's (:class:`fedge.agent.store.Store`): its migration ``002_privacy_ledger``
    made the table.
    """

    def __init__(self, db: sqlite_utils.Database, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    def contributions(self) -> list[Contribution]:
        """Every recorded contribution, by round id."""
        fields = [f.name for f in dataclasses.fields(Contribution)]
        return [Contribution(**{k: row[k] for k in fields}) for row in self._db[TABLE].rows_where(order_by="round_id")]

    def record(self, contribution: Contribution) -> None:
        """Persist one sent contribution; a second one for the same round is a ProtocolError."""
        table = self._db.table(TABLE)
        row = dataclasses.asdict(contribution) | {"recorded_at": self._clock()}
        with self._db.conn:
            if table.count_where("round_id = ?", [contribution.round_id]):
                raise ProtocolError(f"round {contribution.round_id}: a contribution is already recorded")
            table.insert(row)
        log.info(
            "contribution recorded: mode %s z %.4g",
            contribution.mode,
            contribution.noise_multiplier,
            extra={"round": contribution.round_id},
        )

    def epsilon_spent(self, delta: float) -> float:
        """Epsilon at ``delta`` over every recorded contribution (infinite after a mode-off one)."""
        return composed_epsilon(self.contributions(), delta)

    def check_can_contribute(self, budget_epsilon: float, next_round_event: Contribution) -> None:
        """Raise :class:`BudgetExhausted` unless ``next_round_event`` keeps epsilon within budget.

        Epsilon is taken at the next contribution's delta.
        """
        if not (budget_epsilon > 0 and not math.isnan(budget_epsilon)):
            raise ConfigError(f"epsilon budget: expected a number > 0, got {budget_epsilon!r}")
        eps = composed_epsilon(self.contributions() + [next_round_event], next_round_event.delta)
        if eps > budget_epsilon:
            log.warning(
                "privacy budget spent: epsilon would reach %.4g > budget %.4g",
                eps,
                budget_epsilon,
                extra={"round": next_round_event.round_id},
            )
            raise BudgetExhausted(
                f"privacy budget spent: contributing to round {next_round_event.round_id} would bring "
                f"epsilon to {eps:.4g} (delta {next_round_event.delta:g}), over the budget of {budget_epsilon:g}"
            )
