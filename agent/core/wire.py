"""The wire format: typed, versioned messages encoded as compact binary, decoded strictly.

Every message that crosses MQTT (or the in-memory transport) is a frozen dataclass registered
with :func:`message`. :func:`encode` and :func:`decode` are the only ways to turn one into
bytes and back. The envelope is a msgpack array ``[MAGIC, WIRE_VERSION, type_name, [fields]]``;
numpy arrays travel as a msgpack extension holding dtype, shape and raw little-endian bytes
(no JSON, no base64, no pickle). Decoding rejects unknown versions and types, truncated,
oversized and trailing input, and any field of the wrong type, always with :class:`WireError`,
and never allocates more than ``max_bytes`` for one message.

Supported field types: ``int`` (int64 range), ``float``, ``bool``, ``str``, ``bytes``,
``numpy.ndarray`` (dtypes in :data:`ARRAY_DTYPES`), ``enum.Enum`` subclasses, nested frozen
dataclasses, ``tuple[T, ...]``, fixed ``tuple[A, B]``, ``dict[str, T]`` and ``T | None``.
Decoded arrays are read-only views of the received bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import struct
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import msgpack
import numpy as np

from fedge.agent.core.errors import WireError

MAGIC = "fedge"
WIRE_VERSION = 1
#: Default ceiling for one encoded message; transports may pass a smaller or larger one.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_ARRAY_EXT = 1
_MAX_NDIM = 8
_INT64_MIN, _INT64_MAX = -(2**63), 2**64 - 1  # msgpack carries int64 and uint64

#: dtype code on the wire -> little-endian numpy dtype.
ARRAY_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<u1"),
    2: np.dtype("<u2"),
    3: np.dtype("<u4"),
    4: np.dtype("<u8"),
    5: np.dtype("<i1"),
    6: np.dtype("<i2"),
    7: np.dtype("<i4"),
    8: np.dtype("<i8"),
    9: np.dtype("<f4"),
    10: np.dtype("<f8"),
    11: np.dtype("bool"),
}
_DTYPE_CODES = {dt: code for code, dt in ARRAY_DTYPES.items()}

T = TypeVar("T")
_REGISTRY: dict[str, type] = {}
_NAMES: dict[type, str] = {}
_HINTS: dict[type, dict[str, Any]] = {}
_loaded = False


def message(name: str) -> Callable[[type[T]], type[T]]:
    """Register a frozen dataclass as the wire message ``name`` (e.g. ``"secagg.masked_input"``)."""

    def register(cls: type[T]) -> type[T]:
        if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            raise TypeError(f"{cls.__name__} must be a frozen dataclass to be a wire message")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise TypeError(f"wire message name {name!r} is already taken by {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        _NAMES[cls] = name
        return cls

    return register


def _ensure_loaded() -> None:
    """Import every message module once, so the registry is complete whoever calls first."""
    global _loaded
    if not _loaded:
        _loaded = True
        importlib.import_module("fedge.agent.core.messages")


def registered() -> dict[str, type]:
    """All registered message types by wire name."""
    _ensure_loaded()
    return dict(_REGISTRY)


def type_name(msg_or_cls: Any) -> str:
    """The wire name of a message instance or class."""
    cls = msg_or_cls if isinstance(msg_or_cls, type) else type(msg_or_cls)
    try:
        return _NAMES[cls]
    except KeyError:
        raise WireError(f"{cls.__name__} is not a registered wire message") from None


def _hints(cls: type) -> dict[str, Any]:
    h = _HINTS.get(cls)
    if h is None:
        h = typing.get_type_hints(cls)
        _HINTS[cls] = h
    return h


# ---------------------------------------------------------------- encoding


def _pack_array(a: np.ndarray) -> msgpack.ExtType:
    dt = a.dtype.newbyteorder("<") if a.dtype.itemsize > 1 else a.dtype
    code = _DTYPE_CODES.get(dt)
    if code is None:
        raise WireError(f"array dtype {a.dtype} cannot travel on the wire")
    if a.ndim > _MAX_NDIM:
        raise WireError(f"array has {a.ndim} dimensions, at most {_MAX_NDIM} travel")
    header = struct.pack(f"<BB{a.ndim}I", code, a.ndim, *a.shape)
    return msgpack.ExtType(_ARRAY_EXT, header + np.ascontiguousarray(a, dtype=dt).tobytes())


def _to_plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return _pack_array(value)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [_to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)]
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    return value


def encode(msg: Any) -> bytes:
    """Encode a registered message to bytes."""
    _ensure_loaded()
    name = type_name(msg)
    try:
        return msgpack.packb([MAGIC, WIRE_VERSION, name, _to_plain(msg)], use_bin_type=True, strict_types=False)
    except (OverflowError, TypeError, ValueError) as e:
        raise WireError(f"cannot encode {name}: {e}") from None


# ---------------------------------------------------------------- decoding


def _unpack_array(code: int, data: bytes) -> np.ndarray:
    if code != _ARRAY_EXT:
        raise WireError(f"unknown extension type {code}")
    if len(data) < 2:
        raise WireError("truncated array header")
    dcode, ndim = data[0], data[1]
    dt = ARRAY_DTYPES.get(dcode)
    if dt is None:
        raise WireError(f"unknown array dtype code {dcode}")
    if ndim > _MAX_NDIM:
        raise WireError(f"array with {ndim} dimensions")
    off = 2 + 4 * ndim
    if len(data) < off:
        raise WireError("truncated array shape")
    shape = struct.unpack_from(f"<{ndim}I", data, 2)
    count = 1
    for s in shape:
        count *= s
    if count * dt.itemsize != len(data) - off:
        raise WireError(f"array of shape {shape} and dtype {dt} does not match its {len(data) - off} bytes")
    return np.frombuffer(data, dtype=dt, count=count, offset=off).reshape(shape)


def _check(value: Any, tp: Any, where: str) -> Any:
    """Check a decoded plain value against annotation ``tp`` and rebuild the typed value."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) != 1:
            raise TypeError(f"{where}: only T | None unions are supported")
        return _check(value, non_none[0], where)
    if tp is int:
        if type(value) is not int:
            raise WireError(f"{where}: expected int, got {type(value).__name__}")
        return value
    if tp is float:
        if type(value) is not float:
            raise WireError(f"{where}: expected float, got {type(value).__name__}")
        return value
    if tp is bool or tp is str or tp is bytes:
        if type(value) is not tp:
            raise WireError(f"{where}: expected {tp.__name__}, got {type(value).__name__}")
        return value
    if tp is np.ndarray:
        if not isinstance(value, np.ndarray):
            raise WireError(f"{where}: expected array, got {type(value).__name__}")
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except (ValueError, TypeError):
            raise WireError(f"{where}: {value!r} is not a valid {tp.__name__}") from None
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise WireError(f"{where}: expected sequence, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise WireError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_check(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise WireError(f"{where}: expected map, got {type(value).__name__}")
        return {_check(k, kt, f"{where} key"): _check(v, vt, f"{where}[{k!r}]") for k, v in value.items()}
    raise TypeError(f"{where}: field type {tp!r} is not supported on the wire")


def _build(cls: type, value: Any, where: str) -> Any:
    fields = dataclasses.fields(cls)
    # a message from an older sender may omit trailing fields that have defaults (added since)
    if (
        not isinstance(value, list)
        or len(value) > len(fields)
        or any(
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in fields[len(value) :]
        )
    ):
        raise WireError(f"{where}: expected {len(fields)} fields")
    hints = _hints(cls)
    kwargs = {f.name: _check(v, hints[f.name], f"{where}.{f.name}") for f, v in zip(fields, value)}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # __post_init__ validation
        raise WireError(f"{where}: {e}") from None


def decode(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, expect: type[T] | None = None) -> T:
    """Decode bytes into a registered message, or raise :class:`WireError` saying why.

    ``expect`` restricts the accepted type; ``max_bytes`` bounds the input and every
    allocation made while decoding it.
    """
    _ensure_loaded()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise WireError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        obj = msgpack.unpackb(
            bytes(data),
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_unpack_array,
            max_bin_len=max_bytes,
            max_str_len=max_bytes,
            max_ext_len=max_bytes,
            max_array_len=max_bytes,
            max_map_len=max_bytes,
        )
    except WireError:
        raise
    except msgpack.ExtraData:
        raise WireError("trailing bytes after the message") from None
    except Exception as e:  # msgpack raises ValueError, FormatError, StackError, UnicodeDecodeError...
        raise WireError(f"malformed message: {type(e).__name__}") from None
    if not isinstance(obj, list) or len(obj) != 4:
        raise WireError("not a fedge envelope")
    magic, version, name, body = obj
    if magic != MAGIC:
        raise WireError("not a fedge message (bad magic)")
    if type(version) is not int or version != WIRE_VERSION:
        raise WireError(f"unsupported wire version {version!r}")
    if not isinstance(name, str) or name not in _REGISTRY:
        raise WireError(f"unknown message type {name!r}")
    cls = _REGISTRY[name]
    if expect is not None and cls is not expect:
        raise WireError(f"expected {type_name(expect)}, got {name}")
    return _build(cls, body, name)
