"""The wire format: every registered message round-trips; bad bytes raise only WireError."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedge.agent.core import wire
from fedge.agent.core.errors import WireError
from fedge.agent.core.messages.common import Ack
from tests.wire_strategies import array_strategy, dataclass_strategy, equal

MESSAGES = sorted(wire.registered().items())


@wire.message("test.everything")
@dataclass(frozen=True)
class _Everything:
    """A test-only message using every supported field type."""

    i: int
    f: float
    b: bool
    s: str
    raw: bytes
    arr: np.ndarray
    opt: int | None
    seq: tuple[str, ...]
    pair: tuple[int, bytes]
    mapping: dict[str, float]
    nested: Ack


def test_registry_is_not_empty() -> None:
    assert "common.ack" in wire.registered()


@pytest.mark.parametrize("name,cls", MESSAGES + [("test.everything", _Everything)], ids=lambda v: str(v))
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much], deadline=None)
@given(data=st.data())
def test_every_message_round_trips(name: str, cls: type, data: st.DataObject) -> None:
    msg = data.draw(dataclass_strategy(cls))
    blob = wire.encode(msg)
    back = wire.decode(blob)
    assert equal(msg, back), (msg, back)
    assert wire.decode(blob, expect=cls) is not None


@given(arr=array_strategy())
@settings(max_examples=200, deadline=None)
def test_arrays_travel_as_raw_little_endian(arr: np.ndarray) -> None:
    blob = wire.encode(_Everything(0, 0.0, False, "", b"", arr, None, (), (0, b""), {}, Ack("d", 0, "s", "m")))
    assert arr.astype(arr.dtype.newbyteorder("<")).tobytes() in blob  # raw, not base64 or JSON
    back = wire.decode(blob, expect=_Everything).arr
    assert back.shape == arr.shape and back.tobytes() == arr.astype(back.dtype).tobytes()
    assert not back.flags.writeable


def test_big_endian_arrays_are_sent_little_endian() -> None:
    a = np.arange(5, dtype=">u4")
    blob = wire.encode(_Everything(0, 0.0, False, "", b"", a, None, (), (0, b""), {}, Ack("d", 0, "s", "m")))
    back = wire.decode(blob, expect=_Everything).arr
    assert back.dtype == np.dtype("<u4") and back.tolist() == [0, 1, 2, 3, 4]


def _env(name: str, body: object, version: int = wire.WIRE_VERSION, magic: str = wire.MAGIC) -> bytes:
    return msgpack.packb([magic, version, name, body], use_bin_type=True)


GOOD = wire.encode(Ack("dev-1", 7, "masked_input", "m-1"))


@pytest.mark.parametrize(
    "blob,why",
    [
        (b"", "malformed"),
        (GOOD[:-1], "malformed"),
        (GOOD + b"\x00", "trailing"),
        (_env("common.ack", ["d", 1, "s", "m"], version=2), "unsupported wire version"),
        (_env("common.ack", ["d", 1, "s", "m"], magic="other"), "bad magic"),
        (_env("no.such", ["d", 1, "s", "m"]), "unknown message type"),
        (_env("common.ack", ["d", 1, "s"]), "expected 4 fields"),
        (_env("common.ack", ["d", "1", "s", "m"]), "expected int"),
        (_env("common.ack", ["d", True, "s", "m"]), "expected int"),
        (_env("common.ack", [b"d", 1, "s", "m"]), "expected str"),
        (msgpack.packb({"a": 1}), "not a fedge envelope"),
    ],
)
def test_bad_input_is_named(blob: bytes, why: str) -> None:
    with pytest.raises(WireError, match=why):
        wire.decode(blob)


def test_oversized_input_is_refused_before_parsing() -> None:
    with pytest.raises(WireError, match="exceeds the limit"):
        wire.decode(GOOD, max_bytes=len(GOOD) - 1)
    assert wire.decode(GOOD, max_bytes=len(GOOD)) == Ack("dev-1", 7, "masked_input", "m-1")


def test_wrong_type_is_refused_when_expected() -> None:
    with pytest.raises(WireError, match="expected"):
        wire.decode(GOOD, expect=_Everything)


def test_array_header_cannot_claim_more_than_it_carries() -> None:
    # shape claims 10^9 uint32 elements but only 8 bytes follow: refused without allocating
    payload = bytes([3, 1]) + (10**9).to_bytes(4, "little") + b"\x00" * 8
    body = [0, 0.0, False, "", b"", msgpack.ExtType(1, payload), None, [], [0, b""], {}, ["d", 0, "s", "m"]]
    with pytest.raises(WireError, match="does not match"):
        wire.decode(_env("test.everything", body))


def test_unregistered_or_mutable_classes_cannot_be_messages() -> None:
    @dataclass
    class Mutable:
        x: int

    with pytest.raises(TypeError):
        wire.message("test.mutable")(Mutable)
    with pytest.raises(WireError):
        wire.encode(Mutable(1))


def _corpus() -> list[bytes]:
    """One non-trivial valid encoding per registered message type, as seeds for mutation."""
    from hypothesis import Phase, find

    quick = settings(phases=[Phase.generate], database=None, max_examples=1000)  # no shrinking
    seeds = [GOOD]
    for _name, cls in MESSAGES + [("test.everything", _Everything)]:
        msg = find(dataclass_strategy(cls), lambda m: len(wire.encode(m)) > 48, settings=quick, random=random.Random(1))
        seeds.append(wire.encode(msg))
    return seeds


def _mutate(rng: random.Random, blob: bytes) -> bytes:
    b = bytearray(blob)
    op = rng.randrange(6)
    if op == 0 and b:  # flip bytes
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif op == 1 and b:  # truncate
        del b[rng.randrange(len(b)) :]
    elif op == 2:  # append garbage
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif op == 3 and b:  # insert
        i = rng.randrange(len(b))
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif op == 4 and len(b) > 2:  # delete a slice
        i = rng.randrange(len(b) - 1)
        del b[i : i + rng.randint(1, 8)]
    else:  # pure random
        b = bytearray(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    return bytes(b)


def test_fuzz_100k_random_and_mutated_inputs_raise_only_wire_error() -> None:
    """100,000 random and mutated byte strings: decode returns a message or raises WireError."""
    rng = random.Random(20261125)
    seeds = _corpus()
    decoded = rejected = 0
    for i in range(100_000):
        blob = _mutate(rng, seeds[i % len(seeds)])
        try:
            wire.decode(blob, max_bytes=1 << 20)
            decoded += 1
        except WireError:
            rejected += 1
    assert decoded + rejected == 100_000
    assert rejected > 90_000  # most mutations must be caught, not silently accepted


def test_dataclass_fields_are_positional_and_compact() -> None:
    blob = wire.encode(Ack("d", 1, "s", "m"))
    assert b"device_id" not in blob  # field names never travel
    assert len(blob) <= 8 + len("fedge") + len("common.ack") + 4 + 4  # envelope + 4 short fields
    assert [f.name for f in dataclasses.fields(Ack)] == ["device_id", "round_id", "stage", "message_id"]
