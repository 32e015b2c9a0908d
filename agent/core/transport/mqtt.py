"""The transport over paho-mqtt (>= 2, callback API version 2): QoS 1, manual acks, TLS.

paho's callbacks run on its network thread, so they only enqueue: received messages go to a
queue that :meth:`MqttTransport.receive` drains on the caller's thread, where chunks are
reassembled and checked. One network thread per transport (``loop_start``). paho's loop uses
``select``, which silently fails for socket numbers of 1,024 and up (paho issues #183, #819):
keep few transports per process; :meth:`connect` warns when the socket number is that high.
A process with many transports (the load test's workers) passes them one shared
:class:`~fedge.agent.core.transport.netloop.NetworkLoop` instead (``network=``): one thread and epoll
for all of them, with the same reconnect backoff, failover, resubscription and acknowledgements.

With ``fallback_urls`` the transport fails over between brokers of one cluster (a bridged
Mosquitto set, or a clustered broker): :meth:`MqttTransport.connect` tries them in order, and after
``failover_after`` failed reconnects to one broker the network thread points the same paho client
at the next one (agent/core/transport/failover.py), so the will, the queued QoS 1 publishes (sent
again to the new broker) and the subscriptions (made again: the new broker has no session) carry over.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import random
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from fedge.agent.core.errors import TransportError
from fedge.agent.core.transport.base import MQTT_311, MQTT_AUTO, Inbound, TransportConfig, endpoint
from fedge.agent.core.transport.chunks import Inbox, split
from fedge.agent.core.transport.failover import Failover
from fedge.agent.core.transport.filters import check_filter, check_topic
from fedge.agent.core.transport.netloop import NetworkLoop

log = logging.getLogger(__name__)
_SELECT_LIMIT = 1024
#: paho's name for CONNACK return code 1 (MQTT 3.1.1) / 0x84 (MQTT 5)
_UNSUPPORTED = "Unsupported protocol version"


class Backoff:
    """Reconnect delays with full jitter ("Exponential Backoff and Jitter", AWS Architecture Blog,
    2015), floored at ``min_s``: the n-th delay after a connection loss is drawn uniformly from
    [min_s, min(max_s, min_s * 2**(n+1))], so it averages paho's min, 2 min, 4 min ... and reaches
    the cap the same way.

    paho's own backoff is the same on every device, so after a broker outage a whole fleet retries
    at the same instants; drawn per client, the retries spread from the first one on. ``rng`` is
    seeded from OS randomness unless a test passes its own.
    """

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError("backoff must satisfy 0 < min <= max")
        self.min_s, self.max_s = float(min_s), float(max_s)
        self._rng = rng or random.Random()
        self._attempt = 0

    def next(self) -> float:
        """The delay before the next attempt."""
        ceiling = min(self.max_s, self.min_s * 2.0 ** min(self._attempt + 1, 64))
        self._attempt += 1
        return self._rng.uniform(self.min_s, ceiling)

    def reset(self) -> None:
        """Connected: the next outage starts again from ``min_s``."""
        self._attempt = 0


class _Client(paho.Client):
    """paho's client with :class:`Backoff` instead of its fixed doubling: each wait sets paho's
    delay bounds to the drawn delay, then waits the way paho does (stopping early on disconnect()).

    ``before_reconnect`` runs first, on the network thread: when it returns True it has pointed the
    client at another broker (``connect_async``), which is tried at once."""

    backoff: Backoff
    before_reconnect: Callable[[paho.Client], bool] | None = None

    #: why the last connection attempt failed before any MQTT (refused, unreachable, TLS)
    connect_error: str | None = None

    #: on a shared :class:`NetworkLoop`: wakes it after a packet was queued (from any thread)
    on_queued: Callable[[], None] | None = None

    def reconnect(self) -> paho.MQTTErrorCode:
        self.connect_error = None
        try:
            return super().reconnect()
        except OSError as e:
            self.connect_error = str(e) or type(e).__name__
            raise

    def reconnect_delay(self) -> float | None:
        """Seconds to wait before the next attempt, or None: ``before_reconnect`` moved the client to
        another broker, try it at once. (A shared :class:`NetworkLoop` asks this; paho's own loop
        waits it in :meth:`_reconnect_wait`.)"""
        if self.before_reconnect is not None and self.before_reconnect(self):
            return None
        delay = self.backoff.next()
        log.debug("reconnecting in %.2f s", delay)
        return delay

    def _reconnect_wait(self) -> None:
        delay = self.reconnect_delay()
        if delay is None:
            return
        with self._reconnect_delay_mutex:
            self._reconnect_min_delay = self._reconnect_max_delay = delay  # type: ignore[assignment]
            self._reconnect_delay = None
        super()._reconnect_wait()

    def _packet_queue(self, *args: Any, **kwargs: Any) -> paho.MQTTErrorCode:
        rc = super()._packet_queue(*args, **kwargs)
        hook = self.on_queued
        if hook is not None:
            hook()
        return rc


class MqttTransport:
    """A :class:`~fedge.agent.core.transport.base.Transport` over a real MQTT broker.

    Its paho client runs on its own network thread, or on ``network`` (a started
    :class:`NetworkLoop` shared with other transports of the process) when one is given.
    """

    def __init__(
        self,
        config: TransportConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        network: NetworkLoop | None = None,
    ) -> None:
        self.config = config
        self._network = network
        #: reconnect delays, drawn for this client (kept across the MQTT 5 -> 3.1.1 fallback)
        self.backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s, rng)
        #: "auto": MQTT 5 first, MQTT 3.1.1 when the broker refuses it or never answers its CONNECT
        self._auto = config.protocol == MQTT_AUTO
        self._will: tuple[str, bytes, bool] | None = None
        self._client = self._new_client(v5=config.protocol != MQTT_311)
        self._raw: queue.SimpleQueue[tuple[str, bytes, bool, bool, tuple[int, int]]] = queue.SimpleQueue()
        self._inbox = Inbox(config, clock)
        self._inbox_lock = threading.Lock()
        self._up = threading.Event()
        self._state_lock = threading.Lock()
        self._generation = 0
        self._refused: str | None = None
        self._failed: dict[int, str] = {}
        self._subacks: dict[int, threading.Event] = {}
        self._resubscribing: set[int] = set()
        self._failed_subs: dict[int, str] = {}
        self._filters: list[str] = []
        self._started = False
        #: which broker of ``config.urls`` is in use, and when to move on (network thread only)
        self._failover = Failover(config.urls, config.failover_after, config.keepalive_s, clock)
        #: fail over while running only after connect() succeeded (it walks the list itself)
        self._armed = False
        self._failed_over = False
        self._last_failure = ""
        self._attempt_failed = threading.Event()
        self._seq = itertools.count()
        self._transfer_prefix = f"{config.client_id[:64]}.{time.time_ns():x}"

    def _new_client(self, *, v5: bool) -> paho.Client:
        config = self.config
        self._v5 = v5
        c = _Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            clean_session=None if v5 else config.clean_start,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            manual_ack=True,
        )
        if config.username is not None:
            c.username_pw_set(config.username, config.password)
        if config.tls:
            c.tls_set(
                ca_certs=config.tls_ca,
                certfile=config.tls_cert,
                keyfile=config.tls_key,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        c.backoff = self.backoff
        c.before_reconnect = self._before_reconnect
        c.max_inflight_messages_set(config.max_inflight)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = self._on_connect_fail
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        if self._will is not None:
            topic, payload, retain = self._will
            c.will_set(topic, payload, qos=1, retain=retain)
        return c

    # ------------------------------------------------------------ lifecycle

    def set_will(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        if self._started:
            raise TransportError("set the will before connect()")
        self._will = (check_topic(topic), bytes(payload), retain)
        self._client.will_set(self._will[0], self._will[1], qos=1, retain=retain)

    def connect(self) -> None:
        """Connect to the first broker of ``config.urls`` that accepts, one attempt each, in order.

        A broker with another after it is left as soon as the attempt fails (refused, unreachable);
        the last one gets the whole ``connect_timeout_s``, as a single broker does.
        """
        cfg = self.config
        urls = cfg.urls
        self._armed = False
        failures: list[str] = []
        for i, url in enumerate(urls):
            self._failover.select(i)
            why = self._connect_current(fail_fast=i + 1 < len(urls))
            if why is not None:
                host, port = endpoint(url)
                failures.append(f"{host}:{port}: {why}")
                continue
            if i:
                log.warning(
                    "%s: broker %s unreachable (%s); connected to %s instead",
                    cfg.client_id,
                    urls[0],
                    failures[0].split(": ", 1)[1],
                    url,
                    extra={"device": cfg.client_id},
                )
            self._armed = True
            sock = self._client.socket()
            if self._network is None and sock is not None and sock.fileno() >= _SELECT_LIMIT:
                log.warning("socket number %d is past select()'s limit; paho may lose this connection", sock.fileno())
            return
        if len(urls) == 1:
            raise TransportError(f"cannot connect {cfg.client_id} to {failures[0]}")
        raise TransportError(f"cannot connect {cfg.client_id} to any of its {len(urls)} brokers: {'; '.join(failures)}")

    def _connect_current(self, *, fail_fast: bool) -> str | None:
        """Connect to the failover's current broker; None when up, else why not."""
        cfg = self.config
        host, port = endpoint(self._failover.current)
        # amqtt never answers an MQTT 5 CONNECT: in auto mode wait for it at most 5 s
        timeout = min(cfg.connect_timeout_s, 5.0) if self._auto else cfg.connect_timeout_s
        why, tcp_up = self._connect_once(timeout, fail_fast=fail_fast)
        if why is not None and self._v5 and (why == _UNSUPPORTED or tcp_up):
            if self._auto:
                # An MQTT 3.1.1-only broker refuses the MQTT 5 CONNECT, or (amqtt) never answers it.
                log.info(
                    "%s: %s:%d %s to MQTT 5; trying MQTT 3.1.1",
                    cfg.client_id,
                    host,
                    port,
                    "refused" if why == _UNSUPPORTED else "did not answer",
                )
                self._client = self._new_client(v5=False)
                why, tcp_up = self._connect_once(cfg.connect_timeout_s, fail_fast=fail_fast)
                if why is not None:
                    why = f"neither MQTT 5 nor MQTT 3.1.1 was accepted ({why})"
            else:
                why = (
                    f"{why}; the broker does not take MQTT 5 (an MQTT 3.1.1-only broker such as the embedded one?): "
                    'set [network] protocol = "3.1.1" or "auto"'
                )
        if why is None and not self._v5 and self._auto:
            log.info("%s: connected to %s:%d with MQTT 3.1.1", cfg.client_id, host, port)
        return why

    def _connect_args(self) -> tuple[int, Any, Properties | None]:
        """keepalive, clean_start and CONNECT properties, for paho's ``connect_async``."""
        cfg = self.config
        props = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0 if cfg.clean_start else cfg.session_expiry_s
            props.ReceiveMaximum = cfg.receive_maximum
        return cfg.keepalive_s, cfg.clean_start if self._v5 else 3, props

    def _connect_once(self, timeout_s: float, *, fail_fast: bool = False) -> tuple[str | None, bool]:
        """One connection attempt: (None, True) when up, else (why, whether TCP was connected).

        paho retries a failed attempt by itself until ``timeout_s``; ``fail_fast`` gives up at the first."""
        host, port = endpoint(self._failover.current)
        keepalive, clean_start, props = self._connect_args()
        self._refused = None
        self._attempt_failed.clear()
        self._client.connect_async(host, port, keepalive, clean_start=clean_start, properties=props)
        if self._network is None:
            self._client.loop_start()
        else:
            self._network.attach(self._client)  # type: ignore[arg-type]
        self._started = True
        deadline = time.monotonic() + timeout_s
        while not self._up.wait(0.05):
            failed = fail_fast and self._attempt_failed.is_set()
            if self._refused is not None or failed or time.monotonic() > deadline:
                if self._refused is not None:
                    why = self._refused
                elif failed:
                    why = f"no connection ({self._last_failure})"
                else:
                    why = f"no acknowledgement within {timeout_s:g} s"
                tcp_up = self._client.socket() is not None
                self._client.disconnect()
                self._stop_loop()
                with contextlib.suppress(Exception):
                    self._client._sock_close()  # a broker that never answered: do not leave it a half-open session
                return why, tcp_up
        return None, True

    def close(self) -> None:
        self._armed = False
        if self._started:
            self._client.disconnect()
            self._stop_loop()

    @property
    def url(self) -> str:
        """The broker in use (or being tried) right now: one of ``config.urls``."""
        return self._failover.current

    @property
    def connections(self) -> int:
        return self._generation

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._up.wait(timeout)

    # ------------------------------------------------------------ messaging

    def subscribe(self, topic_filter: str) -> None:
        check_filter(topic_filter)
        if topic_filter not in self._filters:
            self._filters.append(topic_filter)
        done = threading.Event()
        with self._state_lock:
            rc, mid = self._client.subscribe(topic_filter, **self._sub_options())
            if rc == paho.MQTT_ERR_SUCCESS and mid is not None:
                self._subacks[mid] = done
        if rc == paho.MQTT_ERR_NO_CONN:
            return  # subscribed again on connect
        if rc != paho.MQTT_ERR_SUCCESS:
            raise TransportError(f"subscribe to {topic_filter!r} failed: {paho.error_string(rc)}")
        if not done.wait(self.config.publish_timeout_s):
            raise TransportError(f"subscribe to {topic_filter!r} not acknowledged in time")
        with self._state_lock:
            why = self._failed_subs.pop(mid, None) if mid is not None else None
        if why is not None:
            raise TransportError(f"broker refused subscription to {topic_filter!r}: {why}")

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1; wait for the connection and every PUBACK within ``publish_timeout_s``.

        On TransportError the message may still be delivered later (paho keeps it queued), so
        receivers must tolerate duplicates; a broker refusal (MQTT 5, e.g. ACL) is reported.
        """
        check_topic(topic)
        payload = bytes(payload)
        cfg = self.config
        if len(payload) > cfg.max_payload_bytes:
            raise TransportError(f"payload of {len(payload)} bytes exceeds max_payload_bytes")
        if len(payload) <= cfg.chunk_bytes:
            pieces = [payload]
        else:
            pieces = split(payload, cfg.chunk_bytes, f"{self._transfer_prefix}.{next(self._seq)}")
        deadline = time.monotonic() + cfg.publish_timeout_s
        if not self._up.wait(cfg.publish_timeout_s):
            raise TransportError(f"publish on {topic}: not connected within {cfg.publish_timeout_s:g} s")
        infos = [self._client.publish(topic, p, qos=1, retain=retain) for p in pieces]
        for info in infos:
            if info.rc == paho.MQTT_ERR_NO_CONN:
                # The connection dropped meanwhile: paho keeps the QoS 1 message and sends it after
                # reconnecting, but its info still says NO_CONN; mark it pending and wait for PUBACK.
                info.rc = paho.MQTT_ERR_AGAIN
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (ValueError, RuntimeError) as e:
                raise TransportError(f"publish on {topic} failed: {e}") from None
            if not info.is_published():
                raise TransportError(f"publish on {topic} not acknowledged within {cfg.publish_timeout_s:g} s")
            with self._state_lock:
                why = self._failed.pop(info.mid, None)
            if why is not None:
                raise TransportError(f"broker refused publish on {topic}: {why}")

    def receive(self, timeout: float | None = None) -> Inbound | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                topic, payload, retain, dup, handle = (
                    self._raw.get(timeout=left) if left != 0 else self._raw.get_nowait()
                )
            except queue.Empty:
                return None
            with self._inbox_lock:
                inbound, to_ack = self._inbox.accept(topic, payload, retain=retain, dup=dup, handle=handle)
            self._ack_handles(to_ack)
            if inbound is not None:
                return inbound

    def ack(self, inbound: Inbound) -> None:
        with self._inbox_lock:
            handles = self._inbox.release(inbound)
        self._ack_handles(handles)

    @property
    def dropped(self) -> int:
        """Inputs dropped as bad (malformed, oversized, inconsistent, stale)."""
        return self._inbox.dropped

    # ------------------------------------------------------------ internals

    def _sub_options(self) -> dict[str, Any]:
        if self._v5:
            return {"options": SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)}
        return {"qos": 1}

    def _ack_handles(self, handles: list) -> None:
        for generation, mid in handles:
            # An ack from an earlier connection would hit an unrelated message id: the broker
            # redelivers those messages on the new connection instead.
            if generation == self._generation:
                self._client.ack(mid, 1)

    def _stop_loop(self) -> None:
        if self._network is None:
            self._client.loop_stop()
        else:
            self._network.detach(self._client)  # type: ignore[arg-type]
        self._up.clear()
        self._started = False

    # ------------------------------------------------------------ paho callbacks: enqueue only

    def _on_connect(self, client: paho.Client, _u: Any, flags: Any, rc: ReasonCode, _p: Any) -> None:
        if rc.is_failure:
            self._refused = self._last_failure = str(rc)
            self._failover.failed()
            return
        self._generation += 1
        self.backoff.reset()
        self._failover.up()
        if self._failed_over:
            self._failed_over = False
            log.info("%s: connected to %s", self.config.client_id, self.url, extra={"device": self.config.client_id})
        if flags.session_present or not self._filters:
            self._up.set()
            return
        # The broker forgot us: subscribe again, and count as connected once it confirmed.
        with self._state_lock:
            for f in self._filters:
                sub_rc, mid = client.subscribe(f, **self._sub_options())
                if sub_rc == paho.MQTT_ERR_SUCCESS and mid is not None:
                    self._resubscribing.add(mid)
        if not self._resubscribing:
            self._up.set()

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self._up.clear()
        if rc.is_failure:
            self._last_failure = str(rc)
            self._failover.down()
            log.info("%s lost its broker connection (%s); reconnecting", self.config.client_id, rc)

    def _on_connect_fail(self, client: paho.Client, _u: Any) -> None:
        self._last_failure = getattr(client, "connect_error", None) or "no connection"
        self._failover.failed()
        self._attempt_failed.set()

    def _before_reconnect(self, client: paho.Client) -> bool:
        """Before paho's next reconnect: point ``client`` at the next broker when this one has failed
        ``failover_after`` attempts in a row (then True: try it without waiting)."""
        f, cfg = self._failover, self.config
        if not self._armed or not f.due():
            f.begin()
            return False
        left, to = f.advance()
        log.warning(
            "%s: broker %s unreachable (%d failed attempts, last: %s); failing over to %s",
            cfg.client_id,
            left,
            cfg.failover_after,
            self._last_failure,
            to,
            extra={"device": cfg.client_id},
        )
        host, port = endpoint(to)
        keepalive, clean_start, props = self._connect_args()
        client.connect_async(host, port, keepalive, clean_start=clean_start, properties=props)
        self.backoff.reset()
        self._failed_over = True
        return True

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
        self._raw.put((msg.topic, payload, bool(msg.retain), bool(msg.dup), (self._generation, msg.mid)))

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        if rc.is_failure:
            with self._state_lock:
                self._failed[mid] = str(rc)

    def _on_subscribe(self, _c: paho.Client, _u: Any, mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        with self._state_lock:
            bad = [str(rc) for rc in rcs if rc.is_failure]
            if bad:
                self._failed_subs[mid] = ", ".join(bad)
            done = self._subacks.pop(mid, None)
            if mid in self._resubscribing:
                self._resubscribing.discard(mid)
                if not self._resubscribing:
                    self._up.set()
        if done is not None:
            done.set()
