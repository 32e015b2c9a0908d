"""A copy of the checkout's files, as a fresh clone would have them, for tests that build fedge.

Building in the checkout itself writes a ``build/`` there, whose stale files leak into later wheels
and which two builds at once trip over."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def checkout_copy(dest: Path) -> Path:
    """Copy every tracked (and untracked, not ignored) file of the checkout into ``dest``."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    return dest
