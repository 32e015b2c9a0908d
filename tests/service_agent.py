"""A minimal agent process for service tests (until and besides ``fedge-agent run``).

``python -m tests.service_agent --broker URL --device-id ID --data FILE.npz [--protocol 3.1.1]``:
checks in for every announced round, answers its task with the real participant and TFLite
trainer, and acknowledges each message only after it has been handled. No eligibility, no
store: the service under test is the coordinator.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

import numpy as np

from fedge.agent.core import logs, topics, wire
from fedge.agent.core.crypto import IdentityKey
from fedge.agent.core.errors import FedgeError, TransportError
from fedge.agent.core.messages.rounds import CheckIn, RoundAnnounce, RoundEnd, Task
from fedge.agent.core.transport import TransportConfig, open_transport
from fedge.agent.participant import LocalResult, Participant
from fedge.agent.secure import PeerDirectory, secagg_factory
from fedge.agent.training.models import load_spec
from fedge.agent.training.trainer import Trainer

log = logging.getLogger("service_agent")


class AgentLoop:
    """Check in, train, upload; one participant per round; stops on ``stop``."""

    def __init__(
        self,
        broker: str,
        device_id: str,
        x: np.ndarray,
        y: np.ndarray,
        *,
        protocol: str = "5",
        model: str = "mlp",
        seed: int = 0,
        eligible: bool = True,
        identity: IdentityKey | None = None,
        authority: bytes | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.device_id = device_id
        self.data = (x, y)
        self.trainer = Trainer(load_spec(model), num_threads=1)
        self.seed = seed
        self.eligible = eligible
        self.identity, self.authority = identity, authority
        self.delay_s = delay_s  # "training time" before answering a task, to hold a round open
        self.stop = threading.Event()
        self.cfg = TransportConfig(broker_url=broker, client_id=device_id, protocol=protocol, publish_timeout_s=10.0)
        self.transport = open_transport(self.cfg)
        self.participants: dict[int, Participant] = {}
        self.checked_in: set[int] = set()
        self.ended: set[int] = set()

    def run(self) -> None:
        t = self.transport
        t.connect()
        for f in (topics.device_in(self.device_id), topics.ROUNDS):
            self.subscribe(f)
        try:
            while not self.stop.is_set():
                inbound = t.receive(timeout=0.2)
                if inbound is None:
                    continue
                try:
                    self.handle(wire.decode(inbound.payload))
                except FedgeError as e:
                    log.warning("%s: %s", self.device_id, e)
                finally:
                    t.ack(inbound)
        finally:
            t.close()

    def subscribe(self, topic_filter: str, attempts: int = 5) -> None:
        """Subscribe, again if the SUBACK never came: a connection lost mid-SUBSCRIBE that comes back
        with its session present is not subscribed again by the transport (amqtt drops connections
        when many clients subscribe at once)."""
        for i in range(attempts):
            try:
                self.transport.subscribe(topic_filter)
                return
            except TransportError as e:
                if i == attempts - 1:
                    raise
                log.warning("%s: %s; subscribing again", self.device_id, e)

    def train(self, task: Task) -> LocalResult:
        p = task.plan.training
        r = self.trainer.train(
            task.weights,
            *self.data,
            epochs=p.epochs,
            batch_size=p.batch_size,
            learning_rate=p.learning_rate,
            rng=np.random.default_rng([self.seed, task.round_id]),
        )
        return LocalResult(r.delta, r.num_examples, r.loss)

    def send(self, msg: object) -> None:
        self.transport.publish(topics.device_out(self.device_id), wire.encode(msg))

    def handle(self, msg: object) -> None:
        if isinstance(msg, RoundAnnounce):
            if msg.round_id in self.checked_in or msg.round_id in self.ended:
                return
            self.checked_in.add(msg.round_id)
            self.send(
                CheckIn(self.device_id, msg.round_id, "pi4", msg.model_version, self.eligible, len(self.data[1]), 0.0)
            )
        elif isinstance(msg, RoundEnd):
            self.ended.add(msg.round_id)
            self.participants.pop(msg.round_id, None)
        elif isinstance(msg, Task):
            if self.stop.wait(self.delay_s):
                return
            p = self.participants.get(msg.round_id)
            if p is None:
                train = self.train
                factory = directory = None
                if self.identity is not None and self.authority is not None:
                    directory = PeerDirectory(self.authority)
                    factory = secagg_factory(self.device_id, self.identity, directory)
                p = self.participants[msg.round_id] = Participant(
                    self.device_id, train, np.random.default_rng(), factory, peers=directory
                )
            for reply in p.handle(msg):
                self.send(reply)
        else:
            rid = getattr(msg, "round_id", None)
            p = self.participants.get(rid) if rid is not None else None
            if p is None:
                return
            for reply in p.handle(msg):
                self.send(reply)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", required=True)
    ap.add_argument("--device-id", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--protocol", default="5")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--identity-seed", default=None, help="hex private seed of the device's identity (SecAgg+)")
    ap.add_argument("--authority", default=None, help="hex public key of the enrollment authority (SecAgg+)")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds to wait before training a task")
    a = ap.parse_args()
    logs.configure("WARNING")
    with np.load(a.data) as f:
        x, y = f["x"], f["y"]
    identity = IdentityKey.from_private_bytes(bytes.fromhex(a.identity_seed)) if a.identity_seed else None
    authority = bytes.fromhex(a.authority) if a.authority else None
    loop = AgentLoop(
        a.broker,
        a.device_id,
        x,
        y,
        protocol=a.protocol,
        seed=a.seed,
        identity=identity,
        authority=authority,
        delay_s=a.delay,
    )
    signal.signal(signal.SIGTERM, lambda *_: loop.stop.set())
    try:
        loop.run()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
