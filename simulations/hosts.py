"""Device hosts: the simulated devices of a round, a shard per host, talking to the driver in wire bytes.

A :class:`DeviceHost` holds the :class:`fedge.agent.participant.Participant` of each device in its
shard for one round and answers batches of coordinator messages with the devices' replies. Every
frame between driver and host is msgpack of plain values and raw :mod:`fedge.agent.core.wire` blobs:
nothing is pickled, so a host may live in this process, in a worker process
(:class:`ProcessPool`) or on a Ray actor (:mod:`fedge.simulations.rayhosts`) with identical results.

Each device's randomness comes from ``(round root, device index)`` alone, so which host runs a
device, and in which order replies reach the coordinator, change no number.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import msgpack
import numpy as np

from fedge.agent.core import wire
from fedge.agent.core.crypto import AgreementMemo, IdentityKey, SignatureMemo
from fedge.agent.core.errors import ConfigError, ProtocolError, SecurityError, TransportError
from fedge.agent.core.messages.rounds import Task
from fedge.agent.participant import LocalResult, Participant
from fedge.agent.secure import PeerDirectory, secagg_factory
from fedge.coordinator.rounds.audit import canary_update
from fedge.coordinator.workers import spawn, stop
from fedge.simulations.world import build_world

log = logging.getLogger(__name__)

#: The stage (index into :data:`fedge.simulations.population.STAGES`) of each device reply; without secure aggregation the plain upload stands at masked_input.
REPLY_STAGE = {
    "KeyAdvertisement": 0,
    "EncryptedShares": 1,
    "MaskedInput": 2,
    "PlainUpdate": 2,
    "SurvivorSignature": 3,
    "UnmaskShares": 4,
}

#: Replies after which a device has nothing left to do in the round.
_FINAL = frozenset({"PlainUpdate", "UnmaskShares", "Decline"})


def pack(obj: Any) -> bytes:
    """One driver/host frame: msgpack of plain values and bytes."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(frame: bytes) -> Any:
    return msgpack.unpackb(frame, raw=False, strict_map_key=False)


def device_seeds(root: int, index: int) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
    """A device's training seed and its participant seed (noise, rounding), from the round root and its index."""
    return np.random.SeedSequence(root, spawn_key=(index,)), np.random.SeedSequence(root, spawn_key=(index, 0))


class DeviceHost:
    """Runs a shard of a round's devices: frames in (:meth:`handle`), frames out.

    ``client_data(k)`` returns client k's local data; ``trainer`` is the local trainer shared by
    the shard's devices (one interpreter, reused).
    """

    def __init__(self, client_data: Callable[[int], tuple[np.ndarray, np.ndarray]], trainer: Any) -> None:
        self.client_data = client_data
        self.trainer = trainer
        self._participants: dict[str, Participant] = {}
        self._drop_at: dict[str, int] = {}
        self._keys: dict[str, IdentityKey] = {}
        self._roster: dict[str, bytes] = {}
        self._round = 0
        self._last: tuple[bytes, Any] = (b"", None)
        self._weights: np.ndarray | None = None
        self._examples = 0  # examples trained on in the current frame
        # Memos shared by the shard's devices: each device still checks every peer signature and
        # agrees a secret with every neighbour, but the same (key, data, signature) is verified
        # once per host, and a pair of devices on the same host computes its X25519 secret once.
        self._signatures = SignatureMemo()
        self._agreements = AgreementMemo()
        self._stage_msg: type | None = None
        self._audit_seed = 0
        #: buffered mode: the model versions this round's devices trained on (empty: they train on the task's)
        self._bases: list[np.ndarray] = []

    def handle(self, frame: bytes) -> bytes:
        """Answer one driver frame (``round``, ``roster``, ``batch`` or ``end``)."""
        req = unpack(frame)
        kind = req["kind"]
        if kind == "batch":
            return pack(self._batch(req["blobs"], req["items"]))
        if kind == "round":
            return pack(self._begin(req))
        if kind == "roster":
            self._roster = dict(zip(req["ids"], req["keys"]))
            return pack({})
        if kind == "end":
            log.debug(
                "signatures: %d verified, %d from the memo; X25519: %d computed, %d from the memo",
                self._signatures.checked,
                self._signatures.hits,
                self._agreements.computed,
                self._agreements.hits,
                extra={"round": self._round},
            )
            self._signatures, self._agreements = SignatureMemo(), AgreementMemo()
            self._participants, self._drop_at, self._keys, self._roster = {}, {}, {}, {}
            self._last, self._weights, self._bases = (b"", None), None, []
            return pack({})
        raise ProtocolError(f"unknown host frame {kind!r}")

    def _begin(self, req: dict[str, Any]) -> dict[str, Any]:
        """Build the shard's participants; return their identity public keys (the simulator enrolls them)."""
        self._round = rid = req["round"]
        root, secagg = req["root"], req["secagg"]
        self._audit_seed = req.get("audit_seed", 0)
        self._bases = [np.frombuffer(b, dtype=np.float32) for b in req.get("bases", [])]
        self._participants, self._drop_at, self._keys = {}, {}, {}
        self._examples = 0
        self._signatures, self._agreements = SignatureMemo(), AgreementMemo()
        for device, client, index, drop_at, *extra in req["devices"]:
            base, weight = extra if extra else (-1, 1.0)  # buffered mode: the version trained on, s(tau)
            train_seed, own_seed = device_seeds(root, index)
            train = self._train_fn(device, client, train_seed, self._bases[base] if base >= 0 else None)
            factory = None
            if secagg:
                key = self._keys[device] = IdentityKey.generate()
                factory = secagg_factory(
                    device, key, PeerDirectory(trusted=self._peer_key), self._signatures, self._agreements
                )
            # a canary (client < 0) adds no distributed noise share: the coordinator knows its randomness
            self._participants[device] = Participant(
                device,
                train,
                np.random.default_rng(own_seed),
                factory,
                staleness_weight=weight,
                noise_share=client >= 0,
            )
            self._drop_at[device] = drop_at
        log.debug("host holds %d devices", len(self._participants), extra={"round": rid})
        return {"keys": [k.public_bytes() for k in self._keys.values()], "ids": list(self._keys)}

    def _peer_key(self, device: str) -> bytes | None:
        """The roster's key of a peer: the simulator plays the enrollment authority."""
        return self._roster.get(device)

    def _train_fn(
        self, device: str, client: int, seed: np.random.SeedSequence, base: np.ndarray | None = None
    ) -> Callable[[Any], LocalResult]:
        """Client ``client``'s training: from the task's weights, or (buffered mode) from ``base``, the
        version it was sent when it started, its delta taken against that version."""
        if client < 0:
            return self._canary_fn(-client - 1)

        def train(task: Any) -> LocalResult:
            x, y = self.client_data(client)
            p = task.plan.training
            r = self.trainer.train(
                task.weights if base is None else base,
                x,
                y,
                epochs=p.epochs,
                batch_size=p.batch_size,
                learning_rate=p.learning_rate,
                rng=np.random.default_rng(seed),
                prox_mu=p.prox_mu,
            )
            self._examples += r.num_examples
            return LocalResult(r.delta, r.num_examples, r.loss)

        return train

    def _canary_fn(self, index: int) -> Callable[[Any], LocalResult]:
        """A canary client (:mod:`fedge.coordinator.rounds.audit`): no data, no training; its delta is its
        direction at the round's clip norm, at full weight. Clipping, quantization and masking are the
        participant's own, as for any device; it adds no distributed-DP noise share (see ``_begin``)."""

        def train(task: Any) -> LocalResult:
            p = task.plan
            return LocalResult(
                canary_update(self._audit_seed, index, task.weights.size, p.privacy.clip_norm), p.example_cap, 0.0
            )

        return train

    def _decode(self, blob: bytes) -> Any:
        """Decode a blob; a broadcast seen in the previous batch (round config, survivors) is shared, not re-decoded."""
        if blob == self._last[0]:
            return self._last[1]
        msg = wire.decode(blob)
        if isinstance(msg, Task):  # every device's task carries the same global weights: hold them once
            if self._weights is not None and np.array_equal(msg.weights, self._weights):
                msg = dataclasses.replace(msg, weights=self._weights)
            else:
                self._weights = msg.weights
        self._last = (blob, msg)
        return msg

    def _batch(self, blobs: Sequence[bytes], items: Sequence[tuple[str, int]]) -> dict[str, Any]:
        """Deliver each (device, blob index); a broadcast blob is decoded once and shared (messages are frozen)."""
        decoded: dict[int, Any] = {}
        replies = []
        self._examples = 0
        for device, bi in items:
            p = self._participants.get(device)
            if p is None:
                continue  # dropped: silent from now on
            msg = decoded.get(bi)
            if msg is None:
                msg = decoded[bi] = self._decode(blobs[bi])
                if type(msg) is not self._stage_msg:
                    # a new stage: secrets pending for a pair whose other end is on another host
                    # will never be asked for again
                    self._stage_msg = type(msg)
                    self._agreements.clear()
            try:
                out = p.handle(msg)
                if isinstance(msg, Task):
                    # the participant never reads its training result again; the SecAgg+ client
                    # holds the encoded vector it needs: keep ~20 KB less per device
                    p.local = p.encoded = None
            except (ProtocolError, SecurityError) as e:
                log.debug(
                    "device refused %s: %s", type(msg).__name__, e, extra={"device": device, "round": self._round}
                )
                out = []
            sent = []
            for reply in out:
                name = type(reply).__name__
                st = REPLY_STAGE.get(name)
                if st is not None and st >= self._drop_at[device]:
                    self._participants.pop(device, None)  # drops here: never answers again
                    break
                sent.append(wire.encode(reply))
                if name in _FINAL:
                    self._participants.pop(device, None)  # its round is over: free its state
            if sent:
                replies.append((device, sent))
        return {"replies": replies, "examples": self._examples}


def build_host(r: dict[str, Any]) -> DeviceHost:
    """A device host over a rebuilt world (what a worker process or Ray actor runs)."""
    world = build_world(r)
    return DeviceHost(world.federation.client, world.trainer)


class HostPool:
    """A fixed set of device hosts; frames go out one at a time per host and replies come back as they finish."""

    size: int = 1

    def exchange(self, frames: Sequence[Iterable[bytes]]) -> Iterator[tuple[int, bytes]]:
        """Send ``frames[h]`` in order to host h, yielding (h, reply) as each reply arrives."""
        raise NotImplementedError

    def broadcast(self, frame: bytes) -> list[bytes]:
        """The same frame to every host; replies in host order."""
        out: list[bytes] = [b""] * self.size
        for h, reply in self.exchange([[frame]] * self.size):
            out[h] = reply
        return out

    def close(self) -> None:
        pass


class LocalPool(HostPool):
    """One host in the driver's own process (still speaking bytes)."""

    size = 1

    def __init__(self, host: DeviceHost) -> None:
        self.host = host

    def exchange(self, frames: Sequence[Iterable[bytes]]) -> Iterator[tuple[int, bytes]]:
        for f in frames[0]:
            yield 0, self.host.handle(f)


def _host_main(conn: Connection) -> None:
    """A worker process: build the world from the recipe frame, then answer frames until ``stop``."""

    try:
        host = build_host(unpack(conn.recv_bytes()))
        conn.send_bytes(pack({"ok": True}))
    except Exception as e:  # the driver turns it into a ConfigError
        conn.send_bytes(pack({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        return
    while True:
        try:
            frame = conn.recv_bytes()
        except EOFError:
            return
        if frame == b"stop":
            return
        conn.send_bytes(host.handle(frame))


class ProcessPool(HostPool):
    """``workers`` worker processes (fresh interpreters: nothing forked, nothing pickled), each a device host.

    Each worker runs ``python -m fedge.simulations.hosts FD`` on one end of a socket pair; ``recipe``
    (plain values) tells it how to rebuild the federation and the trainer.
    """

    def __init__(self, recipe: dict[str, Any], workers: int) -> None:
        self.size = workers
        self._workers = [spawn("fedge.simulations.hosts") for _ in range(workers)]
        self._conns = [conn for _, conn in self._workers]
        self._procs = [proc for proc, _ in self._workers]
        for conn in self._conns:
            conn.send_bytes(pack(recipe))
        for conn in self._conns:
            try:
                answer = unpack(conn.recv_bytes())
            except (EOFError, OSError):
                answer = {"ok": False, "error": "the worker exited"}
            if not answer["ok"]:
                self.close()
                raise ConfigError(f"device host failed to start: {answer['error']}")

    def exchange(self, frames: Sequence[Iterable[bytes]]) -> Iterator[tuple[int, bytes]]:
        queues = [iter(f) for f in frames]
        busy: dict[Connection, int] = {}
        for h, q in enumerate(queues):
            first = next(q, None)
            if first is not None:
                self._conns[h].send_bytes(first)
                busy[self._conns[h]] = h
        while busy:
            for conn in wait(list(busy)):
                h = busy.pop(conn)  # type: ignore[call-overload]
                try:
                    reply = conn.recv_bytes()  # type: ignore[union-attr]
                    following = next(queues[h], None)
                    if following is not None:  # keep the host busy while the driver digests this reply
                        self._conns[h].send_bytes(following)
                        busy[self._conns[h]] = h
                except (EOFError, OSError):
                    raise TransportError(f"device host {h} exited (exit code {self._procs[h].poll()})") from None
                yield h, reply

    def close(self) -> None:
        stop(self._workers, b"stop")
        self._workers, self._conns, self._procs = [], [], []


if __name__ == "__main__":  # a worker of ProcessPool: python -m fedge.simulations.hosts FD
    import signal

    # Ctrl-C reaches the whole process group: the driver stops its workers (or they see EOF)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _host_main(Connection(int(sys.argv[1])))
