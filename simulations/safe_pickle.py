"""Read third-party pickles without running code: a pickle-opcode interpreter that builds data only.

``pickle.load`` calls whatever callables a file names. :func:`read` instead walks the opcodes with
``pickletools.genops`` and keeps every global as a :class:`Global` record and every call as a
:class:`Call` record (its state set by BUILD); nothing is imported and nothing is called, except
``_codecs.encode`` with the ``latin1`` codec, which protocol-0/1 pickles use to spell bytes.
Converters (:func:`ndarray_of`) then turn the few records we trust into data, refusing anything
else (object arrays included). Supported: protocols 0 to 2 without extension registry opcodes.
"""

from __future__ import annotations

import dataclasses
import io
import pickletools
from typing import Any

import numpy as np

from fedge.agent.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Global:
    """A global the pickle names (never imported)."""

    module: str
    name: str


@dataclasses.dataclass
class Call:
    """A call the pickle asks for (never made), and the state BUILD gave its result."""

    func: Any
    args: tuple[Any, ...]
    state: Any = None


class _Mark:
    pass


_MARK = _Mark()
_PUSH_ARG = {
    "BININT", "BININT1", "BININT2", "INT", "LONG", "LONG1", "LONG4", "BINFLOAT", "FLOAT",
    "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
    "BINSTRING", "SHORT_BINSTRING", "STRING",
}  # fmt: skip
_PUSH_CONST = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}


def _until_mark(stack: list[Any]) -> list[Any]:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            items = stack[i + 1 :]
            del stack[i:]
            return items
    raise ConfigError("pickle: MARK missing")


def read(data: bytes) -> Any:
    """The object tree a pickle describes, with :class:`Global`/:class:`Call` records for code."""
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    try:
        for op, arg, _pos in pickletools.genops(io.BytesIO(data)):
            name = op.name
            if name in _PUSH_ARG:
                stack.append(arg)
            elif name in _PUSH_CONST:
                stack.append(_PUSH_CONST[name])
            elif name in ("PROTO", "FRAME"):
                continue
            elif name == "MARK":
                stack.append(_MARK)
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg)] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                stack.append(memo[int(arg)])
            elif name == "EMPTY_DICT":
                stack.append({})
            elif name == "EMPTY_LIST":
                stack.append([])
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name == "TUPLE":
                stack.append(tuple(_until_mark(stack)))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = tuple(stack[-n:])
                del stack[-n:]
                stack.append(items)
            elif name in ("LIST", "DICT"):
                items = _until_mark(stack)
                stack.append(list(items) if name == "LIST" else dict(zip(items[::2], items[1::2])))
            elif name == "APPEND":
                v = stack.pop()
                stack[-1].append(v)
            elif name == "APPENDS":
                items = _until_mark(stack)
                stack[-1].extend(items)
            elif name == "SETITEM":
                v, k = stack.pop(), stack.pop()
                stack[-1][k] = v
            elif name == "SETITEMS":
                items = _until_mark(stack)
                stack[-1].update(zip(items[::2], items[1::2]))
            elif name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                stack.append(Global(module, attr))
            elif name == "STACK_GLOBAL":
                attr, module = stack.pop(), stack.pop()
                stack.append(Global(module, attr))
            elif name == "REDUCE":
                args, func = stack.pop(), stack.pop()
                stack.append(_reduce(func, tuple(args)))
            elif name == "NEWOBJ":
                args, cls = stack.pop(), stack.pop()
                stack.append(Call(cls, tuple(args)))
            elif name == "BUILD":
                state = stack.pop()
                if not isinstance(stack[-1], Call):
                    raise ConfigError("pickle: BUILD on something that is not a constructed object")
                stack[-1].state = state
            elif name == "POP":
                stack.pop()
            elif name == "POP_MARK":
                _until_mark(stack)
            elif name == "DUP":
                stack.append(stack[-1])
            elif name == "STOP":
                if len(stack) != 1:
                    raise ConfigError("pickle: malformed stream (stack at STOP)")
                return stack[0]
            else:
                raise ConfigError(f"pickle: opcode {name} is not supported by the safe reader")
    except (ValueError, IndexError, KeyError, TypeError) as e:
        raise ConfigError(f"pickle: malformed stream ({e})") from None
    raise ConfigError("pickle: no STOP opcode")


def _reduce(func: Any, args: tuple[Any, ...]) -> Any:
    if func == Global("_codecs", "encode"):
        text, codec = args
        if codec != "latin1" or not isinstance(text, str):
            raise ConfigError(f"pickle: _codecs.encode with {codec!r} is not allowed")
        return text.encode("latin1")
    return Call(func, args)


def _is(obj: Any, module: str, name: str) -> bool:
    return isinstance(obj, Call) and obj.func == Global(module, name)


def dtype_of(obj: Any) -> np.dtype:
    """A numpy dtype from its pickled ``numpy.dtype(code, 0, 1)`` call and state; object dtypes refused."""
    if not _is(obj, "numpy", "dtype") or not obj.args or not isinstance(obj.args[0], str):
        raise ConfigError("pickle: expected a numpy dtype")
    code = obj.args[0]
    dt = np.dtype(code)
    if dt.hasobject or dt.kind not in "biufc":
        raise ConfigError(f"pickle: numpy dtype {code!r} is refused (only plain numbers are read)")
    state = obj.state
    if isinstance(state, tuple) and len(state) > 1 and state[1] in "<>":
        dt = dt.newbyteorder(state[1])
    return dt


def ndarray_of(obj: Any) -> np.ndarray:
    """A numpy array from its pickled ``_reconstruct`` call and ``(version, shape, dtype, fortran, bytes)`` state."""
    if not (_is(obj, "numpy.core.multiarray", "_reconstruct") or _is(obj, "numpy._core.multiarray", "_reconstruct")):
        raise ConfigError("pickle: expected a numpy array")
    state = obj.state
    if not isinstance(state, tuple) or len(state) != 5:
        raise ConfigError("pickle: numpy array state is malformed")
    _version, shape, dtype, fortran, raw = state
    dt = dtype_of(dtype)
    if not isinstance(raw, bytes):
        raise ConfigError("pickle: numpy array data is not bytes")
    shape = tuple(int(s) for s in shape)
    count = int(np.prod(shape)) if shape else 1
    if len(raw) != count * dt.itemsize:
        raise ConfigError(f"pickle: numpy array of shape {shape} has {len(raw)} bytes, expected {count * dt.itemsize}")
    arr = np.frombuffer(raw, dtype=dt, count=count)
    return arr.reshape(shape, order="F" if fortran else "C").astype(dt.newbyteorder("="))
