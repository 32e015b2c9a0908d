"""Enums whose members are their names on the wire, on disk and in text: ``str(m) == m.value``."""

from __future__ import annotations

import enum


class ValueEnum(str, enum.Enum):
    """A str enum that prints, formats and serializes as its value (never ``Class.MEMBER``)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)
