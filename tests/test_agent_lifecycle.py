"""The daemon's lifecycle driven directly in this process: signals are captured and restored,
SIGTERM wakes the idle loop (which waits with no timeout) and stops it cleanly, a second SIGINT
forces the exit, and a broker that is down at startup is retried instead of failing."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from fedge.agent.config import resolve
from fedge.agent.daemon import AgentDaemon, _ForceExit, _Wakeup
from tests.agent_fixtures import FakeSysfs, digits_npz, write_profile
from tests.mqtt_fixtures import needs_mosquitto


def _daemon(tmp_path, broker_url: str, **kw) -> AgentDaemon:
    fs = FakeSysfs(tmp_path / "sys")
    profile = write_profile(tmp_path / "p.toml", broker_url, tmp_path / "agent.db", fs)
    cfg = resolve(profile, device_id="dev-life", data_path=str(digits_npz(tmp_path / "d.npz", n=50)), **kw)
    return AgentDaemon(cfg)


def test_signal_handlers_are_captured_and_restored(tmp_path):
    d = _daemon(tmp_path, "mqtt://127.0.0.1:1")
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with d.captured_signals():
        assert signal.getsignal(signal.SIGTERM) not in before
        assert signal.getsignal(signal.SIGINT) not in before
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_first_signal_asks_to_stop_and_wakes_a_wait_second_sigint_forces(tmp_path):
    d = _daemon(tmp_path, "mqtt://127.0.0.1:1")
    with d.captured_signals():
        signal.raise_signal(signal.SIGTERM)  # not waiting: only a flag, the current step finishes
        assert d.should_exit
        d._waiting = True
        with pytest.raises(_Wakeup):
            signal.raise_signal(signal.SIGTERM)
        with pytest.raises(_ForceExit):
            signal.raise_signal(signal.SIGINT)


@needs_mosquitto
def test_sigterm_stops_an_idle_daemon_in_this_process(tmp_path, mosquitto):
    d = _daemon(tmp_path, mosquitto.url)
    before = signal.getsignal(signal.SIGTERM)
    d.startup()
    assert d.transport is not None and d.transport.connected
    assert d._timeout() is None  # idle: it waits for a message with no timeout at all
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    t = time.monotonic()
    assert d.serve(started=True) == 0
    assert time.monotonic() - t < 5
    assert d.store is None and d.transport is None
    assert signal.getsignal(signal.SIGTERM) == before  # restored


@needs_mosquitto
def test_broker_down_at_startup_is_retried_not_fatal(tmp_path):
    from fedge.coordinator.service.broker import free_port
    from tests.mqtt_fixtures import MosquittoProcess

    port = free_port()
    d = _daemon(tmp_path, f"mqtt://127.0.0.1:{port}", retry_s=0.2, connect_timeout_s=1.0)
    d.startup()  # connect fails (nothing listens): scheduled for retry, no exception
    assert not d._connected and d._timeout() is not None and d._timeout() <= 0.2
    conf = tmp_path / "m" / "mosquitto.conf"
    conf.parent.mkdir()
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n{user}log_dest stderr\n")
    broker = MosquittoProcess(conf, port).start()
    try:
        deadline = time.monotonic() + 20
        while not d._connected and time.monotonic() < deadline:
            d._wait(d._timeout())  # sleeps until the retry is due (disconnected: no queue to wait on)
            d._on_due()
        assert d._connected and d.transport.connected
    finally:
        d.shutdown()
        broker.kill()
