"""The coordinator service: rounds over MQTT, driven from one thread, everything recorded in SQLite.

Lifecycle (:class:`CoordinatorService`): ``start`` opens the store, abandons any round a crash
left open (reason ``coordinator restarted``: the engine and SecAgg+ state lived in memory, so a
round cannot resume safely), starts the embedded broker when no URL is given, connects and
subscribes. ``run_round`` announces a round (retained on ``ROUNDS``), collects check-ins for the
window, selects with over-selection, sends tasks in paced batches, feeds every upload to the
:class:`~fedge.coordinator.rounds.engine.RoundEngine`, ticks it at its deadlines, and at the end stores the new
model, the metrics and epsilon, and publishes ``RoundEnd``. ``shutdown`` is bounded.

Exactly once: every inbound message is decoded, checked against the enrolled devices and stored
with :meth:`Store.record_upload` keyed by (round, device, message type) *before* it is
acknowledged to the broker; a redelivery finds its key taken and is acknowledged and dropped.
Bad input (garbage, unknown device, stale round, illegal message) is logged, recorded in the
``rejections`` table or with the upload's verdict, acknowledged, and the round goes on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fedge.agent.core import topics, wire
from fedge.agent.core.errors import BudgetExhausted, ConfigError, FedgeError, ProtocolError, TransportError, WireError
from fedge.agent.core.lifecycle import stop_signals
from fedge.agent.core.messages.common import Outbound
from fedge.agent.core.messages.fleet import InstallReport
from fedge.agent.core.messages.rounds import CheckIn, DeclineKind, RoundAnnounce, RoundEnd
from fedge.agent.core.transport import Inbound, Transport, open_transport
from fedge.coordinator.fleet.controller import FleetController
from fedge.coordinator.fleet.releases import create_release
from fedge.coordinator.rounds.accounting import RELATION_NAMES
from fedge.coordinator.rounds.audit import AUDIT_RELATION, devices_aggregated, is_canary
from fedge.coordinator.rounds.builder import Draw, build_round
from fedge.coordinator.rounds.engine import RoundEngine, RoundStatus
from fedge.coordinator.rounds.grouped import GroupRefused
from fedge.coordinator.rounds.remote import HOST as GROUP_HOST
from fedge.coordinator.rounds.selection import select_cohort
from fedge.coordinator.rounds.server_opt import ServerOptimizer
from fedge.coordinator.service.broker import EmbeddedBroker, MosquittoBroker, local_broker
from fedge.coordinator.service.canaries import LiveCanaries
from fedge.coordinator.service.config import ServiceConfig
from fedge.coordinator.service.enrollment import active_ids, authority, certificate, identities
from fedge.coordinator.service.pacing import Pacer, ResendSchedule
from fedge.coordinator.service.privacy_budget import CampaignBudget, mark_exhausted, selectable_devices
from fedge.coordinator.service.quarantine import conflict_reason, quarantine
from fedge.coordinator.store import ModelRecord, Store
from fedge.coordinator.workers import GroupWorkers

log = logging.getLogger(__name__)

#: The longest a receive waits, so a stop request is seen promptly.
POLL_S = 0.25
#: how often a waiting check-in window reports its count (:attr:`CoordinatorService.on_checkin`)
CHECKIN_PROGRESS_S = 5.0
#: after the broker link came back, a round's unanswered requests are repeated at once, then after
#: RESEND_S, the gaps doubling up to RESEND_MAX_S, until the round ends
RESEND_S = 5.0
RESEND_MAX_S = 60.0
RESTARTED = "coordinator restarted"
#: The neighbouring relation of every epsilon the service reports: its cohorts are Poisson-sampled
#: and buffered groups are accounted unamplified, both add-or-remove-one (docs/privacy.md).
SERVICE_RELATION = RELATION_NAMES["poisson"]
SHUT_DOWN = "coordinator shut down"


@dataclasses.dataclass(frozen=True)
class RoundReport:
    """What one round produced, as recorded in the rounds table."""

    round_id: int
    status: str
    reason: str
    participants: int
    dropped: int
    dropped_by_stage: dict[str, int]
    accuracy: float | None
    loss: float | None
    epsilon: float | None
    model_version: str
    #: the live privacy audit after this round (``serve --audit-canaries``), None without one
    epsilon_empirical: float | None = None
    epsilon_lower_bound: float | None = None
    #: the delta of ``epsilon`` (the campaign's), None without one
    delta: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round_id,
            "status": self.status,
            "reason": self.reason,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "participants": self.participants,
            "dropped": self.dropped,
            "epsilon": self.epsilon,
            "delta": self.delta if self.epsilon is not None else None,
            "relation": SERVICE_RELATION if self.epsilon is not None else None,
            "epsilon_empirical": self.epsilon_empirical,
            "epsilon_lower_bound": self.epsilon_lower_bound,
            # the audit's figures are replace-one (a pair's coin swaps one canary for another)
            "audit_relation": AUDIT_RELATION
            if self.epsilon_empirical is not None or self.epsilon_lower_bound is not None
            else None,
        }


def secure_available() -> bool:
    """Whether SecAgg+ on the coordinator (``coordinator/rounds/secure.py``) is installed."""
    try:
        from fedge.coordinator.rounds import secure
    except ImportError:
        return False
    return hasattr(secure, "SecureAggregation")


def load_eval_data(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Held-out ``x``/``y`` arrays from an ``.npz`` to evaluate each new global model on."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return np.asarray(f["x"], np.float32), np.asarray(f["y"], np.int32)
    except (OSError, KeyError, ValueError) as e:
        raise ConfigError(f"eval data {path}: {e}") from None


class CoordinatorService:
    """One coordinator process: ``start()``, ``run_round()`` as often as wanted, ``shutdown()``."""

    def __init__(
        self,
        config: ServiceConfig,
        *,
        clock: Callable[[], float] = time.time,
        rng: np.random.Generator | None = None,
        on_round: Callable[[RoundReport], None] | None = None,
        on_checkin: Callable[[CheckinProgress], None] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.rng = rng if rng is not None else np.random.default_rng()
        self.on_round = on_round
        #: called while a round's check-in window is open, every ``CHECKIN_PROGRESS_S`` and when it closes
        self.on_checkin = on_checkin
        self.store: Store | None = None
        self.transport: Transport | None = None
        self.broker: EmbeddedBroker | MosquittoBroker | None = None
        self.broker_url: str | None = config.broker_url
        self.budget: CampaignBudget | None = None
        self.engine: RoundEngine | None = None
        self._stop = threading.Event()
        self._round_id: int | None = None
        self._phase = "idle"
        self._checkins: dict[str, CheckIn] = {}
        #: devices quarantined during the running round (their messages are refused)
        self._quarantined_now: set[str] = set()
        self._pacer = Pacer(config.pacing_batch)
        self._evaluator: Any = None
        self._eval: tuple[np.ndarray, np.ndarray] | None = None
        self.budget_spent = False
        self._resends = ResendSchedule(RESEND_S, RESEND_MAX_S)
        self._groups = GroupWorkers(config.group_workers, config.group_engine, GROUP_HOST)
        #: the live privacy audit's canary clients (``audit_canaries``), made when the model is known
        self.canaries: LiveCanaries | None = None
        #: the server's update rule; its state is restored from the store at start and saved each round
        self.server_opt = ServerOptimizer(config.server_opt)
        #: ``mode="buffered"``: the asynchronous driver (coordinator/service/buffered_service.py) while it runs
        self.buffered: Any = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> CoordinatorService:
        """Open the store, recover, connect. Raises TransportError/ConfigError on failure."""
        cfg = self.config
        self.store = Store(cfg.db_path)
        recovered = self._abandon_open_rounds()
        if cfg.eval_data:
            self._eval = load_eval_data(cfg.eval_data)
        if cfg.training.dp_mode != "off":
            self.budget = CampaignBudget(
                self.store.db,
                cfg.campaign_id,
                budget_epsilon=cfg.epsilon_budget or 10.0,
                delta=cfg.training.delta,
                clock=self.clock,
            )
        if cfg.training.secagg and not secure_available():
            raise ConfigError(
                "secure aggregation on the coordinator (coordinator/rounds/secure.py) is not available; use --no-secagg"
            )
        self._ensure_model()
        saved = self.store.server_opt_state(self.config.server_opt.kind.value)
        if saved is not None:
            self.server_opt.restore(saved)
        if cfg.embedded:
            self.broker = local_broker(cfg.embedded_port).start()  # Mosquitto when installed, else amqtt
            self.broker_url = self.broker.url
        assert self.broker_url is not None
        self.transport = open_transport(cfg.transport(self.broker_url, self.broker.protocol if self.broker else None))
        self.transport.connect()
        self.transport.subscribe(topics.ALL_DEVICES_OUT)
        self.fleet = FleetController(
            self.store, clock=self.clock
        )  # releases and rollouts (coordinator/fleet/controller.py)
        self._fleet_due = 0.0
        self.publish_key_rotations()
        for rid in recovered:
            self._publish_end(RoundEnd(rid, "abandoned", RESTARTED, ""))
        log.info(
            "coordinator ready on %s (%s, db %s)",
            self.broker_url,
            self.broker.description if self.broker else "external broker",
            cfg.db_path,
        )
        return self

    def run(self) -> list[RoundReport]:
        """Start, run ``config.rounds`` rounds (fewer if stopped or the budget is spent), shut down."""
        reports: list[RoundReport] = []
        try:
            if self.store is None:
                self.start()
            if self.config.mode == "buffered":
                from fedge.coordinator.service.buffered_service import BufferedDriver

                self.buffered = BufferedDriver(self)
                return self.buffered.run()
            for i in range(self.config.rounds):
                if self._stop.is_set() or self.budget_spent:
                    break
                if i and self.config.round_gap_s:
                    self.idle(self.config.round_gap_s)
                reports.append(self.run_round())
        finally:
            self.shutdown()
        return reports

    def request_stop(self) -> None:
        """Ask the loop to stop soon (safe from a signal handler or another thread)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def shutdown(self) -> None:
        """Abandon a running round, disconnect, stop the embedded broker, close the store (bounded)."""
        if self.engine is not None and self.engine.status is RoundStatus.RUNNING:
            self.engine.abandon(SHUT_DOWN)
            try:
                self._finish(self.engine, None)
            except FedgeError as e:
                log.warning("could not finish the round on shutdown: %s", e)
        elif self._round_id is not None and self.store is not None:
            row = self.store.round(self._round_id)
            if row and row["status"] == "open":
                self.store.finish_round(self._round_id, "abandoned", SHUT_DOWN, self.clock())
                self._publish_end(RoundEnd(self._round_id, "abandoned", SHUT_DOWN, ""))
        self.engine = None
        self._round_id = None
        if self.transport is not None:
            t, self.transport = self.transport, None
            closer = threading.Thread(target=t.close, daemon=True)
            closer.start()
            closer.join(self.config.shutdown_timeout_s)
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        self._groups.close()
        if self.store is not None:
            self.store.close()
            self.store = None

    def __enter__(self) -> CoordinatorService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ one round

    def run_round(self) -> RoundReport:
        """One whole round: announce, check-in, select, train and aggregate, record.

        A FedgeError that ends the round early (broker gone, an unplannable cohort) abandons it with
        that error as the recorded reason, then propagates.
        """
        try:
            return self._run_round()
        except FedgeError as e:
            self._abandon_on_error(f"{type(e).__name__}: {e}")
            raise

    def _abandon_on_error(self, reason: str) -> None:
        store, rid = self.store, self._round_id
        if store is None or rid is None:
            return
        engine = self.engine
        if engine is not None and engine.round_id == rid:
            engine.abandon(reason)
            try:
                self._finish(engine, None)
                return
            except FedgeError as e:
                log.warning("could not finish the round: %s", e, extra={"round": rid})
        row = store.round(rid)
        if row and row["status"] == "open":
            store.finish_round(rid, "abandoned", reason, self.clock())
            self._publish_end(RoundEnd(rid, "abandoned", reason, ""))
        self.engine, self._phase, self._round_id = None, "idle", None

    def _run_round(self) -> RoundReport:
        store, cfg = self._store(), self.config
        tcfg = cfg.training
        model = self.current_model()
        rid = store.next_round_id()
        now = self.clock()
        store.open_round(rid, goal=tcfg.goal, model_in=model.version, plan={}, now=now)
        self._round_id, self._checkins, self._phase = rid, {}, "checkin"
        extra = {"round": rid}
        store.set_stage(rid, "checkin")
        deadline = now + cfg.checkin_window_s
        self._publish(topics.ROUNDS, RoundAnnounce(rid, tcfg.model_name, model.version, deadline, now), retain=True)
        log.info("round announced; check-in until +%.1f s", cfg.checkin_window_s, extra=extra)
        active = set(active_ids(store))
        self._quarantined_now = set()
        next_progress = self.clock() + CHECKIN_PROGRESS_S
        while not self._stop.is_set():
            left = deadline - self.clock()
            if left <= 0 or (active and active - self._quarantined_now <= set(self._checkins)):
                break
            if self.on_checkin is not None and self.clock() >= next_progress:
                next_progress = self.clock() + CHECKIN_PROGRESS_S
                self.on_checkin(self._checkin_progress(rid, active, left))
            self._receive_one(min(left, POLL_S))
        if self.on_checkin is not None and not self._stop.is_set():
            self.on_checkin(self._checkin_progress(rid, active, 0.0))
        if self._stop.is_set():
            return self._abandon_early(rid, model, SHUT_DOWN)
        # a device quarantined during check-in (a clone answering twice) is not drawn
        eligible = sorted(
            d for d, c in self._checkins.items() if c.eligible and d in active and d not in self._quarantined_now
        )
        # devices that declined for lack of privacy budget are never selected again (kept in SQLite)
        checked = len(eligible)
        eligible = selectable_devices(store.db, eligible, {}, math.inf)
        spent = (
            f" ({checked - len(eligible)} more out of privacy budget, see devices list)"
            if checked > len(eligible)
            else ""
        )
        # Poisson sampling among the eligible check-ins: the accountant's rate is the rate each of
        # them was drawn with (only they could have been selected), not a share of the enrolled fleet
        drawn = select_cohort(eligible, tcfg.goal, tcfg.over_selection, self.rng)
        cohort = list(drawn.members)
        if len(eligible) < tcfg.min_clients:
            return self._abandon_early(
                rid,
                model,
                f"check-in: {len(eligible)} eligible devices checked in{spent}, minimum cohort is {tcfg.min_clients}"
                f" ({self._checkin_counts(active, since=now)})",
            )
        if len(cohort) < tcfg.min_clients:
            return self._abandon_early(
                rid,
                model,
                f"selection: {len(cohort)} of {len(eligible)} eligible devices drawn at rate "
                f"{drawn.sampling_rate:.3g}, minimum cohort is {tcfg.min_clients}",
            )
        # adaptive clipping: this round's C is what the last completed round chose (kept in the store)
        clip = store.latest_next_clip_norm() if tcfg.adaptive is not None else None
        # the audit's canaries join with the rate real devices were drawn with; they are extra clients
        # of the round (the goal and the release floor wait for them) that add no noise share: the
        # coordinator knows their randomness, so distributed noise is planned over the real devices'
        # min_clients alone (build_round's ``canaries``)
        canaries = self._canaries(model).join(rid, drawn.sampling_rate) if cfg.audit_canaries else []
        round_cfg = dataclasses.replace(tcfg, goal=tcfg.goal + len(canaries)) if canaries else tcfg
        roster = identities(store, cohort) if tcfg.secagg else None
        if roster is not None and self.canaries is not None:
            roster.update({c: self.canaries.identity(c) for c in canaries})
        suites = {d: self._checkins[d].secagg_suites for d in cohort}
        suites.update(dict.fromkeys(canaries, LiveCanaries.suites()))
        try:
            built = build_round(
                rid,
                round_cfg,
                model.version,
                model.weights,
                cohort + canaries,
                Draw.poisson(drawn.population, drawn.sampling_rate),
                self.clock,
                clip_norm=clip,
                roster=roster,
                certificates=self._certificate,
                suites=suites,
                group_size=cfg.group_size,
                parallel=self._groups,
                hosts=self._groups.hosts,
                prefer_hybrid=cfg.prefer_hybrid,
                canaries=len(canaries),
            )
        except GroupRefused as e:
            return self._abandon_early(rid, model, f"groups: {e}")
        plan, engine = built.plan, built.engine
        event = built.event if self.budget is not None else None
        if event is not None:
            try:
                self.budget.check_round(event, rid)
            except BudgetExhausted as e:
                self.budget_spent = True
                return self._abandon_early(rid, model, f"privacy budget: {e}")
        now = self.clock()
        store.add_members(rid, cohort, now)
        store.update_round(rid, plan=dataclasses.asdict(plan), stage="training", clip_norm=plan.privacy.clip_norm)
        if built.suite is not None:
            log.info("SecAgg+ suite %s for %d devices", built.suite, len(cohort), extra={"round": rid})
        self.engine, self._phase = engine, "engine"
        self._pacer.clear()
        self._pacer.push(engine.start())
        self.watch_link()
        stage = engine.stage
        while engine.status is RoundStatus.RUNNING and not self._stop.is_set():
            self.repeat_after_reconnect()
            self._send(self._pacer.admit())
            left = engine.deadline - self.clock()
            if left > 0:
                self._receive_one(min(left, POLL_S))
            self._pacer.push(engine.tick())
            if engine.stage != stage:
                stage = engine.stage
                self._pacer.new_stage()
                store.set_stage(rid, stage)
        if engine.status is RoundStatus.RUNNING:
            engine.abandon(SHUT_DOWN)
        self._send(self._pacer.admit())  # final messages of the last stage, if any
        return self._finish(engine, event)

    def current_model(self) -> ModelRecord:
        model = self._store().latest_model(self.config.training.model_name)
        assert model is not None, "start() stores the initial model"
        return model

    # ------------------------------------------------------------------ fleet operations

    def idle(self, seconds: float) -> None:
        """Between rounds: keep serving rollouts (reports in, commands out) for ``seconds`` or until stopped."""
        end = self.clock() + seconds
        while not self._stop.is_set() and (left := end - self.clock()) > 0:
            self._receive_one(min(left, POLL_S))

    def publish_key_rotations(self) -> None:
        """Every release-key rotation, retained, so devices that missed some can catch up."""
        for topic, msg in self.fleet.new_rotations():
            self._publish(topic, msg, retain=True)
            self.fleet.rotation_published(msg.sequence)

    def _fleet_tick(self) -> None:
        """Advance rollouts at most once a second; publish their commands."""
        fleet, now = getattr(self, "fleet", None), self.clock()
        if fleet is None or now < self._fleet_due:
            return
        self._fleet_due = now + 1.0
        try:
            self.publish_key_rotations()
        except TransportError as e:
            log.warning("key rotation not published: %s", e)
        for o in fleet.tick():
            try:
                self._publish(topics.device_in(o.device_id), o.message)
            except TransportError as e:
                log.warning("fleet command not sent: %s", e, extra={"device": o.device_id})

    def _fleet_report(self, topic: str, device: str, msg: InstallReport, size: int) -> None:
        try:
            self.fleet.handle(device, msg)
        except ProtocolError as e:
            self._reject(topic, device, None, "fleet", str(e), size)

    # ------------------------------------------------------------------ inbound

    def _receive_one(self, timeout: float) -> None:
        t = self.transport
        assert t is not None
        try:
            inbound = t.receive(timeout=max(0.0, timeout))
        except FedgeError as e:
            log.warning("receive failed: %s", e)
            return
        if inbound is None:
            self._fleet_tick()
            return
        try:
            self._handle(inbound)  # stores before it returns; a storage failure must not be acked
        except Exception:
            self._fleet_tick()
            raise
        t.ack(inbound)
        self._fleet_tick()

    def _handle(self, inbound: Inbound) -> None:
        """Decode, authenticate, store (exactly once), then apply one inbound message. Never raises FedgeError."""
        store = self._store()
        now = self.clock()
        size = len(inbound.payload)
        try:
            device = topics.device_of(inbound.topic)
        except ProtocolError as e:
            return self._reject(inbound.topic, None, None, "topic", str(e), size)
        try:
            msg = wire.decode(inbound.payload, max_bytes=self.config.max_message_bytes)
        except WireError as e:
            return self._reject(inbound.topic, device, None, "wire", str(e), size)
        try:
            store.require_device(device)
        except ProtocolError:
            return self._reject(inbound.topic, device, None, "unknown_device", "unknown or revoked device", size)
        store.touch(device, now)
        rid = getattr(msg, "round_id", None)
        if getattr(msg, "device_id", device) != device:
            return self._reject(inbound.topic, device, rid, "spoofed", "message names another device", size)
        if isinstance(msg, InstallReport):
            return self._fleet_report(inbound.topic, device, msg, size)
        stage = wire.type_name(msg)
        if rid is None or not self._live(rid):
            if isinstance(rid, int) and store.stored_payload(rid, device, stage) not in (None, inbound.payload):
                # a late second, different message for a past round: two processes hold this identity
                self._reject(inbound.topic, device, rid, "conflict", f"a second, different {stage}", size)
                return self._quarantine(device, rid, conflict_reason(rid, stage))
            return self._reject(
                inbound.topic, device, rid, "stale", f"not for the current round {self._round_id}", size
            )
        if device in self._quarantined_now or (self._phase == "checkin" and store.quarantined(device) is not None):
            return self._reject(inbound.topic, device, rid, "quarantined", f"{stage} from a quarantined device", size)
        if not store.record_upload(rid, device, stage, inbound.payload, now):
            if store.stored_payload(rid, device, stage) != inbound.payload:
                # the same device said two different things at one stage: two processes hold its identity
                self._reject(inbound.topic, device, rid, "conflict", f"a second, different {stage}", size)
                return self._quarantine(device, rid, conflict_reason(rid, stage))
            return self._reject(inbound.topic, device, rid, "duplicate", f"{stage} already stored", size)
        extra = {"device": device, "round": rid}
        try:
            self._apply(device, msg)
        except FedgeError as e:  # ProtocolError mostly; SecurityError from a bad signature, opaque
            self._verdict(rid, device, stage, f"{type(e).__name__}: {e}")
            log.warning("rejected %s: %s", stage, e, extra=extra)
            return None
        except Exception as e:  # a bug on a hostile input must not end the round for everyone else
            self._verdict(rid, device, stage, f"internal error: {type(e).__name__}")
            log.error("rejected %s after an internal error", stage, exc_info=True, extra=extra)
            return None
        log.debug("stored %s (%d bytes)", stage, size, extra=extra)
        return None

    def _quarantine(self, device: str, rid: int | None, reason: str) -> None:
        """Quarantine a device and leave it out of the running round; the round goes on without it."""
        quarantine(self._store(), device, reason, now=self.clock(), round_id=rid)
        if rid is not None and self.buffered is not None and self.buffered.owns(rid):
            self.buffered.exclude(device, rid, reason)  # a running buffered group: left out if not too late
            return
        if rid != self._round_id:
            return  # caught after its round: never selected again
        if self._phase == "checkin":
            self._quarantined_now.add(device)
            self._checkins.pop(device, None)
        elif self.engine is not None and self._phase == "engine":
            out = self.engine.exclude(device, reason)
            if device in self.engine.excluded:  # else too late to leave out: it finishes this round
                self._quarantined_now.add(device)
                self._pacer.answered(device)
            self._pacer.push(out)

    def _verdict(self, rid: int, device: str, stage: str, reason: str) -> None:
        self._store().db.execute(
            "update uploads set status = 'rejected', reason = ? where round_id = ? and device_id = ? and stage = ?",
            [reason[:500], rid, device, stage],
        )

    def _live(self, rid: int) -> bool:
        """Whether messages for round ``rid`` are expected now (buffered mode: also training tasks)."""
        return rid == self._round_id or (self.buffered is not None and self.buffered.owns(rid))

    def _apply(self, device: str, msg: Any) -> None:
        if self.buffered is not None and self.buffered.owns(msg.round_id):
            self.buffered.receive(device, msg)
            return
        if self._phase == "checkin":
            if not isinstance(msg, CheckIn):
                raise ProtocolError(f"{type(msg).__name__} during check-in")
            self._checkins[device] = msg
            return
        if isinstance(msg, CheckIn):
            raise ProtocolError("check-in is closed")
        engine = self.engine
        if engine is None or self._phase != "engine":
            raise ProtocolError("no round is running")
        out = engine.receive(device, msg)
        self._pacer.answered(device)
        self._pacer.push(out)

    def _reject(self, topic: str, device: str | None, rid: int | None, kind: str, reason: str, size: int) -> None:
        log.warning("rejected input (%s): %s", kind, reason, extra={"device": device, "round": rid})
        self._store().db["rejections"].insert(
            {
                "received_at": self.clock(),
                "topic": topic[:200],
                "device_id": device,
                "round_id": rid,
                "kind": kind,
                "reason": reason[:500],
                "size": size,
            }
        )

    # ------------------------------------------------------------------ outbound

    def _publish(self, topic: str, msg: Any, *, retain: bool = False) -> int:
        assert self.transport is not None
        blob = wire.encode(msg)
        self.transport.publish(topic, blob, retain=retain)
        return len(blob)

    def _publish_end(self, end: RoundEnd) -> None:
        try:
            self._publish(topics.ROUNDS, end, retain=True)
        except TransportError as e:
            log.warning("could not publish the round end: %s", e, extra={"round": end.round_id})

    def _send(self, outbound: list[Outbound], round_id: int | None = None) -> None:
        """Publish to devices (canaries answered in process) and count the bytes against the round
        (``round_id``, else the running round)."""
        rid = self._round_id if round_id is None else round_id
        sent = 0
        for o in outbound:
            if is_canary(o.device_id):
                if self.canaries is not None:
                    self.canaries.deliver(o, self._from_canary)
                continue
            try:
                sent += self._publish(topics.device_in(o.device_id), o.message)
            except TransportError as e:
                # paho keeps the QoS 1 message and may still deliver it; the stage deadline decides.
                log.warning("send failed: %s", e, extra={"device": o.device_id, "round": rid})
        if sent and rid is not None:
            self._store().db.execute(
                "update rounds set bytes_down = coalesce(bytes_down, 0) + ? where round_id = ?", [sent, rid]
            )

    def watch_link(self) -> None:
        """Start a round's watch on the broker link (see :meth:`repeat_after_reconnect`)."""
        self._resends.watch(self.transport.connections if self.transport is not None else 0)

    def repeat_after_reconnect(self) -> None:
        """Once the link dropped and came back, the broker may have lost our session and with it what
        devices sent meanwhile (published to no subscriber) and what we sent them (a crashed broker
        keeps only what it autosaved): repeat this stage's requests to the devices that owe a reply,
        now and then at doubling gaps (:class:`ResendSchedule`) until the round ends. A repeat is
        harmless: a device answers it from its store, and a stored upload is never counted twice."""
        t = self.transport
        if t is None or not self._resends.due(t.connections, t.connected, self.clock()):
            return
        pending = [(self._round_id, self._pacer.resend())]
        if self.buffered is not None:
            pending += self.buffered.resend()
        for rid, sent in pending:
            again = [o for o in sent if not is_canary(o.device_id)]
            if again:
                log.info(
                    "broker link came back: repeating %d requests to devices that owe a reply",
                    len(again),
                    extra={"round": rid},
                )
                self._send(again, round_id=rid)

    def _from_canary(self, canary: str, msg: Any) -> None:
        """A canary's reply goes to the engine as a device's would (it is never stored as an upload)."""
        if self.engine is not None and self._phase == "engine":
            self._pacer.answered(canary)
            self._pacer.push(self.engine.receive(canary, msg))

    def _canaries(self, model: ModelRecord) -> LiveCanaries:
        if self.canaries is None:
            store = self._store()
            self.canaries = LiveCanaries(
                self.config.audit_canaries,
                int(model.weights.size),
                self.config.training.delta,
                authority(store, self.clock),
                self.rng,
            )
            log.info("privacy audit: %d canary pairs (never counted as devices)", self.config.audit_canaries)
        return self.canaries

    def _audit(self, model_delta: np.ndarray | None) -> dict[str, float]:
        """The audit's figures after a round (every round's aggregate seen), for the rounds table."""
        if self.canaries is None:
            return {}
        result = self.canaries.end_round(model_delta)
        if result is None:
            return {}
        log.info(
            "privacy audit after %d rounds: estimate %.3g, %.0f%% lower bound %.3g",
            result.rounds,
            result.all_rounds.epsilon_empirical,
            100 * result.confidence,
            result.all_rounds.epsilon_lower_bound,
        )
        return {
            "epsilon_empirical": result.all_rounds.epsilon_empirical,
            "epsilon_lower_bound": result.all_rounds.epsilon_lower_bound,
        }

    def _certificate(self, device: str) -> bytes:
        if is_canary(device) and self.canaries is not None:
            return self.canaries.certificate(device)
        return certificate(self._store(), device)

    # ------------------------------------------------------------------ helpers

    def _store(self) -> Store:
        if self.store is None:
            raise ConfigError("the coordinator service is not started")
        return self.store

    def _abandon_open_rounds(self) -> list[int]:
        store = self._store()
        ids = []
        for row in store.open_rounds():
            store.finish_round(row["round_id"], "abandoned", RESTARTED, self.clock())
            store.db.execute(
                "update round_members set dropped_at = ? where round_id = ? and dropped_at is null",
                [RESTARTED, row["round_id"]],
            )
            ids.append(row["round_id"])
        return ids

    def _ensure_model(self) -> None:
        store, name = self._store(), self.config.training.model_name
        if store.latest_model(name) is not None:
            return
        trainer = self._trainer()
        store.put_model(f"{name}-0", trainer.initial_weights(), architecture=name, now=self.clock())
        create_release(store, f"{name}-0", clock=self.clock)

    def _trainer(self) -> Any:
        if self._evaluator is None:
            from fedge.agent.training.models import load_spec
            from fedge.agent.training.trainer import Trainer
            from fedge.coordinator.fleet.releases import model_path

            name = self.config.training.model_name  # a zoo model, or a built one imported as a release
            self._evaluator = Trainer(load_spec(model_path(self._store(), name) or name), num_threads=1)
        return self._evaluator

    def _checkin_counts(self, active: set[str], *, since: float) -> str:
        """Who answered a check-in that found too few devices, in counts that add up to the enrolled."""
        c = self._checkins
        answered = {d for d in c if d in active}
        quarantined = answered & self._quarantined_now
        yes = sum(1 for d in answered - quarantined if c[d].eligible)
        parts = [
            f"of {len(active)} enrolled: {yes} answered eligible",
            f"{len(answered) - len(quarantined) - yes} ineligible",
        ]
        if quarantined:
            parts.append(f"{len(quarantined)} quarantined")
        parts.append(f"{len(active) - len(answered)} silent")
        unknown = (
            self._store()
            .db.execute(
                "select count(distinct device_id) from rejections where kind = 'unknown_device' and received_at >= ?",
                [since],
            )
            .fetchone()[0]
        )
        if unknown:
            parts.append(f"and {unknown} unknown devices refused (see rejections)")
        return ", ".join(parts)

    def _checkin_progress(self, rid: int, active: set[str], left: float) -> CheckinProgress:
        c = self._checkins
        return CheckinProgress(
            rid,
            len(active),
            sum(1 for d in c if d in active),
            sum(1 for d, m in c.items() if d in active and m.eligible),
            left,
        )

    def _abandon_early(self, rid: int, model: ModelRecord, reason: str) -> RoundReport:
        store = self._store()
        store.finish_round(rid, "abandoned", reason, self.clock(), stage="abandoned", participants=0)
        self._publish_end(RoundEnd(rid, "abandoned", reason, model.version))
        self._phase, self._round_id = "idle", None
        return self._report(rid, model.version)

    def _finish(self, engine: RoundEngine, event: Any) -> RoundReport:
        store, rid = self._store(), engine.round_id
        outcome = engine.outcome
        assert outcome is not None
        for device, kind in engine.decline_kinds.items():
            if kind is DeclineKind.BUDGET:
                mark_exhausted(store.db, device, clock=self.clock)
        now = self.clock()
        for device, reason in sorted(outcome.flagged.items()):  # e.g. forged shares corrected at unmask
            quarantine(store, device, reason, now=now, round_id=rid)
        dropped = dict(outcome.dropped)
        participants, reason = devices_aggregated(
            outcome.survivors, outcome.participants, outcome.reason, outcome.status is RoundStatus.COMPLETED
        )
        fields: dict[str, Any] = {"participants": participants, "dropped": dropped, "stage": engine.stage}
        model_in = self.current_model()
        version = model_in.version
        if (
            outcome.status is RoundStatus.COMPLETED
            and outcome.new_weights is not None
            and outcome.aggregate is not None
        ):
            version = f"{self.config.training.model_name}-r{rid}"
            # the server optimizer acts on the released mean only (post-processing: DP and SecAgg+ untouched)
            new_weights = self.server_opt.apply(model_in.weights, outcome.aggregate.mean_delta)
            store.save_server_opt_state(self.config.server_opt.kind.value, self.server_opt.state(), rid, now)
            metrics: dict[str, float] = {}
            if self._eval is not None:
                ev = self._trainer().evaluate(new_weights, *self._eval)
                metrics = {"accuracy": ev.accuracy, "loss": ev.loss}
                fields.update(metrics)
            store.put_model(
                version,
                new_weights,
                architecture=self.config.training.model_name,
                parent=model_in.version,
                metrics=metrics,
                produced_by_round=rid,
                now=now,
            )
            fields["model_out"] = version
            create_release(store, version, clock=self.clock)  # every published global model is a signed release
            if self.budget is not None and event is not None:
                try:
                    fields["epsilon"] = self.budget.record_round(rid, event)
                    fields["delta"] = self.budget.delta
                except BudgetExhausted as e:  # checked before the round; only a race could land here
                    self.budget_spent = True
                    log.warning("%s", e, extra={"round": rid})
            if outcome.next_clip_norm is not None:
                fields["next_clip_norm"] = outcome.next_clip_norm
            fields.update(self._audit(outcome.aggregate.mean_delta))
            store.finish_round(rid, "completed", reason, now, **fields)
        else:
            fields.update(self._audit(None))
            store.finish_round(rid, "abandoned", reason, now, **fields)
        members = {d for d in engine.cohort if not is_canary(d)}
        counted = {
            r["device_id"]
            for r in store.db.query(
                "select device_id from round_members where round_id = ? and last_stage not in ('selected')", [rid]
            )
        }
        for d in sorted(members - counted):
            store.db.execute(
                "update round_members set dropped_at = ? where round_id = ? and device_id = ?", [engine.stage, rid, d]
            )
        self._publish_end(RoundEnd(rid, outcome.status.value, outcome.reason, version))
        self.engine, self._phase, self._round_id = None, "idle", None
        self._pacer.clear()
        return self._report(rid, version)

    def _report(self, rid: int, version: str) -> RoundReport:
        report = round_report(self._store().round(rid) or {}, version)
        if self.on_round is not None:
            self.on_round(report)
        return report


@dataclasses.dataclass(frozen=True)
class CheckinProgress:
    """A round's check-in so far: of ``enrolled`` active devices, ``checked_in`` answered, ``eligible`` of
    them may train; ``left_s`` seconds of the window remain (0: it closed)."""

    round_id: int
    enrolled: int
    checked_in: int
    eligible: int
    left_s: float

    def line(self) -> str:
        when = f"{self.left_s:.0f} s left" if self.left_s > 0 else "window closed"
        return (
            f"round {self.round_id}: {self.checked_in}/{self.enrolled} enrolled devices checked in, "
            f"{self.eligible} eligible ({when})"
        )


def checkin_printer(echo: Callable[[str], None]) -> Callable[[CheckinProgress], None]:
    """An ``on_checkin`` for people: a line every few seconds while devices are awaited, and one when
    the window closes with some enrolled devices silent (all answered: nothing to say)."""

    def show(p: CheckinProgress) -> None:
        if p.left_s > 0 or p.checked_in < p.enrolled:
            echo(p.line())

    return show


def round_report(row: dict[str, Any], version: str | None = None) -> RoundReport:
    """A :class:`RoundReport` from a rounds-table row."""
    dropped = json.loads(row.get("dropped") or "{}")
    eps = row.get("epsilon")
    return RoundReport(
        round_id=row.get("round_id", 0),
        status=row.get("status", ""),
        reason=row.get("reason") or "",
        participants=row.get("participants") or 0,
        dropped=int(sum(dropped.values())),
        dropped_by_stage=dropped,
        accuracy=row.get("accuracy"),
        loss=row.get("loss"),
        epsilon=eps if eps is not None and math.isfinite(eps) else None,
        model_version=version or row.get("model_out") or row.get("model_in") or "",
        epsilon_empirical=row.get("epsilon_empirical"),
        epsilon_lower_bound=row.get("epsilon_lower_bound"),
        delta=row.get("delta"),
    )


def serve(service: CoordinatorService) -> list[RoundReport]:
    """Run a service in the foreground: SIGINT/SIGTERM stop it gracefully, a second SIGINT forces exit."""
    with stop_signals(lambda _signum: service.request_stop(), lambda: service.stopping):
        return service.run()
