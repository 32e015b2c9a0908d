"""A round's SecAgg+ groups run away from the driver: in worker processes, or Ray actors past one
machine (``--group-engine process|ray``), the driver keeping a proxy per group.

This is the Aggregator of Google's production system ("Towards Federated Learning at Scale:
System Design", MLSys 2019): each group's SecAgg+ server (its keys' checks, the masked sum, the
unmasking) lives in a worker, and the driver (the Master Aggregator) only routes device messages
and adds the group sums. Everything crosses as bytes: device messages in the wire codec, the
rest msgpack of plain values (no pickle).

- :class:`GroupHost` is the worker side: frames in, frames out, any number of groups.
- :class:`RemoteGroup` is the driver side, with the interface :class:`~.grouped.GroupedAggregation`
  drives. A device reply is *cast* (sent without waiting); the proxy counts the stage's replies
  itself and asks the worker only when it holds every reply it waits for, so a stage costs one
  round trip per group, not one per device. A reply the worker refused (a bad signature, say) is
  reported at that point, logged with its reason, and awaited again, exactly as the in-process
  server would still await it.

Where the workers run is the driver's (:mod:`fedge.coordinator.workers`): a :data:`Channel` per
group, opened by its :class:`GroupHosts`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgpack
import numpy as np

from fedge.agent.core import wire
from fedge.agent.core.errors import ConfigError, ProtocolError, RoundFailed, SecurityError, WireError
from fedge.agent.core.messages.common import Outbound
from fedge.agent.core.messages.secagg import (
    EncryptedShares,
    KeyAdvertisement,
    MaskedInput,
    SurvivorSignature,
    UnmaskShares,
)
from fedge.agent.core.secagg.stages import Stage
from fedge.coordinator.rounds.secure import GroupSpec, SecureAggregation

log = logging.getLogger(__name__)

#: The reply each SecAgg+ stage waits for (checked on the driver before a reply is sent on).
_REPLY: dict[str, type[Any]] = {
    Stage.ADVERTISE_KEYS.value: KeyAdvertisement,
    Stage.SHARE_KEYS.value: EncryptedShares,
    Stage.MASKED_INPUT.value: MaskedInput,
    Stage.CONSISTENCY_CHECK.value: SurvivorSignature,
    Stage.UNMASK.value: UnmaskShares,
}
#: Errors a worker reports by name, raised again on the driver as the same class.
_ERRORS: dict[str, type[Exception]] = {
    "RoundFailed": RoundFailed,
    "ProtocolError": ProtocolError,
    "SecurityError": SecurityError,
    "ConfigError": ConfigError,
    "WireError": ProtocolError,
}
#: What a group worker runs (:class:`~fedge.coordinator.workers.GroupWorkers`' ``host``).
HOST = "fedge.coordinator.rounds.remote:GroupHost"
#: A worker forgets the groups of rounds this many ids older than the newest it was given
#: (rounds abandoned before their result was fetched).
KEEP_ROUNDS = 2


class Channel(Protocol):
    """One worker's frames: ``cast`` sends without a reply, ``call`` waits for one. Both raise
    :class:`RoundFailed` when the worker is gone."""

    def cast(self, frame: bytes) -> None: ...

    def call(self, frame: bytes) -> bytes: ...


class GroupHosts(Protocol):
    """Where a round's groups run: the channel of the worker that runs group ``index``."""

    def channel(self, index: int) -> Channel: ...


def pack(obj: Any) -> bytes:
    """A host frame: msgpack of plain values and bytes."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(frame: bytes) -> Any:
    return msgpack.unpackb(frame, raw=False, strict_map_key=False)


# ---------------------------------------------------------------------- worker side


class GroupHost:
    """The worker side: SecAgg+ groups by key, driven by frames (:meth:`handle`).

    ``clock`` is the worker's (the SecAgg+ server keeps a stage deadline of its own, which the
    driver's engine never uses: the driver closes stages).
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._groups: dict[str, SecureAggregation] = {}
        self._rejected: dict[str, list[list[str]]] = {}
        self._newest = -(2**62)

    @property
    def groups(self) -> int:
        """How many groups this host holds."""
        return len(self._groups)

    def handle(self, frame: bytes) -> bytes | None:
        """Answer one frame: the reply frame, or None for a cast (``offer``)."""
        try:
            req = unpack(frame)
            op, key = req["op"], req["key"]
        except Exception as e:  # a driver bug, never device input: say what it was
            return pack({"error": "ProtocolError", "text": f"malformed host frame: {type(e).__name__}"})
        if op == "offer":
            self._offer(key, req["device"], req["msg"])
            return None
        run = getattr(self, "_op_" + str(op), None)
        if run is None:
            return pack({"error": "ProtocolError", "text": f"unknown host operation {op!r}"})
        try:
            return pack({"ok": run(key, req)})
        except (RoundFailed, ProtocolError, SecurityError, ConfigError, WireError) as e:
            return pack({"error": type(e).__name__, "text": str(e)})
        except Exception as e:
            log.exception("group host %s failed at %s", key, op)
            return pack({"error": "RoundFailed", "text": f"group worker error at {op}: {type(e).__name__}: {e}"})

    def _group(self, key: str) -> SecureAggregation:
        g = self._groups.get(key)
        if g is None:
            raise RoundFailed(f"group {key} is not held by this worker (its round ended or the worker restarted)")
        return g

    def _offer(self, key: str, device: str, data: bytes) -> None:
        try:
            self._group(key).offer(wire.decode(data))
        except (RoundFailed, ProtocolError, SecurityError, WireError) as e:
            self._rejected.setdefault(key, []).append([device, f"{type(e).__name__}: {e}"])
        except Exception as e:  # a bug, never the device's fault: refuse its reply, keep the worker
            log.exception("group host %s failed on a reply from %s", key, device)
            self._rejected.setdefault(key, []).append([device, f"internal error: {type(e).__name__}: {e}"])

    def _state(self, key: str) -> dict[str, Any]:
        g = self._groups[key]
        return {
            "stage": g.stage,
            "awaiting": sorted(g.server.expected()),
            "rejected": self._rejected.pop(key, []),
        }

    def _op_open(self, key: str, req: dict[str, Any]) -> dict[str, Any]:
        spec = GroupSpec.from_plain(req["spec"])
        if spec.round_id > self._newest:
            self._newest = spec.round_id
            for k in [k for k, g in self._groups.items() if g.round_id < spec.round_id - KEEP_ROUNDS]:
                self._dispose(k)
        g = SecureAggregation.from_spec(spec, self._clock)
        self._groups[key] = g
        out = _outbound(g.start(list(spec.roster), float(req["now"])))
        return {**out, **self._state(key)}

    def _op_status(self, key: str, req: dict[str, Any]) -> dict[str, Any]:
        self._group(key)
        return self._state(key)

    def _op_close(self, key: str, req: dict[str, Any]) -> dict[str, Any]:
        g = self._group(key)
        out = _outbound(g.close_stage(float(req["now"])))
        return {**out, **self._state(key), "finished": g.finished}

    def _op_exclude(self, key: str, req: dict[str, Any]) -> dict[str, Any]:
        g = self._group(key)
        return {"excluded": g.exclude(str(req["device"]), float(req["now"])), **self._state(key)}

    def _op_report(self, key: str, req: dict[str, Any]) -> dict[str, Any]:
        g = self._group(key)
        return {"dropped": g.dropped(), "flagged": g.flagged()}

    def _op_result(self, key: str, req: dict[str, Any]) -> dict[str, Any]:
        g = self._group(key)
        total, survivors = g.result()
        report = self._op_report(key, req)
        self._dispose(key)
        return {
            "total": np.ascontiguousarray(total).tobytes(),
            "dtype": total.dtype.str,
            "survivors": survivors,
            **report,
        }

    def _op_dispose(self, key: str, req: dict[str, Any]) -> None:
        self._dispose(key)

    def _dispose(self, key: str) -> None:
        self._groups.pop(key, None)
        self._rejected.pop(key, None)


def _outbound(out: list[Outbound]) -> dict[str, Any]:
    """Outbound messages as frames: each distinct message encoded once (the config every device of
    a group gets is one object)."""
    index: dict[int, int] = {}
    msgs: list[bytes] = []
    to: list[list[Any]] = []
    for o in out:
        i = index.get(id(o.message))
        if i is None:
            i = index[id(o.message)] = len(msgs)
            msgs.append(wire.encode(o.message))
        to.append([o.device_id, i])
    return {"msgs": msgs, "to": to}


# ---------------------------------------------------------------------- driver side


class RemoteGroup:
    """One SecAgg+ group run by a worker, seen from the driver (the interface of
    :class:`~.secure.SecureAggregation` that :class:`~.grouped.GroupedAggregation` drives).

    Building one opens the group on its worker (errors in the spec surface here, as they would
    building it locally).
    """

    first_stage = Stage.ADVERTISE_KEYS.value

    def __init__(self, spec: GroupSpec, channel: Channel, key: str, now: float) -> None:
        self.params = spec.params
        self.round_id = spec.round_id
        self.roster_ids: tuple[str, ...] = tuple(spec.roster)
        self._channel = channel
        self._key = key
        self._stage = "none"
        self._awaiting: set[str] = set()
        self._report: dict[str, Any] | None = None
        opened = self._call("open", spec=spec.to_plain(), now=now)
        self._start = self._sync(opened)

    # ------------------------------------------------------------------ frames

    def _call(self, op: str, **fields: Any) -> Any:
        reply = unpack(self._channel.call(pack({"op": op, "key": self._key, **fields})))
        if "error" in reply:
            if reply["error"] == "RoundFailed":
                self._stage = Stage.FAILED.value
            raise _ERRORS.get(reply["error"], RoundFailed)(reply["text"])
        return reply["ok"]

    def _sync(self, state: dict[str, Any]) -> list[Outbound]:
        """Take the worker's view of the stage: what it waits for, what it refused, what it sends."""
        self._stage = state["stage"]
        self._awaiting = set(state["awaiting"])
        for device, reason in state["rejected"]:
            log.warning("reply refused: %s", reason, extra={"round": self.round_id, "device": device})
        msgs: list[Any] = [wire.decode(m) for m in state.get("msgs", ())]
        return [Outbound(d, msgs[i]) for d, i in state.get("to", ())]

    # ------------------------------------------------------------------ interface

    @property
    def stage(self) -> str:
        return self._stage

    @property
    def finished(self) -> bool:
        return self._stage == Stage.DONE.value

    def start(self, cohort: Sequence[str], now: float) -> list[Outbound]:
        out, self._start = self._start, []
        return out

    def offer(self, msg: Any) -> bool:
        """Send one reply on to the worker; True once every reply the stage waits for is in (asking
        the worker then, so a reply it refused is awaited again)."""
        expected = _REPLY.get(self._stage)
        if expected is None or not isinstance(msg, expected):
            raise ProtocolError(f"{type(msg).__name__} during {self._stage}")
        device: str = msg.device_id
        if device not in self._awaiting:
            raise ProtocolError("reply from a device not in this stage, or a duplicate reply")
        self._awaiting.discard(device)
        self._channel.cast(pack({"op": "offer", "key": self._key, "device": device, "msg": wire.encode(msg)}))
        if not self._awaiting:
            self._sync(self._call("status"))
        return not self._awaiting

    def ready(self) -> bool:
        return not self._awaiting

    def answered_first_stage(self) -> int:
        if self._stage != self.first_stage:
            return self.params.num_clients
        return self.params.num_clients - len(self._awaiting)

    def answered(self) -> set[str]:
        if self._stage != self.first_stage:
            return set(self.roster_ids)
        return set(self.roster_ids) - self._awaiting

    def close_stage(self, now: float) -> list[Outbound]:
        state = self._call("close", now=now)
        return self._sync(state)

    def result(self) -> tuple[np.ndarray, list[str]]:
        r = self._call("result")
        self._report = {"dropped": r["dropped"], "flagged": r["flagged"]}
        total = np.frombuffer(r["total"], dtype=np.dtype(r["dtype"])).copy()
        return total, list(r["survivors"])

    def _reported(self) -> dict[str, Any]:
        if self._report is not None:
            return self._report
        try:
            return self._call("report")
        except RoundFailed:  # the worker is gone: nothing more to say about the group
            return {"dropped": {}, "flagged": {}}

    def dropped(self) -> dict[str, int]:
        return dict(self._reported()["dropped"])

    def flagged(self) -> dict[str, str]:
        return dict(self._reported()["flagged"])

    def exclude(self, device_id: str, now: float) -> bool:
        r = self._call("exclude", device=device_id, now=now)
        self._sync(r)
        return bool(r["excluded"])

    def dispose(self) -> None:
        """Tell the worker to forget the group (its result was fetched, or the round was given up)."""
        try:
            self._channel.cast(pack({"op": "dispose", "key": self._key}))
        except RoundFailed:
            pass
