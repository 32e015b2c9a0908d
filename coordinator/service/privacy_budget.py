"""The campaign's privacy budget: epsilon per round, persisted, and who may still be selected.

A campaign's epsilon is the population-level, user-level guarantee: one sampled Gaussian event
per round (as the coordinator actually samples), composed with ``dp-accounting``
(:mod:`fedge.coordinator.rounds.accounting`). A round whose epsilon would exceed the budget is
refused with :class:`BudgetExhausted` and the campaign is marked stopped; both the rounds and
the stop survive a restart because they live in the coordinator's store, whose migration
``012_privacy_budget`` (:mod:`fedge.coordinator.store`) makes the tables; every function here
takes that store's database.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping

import sqlite_utils

from fedge.agent.core.errors import BudgetExhausted, ConfigError, ProtocolError
from fedge.coordinator.rounds.accounting import ACCOUNTANTS, PrivacyAccountant, RoundEvent

log = logging.getLogger(__name__)

CAMPAIGNS = "privacy_campaigns"
ROUNDS = "privacy_rounds"
EXHAUSTED = "privacy_exhausted_devices"


class CampaignBudget:
    """One campaign's epsilon so far, its budget, and the refusal to exceed it."""

    def __init__(
        self,
        db: sqlite_utils.Database,
        campaign_id: str,
        *,
        budget_epsilon: float,
        delta: float,
        accountant: str = "rdp",
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open the campaign's budget, creating it on first use; a mismatch with the stored one is refused."""
        if not (budget_epsilon > 0 and math.isfinite(budget_epsilon)):
            raise ConfigError(f"campaign epsilon budget: expected a finite number > 0, got {budget_epsilon!r}")
        if not 0 < delta < 1:
            raise ConfigError(f"campaign delta: expected a number in (0, 1), got {delta!r}")
        if accountant not in ACCOUNTANTS:
            raise ConfigError(f"campaign accountant: expected one of {ACCOUNTANTS}, got {accountant!r}")
        self._db, self.campaign_id, self._clock = db, campaign_id, clock
        want = {"budget_epsilon": budget_epsilon, "delta": delta, "accountant": accountant}
        rows = list(db[CAMPAIGNS].rows_where("campaign_id = ?", [campaign_id]))
        if rows:
            have = {k: rows[0][k] for k in want}
            if have != want:
                raise ConfigError(f"campaign {campaign_id!r}: stored privacy settings {have} differ from {want}")
        else:
            db[CAMPAIGNS].insert({"campaign_id": campaign_id, **want, "stopped": 0})
        self.budget_epsilon, self.delta = budget_epsilon, delta
        events = [
            RoundEvent(**json.loads(r["event"]))
            for r in db[ROUNDS].rows_where("campaign_id = ?", [campaign_id], order_by="round_id")
        ]
        self._accountant = PrivacyAccountant(accountant, events)

    @property
    def stopped(self) -> bool:
        """Whether a round was refused for lack of budget (the campaign is over)."""
        return bool(self._db[CAMPAIGNS].get(self.campaign_id)["stopped"])

    def epsilon_so_far(self) -> float:
        """Epsilon at the campaign's delta over every recorded round."""
        return self._accountant.epsilon(self.delta)

    def check_round(self, event: RoundEvent, round_id: int | None = None, *, pending: int = 0) -> float:
        """The epsilon after a round of ``event``; :class:`BudgetExhausted` (and stop) if over budget.

        ``pending``: rounds of the same event already started and not yet recorded (buffered groups
        running at once), counted as if recorded first, so concurrent rounds never overshoot."""
        if self.stopped:
            raise BudgetExhausted(f"campaign {self.campaign_id!r} is stopped: its privacy budget is spent")
        eps = self._accountant.epsilon_if(event, self.delta, times=1 + pending)
        if eps > self.budget_epsilon:
            self._db[CAMPAIGNS].update(self.campaign_id, {"stopped": 1})
            log.warning(
                "campaign %s stopped: epsilon would reach %.4g > budget %.4g",
                self.campaign_id,
                eps,
                self.budget_epsilon,
                extra={"round": round_id},
            )
            raise BudgetExhausted(
                f"campaign {self.campaign_id!r}: one more round would bring epsilon to {eps:.4g} "
                f"(delta {self.delta:g}), over the budget of {self.budget_epsilon:g}; campaign stopped"
            )
        return eps

    def record_round(self, round_id: int, event: RoundEvent) -> float:
        """Check the budget, then persist the round and return epsilon so far."""
        if self._db[ROUNDS].count_where("campaign_id = ? and round_id = ?", [self.campaign_id, round_id]):
            raise ProtocolError(f"campaign {self.campaign_id!r}: round {round_id} is already accounted")
        eps = self.check_round(event, round_id)
        self._db[ROUNDS].insert(
            {
                "campaign_id": self.campaign_id,
                "round_id": round_id,
                "event": json.dumps(event.to_dict(), sort_keys=True),
                "epsilon": eps,
                "recorded_at": self._clock(),
            }
        )
        self._accountant.record(event)
        log.info("round accounted: epsilon so far %.4g", eps, extra={"round": round_id})
        return eps

    def history(self) -> list[tuple[int, float]]:
        """(round id, epsilon so far after it), oldest first."""
        return campaign_history(self._db, self.campaign_id)


def mark_exhausted(db: sqlite_utils.Database, device_id: str, clock: Callable[[], float] = time.time) -> None:
    """Remember that ``device_id`` declined for lack of budget, so it is not selected again."""
    db[EXHAUSTED].upsert({"device_id": device_id, "marked_at": clock()}, pk="device_id")


def selectable_devices(
    db: sqlite_utils.Database,
    candidates: Iterable[str],
    reported_epsilon: Mapping[str, float],
    budget_epsilon: float,
) -> list[str]:
    """``candidates`` minus devices marked exhausted or whose reported epsilon reached the budget.

    This filter only saves wasted selections; each device enforces its budget itself.
    """
    exhausted = {r["device_id"] for r in db[EXHAUSTED].rows}
    return [d for d in candidates if d not in exhausted and not reported_epsilon.get(d, 0.0) >= budget_epsilon]


def campaign_relations(db: sqlite_utils.Database, campaign_id: str) -> list[str]:
    """The neighbouring relation (``add-or-remove-one`` or ``replace-one``) each stored round of a
    campaign is accounted under, in :func:`campaign_history`'s order (all the same: a campaign never
    composes rounds of two relations)."""
    campaign_history(db, campaign_id)  # the same ConfigError for an unknown campaign
    return [
        RoundEvent(**json.loads(r["event"])).relation
        for r in db[ROUNDS].rows_where("campaign_id = ?", [campaign_id], order_by="round_id")
    ]


def campaign_history(db: sqlite_utils.Database, campaign_id: str) -> list[tuple[int, float]]:
    """(round id, epsilon so far) of a stored campaign, oldest first; unknown campaign is a ConfigError."""
    if CAMPAIGNS not in db.table_names() or not db[CAMPAIGNS].count_where("campaign_id = ?", [campaign_id]):
        raise ConfigError(f"campaign {campaign_id!r}: no privacy budget is stored for it")
    return [
        (r["round_id"], r["epsilon"])
        for r in db[ROUNDS].rows_where("campaign_id = ?", [campaign_id], order_by="round_id")
    ]
