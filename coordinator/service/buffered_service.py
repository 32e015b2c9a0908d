"""``serve --mode buffered``: buffered asynchronous aggregation (FedBuff) over MQTT, with SecAgg+ groups.

The round protocol is kept; asynchrony comes from giving every device's training its own round id
(docs/service.md, "Buffered mode"):

- a *training task* (a :class:`Task` with ``base_version`` >= 0, recorded in ``buffered_tasks``)
  goes to a free device with the newest model; the device trains, keeps its delta and answers
  :class:`Trained` (nothing of the update leaves it). At most ``concurrency`` are out at once.
- Each arrival is admitted, in arrival order, to the open group by the pure
  :class:`~fedge.coordinator.rounds.buffered.UpdateBuffer` (refused with its reason beyond
  ``max_staleness`` versions or the per-device cap). A full group of ``buffer`` devices is a
  SecAgg+ round of its own (:func:`build_round`, a row in ``rounds``), whose tasks name the
  training task (``trained_in``) and carry the device's staleness weight for the group's target
  version; the device weights its kept delta and masks it. A group starts as soon as it closes,
  while earlier groups may still be in their SecAgg+ stages (one waiting out a dropout's stage
  timeout holds up no other group); each group has its own :class:`Pacer`.
- Groups are applied in the order they closed (their target versions): each completed group's
  unmasked mean is one buffered update, applied by the server optimizer (``--server-lr``) to the
  version before it and stored, released and announced like a synchronous round's model; a group
  that ends before an earlier one waits for it.

Privacy: each group is one unamplified Gaussian event (:func:`group_event`). The campaign's budget
(:class:`CampaignBudget`, in SQLite, so it holds across restarts) composes one event per group until
``max_contributions`` groups are composed (the worst device is in at most that many; 0: every
group), checks the budget before a group's devices mask (counting the groups still running as spent), and
gives epsilon after each version.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from fedge.agent.core import topics
from fedge.agent.core.errors import BudgetExhausted, ProtocolError
from fedge.agent.core.messages.common import Outbound
from fedge.agent.core.messages.rounds import Decline, DeclineKind, RoundAnnounce, RoundEnd, RoundPlan, Task, Trained
from fedge.coordinator.rounds.accounting import RoundEvent
from fedge.coordinator.rounds.buffered import Admission, UpdateBuffer, group_event
from fedge.coordinator.rounds.builder import Draw, build_round
from fedge.coordinator.rounds.engine import RoundEngine, RoundStatus
from fedge.coordinator.rounds.plan import TrainingConfig, make_plan
from fedge.coordinator.rounds.staleness import parse_staleness
from fedge.coordinator.service.enrollment import active_ids, identities
from fedge.coordinator.service.pacing import Pacer
from fedge.coordinator.service.privacy_budget import mark_exhausted

if TYPE_CHECKING:
    from fedge.coordinator.service.service import CoordinatorService, RoundReport

log = logging.getLogger(__name__)

TASKS = "buffered_tasks"
#: a training task unanswered after this many training deadlines frees its slot
EXPIRY_DEADLINES = 2.0


@dataclasses.dataclass
class _Training:
    device: str
    base_version: int
    expires: float


@dataclasses.dataclass
class _Group:
    """One closed group's SecAgg+ round while it runs; its requests paced on their own."""

    target: int
    engine: RoundEngine
    members: list[tuple[int, Admission]]
    pacer: Pacer
    event: RoundEvent | None

    @property
    def round_id(self) -> int:
        return self.engine.round_id


class BufferedDriver:
    """Runs ``config.rounds`` model versions in buffered mode on a started :class:`CoordinatorService`."""

    def __init__(self, service: CoordinatorService) -> None:
        cfg = service.config
        self.svc = service
        self.store = service._store()
        t = cfg.training
        self.group_training: TrainingConfig = dataclasses.replace(
            t, goal=cfg.buffer, min_clients=min(t.min_clients, cfg.buffer)
        )
        self.buffer = UpdateBuffer(cfg.buffer, cfg.max_staleness, parse_staleness(cfg.staleness), cfg.max_contributions)
        # a restarted campaign keeps its caps: updates aggregated before count against them
        for row in self.store.db.query(
            f"select device_id, count(*) as n from {TASKS} where status = 'aggregated' group by device_id"
        ):
            self.buffer.contributions[row["device_id"]] = row["n"]
        self.training: dict[int, _Training] = {}  # training task id -> device, base version
        self.open: list[tuple[int, Admission]] = []  # (training task id, admission) of the open group
        self.closed: collections.deque[tuple[int, list[tuple[int, Admission]]]] = collections.deque()
        self.engaged: set[str] = set()  # devices admitted to a group that has not ended
        self.declined: set[str] = set()  # devices that declined a training task: not asked again this run
        self.running: collections.deque[_Group] = collections.deque()  # started groups, in target order
        self.base_model = service.current_model().version  # version index 0 of this run
        self.pool: set[str] = set()  # devices that checked in eligible when the run started
        self.suites: dict[str, tuple[str, ...]] = {}  # the SecAgg+ suites each of them reported

    # ------------------------------------------------------------------ the loop

    def owns(self, rid: int) -> bool:
        """Whether ``rid`` is one of this run's training tasks or running groups."""
        return rid in self.training or self._group(rid) is not None

    def _group(self, rid: int) -> _Group | None:
        return next((g for g in self.running if g.round_id == rid), None)

    def run(self) -> list[RoundReport]:
        svc, reports = self.svc, []
        self._abandon_tasks("coordinator restarted", only_open=True)
        try:
            self.pool = self._check_in()
            svc.watch_link()
            while len(reports) < svc.config.rounds and not svc.stopping and not svc.budget_spent:
                svc.repeat_after_reconnect()
                self._expire()
                self._fill_slots()
                if not self.running and not self.closed and not self.training and not self._startable():
                    log.warning("buffered mode: no device may train any more (caps used, declined or gone); stopping")
                    break
                while self.closed and len(reports) + len(self.running) < svc.config.rounds and not svc.budget_spent:
                    self._start_group()
                if not self.running:
                    svc._receive_one(0.25)
                    continue
                for g in self.running:
                    svc._send(g.pacer.admit(), round_id=g.round_id)
                live = [g.engine.deadline for g in self.running if g.engine.status is RoundStatus.RUNNING]
                left = min(live, default=svc.clock()) - svc.clock()
                svc._receive_one(min(max(left, 0.0), 0.25))
                for g in self.running:
                    engine = g.engine
                    if engine.status is not RoundStatus.RUNNING:
                        continue
                    stage = engine.stage
                    g.pacer.push(engine.tick())
                    if engine.stage != stage:
                        g.pacer.new_stage()
                        self.store.set_stage(engine.round_id, engine.stage)
                # applied in target order: a group that ended early waits for the ones before it
                while self.running and self.running[0].engine.status is not RoundStatus.RUNNING:
                    reports.append(self._end_group(self.running.popleft()))
        finally:
            self._abandon_groups("coordinator stopped")
            self._abandon_tasks("coordinator stopped", only_open=False)
        return reports

    def _abandon_groups(self, reason: str) -> None:
        """End every running group as abandoned (its round row, RoundEnd); nothing of it is applied."""
        while self.running:
            g = self.running.popleft()
            try:
                if g.engine.status is RoundStatus.RUNNING:
                    g.engine.abandon(reason)
                self.buffer.applied(False)
                for _, a in g.members:
                    self.engaged.discard(a.device)
                if g.engine.status is RoundStatus.COMPLETED:  # ended, but an earlier group was still running
                    self.store.finish_round(g.round_id, "abandoned", reason, self.svc.clock())
                    self.svc._publish_end(RoundEnd(g.round_id, "abandoned", reason, self.svc.current_model().version))
                else:
                    self.svc._finish(g.engine, None)
            except Exception:  # stopping: the next start abandons whatever is left open
                log.error("could not close group %d", g.round_id, exc_info=True)

    def resend(self) -> list[tuple[int, list[Outbound]]]:
        """Each running group's requests to devices that owe a reply (after the broker link came back)."""
        return [(g.round_id, g.pacer.resend()) for g in self.running]

    def exclude(self, device: str, rid: int, reason: str) -> None:
        """Leave a quarantined device out of its running group, if it is not too late."""
        g = self._group(rid)
        if g is None or g.engine.status is not RoundStatus.RUNNING:
            return
        out = g.engine.exclude(device, reason)
        if device in g.engine.excluded:
            self.svc._quarantined_now.add(device)
            g.pacer.answered(device)
        g.pacer.push(out)

    def _check_in(self) -> set[str]:
        """One announcement opens the run: the devices that check in eligible are the ones given tasks."""
        svc, store, cfg = self.svc, self.store, self.svc.config
        model, rid, now = svc.current_model(), store.next_round_id(), svc.clock()
        store.db[TASKS].insert(
            {
                "round_id": rid,
                "device_id": "",
                "base_version": -1,
                "model_in": model.version,
                "status": "checkin",
                "started_at": now,
            }
        )
        svc._round_id, svc._checkins, svc._phase = rid, {}, "checkin"
        deadline = now + cfg.checkin_window_s
        svc._publish(
            topics.ROUNDS, RoundAnnounce(rid, cfg.training.model_name, model.version, deadline, now), retain=True
        )
        active = set(active_ids(store))
        while not svc.stopping and svc.clock() < deadline and not active <= set(svc._checkins):
            svc._receive_one(min(deadline - svc.clock(), 0.25))
        pool = {d for d, c in svc._checkins.items() if c.eligible and d in active}
        self.suites = {d: svc._checkins[d].secagg_suites for d in pool}
        svc._round_id, svc._phase = None, "idle"
        svc._publish_end(RoundEnd(rid, "completed", f"buffered mode: {len(pool)} devices checked in", model.version))
        self._settle(rid, "closed", f"{len(pool)} eligible devices checked in")
        log.info("buffered mode: %d eligible devices checked in", len(pool), extra={"round": rid})
        return pool

    # ------------------------------------------------------------------ training tasks

    def _fill_slots(self) -> None:
        """Up to ``concurrency`` devices training, each on the newest model when it starts."""
        free = self.svc.config.concurrency - len(self.training)
        if free <= 0:
            return
        busy = {t.device for t in self.training.values()} | self.engaged | self.declined
        candidates = [
            d for d in active_ids(self.store) if d in self.pool and d not in busy and self.buffer.may_start(d)
        ]
        if not candidates:
            return
        model = self.svc.current_model()
        plan = make_plan(self.group_training, model.version, self.svc.config.buffer, self.svc.config.buffer)
        now = self.svc.clock()
        for d in self.svc.rng.permutation(candidates)[:free].tolist():
            rid = self.store.next_round_id()
            self.store.db[TASKS].insert(
                {
                    "round_id": rid,
                    "device_id": d,
                    "base_version": self.buffer.version,
                    "model_in": model.version,
                    "status": "training",
                    "started_at": now,
                }
            )
            self.training[rid] = _Training(d, self.buffer.version, now + EXPIRY_DEADLINES * plan.deadline_s)
            self.svc._send([Outbound(d, Task(rid, d, plan, model.weights, base_version=self.buffer.version))])
            log.info("training task on version %d", self.buffer.version, extra={"device": d, "round": rid})

    def _startable(self) -> bool:
        """Whether any checked-in device could still be given a training task."""
        return any(
            d in self.pool and d not in self.declined and self.buffer.may_start(d) for d in active_ids(self.store)
        )

    def receive(self, device: str, msg: Any) -> None:
        """A training task's answer (stored by the service first): admit it, refuse it, or free the slot;
        or a group member's SecAgg+ message, for its group's engine."""
        rid = msg.round_id
        g = self._group(rid)
        if g is not None:
            if g.engine.status is not RoundStatus.RUNNING:
                raise ProtocolError(f"group round {rid} has ended")
            out = g.engine.receive(device, msg)
            g.pacer.answered(device)
            g.pacer.push(out)
            return
        task = self.training.get(rid)
        if task is None or task.device != device:
            raise ProtocolError("not this device's training task")
        if isinstance(msg, Decline):
            del self.training[rid]
            self.declined.add(device)
            if msg.kind is DeclineKind.BUDGET:
                mark_exhausted(self.store.db, device, clock=self.svc.clock)
            self._settle(rid, "declined", msg.reason)
            return
        if not isinstance(msg, Trained):
            raise ProtocolError(f"{type(msg).__name__} for a training task")
        if msg.base_version != task.base_version:
            raise ProtocolError(f"trained on version {msg.base_version}, the task gave {task.base_version}")
        del self.training[rid]
        try:
            a = self.buffer.admit(device, task.base_version)
        except ProtocolError as e:  # StaleUpdate, ContributionCap: the kept update is never masked
            log.info("update refused: %s", e, extra={"device": device, "round": rid})
            self._settle(rid, "refused", f"{type(e).__name__}: {e}")
            return
        self.engaged.add(device)
        self.open.append((rid, a))
        self._settle(
            rid, "admitted", f"group target version {a.target_version}", staleness=a.staleness, weight=a.weight
        )
        if self.buffer.full:
            group = self.buffer.close()
            self.closed.append((group.target_version, self.open))
            self.open = []

    def _expire(self) -> None:
        now = self.svc.clock()
        for rid, t in [(r, t) for r, t in self.training.items() if now >= t.expires]:
            del self.training[rid]
            self._settle(rid, "expired", "no answer within two training deadlines")

    def _settle(self, rid: int, status: str, reason: str, **fields: Any) -> None:
        self.store.db[TASKS].update(
            rid, {"status": status, "reason": reason[:500], "ended_at": self.svc.clock(), **fields}
        )

    def _abandon_tasks(self, reason: str, *, only_open: bool) -> None:
        statuses = "('training')" if only_open else "('training', 'admitted')"
        self.store.db.execute(
            f"update {TASKS} set status = 'abandoned', reason = ?, ended_at = ? where status in {statuses}",
            [reason, self.svc.clock()],
        )
        self.training.clear()

    # ------------------------------------------------------------------ groups

    def _start_group(self) -> None:
        svc, store = self.svc, self.store
        target, members = self.closed.popleft()
        model = svc.current_model()
        cohort = sorted(a.device for _, a in members)
        rid = store.next_round_id()
        tcfg = self.group_training
        roster = identities(store, cohort) if tcfg.secagg else None
        built = build_round(
            rid,
            tcfg,
            model.version,
            model.weights,
            cohort,
            Draw.poisson(len(cohort), 1.0),
            svc.clock,
            roster=roster,
            certificates=svc._certificate,
            suites={d: self.suites.get(d, ()) for d in cohort},
            prefer_hybrid=svc.config.prefer_hybrid,
        )
        if built.suite is not None:
            log.info("SecAgg+ suite %s for %d devices", built.suite, len(cohort), extra={"round": rid})
        event = self._event(built.plan)
        if event is not None and svc.budget is not None:
            try:
                svc.budget.check_round(event, rid, pending=sum(g.event is not None for g in self.running))
            except BudgetExhausted as e:  # before any device masks: the group's sum is never made
                svc.budget_spent = True
                for task_rid, _ in members:
                    self._settle(task_rid, "abandoned", f"privacy budget: {e}")
                log.warning("group not started: %s", e, extra={"round": rid})
                return
        now = svc.clock()
        store.open_round(rid, goal=len(cohort), model_in=model.version, plan={}, now=now)
        store.add_members(rid, cohort, now)
        store.update_round(
            rid, plan=dataclasses.asdict(built.plan), stage="training", clip_norm=built.plan.privacy.clip_norm
        )
        for task_rid, _ in members:
            store.db[TASKS].update(task_rid, {"group_round": rid})
        by_device = {a.device: (task_rid, a) for task_rid, a in members}
        empty = np.zeros(0, np.float32)
        out = []
        for o in built.engine.start():
            if isinstance(o.message, Task):  # the group's target is known: each device's weight goes with its task
                task_rid, a = by_device[o.device_id]
                o = Outbound(
                    o.device_id,
                    dataclasses.replace(
                        o.message,
                        weights=empty,
                        base_version=a.base_version,
                        staleness_weight=a.weight,
                        trained_in=task_rid,
                    ),
                )
            out.append(o)
        pacer = Pacer(svc.config.pacing_batch)
        pacer.push(out)
        self.running.append(_Group(target, built.engine, members, pacer, event))
        log.info(
            "group of %d started for target version %d (%d groups running)",
            len(cohort),
            target,
            len(self.running),
            extra={"round": rid},
        )

    def _event(self, plan: RoundPlan) -> RoundEvent | None:
        """The group's privacy event while the campaign still composes one per group (None: DP off,
        or ``max_contributions`` groups already composed or running, so no device's epsilon grows)."""
        cap, budget = self.svc.config.max_contributions, self.svc.budget
        running = sum(g.event is not None for g in self.running)
        if budget is None or (cap and len(budget.history()) + running >= cap):
            return None
        return group_event(plan, int(self.svc.current_model().weights.size))

    def _end_group(self, g: _Group) -> RoundReport:
        svc, store, engine = self.svc, self.store, g.engine
        svc._send(g.pacer.admit(), round_id=g.round_id)
        on_round, svc.on_round = svc.on_round, None
        try:
            report = svc._finish(engine, None)  # server optimizer (--server-lr), model, release, RoundEnd
        finally:
            svc.on_round = on_round
        ok = report.status == "completed"
        self.buffer.applied(ok)
        rid = engine.round_id
        survivors = set(engine.outcome.survivors) if ok and engine.outcome is not None else set()
        for task_rid, a in g.members:
            self.engaged.discard(a.device)
            store.db[TASKS].update(task_rid, {"status": "aggregated" if a.device in survivors else "dropped"})
        budget = svc.budget
        if ok and budget is not None:
            event = g.event
            eps = budget.record_round(rid, event) if event is not None else budget.epsilon_so_far()
            store.update_round(rid, epsilon=eps, delta=budget.delta)
        from fedge.coordinator.service.service import round_report

        report = round_report(store.round(rid) or {}, report.model_version)
        if on_round is not None:
            on_round(report)
        return report
