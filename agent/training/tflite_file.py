"""Reads the few facts fedge needs straight from a .tflite flatbuffer: op codes and metadata entries.

A runtime does not expose either, and the ``flatbuffers`` package is not an agent dependency,
so this walks the TFLite schema (``Model``, ``OperatorCode``, ``Metadata``, ``Buffer``) by hand.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from fedge.agent.core.errors import TrainingError

_IDENTIFIER = b"TFL3"
#: ``BuiltinOperator.CUSTOM``: custom (and Flex) ops use it with a ``custom_code`` name.
BUILTIN_CUSTOM = 32
#: ``BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES``: the real code is in ``builtin_code``.
_PLACEHOLDER = 127


@dataclass(frozen=True)
class OpCode:
    """One entry of the model's operator-code table."""

    builtin_code: int
    version: int
    custom_code: str | None

    @property
    def is_custom(self) -> bool:
        """True for custom ops, which include every Flex (``Flex...``) op."""
        return self.builtin_code == BUILTIN_CUSTOM or self.custom_code is not None


@dataclass(frozen=True)
class ModelFile:
    """What :func:`read_model_file` found: the op-code table and named metadata buffers."""

    op_codes: tuple[OpCode, ...]
    metadata: dict[str, bytes]


class _Reader:
    """Bounds-checked access to flatbuffer tables, vectors and strings."""

    def __init__(self, data: bytes):
        self.d = data

    def _u(self, fmt: str, pos: int) -> int:
        if pos < 0 or pos + struct.calcsize(fmt) > len(self.d):
            raise TrainingError("truncated or malformed .tflite flatbuffer")
        return struct.unpack_from(fmt, self.d, pos)[0]

    def field(self, table: int, index: int) -> int | None:
        """Absolute position of field ``index`` of the table at ``table``, or None if absent."""
        vtable = table - self._u("<i", table)
        vsize = self._u("<H", vtable)
        slot = 4 + 2 * index
        if slot >= vsize:
            return None
        off = self._u("<H", vtable + slot)
        return table + off if off else None

    def scalar(self, table: int, index: int, fmt: str, default: int) -> int:
        pos = self.field(table, index)
        return default if pos is None else self._u(fmt, pos)

    def ref(self, table: int, index: int) -> int | None:
        pos = self.field(table, index)
        return None if pos is None else pos + self._u("<I", pos)

    def vector(self, table: int, index: int) -> list[int]:
        """Positions of the tables a vector-of-tables field points to."""
        vec = self.ref(table, index)
        if vec is None:
            return []
        n = self._u("<I", vec)
        return [vec + 4 + 4 * i + self._u("<I", vec + 4 + 4 * i) for i in range(n)]

    def bytes_(self, table: int, index: int) -> bytes | None:
        vec = self.ref(table, index)
        if vec is None:
            return None
        n = self._u("<I", vec)
        if vec + 4 + n > len(self.d):
            raise TrainingError("truncated or malformed .tflite flatbuffer")
        return self.d[vec + 4 : vec + 4 + n]


def read_model_file(data: bytes) -> ModelFile:
    """Parse op codes and metadata of a TFLite flatbuffer; TrainingError if it is not one."""
    if len(data) < 8 or data[4:8] != _IDENTIFIER:
        raise TrainingError("not a TFLite flatbuffer (missing TFL3 identifier)")
    r = _Reader(data)
    root = r._u("<I", 0)
    ops = []
    for t in r.vector(root, 1):  # Model.operator_codes
        deprecated = r.scalar(t, 0, "<b", 0)
        code = r.scalar(t, 3, "<i", 0)
        custom = r.bytes_(t, 1)
        ops.append(
            OpCode(
                builtin_code=max(deprecated, code) if deprecated != _PLACEHOLDER else code,
                version=r.scalar(t, 2, "<i", 1),
                custom_code=None if custom is None else custom.decode("utf-8", "replace"),
            )
        )
    buffers = r.vector(root, 4)  # Model.buffers
    meta: dict[str, bytes] = {}
    for t in r.vector(root, 6):  # Model.metadata
        name = r.bytes_(t, 0)
        idx = r.scalar(t, 1, "<I", 0)
        if name is None or idx >= len(buffers):
            raise TrainingError("malformed metadata entry in .tflite flatbuffer")
        meta[name.decode("utf-8", "replace")] = r.bytes_(buffers[idx], 0) or b""
    return ModelFile(op_codes=tuple(ops), metadata=meta)
