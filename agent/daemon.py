"""The agent daemon: startup, an event-driven main loop, and a bounded graceful shutdown.

The main thread waits on the transport's queue with a timeout taken from the next thing that is
due (an outbox retry, a round's expiry), or with no timeout at all when nothing is: idle between
rounds it uses no CPU. SIGTERM and SIGINT ask for a graceful stop (training aborts at the next
step and declines, the outbox stays on disk); a second SIGINT forces the exit. Every reply goes
through the outbox (put, publish, delete after PUBACK), so a restart re-sends what was promised
and never trains twice for a round: a round that was in progress when the agent stopped is
dropped (its SecAgg+ secrets were only in memory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fedge.agent import eligibility as elig
from fedge.agent import identity as ident
from fedge.agent.config import AgentConfig
from fedge.agent.core import topics, wire
from fedge.agent.core.errors import (
    BudgetExhausted,
    ConfigError,
    FedgeError,
    ProtocolError,
    TrainingError,
    TransportError,
    WireError,
)
from fedge.agent.core.lifecycle import stop_signals
from fedge.agent.core.messages.device import DeviceStatus
from fedge.agent.core.messages.rounds import (
    CheckIn,
    Decline,
    DeclineKind,
    RoundAnnounce,
    RoundEnd,
    RoundPlan,
    Task,
    Trained,
)
from fedge.agent.core.privacy.ledger import Contribution, DeviceLedger
from fedge.agent.core.privacy.rng import os_generator
from fedge.agent.core.secagg.params import supported_suites
from fedge.agent.core.transport import Inbound, Transport, TransportConfig, open_transport
from fedge.agent.model_cache import ModelCache
from fedge.agent.outbox import Outbox
from fedge.agent.participant import LocalResult, Participant
from fedge.agent.releases import FLEET_COMMANDS, LocalEvaluator, ReleaseManager, outbox_key
from fedge.agent.replies import Answered, Replies, Reply
from fedge.agent.round_state import RoundStates, RoundStatus
from fedge.agent.store import Store, is_corruption

log = logging.getLogger(__name__)

#: Wire types whose sending spends privacy budget: the device's (noised) update leaves it.
UPLOAD_STAGES = frozenset({"round.plain_update", "secagg.masked_input"})
#: A SecAgg+ round is forgotten this many training deadlines after its task if no RoundEnd came.
ROUND_EXPIRY_DEADLINES = 4.0
_MAX_RETRY_S = 60.0
#: a measured offset from the coordinator's clock above this is worth a WARNING (deadlines are
#: read as durations, so it costs nothing until something still compares wall clocks)
SKEW_WARN_S = 60.0
#: a round missed with a measured offset above this is blamed on the clock (WARNING with the offset)
SKEW_MISS_S = 1.0


class _Wakeup(Exception):
    """Raised by the signal handler to leave a blocking wait; never escapes the daemon."""


class _ForceExit(BaseException):
    """A second Ctrl-C: leave now, skipping the graceful steps (the outbox is on disk anyway)."""


def contribution_for(round_id: int, plan: RoundPlan, dimension: int) -> Contribution:
    """The device-level privacy event of sending this round's update, as the plan privatizes it."""
    z, offset = plan.privacy.noise_multiplier, 0.0
    if plan.privacy.mode in ("local", "distributed"):
        from fedge.agent.core.privacy.discrete import accounted_noise
        from fedge.agent.core.update import noise_plan

        # both modes noise on the integer grid: the z the coordinator accounts (rounding-inflated
        # sensitivity, and with adaptive clipping the total of the update and clip-bit queries) and
        # its RDP offset, from the same noise_plan (coordinator/rounds/builder.round_event)
        z, offset = accounted_noise(plan.privacy, noise_plan(plan, dimension))
    return Contribution(
        round_id,
        plan.privacy.mode,
        z if plan.privacy.mode != "off" else 0.0,
        plan.privacy.clip_norm,
        plan.sampling_rate,
        plan.privacy.delta,
        offset,
    )


class AgentDaemon:
    """One device's long-running process: ``serve()`` = ``startup()``, ``run()``, ``shutdown()``."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        transport_factory: Callable[[TransportConfig], Transport] = open_transport,
        check_eligibility: Callable[[], elig.Eligibility] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.config = config
        self.profile = config.profile
        self._transport_factory = transport_factory
        self._check_eligibility = check_eligibility or (
            lambda: elig.check(self.profile.eligibility, loadavg_path=config.loadavg_path)
        )
        self._clock = clock
        self._mono = monotonic
        self._rng = rng if rng is not None else os_generator()
        self.should_exit = False
        self._waiting = False
        self.device_id: str = ""
        self.store: Store | None = None
        self.transport: Transport | None = None
        self._connected = False
        self._retry_at: float | None = None
        self._retry_delay = config.retry_s
        self._participant: Participant | None = None
        self._round_expiry: float | None = None
        self._trainer: Any = None
        self._data: tuple[np.ndarray, np.ndarray] | None = None
        self._abort_reason = ""
        self._last_check = 0.0
        self._last_status: tuple[str, ...] | None = None
        #: random per process: a clone of this device (same identity and store) has another one
        self.session = secrets.token_hex(8)
        #: coordinator clock minus this device's, measured from the last live announcement (None: not yet)
        self.clock_offset: float | None = None
        self._reannounced: set[int] = set()  # round ids announced again after they ended here (warned once)
        self._skew_warned = False
        #: buffered mode: training task id -> (its task, what training produced), kept in memory until
        #: the group task that aggregates it (lost on restart: that group task is then declined)
        self._held: dict[int, tuple[Task, LocalResult]] = {}

    # ------------------------------------------------------------------ lifecycle

    def serve(self, *, started: bool = False) -> int:
        """Start (unless ``started``), loop until asked to stop, stop; returns the exit code (0: clean stop)."""
        if not started:
            self.startup()
        code = 0
        try:
            with self.captured_signals():
                try:
                    self.run()
                finally:
                    if not self.should_exit:
                        self.should_exit = True
                    self.shutdown()
        except _ForceExit:
            log.warning("forced exit", extra={"device": self.device_id})
            self._close_store()
            code = 130
        return code

    def startup(self) -> None:
        """Open the store, identity and data; connect (a broker that is down is retried by run()).
        The store is checked when it opens; a corrupt page read here still is its StoreError (exit 78)."""
        self.store = Store(self.config.db_path)
        try:
            self._start(self.store)
        except sqlite3.DatabaseError as e:
            if not is_corruption(e):
                raise
            raise self.store.error(e) from e

    def _start(self, store: Store) -> None:
        cfg = self.config
        db = store.db
        self.device_id = cfg.device_id or ident.stored_device_id(db) or ""
        if not self.device_id:
            raise ConfigError("no device id: pass --device-id or run `fedge-agent init` first")
        self.identity = ident.load_or_create(db, self.device_id)
        self.authority = bytes.fromhex(cfg.authority_hex) if cfg.authority_hex else ident.stored_authority(db)
        self.outbox = Outbox(db, clock=self._clock)
        self.rounds = RoundStates(db, clock=self._clock)
        self.replies = Replies(db)
        self.models = ModelCache(db, clock=self._clock)
        self.ledger = DeviceLedger(db, clock=self._clock)
        models_dir = self._models_dir()
        compute = self.profile.compute
        self.releases = ReleaseManager(
            db,
            self.device_id,
            clock=self._clock,
            models_dir=models_dir,
            evaluator=LocalEvaluator(store, compute.threads, models_dir=models_dir),
            memory_cap_mb=compute.memory_mb,
            batch_size=compute.batch_size,
            num_threads=compute.threads,
        )
        self._extra = {"device": self.device_id}
        for rid in self.rounds.drop_unfinished():
            log.warning(
                "dropped out of round %d: the agent restarted mid-round", rid, extra=self._extra | {"round": rid}
            )
        self._load_data()
        self.transport = self._transport_factory(cfg.transport(self.device_id))
        self.transport.set_will(topics.device_status(self.device_id), self._status(False, ("offline",)))
        log.info(
            "agent started: %d examples, %d messages in the outbox",
            len(self._data[1]),
            len(self.outbox),
            extra=self._extra,
        )
        self._connect()

    def run(self) -> None:
        """The main loop: wait for the next message or the next due time; never busy-polls."""
        while not self.should_exit:
            inbound = self._wait(self._timeout())
            if inbound is not None:
                self._dispatch(inbound)
            self._on_due()

    def shutdown(self) -> None:
        """Bounded graceful stop: say offline, disconnect (no will), close the store."""
        if self.transport is not None:
            if self._connected and self.transport.connected:
                with contextlib.suppress(TransportError):
                    self.transport.publish(
                        topics.device_status(self.device_id), self._status(False, ("stopped",)), retain=True
                    )
            with contextlib.suppress(Exception):
                self.transport.close()
            self.transport = None
        self._close_store()
        log.info("agent stopped", extra=self._extra if self.device_id else None)

    def request_stop(self) -> None:
        """Ask the loop to stop (from a signal handler or another thread)."""
        self.should_exit = True

    def captured_signals(self) -> contextlib.AbstractContextManager[None]:
        """Handle SIGINT/SIGTERM while serving (:func:`~fedge.agent.core.lifecycle.stop_signals`):
        the first asks to stop and wakes a blocking wait, a second SIGINT forces the exit."""
        return stop_signals(self._on_stop_signal, lambda: self.should_exit, _ForceExit)

    def _on_stop_signal(self, _signum: int) -> None:
        self.should_exit = True
        if self._waiting:
            raise _Wakeup()

    def _close_store(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    # ------------------------------------------------------------------ waiting

    def _timeout(self) -> float | None:
        """Seconds until the next due thing, None when nothing is due (wait for a message)."""
        due = [t for t in (self._retry_at, self._round_expiry) if t is not None]
        if not due:
            return None
        return max(0.0, min(due) - self._mono())

    def _wait(self, timeout: float | None) -> Inbound | None:
        """Block on the transport (or sleep while disconnected); a stop signal interrupts either."""
        assert self.transport is not None
        try:
            self._waiting = True
            if self.should_exit:
                return None
            if not self._connected:
                time.sleep(timeout if timeout is not None else self._retry_delay)
                return None
            return self.transport.receive(timeout)
        except _Wakeup:
            return None
        finally:
            self._waiting = False

    def _on_due(self) -> None:
        now = self._mono()
        if self._round_expiry is not None and now >= self._round_expiry:
            self._expire_round()
        if self._retry_at is not None and now >= self._retry_at and not self.should_exit:
            self._retry_at = None
            if not self._connected:
                self._connect()
            else:
                self._flush()

    def _schedule_retry(self) -> None:
        self._retry_at = self._mono() + self._retry_delay
        self._retry_delay = min(_MAX_RETRY_S, self._retry_delay * 2)

    # ------------------------------------------------------------------ broker

    def _connect(self) -> None:
        assert self.transport is not None
        t = self.transport
        try:
            if not t.connected:
                t.connect()
            for f in (
                topics.device_in(self.device_id),
                topics.ROUNDS,
                topics.COORDINATOR_STATUS,
                topics.RELEASE_KEYS + "/#",
            ):
                t.subscribe(f)
        except TransportError as e:
            self._connected = False
            log.warning("broker unreachable (%s); retrying in %.0f s", e, self._retry_delay, extra=self._extra)
            self._schedule_retry()
            return
        self._connected = True
        log.info("connected to %s", t.url, extra=self._extra)
        self._publish_status()
        self._flush()

    def _publish_status(self, e: elig.Eligibility | None = None) -> None:
        """Retained status; re-published when eligibility changes (checked at each announcement)."""
        e = e or self._check_eligibility()
        self._last_status = e.reasons
        with contextlib.suppress(TransportError):
            assert self.transport is not None
            self.transport.publish(
                topics.device_status(self.device_id), self._status(e.eligible, e.reasons), retain=True
            )

    def _status(self, online: bool, reasons: tuple[str, ...]) -> bytes:
        return wire.encode(DeviceStatus(self.device_id, online, online and not reasons, tuple(reasons)))

    def _flush(self) -> None:
        """Send the outbox in order; on failure keep the rest and retry later (with backoff)."""
        if not len(self.outbox):
            self._retry_delay = self.config.retry_s
            return
        assert self.transport is not None
        try:
            n = self.outbox.flush(self.transport.publish)
        except TransportError as e:
            log.warning("upload failed (%s); %d message(s) kept for retry", e, len(self.outbox), extra=self._extra)
            self._schedule_retry()
            return
        self._retry_delay = self.config.retry_s
        if n:
            log.debug("outbox flushed: %d sent", n, extra=self._extra)

    def _send(self, round_id: int, msg: Any, payload: bytes | None = None) -> None:
        """Put a reply in the outbox (budget recorded with an upload), then flush in order."""
        stage = wire.type_name(msg)
        payload = wire.encode(msg) if payload is None else payload
        if stage in UPLOAD_STAGES and self._participant is not None and self._participant.task is not None:
            task = self._participant.task
            with contextlib.suppress(ProtocolError):  # already recorded for this round
                self.ledger.record(contribution_for(round_id, task.plan, task.weights.size))
        self.outbox.put(round_id, stage, topics.device_out(self.device_id), payload)
        if stage in UPLOAD_STAGES:
            self.rounds.set(round_id, stage, RoundStatus.UPLOADED)
        elif stage == "round.decline":
            self.rounds.set(round_id, stage, RoundStatus.DECLINED)
        if self._retry_at is None:
            self._flush()

    # ------------------------------------------------------------------ messages

    def _dispatch(self, inbound: Inbound) -> None:
        assert self.transport is not None
        try:
            msg = wire.decode(inbound.payload, max_bytes=self.profile.network.max_payload_bytes)
            if inbound.topic == topics.ROUNDS:
                if isinstance(msg, RoundAnnounce):
                    self._on_announce(msg, retained=inbound.retain)
                elif isinstance(msg, RoundEnd):
                    self._on_end(msg)
            elif inbound.topic == topics.device_in(self.device_id):
                if isinstance(msg, FLEET_COMMANDS):
                    self._on_fleet(msg)
                else:
                    self._on_request(msg, inbound.payload)
            elif inbound.topic.startswith(topics.RELEASE_KEYS + "/"):
                self._on_fleet(msg)
            elif inbound.topic == topics.COORDINATOR_STATUS:
                log.debug("coordinator status: %r", msg, extra=self._extra)
        except (WireError, ProtocolError) as e:
            log.warning("ignored a message on %s: %s", inbound.topic, e, extra=self._extra)
        except FedgeError as e:  # e.g. a SecAgg+ check failed: that round is over for us, the daemon is not
            log.warning("message on %s failed: %s: %s", inbound.topic, type(e).__name__, e, extra=self._extra)
        # acknowledged only once its consequences (replies, state) are committed to the store
        self.transport.ack(inbound)

    def _on_fleet(self, msg: Any) -> None:
        """Release install / rollback / pin / key rotation (agent.releases); reports go through the outbox.
        A new current release of another architecture is trained from then on."""
        for report in self.releases.handle(msg):
            self.outbox.put(-1, outbox_key(report), topics.device_out(self.device_id), wire.encode(report))
        self._refresh_model()

    def _refresh_model(self) -> None:
        """Between rounds, switch to the current release's architecture if it changed."""
        if self._participant is None and self._active_model() != self.spec.path:
            self._load_data()
            self._trainer = None
            log.info("now training model %s", self.spec.name, extra=self._extra)
        if self._retry_at is None:
            self._flush()

    def _measure_skew(self, a: RoundAnnounce, now: float) -> None:
        """A live announcement (not a retained copy) carries the coordinator's clock at sending."""
        self.clock_offset = a.sent_at - now
        if abs(self.clock_offset) > SKEW_WARN_S and not self._skew_warned:
            self._skew_warned = True
            log.warning(
                "this device's clock is %+.1f s off the coordinator's (measured); deadlines are read as durations "
                "from receipt",
                -self.clock_offset,
                extra=self._extra | {"skew_s": -self.clock_offset},
            )

    def _missed_checkin(self, a: RoundAnnounce, now: float, retained: bool) -> bool:
        """Whether the check-in window is over, read so that a skewed clock cannot misread it."""
        window = a.window_s
        if window is None:  # an older coordinator: only its wall-clock deadline
            return a.checkin_deadline < now
        if not retained:  # just published: the whole window is ahead
            return window <= 0
        if self.clock_offset is not None:  # a retained copy: its deadline on the coordinator's clock
            return a.checkin_deadline < now + self.clock_offset
        return False  # nothing measured yet: check in, the coordinator refuses a late check-in

    def _on_announce(self, a: RoundAnnounce, *, retained: bool = False) -> None:
        extra = self._extra | {"round": a.round_id}
        seen = self.rounds.get(a.round_id)
        if seen is not None:  # already answered (a retained announcement seen again, or a redelivery)
            if not retained and seen.status is RoundStatus.ENDED and a.round_id not in self._reannounced:
                # a fresh announcement of a round that ended here: a coordinator on a new store restarts
                # its round ids, and this device sits out every id it has used; say so once per id
                self._reannounced.add(a.round_id)
                log.warning(
                    "round %d announced again, but this device took part in a round %d that ended; ignored "
                    "(a coordinator started on a new store reuses round ids)",
                    a.round_id,
                    a.round_id,
                    extra=extra,
                )
            return
        self._refresh_model()
        now = self._clock()
        if a.sent_at > 0 and not retained:
            self._measure_skew(a, now)
        if self._missed_checkin(a, now, retained):
            self.rounds.set(a.round_id, "announce", RoundStatus.INELIGIBLE)
            off = self.clock_offset
            if off is not None and abs(off) > SKEW_MISS_S:
                log.warning(
                    "announcement missed its check-in deadline; this device's clock is %+.1f s off the "
                    "coordinator's (measured)",
                    -off,
                    extra=extra | {"skew_s": -off},
                )
            else:
                log.info("announcement missed its check-in deadline", extra=extra)
            return
        e = self._check_eligibility()
        if e.reasons != self._last_status:
            self._publish_status(e)
        reasons = list(e.reasons)
        if a.model_name != self._model_name():
            reasons.append(f"model {a.model_name!r} is not this device's {self._model_name()!r}")
        if not len(self._data[1]):
            reasons.append("no local training data")
        if self.profile.privacy.mode != "off":
            p = self.profile.privacy
            projected = Contribution(a.round_id, p.mode, p.noise_multiplier, p.clip_norm, 1.0, p.delta)
            try:
                self.ledger.check_can_contribute(p.epsilon_budget, projected)
            except BudgetExhausted as err:
                reasons.append(str(err))
        eligible = not reasons
        self.rounds.set(a.round_id, "checkin", RoundStatus.CHECKED_IN if eligible else RoundStatus.INELIGIBLE)
        log.info("check-in: %s", "eligible" if eligible else "; ".join(reasons), extra=extra)
        self._send(
            a.round_id,
            CheckIn(
                self.device_id,
                a.round_id,
                self.profile.device.class_,
                self.models.latest_version() or a.model_version,
                eligible,
                int(len(self._data[1])),
                float(self.ledger.epsilon_spent(self.profile.privacy.delta)),
                self.session,
                secagg_suites=supported_suites(self.profile.secagg.require_suite),
            ),
        )

    def _on_request(self, msg: Any, payload: bytes) -> None:
        """A Task or stage request: answered once; a repeat gets the stored answer and changes nothing."""
        rid = getattr(msg, "round_id", None)
        if not isinstance(rid, int):
            raise ProtocolError(f"{type(msg).__name__} is not a round request")
        request = wire.type_name(msg)
        seen = self.replies.get(rid, request)
        if seen is not None:
            self._repeat(rid, request, seen, payload)
            return
        out = self._on_task(msg) if isinstance(msg, Task) else self._on_stage(msg)
        encoded = [Reply(wire.type_name(r), wire.encode(r)) for r in out]
        self.replies.put(rid, request, payload, encoded)  # before the outbox: a repeat after a crash still finds it
        for reply, blob in zip(out, encoded):
            self._send(rid, reply, blob.payload)
        if isinstance(msg, Task) and self._participant is not None and self._participant.round_id == rid:
            self._after_task(msg, out)

    def _repeat(self, rid: int, request: str, seen: Answered, payload: bytes) -> None:
        extra = self._extra | {"round": rid}
        if not seen.matches(payload):
            log.warning("a different %s for round %d than the one answered; ignored", request, rid, extra=extra)
            return
        log.info(
            "%s for round %d again: %d stored repl%s sent again",
            request,
            rid,
            len(seen.replies),
            "y" if len(seen.replies) == 1 else "ies",
            extra=extra,
        )
        for r in seen.replies:
            self.outbox.put(rid, r.stage, topics.device_out(self.device_id), r.payload)
        if seen.replies and self._retry_at is None:
            self._flush()

    def _on_task(self, task: Task) -> list[Any]:
        rid = task.round_id
        extra = self._extra | {"round": rid}
        rec = self.rounds.get(rid)
        if rec is not None and rec.status in (
            RoundStatus.DROPPED,
            RoundStatus.UPLOADED,
            RoundStatus.DECLINED,
            RoundStatus.ENDED,
            RoundStatus.TRAINING,
        ):
            log.info("task for a round already %s; not training again", rec.status, extra=extra)
            if rec.status is RoundStatus.DROPPED and rec.stage not in UPLOAD_STAGES and rec.stage != "round.decline":
                return [Decline(rid, self.device_id, "the agent restarted during the round", DeclineKind.RESTARTED)]
            return []
        if task.holds_update:
            return self._train_and_hold(task)
        train: Any = self._train
        if task.trained_in:  # a buffered group task: aggregate the delta kept from that training task
            held = self._held.pop(task.trained_in, None)
            if held is None:
                self.rounds.set(rid, "task", RoundStatus.DECLINED)
                return [
                    Decline(
                        rid,
                        self.device_id,
                        f"no kept update from training task {task.trained_in}",
                        DeclineKind.RESTARTED,
                    )
                ]
            task = dataclasses.replace(task, weights=held[0].weights)  # the dimension the update has
            train = lambda _task, local=held[1]: local  # noqa: E731
        factory = directory = None
        if task.plan.secagg and self.authority is not None:
            from fedge.agent.secure import PeerDirectory, secagg_factory

            directory = PeerDirectory(self.authority)
            factory = secagg_factory(
                self.device_id, self.identity, directory, require_suite=self.profile.secagg.require_suite
            )
        self._participant = Participant(
            self.device_id, train, self._rng, factory, peers=directory, staleness_weight=task.staleness_weight
        )
        self.rounds.set(rid, "task", RoundStatus.TRAINING)
        return self._participant.handle(task)

    def _train_and_hold(self, task: Task) -> list[Any]:
        """A buffered training task: train on the newest model, keep the delta, say so (no update leaves)."""
        rid = task.round_id
        self._held.clear()  # the coordinator gives a new training task only once the last one is settled
        self.rounds.set(rid, "task", RoundStatus.TRAINING)
        try:
            local = self._train(task)
        except BudgetExhausted as e:
            self.rounds.set(rid, "task", RoundStatus.DECLINED)
            return [Decline(rid, self.device_id, f"budget: {e}", DeclineKind.BUDGET)]
        except FedgeError as e:
            log.warning("declining: %s", e, extra=self._extra | {"round": rid})
            self.rounds.set(rid, "task", RoundStatus.DECLINED)
            return [Decline(rid, self.device_id, str(e))]
        self._held[rid] = (task, local)
        self.rounds.set(rid, "round.trained", RoundStatus.ENDED)
        return [Trained(rid, self.device_id, task.base_version, local.num_examples)]

    def _after_task(self, task: Task, replies: list[Any]) -> None:
        """Once the task's replies are in the outbox: keep the participant only for SecAgg+ stages."""
        if not task.plan.secagg or any(isinstance(r, Decline) for r in replies):
            self._participant = None
            self._round_expiry = None
        else:
            self._round_expiry = self._mono() + ROUND_EXPIRY_DEADLINES * task.plan.deadline_s

    def _on_stage(self, msg: Any) -> list[Any]:
        p = self._participant
        rid = getattr(msg, "round_id", None)
        if p is None or rid != p.round_id:
            raise ProtocolError(f"{type(msg).__name__} for a round this device is not in")
        try:
            replies = p.handle(msg)
        except ProtocolError:
            raise
        except FedgeError:
            self.rounds.set(rid, wire.type_name(msg), RoundStatus.DROPPED)
            self._participant = None
            self._round_expiry = None
            raise
        return replies

    def _on_end(self, end: RoundEnd) -> None:
        self.replies.prune()
        rec = self.rounds.get(end.round_id)
        if rec is not None and rec.status is not RoundStatus.ENDED:
            self.rounds.set(end.round_id, rec.stage, RoundStatus.ENDED)
        if self._participant is not None and self._participant.round_id == end.round_id:
            self._participant = None
            self._round_expiry = None

    def _expire_round(self) -> None:
        p = self._participant
        if p is not None and p.round_id is not None:
            log.warning("round expired without an end; forgetting it", extra=self._extra | {"round": p.round_id})
            self.rounds.set(p.round_id, "expired", RoundStatus.DROPPED)
        self._participant = None
        self._round_expiry = None

    # ------------------------------------------------------------------ training

    def _models_dir(self) -> Any:
        from pathlib import Path

        return Path(self.config.db_path).resolve().parent / "models"

    def _active_model(self) -> Any:
        """The model file this device trains: the current release's own (a built model that came
        with it) or else the zoo model its profile names."""
        from fedge.agent.training.models import load_spec

        try:
            cur = self.releases.current()
        except FedgeError:
            cur = None
        path = self.releases.model_path(cur) if cur is not None else None
        return path if path is not None else load_spec(self.profile.model.name).path

    def _model_name(self) -> str:
        return self.spec.name

    def _load_data(self) -> None:
        from fedge.agent.training.models import load_spec

        spec = load_spec(self._active_model())
        if self.config.data_path:
            from fedge.agent.local_data import read_examples

            x, y = read_examples(self.config.data_path, spec)
        else:
            from fedge.agent.local_data import load_examples

            x, y = load_examples(self.store, "train", spec)
        # model and data change together: a failure leaves the daemon on what it had
        self.spec, self._data = spec, (x, y.astype(np.int32))

    def _should_abort(self) -> bool:
        """Checked before every training step: a stop request, or eligibility lost (re-read every recheck_s)."""
        if self.should_exit:
            self._abort_reason = "the agent is stopping"
            return True
        now = self._mono()
        if now - self._last_check < self.config.recheck_s:
            return False
        self._last_check = now
        e = self._check_eligibility()
        if not e.eligible:
            self._abort_reason = "no longer eligible: " + "; ".join(e.reasons)
            return True
        return False

    def _train(self, task: Task) -> LocalResult:
        """The Participant's train function: budget and eligibility first, then TFLite under the profile's limits."""
        plan = task.plan
        if plan.model_name != self._model_name():
            raise TrainingError(f"model {plan.model_name!r} is not this device's {self._model_name()!r}")
        if self.profile.privacy.mode != "off":
            self.ledger.check_can_contribute(
                self.profile.privacy.epsilon_budget, contribution_for(task.round_id, plan, task.weights.size)
            )
        e = self._check_eligibility()
        if not e.eligible:
            raise TrainingError("not eligible: " + "; ".join(e.reasons))
        self.models.put(plan.model_version, task.weights)
        if self._trainer is None:
            from fedge.agent.training.trainer import Trainer

            self._trainer = Trainer(self.spec, num_threads=self.profile.compute.threads)
        x, y = self._data
        self._last_check = self._mono()
        r = self._trainer.train(
            task.weights,
            x,
            y,
            epochs=plan.training.epochs,
            batch_size=plan.training.batch_size,
            learning_rate=plan.training.learning_rate,
            rng=self._rng,
            max_seconds=min(self.profile.compute.max_train_seconds, plan.deadline_s),
            should_abort=self._should_abort,
            clock=self._mono,
            prox_mu=plan.training.prox_mu,
        )
        if r.stopped == "aborted":
            raise TrainingError(f"training aborted: {self._abort_reason}")
        if r.steps == 0:
            raise TrainingError("no training step fitted in the time allowed")
        log.info(
            "trained %d steps (%.2f epochs, loss %.4f%s)",
            r.steps,
            r.epochs,
            r.loss,
            f", stopped: {r.stopped}" if r.stopped else "",
            extra=self._extra | {"round": task.round_id},
        )
        return LocalResult(r.delta, r.num_examples, r.loss)
