"""Strict building of frozen config dataclasses from parsed TOML tables.

A config section is a frozen dataclass whose fields carry a :func:`rule` (range, choices,
pattern). :func:`build` checks a mapping against it: unknown keys, missing required fields,
wrong types and out-of-range values all raise :class:`ConfigError` naming the source, the dotted
field path and what was expected, so an operator can fix a file from one line.
Supported field types: ``int``, ``float`` (ints accepted), ``bool``, ``str``, ``T | None``,
``tuple[int, ...]``/``tuple[float, ...]`` and nested dataclasses (TOML tables).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from fedge.agent.core.errors import ConfigError

T = TypeVar("T")
_RULE = "fedge.rule"


@dataclasses.dataclass(frozen=True)
class Rule:
    """Value constraints of one field, checked after its type."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself excluded
    choices: tuple[str, ...] = ()
    pattern: str | None = None
    pattern_what: str = ""
    min_len: int = 0
    max_len: int | None = None


def rule(default: Any = dataclasses.MISSING, **constraints: Any) -> Any:
    """A dataclass field with constraints; no ``default`` means the field is required."""
    kw: dict[str, Any] = {"metadata": {_RULE: Rule(**constraints)}}
    if default is not dataclasses.MISSING:
        kw["default"] = default
    return dataclasses.field(**kw)


def rule_of(f: dataclasses.Field[Any]) -> Rule:
    """The constraints of a dataclass field (none if it was declared without :func:`rule`)."""
    return f.metadata.get(_RULE, Rule())


def fail(source: str, where: str, expected: str, value: Any = dataclasses.MISSING) -> ConfigError:
    """The one error shape: ``source: field.path: expected X, got Y``."""
    got = "" if value is dataclasses.MISSING else f", got {show(value)}"
    return ConfigError(f"{source}: {where}: expected {expected}{got}")


def show(value: Any) -> str:
    """A value the way it looks in TOML, shortened."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value)
    elif isinstance(value, Mapping):
        text = "a table"
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(show(v) for v in value) + "]"
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _range_text(r: Rule, unit: str) -> str:
    if r.lo is not None and r.hi is not None:
        left = "(" if r.lo_open else "["
        return f"{unit} in {left}{_num(r.lo)}, {_num(r.hi)}]"
    if r.lo is not None:
        return f"{unit} {'>' if r.lo_open else '>='} {_num(r.lo)}"
    if r.hi is not None:
        return f"{unit} <= {_num(r.hi)}"
    return unit


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def describe(tp: Any, r: Rule) -> str:
    """What a field expects, in words: 'an integer >= 1', 'one of "off", "local"'."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return describe(_non_none(tp), r)
    if tp is bool:
        return "true or false"
    if tp is int:
        return _range_text(r, "an integer")
    if tp is float:
        return _range_text(r, "a number")
    if tp is str:
        if r.choices:
            return "one of " + ", ".join(json.dumps(c) for c in r.choices)
        if r.pattern_what:
            return r.pattern_what
        return "a non-empty string" if r.min_len else "a string"
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        inner = describe(item, dataclasses.replace(r, min_len=0, max_len=None))
        inner = re.sub(r"^an? (\w+)", r"\1s", inner)
        n = f"{r.min_len} to {r.max_len}" if r.max_len is not None else f"at least {r.min_len}"
        return f"a list of {n} {inner}"
    if dataclasses.is_dataclass(tp):
        return "a table"
    raise TypeError(f"unsupported config field type {tp!r}")


def _non_none(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) != 1:
        raise TypeError(f"only T | None unions are supported, not {tp!r}")
    return args[0]


def _in_range(x: float, r: Rule) -> bool:
    if r.lo is not None and (x < r.lo or (r.lo_open and x == r.lo)):
        return False
    return r.hi is None or x <= r.hi


def check_value(value: Any, tp: Any, r: Rule, source: str, where: str) -> Any:
    """Check one value against its annotation and rule; return it typed (lists become tuples)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return check_value(value, _non_none(tp), r, source, where)
    bad = fail(source, where, describe(tp, r), value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise bad
        return build(tp, value, source, where)
    if tp is bool:
        if type(value) is not bool:
            raise bad
        return value
    if tp is int:
        if type(value) is not int or not _in_range(value, r):
            raise bad
        return value
    if tp is float:
        if type(value) not in (int, float) or not math.isfinite(value) or not _in_range(value, r):
            raise bad
        return float(value)
    if tp is str:
        if type(value) is not str or len(value) < r.min_len:
            raise bad
        if r.choices and value not in r.choices:
            raise bad
        if r.pattern and not re.fullmatch(r.pattern, value):
            raise bad
        return value
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, list) or len(value) < r.min_len:
            raise bad
        if r.max_len is not None and len(value) > r.max_len:
            raise bad
        item_tp = typing.get_args(tp)[0]
        item_rule = dataclasses.replace(r, min_len=0, max_len=None)
        return tuple(check_value(v, item_tp, item_rule, source, f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(f"{where}: unsupported config field type {tp!r}")


def _defaultable(f: dataclasses.Field[Any], tp: Any) -> bool:
    """A nested section may be left out when every one of its fields has a default."""
    if not dataclasses.is_dataclass(tp):
        return False
    return all(
        g.default is not dataclasses.MISSING or g.default_factory is not dataclasses.MISSING
        for g in dataclasses.fields(tp)
    )


def build(cls: type[T], table: Mapping[str, Any], source: str, where: str = "") -> T:
    """Build the frozen dataclass ``cls`` from ``table`` or raise ConfigError naming the field."""
    hints = typing.get_type_hints(cls)
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name.rstrip("_"): f for f in dataclasses.fields(cls)}  # "class_" is spelt "class"
    prefix = f"{where}." if where else ""
    for key in table:
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"{source}: {prefix}{key}: unknown field{hint}; expected one of {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for key, f in fields.items():
        tp = hints[f.name]
        r = rule_of(f)
        if key in table:
            kwargs[f.name] = check_value(table[key], tp, r, source, prefix + key)
        elif _defaultable(f, tp) and f.default is dataclasses.MISSING:
            kwargs[f.name] = build(tp, {}, source, prefix + key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            what = f"a [{prefix}{key}] table" if dataclasses.is_dataclass(tp) else describe(tp, r)
            raise ConfigError(f"{source}: {prefix}{key}: missing; expected {what}")
    try:
        return cls(**kwargs)
    except ConfigError as e:  # cross-field checks in __post_init__ name their own field
        raise ConfigError(f"{source}: {prefix}{e}") from None
