"""Reconnect backoff with jitter: a fleet does not reconnect in lockstep after a broker outage."""

from __future__ import annotations

import itertools
import random
import statistics
import threading

import pytest

from fedge.agent.core.errors import TransportError
from fedge.agent.core.transport.base import TransportConfig
from fedge.agent.core.transport.mqtt import Backoff, MqttTransport
from fedge.agent.core.transport.netloop import NetworkLoop
from fedge.coordinator.service.broker import free_port

FLEET = 1000
ATTEMPTS = 8


def _paho_sequence(min_s: float, max_s: float, n: int) -> list[float]:
    """paho's own reconnect_delay_set: min, 2 min, 4 min ... capped; the same on every client."""
    out, d = [], None
    for _ in range(n):
        d = min_s if d is None else min(d * 2, max_s)
        out.append(d)
    return out


def _fleet(seed: int = 7) -> list[list[float]]:
    master = random.Random(seed)
    fleet = []
    for _ in range(FLEET):
        b = Backoff(1, 60, random.Random(master.getrandbits(64)))
        fleet.append([b.next() for _ in range(ATTEMPTS)])
    return fleet


def test_reconnect_instants_spread_across_the_fleet_from_the_first_retry() -> None:
    fleet = _fleet()
    # without jitter every device retries at the same instants: 1, 3, 7 ... s after the outage
    paho = list(itertools.accumulate(_paho_sequence(1, 60, ATTEMPTS)))
    assert paho[:3] == [1, 3, 7]
    busiest = []
    for attempt in range(ATTEMPTS):
        delays = [seq[attempt] for seq in fleet]
        assert all(1.0 <= d <= 60.0 for d in delays)
        # the attempt's instants (time since the outage): how many devices share the busiest 100 ms
        buckets: dict[int, int] = {}
        for seq in fleet:
            t = int(sum(seq[: attempt + 1]) * 10)
            buckets[t] = buckets.get(t, 0) + 1
        busiest.append(max(buckets.values()))
    # measured with this seed: 118, 51, 25, 18, 8, 10, 5, 7 of 1000 (paho: 1000 every time)
    assert busiest[0] <= 0.15 * FLEET and all(b <= 0.06 * FLEET for b in busiest[1:]), busiest
    assert max(busiest[4:]) * 10 < busiest[0]  # and they spread further as the retries go on
    # the first retry is uniform on [1, 2] s: mean 1.5, sd 1/sqrt(12) = 0.289
    first = [seq[0] for seq in fleet]
    assert statistics.mean(first) == pytest.approx(1.5, abs=0.03)
    assert statistics.stdev(first) == pytest.approx(0.289, abs=0.015)


def test_delays_grow_reach_the_cap_and_restart_after_a_connection() -> None:
    b = Backoff(1, 60, random.Random(1))
    seq = [b.next() for _ in range(40)]
    assert 50 < max(seq) <= 60.0 and min(seq) >= 1.0  # capped, and it gets near the cap
    assert statistics.mean(seq[:3]) < 5 < 15 < statistics.mean(seq[-20:])  # about 30.5 past the cap
    b.reset()
    assert b.next() <= 2.0


def test_the_same_seed_reproduces_the_sequence() -> None:
    a = Backoff(1, 60, random.Random(42))
    b = Backoff(1, 60, random.Random(42))
    assert [a.next() for _ in range(10)] == [b.next() for _ in range(10)]
    with pytest.raises(ValueError):
        Backoff(0, 10)


def test_the_paho_client_waits_the_drawn_delays(network: NetworkLoop | None) -> None:
    # nobody listens on the port: the network thread (paho's, or the shared loop) retries, asking
    # our backoff each time
    cfg = TransportConfig(f"mqtt://127.0.0.1:{free_port()}", "x", protocol="5", connect_timeout_s=2.5)
    t = MqttTransport(cfg, network=network)
    drawn: list[float] = []
    seen = threading.Event()

    class Recording(Backoff):
        def next(self) -> float:
            drawn.append(0.2)
            seen.set()
            return 0.2

    t.backoff = t._client.backoff = Recording(1, 60)  # type: ignore[attr-defined]
    with pytest.raises(TransportError):
        t.connect()
    assert seen.is_set() and len(drawn) >= 3  # 0.2 s waits within 2.5 s, not paho's 1 + 2 s
