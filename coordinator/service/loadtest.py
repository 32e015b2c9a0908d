"""``fedge-coordinator loadtest``: a real broker, the real coordinator service, and N agents that run
the real agent code (``AgentDaemon``: device store, outbox, replies, SecAgg+ participant, DP), many
per process, while connections are reset and the broker restarts.

Layout: this process runs the coordinator service (so its peak RSS is the coordinator's, plus
this module's bookkeeping) and a monitor thread that injects faults; ``agents_per_worker`` agents
live in each worker process (``multiprocessing`` spawn), each agent an ``AgentDaemon`` in its
own thread with its own paho transport. The transports of a worker share one network loop
(agent/core/transport/netloop.py: one thread and epoll for all of them) instead of paho's
``loop_start()``, which costs a thread per client and whose ``select()`` breaks at descriptor
1,024. A worker holds at most :data:`MAX_AGENTS_PER_WORKER` agents, and no more than its
descriptor limit (``ulimit -n``) allows at :data:`FDS_PER_AGENT` each (socket, SQLite file, WAL
and shared memory, and room).

``lost_uploads`` and ``double_counted`` are computed after the run from both sides' SQLite files,
not from counters the code under test keeps: an upload is *acknowledged* at an agent when the
agent produced it (its ``round_replies``) and its outbox no longer holds it (deleted only after
PUBACK); it is *lost* when the coordinator has no trace of it (neither an ``uploads`` row nor a
``rejections`` row for that device and round). ``double_counted`` counts (round, device) pairs
with more than one upload at the coordinator, more than one privacy-ledger entry at the agent, or
a round whose recorded participants exceed its devices with an accepted upload.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import random
import resource
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fedge.agent.core.errors import ConfigError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
BROKER_CONF = ROOT / "deploy" / "mosquitto" / "loadtest.conf"
#: agents in one worker process; each is still a thread of its own (the daemon), and one shared
#: network loop serves them all (measured up to 500 per worker, see docs/service.md)
MAX_AGENTS_PER_WORKER = 1000
#: descriptors an agent needs in a worker: its socket and its store's SQLite file, WAL and shared
#: memory, and room (measured: 1,262 in a worker of 250 agents, 1,112 in one of 220)
FDS_PER_AGENT = 6
UPLOAD_STAGES = ("secagg.masked_input", "round.plain_update")


@dataclasses.dataclass(frozen=True)
class LoadtestConfig:
    """One load test. ``broker_url`` None starts Mosquitto with ``deploy/mosquitto/loadtest.conf``."""

    agents: int
    rounds: int = 3
    churn: float = 0.0
    broker_restart: bool = False
    #: the restart is a crash: SIGKILL, so the broker comes back with what it last autosaved
    broker_crash: bool = False
    broker_url: str | None = None
    workdir: str | None = None
    agents_per_worker: int = 250
    checkin_window_s: float = 30.0
    stage_timeout_s: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.agents < 2:
            raise ConfigError(f"agents: expected at least 2, got {self.agents}")
        if self.rounds < 1:
            raise ConfigError(f"rounds: expected at least 1, got {self.rounds}")
        if not 0.0 <= self.churn <= 1.0:
            raise ConfigError(f"churn: expected a fraction in [0, 1], got {self.churn}")
        if not 1 <= self.agents_per_worker <= MAX_AGENTS_PER_WORKER:
            raise ConfigError(f"agents per worker: expected 1..{MAX_AGENTS_PER_WORKER}, got {self.agents_per_worker}")
        fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        need = min(self.agents, self.agents_per_worker) * FDS_PER_AGENT + 64
        if fds != resource.RLIM_INFINITY and need > fds:
            raise ConfigError(
                f"agents per worker: {min(self.agents, self.agents_per_worker)} need about {need} file "
                f"descriptors, the limit is {fds} (ulimit -n): raise it or pass fewer"
            )
        if (self.broker_restart or self.broker_crash) and self.broker_url is not None:
            raise ConfigError("--broker-restart and --broker-crash need the broker this command starts (not --broker)")
        if self.broker_restart and self.broker_crash:
            raise ConfigError("--broker-restart (graceful) and --broker-crash: choose one")

    def training(self) -> Any:
        from fedge.agent.core.privacy.config import DpMode
        from fedge.coordinator.rounds.plan import TrainingConfig

        return TrainingConfig(
            model_name="logreg",
            goal=self.agents,
            over_selection=1.0,
            min_clients=2,
            dp_mode=DpMode.DISTRIBUTED,
            noise_multiplier=0.5,
            secagg=True,
            epochs=1,
            batch_size=8,
            learning_rate=0.2,
            train_deadline_s=max(60.0, self.stage_timeout_s),
            stage_timeout_s=self.stage_timeout_s,
        )


@dataclasses.dataclass
class LoadtestResult:
    agents: int
    rounds: list[dict[str, Any]]
    resets_injected: int
    broker_restarts: int
    lost_uploads: int
    double_counted: int
    coordinator_peak_rss_mb: float
    db_bytes: int

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


# ---------------------------------------------------------------------- the broker


class Mosquitto:
    """Mosquitto with the shipped load-test configuration on a free loopback port; restartable."""

    def __init__(self, work: Path) -> None:
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if exe is None:
            raise ConfigError("mosquitto is not installed: pass --broker URL")
        work.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        text = BROKER_CONF.read_text().replace("listener 1883", f"listener {self.port} 127.0.0.1")
        text = text.replace("persistence_location /var/lib/mosquitto/", f"persistence_location {work}/")
        if os.geteuid() == 0:
            text += "\nuser root\n"
        self.conf, self.log, self.exe = work / "mosquitto.conf", work / "mosquitto.log", exe
        self.conf.write_text(text)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        with open(self.log, "ab") as out:
            self._proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=out, stderr=out)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return self
            time.sleep(0.05)
        raise ConfigError(f"mosquitto did not listen on {self.port}: see {self.log}")

    def stop(self) -> None:
        """SIGTERM: Mosquitto saves its persistence (sessions, queued messages, retained) and exits."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def crash(self) -> None:
        """SIGKILL, then start again: sessions, subscriptions and queued messages since the last autosave
        are gone, as after a power cut."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
        self.start()


# ---------------------------------------------------------------------- agents (worker processes)


def _device_id(i: int) -> str:
    return f"load-{i:05d}"


#: every agent trains on at least this many examples (the load test's batch size)
MIN_SHARD = 8


def shards(total: int, seed: int) -> tuple[list[tuple[Any, Any]], tuple[Any, Any]]:
    """``total`` training shards of the digits and the held-out test set: disjoint while the digits go
    round (1,497 training images: up to 187 agents of 8), beyond that consecutive windows of
    ``MIN_SHARD`` over the shuffled images, so examples repeat across agents but none has an empty store."""
    import numpy as np

    from fedge.coordinator.service.demo import split_digits

    (train,), test = split_digits(1, seed)
    n = len(train[1])
    size = max(MIN_SHARD, n // total)
    parts = []
    for i in range(total):
        idx = (i * size + np.arange(size)) % n
        parts.append((train[0][idx], train[1][idx]))
    return parts, test


def _prepare(
    indices: list[int], total: int, seed: int, work: Path, broker_url: str, authority_hex: str, training: Any
) -> list[tuple[str, str, Path]]:
    """Each agent's shard, profile and store (identity, authority); returns (device, public hex, profile)."""
    import numpy as np

    from fedge.agent.identity import load_or_create, set_authority
    from fedge.agent.local_data import import_examples
    from fedge.agent.store import Store as AgentStore
    from fedge.agent.training.models import load_spec
    from fedge.coordinator.service.demo import agent_profile, dump_toml

    parts, test = shards(total, seed)
    if 0 in indices:
        np.savez(work / "test.npz", x=test[0], y=test[1])
    spec = load_spec(training.model_name)
    out = []
    for i in indices:
        dev = _device_id(i)
        d = work / dev
        d.mkdir(parents=True, exist_ok=True)
        data, db, profile = d / "data.npz", d / "agent.db", d / "profile.toml"
        np.savez(data, x=parts[i][0], y=parts[i][1])
        profile.write_text(dump_toml(agent_profile(broker_url, db, training, "5")))
        with AgentStore(db) as store:
            import_examples(store, data, spec, split="train", test_fraction=0.0, rng=np.random.default_rng([seed, i]))
            key = load_or_create(store.db, dev)
            set_authority(store.db, bytes.fromhex(authority_hex))
        out.append((dev, key.public_bytes().hex(), profile))
    return out


def _reset_link(daemon: Any) -> bool:
    """Reset one agent's broker connection (RST); its transport reconnects by itself."""
    client = getattr(daemon.transport, "_client", None)
    sock = client.socket() if client is not None else None
    if sock is None:
        return False
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
        return True
    return False


def _worker(
    indices: list[int], total: int, seed: int, work: str, broker_url: str, authority_hex: str, training: Any, conn: Any
) -> None:
    """One worker process: prepare its agents, run them as daemons, reset links when told."""
    logging.basicConfig(
        level=logging.WARNING,
        filename=str(Path(work) / f"worker-{indices[0]:05d}.log"),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    from fedge.agent.config import resolve
    from fedge.agent.core.transport import TransportConfig, open_transport
    from fedge.agent.core.transport.netloop import NetworkLoop
    from fedge.agent.daemon import AgentDaemon

    prepared = _prepare(indices, total, seed, Path(work), broker_url, authority_hex, training)
    conn.send([(dev, pub) for dev, pub, _ in prepared])
    conn.recv()  # enrolled: start
    network = NetworkLoop(name=f"netloop-{indices[0]:05d}").start()  # every agent of this worker on it

    def transport(config: TransportConfig) -> Any:
        return open_transport(config, network=network)

    daemons = []
    for _, _, profile in prepared:
        d = AgentDaemon(resolve(profile), transport_factory=transport)
        threading.Thread(target=d.serve, daemon=True).start()  # the store belongs to the daemon's thread
        daemons.append(d)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(d._connected for d in daemons):
        time.sleep(0.1)
    conn.send(sum(1 for d in daemons if d._connected))
    rng = random.Random(f"{seed}-{indices[0]}")
    resets = [0]
    lock = threading.Lock()

    def reset(d: Any) -> None:
        if _reset_link(d):
            with lock:
                resets[0] += 1

    while True:
        cmd = conn.recv()
        if cmd[0] == "churn":
            _, fraction, window_s = cmd
            for d in rng.sample(daemons, k=min(len(daemons), round(fraction * len(daemons)))):
                timer = threading.Timer(rng.uniform(0.0, window_s), reset, args=(d,))
                timer.daemon = True
                timer.start()
        elif cmd[0] == "stop":
            for d in daemons:
                d.request_stop()
            conn.send(resets[0])
            conn.close()
            os._exit(0)  # the daemons wait on their transports; every committed store write is on disk


# ---------------------------------------------------------------------- the run


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def _peak_rss_mb() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Monitor(threading.Thread):
    """Watches the coordinator's store; at each new round tells the workers to reset links, and
    restarts the broker once, mid-round (after selection) of the last round."""

    def __init__(self, db: Path, cfg: LoadtestConfig, conns: list[Any], broker: Mosquitto | None) -> None:
        super().__init__(daemon=True)
        self.db, self.cfg, self.conns, self.broker = db, cfg, conns, broker
        self.stop = threading.Event()
        self.restarts = 0
        self._restart_round = min(2, cfg.rounds)

    def run(self) -> None:
        seen: set[int] = set()
        # resets land in the first half of a round (its length guessed from the last one; the first round's
        # in its first 0.5 s): drawn over a longer window, a short round ended before its resets fired,
        # and a run could finish with none injected (seen in CI with 20 agents, rounds of about 1 s)
        window = 0.5
        while not self.stop.wait(0.2):
            with contextlib.suppress(sqlite3.Error):
                con = _ro(self.db)
                try:
                    row = con.execute(
                        "select round_id, stage from rounds where status = 'open' order by round_id desc limit 1"
                    ).fetchone()
                finally:
                    con.close()
                if row is None:
                    continue
                rid, stage = row
                if rid not in seen:
                    seen.add(rid)
                    last = self._last_length(rid - 1)
                    window = 0.5 * last if last else window
                    if self.cfg.churn > 0:
                        for c in self.conns:
                            c.send(("churn", self.cfg.churn, window))
                if (
                    (self.cfg.broker_restart or self.cfg.broker_crash)
                    and self.broker is not None
                    and not self.restarts
                    and rid == self._restart_round
                    and stage not in ("checkin", "", None)
                ):
                    how = "crashing (SIGKILL) and restarting" if self.cfg.broker_crash else "restarting"
                    log.warning("load test: %s the broker mid-round", how, extra={"round": rid})
                    if self.cfg.broker_crash:
                        self.broker.crash()
                    else:
                        self.broker.restart()
                    self.restarts += 1

    def _last_length(self, rid: int) -> float | None:
        con = _ro(self.db)
        try:
            row = con.execute("select ended_at - started_at from rounds where round_id = ?", (rid,)).fetchone()
        finally:
            con.close()
        return row[0] if row and row[0] else None


def run_loadtest(cfg: LoadtestConfig) -> LoadtestResult:
    """Run the whole load test and compute its result from the stores."""
    from fedge.coordinator.service.config import ServiceConfig
    from fedge.coordinator.service.enrollment import authority_public_hex, enroll
    from fedge.coordinator.service.service import CoordinatorService
    from fedge.coordinator.store import Store

    work = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="fedge-loadtest-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "coordinator.db"
    if db.exists():
        raise ConfigError(f"{db} exists: give the load test a fresh --workdir")
    broker = Mosquitto(work / "broker").start() if cfg.broker_url is None else None
    url = broker.url if broker is not None else cfg.broker_url
    assert url is not None
    training = cfg.training()
    store = Store(str(db))
    authority = authority_public_hex(store)
    ctx = multiprocessing.get_context("spawn")
    per = cfg.agents_per_worker
    chunks = [list(range(i, min(i + per, cfg.agents))) for i in range(0, cfg.agents, per)]
    procs, conns = [], []
    try:
        for chunk in chunks:
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=_worker,
                args=(chunk, cfg.agents, cfg.seed, str(work), url, authority, training, child),
                daemon=True,
            )
            p.start()
            procs.append(p)
            conns.append(parent)
        for c in conns:
            for dev, pub in c.recv():
                enroll(store, dev, pub, "pi4", ("loadtest",))
        store.close()
        for c in conns:
            c.send("start")
        started = sum(c.recv() for c in conns)
        log.warning("load test: %d agents running in %d workers", started, len(procs))
        monitor = _Monitor(db, cfg, conns, broker)
        monitor.start()
        service = CoordinatorService(
            ServiceConfig(
                db_path=str(db),
                training=training,
                broker_url=url,
                rounds=cfg.rounds,
                checkin_window_s=cfg.checkin_window_s,
                eval_data=str(work / "test.npz"),
                mqtt_protocol="5",
                epsilon_budget=1e6,
                pacing_batch=max(500, cfg.agents),
            )
        )
        reports = service.run()
        monitor.stop.set()
        monitor.join(60)
        resets = 0
        for c in conns:
            c.send(("stop",))
            resets += c.recv()
        for p in procs:
            p.join(30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        if broker is not None:
            broker.stop()
    rounds = _rounds(db, [r.round_id for r in reports])
    lost, double = _audit(db, work, cfg.agents)
    return LoadtestResult(
        cfg.agents,
        rounds,
        resets,
        monitor.restarts,
        lost,
        double,
        round(_peak_rss_mb(), 1),
        sum(f.stat().st_size for f in work.glob("coordinator.db*")),
    )


def _rounds(db: Path, ids: list[int]) -> list[dict[str, Any]]:
    con = _ro(db)
    try:
        out = []
        for rid in ids:
            status, reason, participants, dropped, started, ended = con.execute(
                "select status, reason, participants, dropped, started_at, ended_at from rounds where round_id = ?",
                (rid,),
            ).fetchone()
            out.append(
                {
                    "round": rid,
                    "status": status,
                    "reason": reason or "",
                    "participants": participants or 0,
                    "dropped": sum(json.loads(dropped).values()) if dropped else 0,
                    "seconds": round((ended or started) - started, 1),
                }
            )
        return out
    finally:
        con.close()


def _audit(db: Path, work: Path, agents: int) -> tuple[int, int]:
    """(lost uploads, double-counted contributions) from the coordinator's and the agents' stores."""
    import sqlite_utils

    from fedge.agent.replies import Replies

    con = _ro(db)
    try:
        stored = set(con.execute("select round_id, device_id, stage from uploads").fetchall())
        rejected = set(con.execute("select round_id, device_id from rejections where round_id is not null").fetchall())
        double = sum(
            n - 1
            for (n,) in con.execute(
                "select count(*) from uploads where stage in (?, ?) group by round_id, device_id having count(*) > 1",
                UPLOAD_STAGES,
            )
        )
        for rid, participants in con.execute("select round_id, participants from rounds where status = 'completed'"):
            (accepted,) = con.execute(
                "select count(distinct device_id) from uploads where round_id = ? and stage in (?, ?) and status = 'accepted'",
                (rid, *UPLOAD_STAGES),
            ).fetchone()
            double += max(0, (participants or 0) - accepted)
    finally:
        con.close()
    lost = 0
    for i in range(agents):
        dev = _device_id(i)
        a = _ro(work / dev / "agent.db")
        try:
            pending = set(a.execute("select round_id, stage from outbox").fetchall())
            for rid, r in Replies(sqlite_utils.Database(a)).stored():
                if (
                    r.stage in UPLOAD_STAGES
                    and (rid, r.stage) not in pending
                    and (rid, dev, r.stage) not in stored
                    and (rid, dev) not in rejected
                ):
                    lost += 1
            double += sum(
                n - 1 for (n,) in a.execute("select count(*) from privacy_ledger group by round_id having count(*) > 1")
            )
        finally:
            a.close()
    return lost, double
