"""Docs that tests keep honest: every CLI command is mentioned in README.md, in its user's section.

Adding a command without a README line fails here; that is the point.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from fedge.agent.cli import cli as agent_cli
from fedge.coordinator.service.cli import cli as coordinator_cli
from fedge.simulations.cli import cli as sim_cli

README = Path(__file__).resolve().parent.parent / "README.md"
CLIS = {"fedge-agent": agent_cli, "fedge-coordinator": coordinator_cli, "fedge-sim": sim_cli}


def command_paths(group: click.Command, prefix: str) -> list[str]:
    """``prefix sub subsub`` for every visible command below ``group``, groups included."""
    out = []
    if isinstance(group, click.Group):
        for name, cmd in sorted(group.commands.items()):
            if cmd.hidden:
                continue
            out.append(f"{prefix} {name}")
            out += command_paths(cmd, f"{prefix} {name}")
    return out


def section(text: str, prog: str) -> str:
    """The README section whose ``## `` heading names ``prog`` in backticks."""
    m = re.search(rf"^## [^\n]*`{re.escape(prog)}`[^\n]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"README.md has no '## ... (`{prog}`)' section"
    return m.group(1)


def mentioned(path: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(path)}(?![\w-])", text) is not None


ALL = [(prog, path) for prog, group in CLIS.items() for path in command_paths(group, prog)]


@pytest.mark.parametrize("prog,path", ALL, ids=[p for _, p in ALL])
def test_command_is_documented_in_its_section(prog, path):
    assert mentioned(path, section(README.read_text(), prog)), f"add `{path}` to README.md"


def test_walk_finds_nested_commands_and_skips_hidden():
    @click.group()
    def top() -> None: ...

    @top.group()
    def rounds() -> None: ...

    @rounds.command()
    def start() -> None: ...

    @top.command(hidden=True)
    def secret() -> None: ...

    assert command_paths(top, "x") == ["x rounds", "x rounds start"]
    assert ("fedge-agent", "fedge-agent check-config") in ALL


def test_mention_needs_whole_words():
    assert mentioned("fedge-agent run", "`fedge-agent run --profile p.toml`")
    assert not mentioned("fedge-agent run", "fedge-agent running")
    assert not mentioned("fedge-agent run", "fedge-agent run-once")
    text = "## For device owners (`fedge-agent`)\nfedge-agent a\n## For researchers (`fedge-sim`)\nfedge-sim b\n"
    assert mentioned("fedge-agent a", section(text, "fedge-agent"))
    assert not mentioned("fedge-sim b", section(text, "fedge-agent"))


@pytest.mark.parametrize("prog", sorted(CLIS))
def test_shell_completion_lines_in_the_readme_work(prog: str) -> None:
    """The README's completion line for ``prog`` names click's variable for it, and the installed command
    answers it with a bash script and, asked to complete, with its real subcommands."""
    import os
    import subprocess
    import sys

    var = f"_{prog.replace('-', '_').upper()}_COMPLETE"
    assert f'eval "$({var}=bash_source {prog})"' in README.read_text()
    exe = str(Path(sys.executable).parent / prog)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_COMPLETE")}
    script = subprocess.run([exe], env={**env, var: "bash_source"}, capture_output=True, text=True, timeout=60)
    assert (
        script.returncode == 0 and f"complete -o nosort -F _{prog.replace('-', '_')}_completion {prog}" in script.stdout
    )
    first = sorted(c for c in CLIS[prog].commands if not CLIS[prog].commands[c].hidden)[0]
    done = subprocess.run(
        [exe],
        env={**env, var: "bash_complete", "COMP_WORDS": f"{prog} {first[:2]}", "COMP_CWORD": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and f"plain,{first}" in done.stdout.splitlines()


#: ``import agent...`` / ``from coordinator... import`` in a doc's code: a name fedge no longer installs.
BARE_IMPORT = re.compile(r"^\s*(?:from|import)\s+(agent|coordinator|simulations)(?:\.|\s|$)", re.M)


def test_no_doc_imports_a_module_under_a_name_fedge_does_not_install():
    """Only ``fedge`` is installed (``fedge.agent``, ``fedge.coordinator``, ``fedge.simulations``): a doc
    that shows ``from coordinator.pki import ...`` hands its reader an ImportError."""
    root = README.parent
    docs = [p for p in root.rglob("*.md") if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    docs = [p for p in docs if "egg-info" not in str(p) and "node_modules" not in str(p)]
    bad = [
        f"{p.relative_to(root)}:{p.read_text()[: m.start()].count(chr(10)) + 1}: {m.group(0).strip()}"
        for p in docs
        for m in BARE_IMPORT.finditer(p.read_text())
    ]
    assert not bad, bad
