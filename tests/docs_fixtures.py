"""The README's commands, as a test reads them: per user section, comments stripped, one per line."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_section(prog: str, text: str | None = None) -> str:
    """The README section whose ``## `` heading names ``prog`` in backticks."""
    text = README.read_text() if text is None else text
    m = re.search(rf"^## [^\n]*`{re.escape(prog)}`[^\n]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"README.md has no '## ... (`{prog}`)' section"
    return m.group(1)


def readme_commands(prog: str) -> list[str]:
    """Every command line of the section's ``sh`` blocks, without its trailing ``# comment``."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", readme_section(prog), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(re.sub(r"\s+", " ", line))
    return out


def readme_snippet(pattern: str) -> str:
    """The first inline code span of the README matching ``pattern``, line breaks made spaces."""
    m = re.search(rf"`({pattern})`", README.read_text(), re.S)
    assert m, f"README.md has no `{pattern}` snippet"
    return re.sub(r"\s+", " ", m.group(1))
