"""docs/profiles.md lists every profile field with exactly the schema's expectation and default."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from fedge.agent.core.profiles import DeviceProfile
from fedge.agent.core.schema import describe, rule_of, show

DOC = Path(__file__).resolve().parent.parent / "docs" / "profiles.md"


def schema_rows(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted field, expectation, default) for every leaf field of the profile schema."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f.name.rstrip("_")
        if dataclasses.is_dataclass(tp):
            rows += schema_rows(tp, f"{prefix}{key}.")
            continue
        if f.default is dataclasses.MISSING:
            default = "required"
        else:
            default = "none" if f.default is None else show(f.default)
        rows.append((f"{prefix}{key}", describe(tp, rule_of(f)), default))
    return rows


def doc_rows() -> list[tuple[str, str, str]]:
    rows = []
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 4:
            rows.append((cells[0].strip("`"), cells[1], cells[2]))
    return rows


def test_doc_table_matches_the_schema():
    documented = doc_rows()
    assert len(documented) >= 40
    assert documented == schema_rows(DeviceProfile)
