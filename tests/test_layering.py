"""Package layering, read from the AST of every module: what each package may import.

- ``agent/`` never imports the coordinator, the simulator, or heavy/server-only libraries
  (TensorFlow only inside a ``modelgen`` subpackage, which regenerates the committed models);
- ``agent/`` imports only the standard library and the agent's own dependencies;
- only ``agent/core/crypto/`` imports cryptographic primitives (``nacl``; ``cryptography`` only
  for the coordinator's X.509), and the agent never loads ``cryptography`` (8.7 MiB of RSS);
- nothing in ``agent/``, ``coordinator/``, ``simulations/`` pickles.
Imports inside functions and ``importlib.import_module("...")`` with a literal name count too.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "coordinator", "simulations")

#: ``cryptography`` costs the agent 8.7 MiB of RSS at import; pynacl does the agent's crypto.
AGENT_FORBIDDEN = {"coordinator", "simulations", "tensorflow", "keras", "ray", "matplotlib", "amqtt", "cryptography"}
#: TensorFlow is allowed here and nowhere else in agent/: it only regenerates the committed models.
MODELGEN_ALLOWED = {"tensorflow", "keras"}
#: The agent's runtime dependencies (pyproject ``dependencies``), as import names.
AGENT_DEPENDENCIES = {
    "numpy", "tflite_runtime", "ai_edge_litert", "paho", "nacl",
    "sqlite_utils", "msgpack", "click", "dp_accounting",
}  # fmt: skip
CRYPTO_LIBS = {"cryptography", "nacl"}
CRYPTO_PACKAGE = ("agent", "core", "crypto")
#: Modules outside agent/core/crypto/ allowed to import a crypto library, each with its reason.
#: Keep this list short; protocol keys, seeds, nonces, AEAD and signatures stay in agent.core.crypto.
CRYPTO_EXCEPTIONS = {
    ("coordinator", "pki"): "X.509 certificates for the broker's TLS only, not protocol crypto",
}
PICKLERS = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle"}


def module_name(path: Path) -> tuple[str, ...]:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" else parts


def imports(tree: ast.AST, module: tuple[str, ...], is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of everything a module imports, wherever in the module."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(module if is_package else module[:-1])
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            found += [(node.lineno, f"{name}.{a.name}") for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if fname in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def pickle_loads(tree: ast.AST) -> list[int]:
    """Lines of calls that pass ``allow_pickle`` anything but a literal False (numpy.load...)."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for kw in node.keywords
        if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False)
    ]


def violations(path_parts: tuple[str, ...], source: str, is_package: bool = False) -> list[str]:
    """Every layering rule broken by one module, as ``module:line: why``."""
    tree = ast.parse(source)
    module = path_parts
    where = ".".join(module)
    in_agent = module[0] == "agent"
    in_modelgen = "modelgen" in module
    in_crypto = module[: len(CRYPTO_PACKAGE)] == CRYPTO_PACKAGE or module in CRYPTO_EXCEPTIONS
    out = []
    for line, name in imports(tree, module, is_package):
        root = name.split(".")[0]
        if in_agent and root in AGENT_FORBIDDEN and not (in_modelgen and root in MODELGEN_ALLOWED):
            out.append(f"{where}:{line}: agent/ must not import {name}")
        elif (
            in_agent
            and root not in AGENT_DEPENDENCIES | {"agent", ""}
            and root not in sys.stdlib_module_names
            and not (in_modelgen and root in MODELGEN_ALLOWED)
        ):
            out.append(f"{where}:{line}: {name} is not an agent dependency")
        if root in CRYPTO_LIBS and not in_crypto:
            out.append(f"{where}:{line}: only agent/core/crypto/ may import {name}")
        if root in PICKLERS:
            out.append(f"{where}:{line}: nothing is pickled, yet it imports {name}")
    out += [f"{where}:{line}: allow_pickle must stay False" for line in pickle_loads(tree)]
    return out


MODULES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_modules_are_found():
    names = {".".join(module_name(p)) for p in MODULES}
    assert {"agent.cli", "agent.core.wire", "coordinator.cli", "simulations.cli"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_respects_layering(path):
    assert violations(module_name(path), path.read_text(), path.name == "__init__.py") == []


@pytest.mark.parametrize(
    "module,source,expected",
    [
        (("agent", "x"), "import coordinator.store", "must not import coordinator.store"),
        (("agent", "x"), "from simulations import driver", "must not import simulations"),
        (("agent", "x"), "def f():\n    import tensorflow as tf", "must not import tensorflow"),
        (("agent", "x"), "import importlib\nimportlib.import_module('ray')", "must not import ray"),
        (("agent", "core", "x"), "from matplotlib import pyplot", "must not import matplotlib"),
        (("agent", "x"), "from amqtt.broker import Broker", "must not import amqtt"),
        (("agent", "x"), "import sklearn", "sklearn is not an agent dependency"),
        (("agent", "training", "modelgen", "build"), "import coordinator", "must not import coordinator"),
        (("agent", "core", "secagg", "x"), "import nacl.bindings", "only agent/core/crypto/"),
        (("agent", "core", "crypto", "aead"), "from cryptography.hazmat import primitives", "must not import"),
        (("coordinator", "x"), "import nacl.signing", "only agent/core/crypto/"),
        (("simulations", "x"), "import pickle", "nothing is pickled"),
        (("coordinator", "x"), "from marshal import dumps", "nothing is pickled"),
        (("agent", "x"), "import shelve", "nothing is pickled"),
        (("simulations", "x"), "import numpy as np\nnp.load('a.npy', allow_pickle=True)", "allow_pickle"),
    ],
)
def test_checker_catches_violations(module, source, expected):
    found = violations(module, source)
    assert any(expected in v for v in found), found


@pytest.mark.parametrize(
    "module,source",
    [
        (("agent", "training", "modelgen", "build"), "import tensorflow as tf"),
        (("agent", "core", "crypto", "aead"), "import nacl.bindings as _nb"),
        (("coordinator", "pki"), "from cryptography import x509"),
        (("agent", "core", "x"), "from . import wire\nfrom ..core import errors\nimport sqlite3, numpy"),
        (("simulations", "x"), "import matplotlib\nimport numpy as np\nnp.load('a.npz', allow_pickle=False)"),
    ],
)
def test_checker_allows_what_is_allowed(module, source):
    assert violations(module, source) == []


def test_agent_never_loads_cryptography_or_scipy():
    """The daemon and CLI, imported as the CLI does (pandas blocked), leave out ``cryptography``
    (8.7 MiB), ``dp_accounting`` and scipy (64+ MiB): the device ledger composes Gaussians itself."""
    code = (
        "import sys; sys.modules['pandas'] = None; import agent.daemon, agent.cli; "
        "print(sorted(m for m in ('cryptography', 'dp_accounting', 'scipy', 'pandas') if sys.modules.get(m)))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120, cwd=ROOT, env=env
    )
    assert out.stdout.strip() == "[]", out.stderr
