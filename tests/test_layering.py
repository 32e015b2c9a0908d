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
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "coordinator", "simulations")
#: The one top-level import name: the repository's folders install as fedge.agent, fedge.coordinator...
TOP = "fedge"

#: ``cryptography`` costs the agent 8.7 MiB of RSS at import; pynacl does the agent's crypto.
AGENT_FORBIDDEN = {"tensorflow", "keras", "ray", "matplotlib", "amqtt", "cryptography", "dp_accounting", "scipy"}
#: TensorFlow is allowed here and nowhere else in agent/: it only regenerates the committed models.
MODELGEN_ALLOWED = {"tensorflow", "keras"}
#: The agent's runtime dependencies (pyproject ``dependencies``), as import names.
AGENT_DEPENDENCIES = {
    "numpy", "tflite_runtime", "ai_edge_litert", "paho", "nacl",
    "sqlite_utils", "msgpack", "click",
}  # fmt: skip
CRYPTO_LIBS = {"cryptography", "nacl"}
CRYPTO_PACKAGE = (TOP, "agent", "core", "crypto")
#: Modules outside agent/core/crypto/ allowed to import a crypto library, each with its reason.
#: Keep this list short; protocol keys, seeds, nonces, AEAD and signatures stay in agent.core.crypto.
#: The one agent module that may import ``cryptography``: ML-KEM-768 for the hybrid SecAgg+ suite, imported
#: inside a function when a round runs that suite (the ``pq`` extra); tests below keep it out of the daemon.
PQ_KEM = (TOP, "agent", "core", "crypto", "kem")
CRYPTO_EXCEPTIONS = {
    (TOP, "coordinator", "service", "pki"): "X.509 certificates for the broker's TLS only, not protocol crypto",
}
PICKLERS = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle"}
#: The coordinator's rooms. rounds/: pure code (fedge.agent.core and itself only; no SQLite, no
#: transport, no default clock); fleet/: never rounds/ or service/; service/: the process.
ROUNDS = (TOP, "coordinator", "rounds")
FLEET = (TOP, "coordinator", "fleet")
SERVICE = (TOP, "coordinator", "service")
#: Only the service room has a loop, a transport or signals.
PROCESS_ONLY = {"signal", "threading", "paho", "fedge.agent.core.transport", "amqtt", "asyncio"}
ROUNDS_FORBIDDEN = {"sqlite3", "sqlite_utils", "time", "datetime"} | PROCESS_ONLY
#: The HTTP servers' lifecycle (the dashboard's and /metrics'): it may start a thread, and imports the standard
#: library and fedge.agent.core only, so fleet/ and service/ can both use it without reaching each other.
HTTP_SERVER = (TOP, "coordinator", "http_server")
#: Where a round's SecAgg+ groups run (threads, worker processes, Ray actors), shared by the service and
#: the simulator: the standard library and fedge.agent.core only (a worker imports the host it runs by
#: name); it owns its workers' lifecycle, so it may use threads and ignore SIGINT in a worker.
WORKERS = (TOP, "coordinator", "workers")
#: The only module (tests aside) that constructs a RoundEngine.
ROUND_BUILDER = (TOP, "coordinator", "rounds", "builder")


def module_name(path: Path) -> tuple[str, ...]:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return (TOP, *(parts[:-1] if parts[-1] == "__init__" else parts))


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


def _under(name: str, prefix: tuple[str, ...]) -> bool:
    return name == ".".join(prefix) or name.startswith(".".join(prefix) + ".")


def _in(module: tuple[str, ...], room: tuple[str, ...]) -> bool:
    return module[: len(room)] == room


def round_engine_calls(tree: ast.AST) -> list[int]:
    """Lines that construct a ``RoundEngine``."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (getattr(node.func, "id", None) == "RoundEngine" or getattr(node.func, "attr", None) == "RoundEngine")
    ]


def violations(path_parts: tuple[str, ...], source: str, is_package: bool = False) -> list[str]:
    """Every layering rule broken by one module (``("fedge", "agent", ...)``), as ``module:line: why``."""
    tree = ast.parse(source)
    module = path_parts
    where = ".".join(module)
    area = module[1]
    in_agent = area == "agent"
    in_modelgen = "modelgen" in module
    in_crypto = _in(module, CRYPTO_PACKAGE) or module in CRYPTO_EXCEPTIONS
    out = []
    for line, name in imports(tree, module, is_package):
        root = name.split(".")[0]
        if root in PACKAGES:
            out.append(f"{where}:{line}: import fedge.{name}, not {name}: one module, one name")
        pq_kem = module == PQ_KEM and root == "cryptography"
        if in_agent and (_under(name, (TOP, "coordinator")) or _under(name, (TOP, "simulations"))):
            out.append(f"{where}:{line}: agent/ must not import {name}")
        elif pq_kem:
            pass
        elif in_agent and root in AGENT_FORBIDDEN and not (in_modelgen and root in MODELGEN_ALLOWED):
            out.append(f"{where}:{line}: agent/ must not import {name}")
        elif (
            in_agent
            and root not in AGENT_DEPENDENCIES | {TOP, ""}
            and root not in sys.stdlib_module_names
            and not (in_modelgen and root in MODELGEN_ALLOWED)
        ):
            out.append(f"{where}:{line}: {name} is not an agent dependency")
        if root in CRYPTO_LIBS and not in_crypto:
            out.append(f"{where}:{line}: only agent/core/crypto/ may import {name}")
        if root in PICKLERS:
            out.append(f"{where}:{line}: nothing is pickled, yet it imports {name}")
        if _in(module, ROUNDS):
            if root == TOP and not (_under(name, (TOP, "agent", "core")) or _under(name, ROUNDS)):
                out.append(f"{where}:{line}: coordinator/rounds/ imports fedge.agent.core and itself only, not {name}")
            if root in ROUNDS_FORBIDDEN or any(_under(name, tuple(f.split("."))) for f in ROUNDS_FORBIDDEN if "." in f):
                out.append(f"{where}:{line}: coordinator/rounds/ is pure: no SQLite, transport or clock ({name})")
        if _in(module, FLEET) and (_under(name, ROUNDS) or _under(name, SERVICE)):
            out.append(f"{where}:{line}: coordinator/fleet/ never imports rounds/ or service/ ({name})")
        if (
            area == "coordinator"
            and not _in(module, SERVICE)
            and (root in PROCESS_ONLY or any(_under(name, tuple(f.split("."))) for f in PROCESS_ONLY if "." in f))
            and not ((_in(module, FLEET) or module == HTTP_SERVER) and root == "threading")
            and not (module == WORKERS and root in {"threading", "signal"})
        ):
            out.append(f"{where}:{line}: only coordinator/service/ has a loop, a transport or signals ({name})")
        if module == HTTP_SERVER and root == TOP and not _under(name, (TOP, "agent", "core")):
            out.append(f"{where}:{line}: coordinator/http_server.py imports fedge.agent.core only, not {name}")
        if module == WORKERS and root == TOP and not _under(name, (TOP, "agent", "core")):
            out.append(f"{where}:{line}: coordinator/workers.py imports fedge.agent.core only, not {name}")
        if area == "simulations" and (_under(name, SERVICE) or _under(name, FLEET)):
            out.append(f"{where}:{line}: simulations/ may import coordinator.rounds, never {name}")
    out += [f"{where}:{line}: allow_pickle must stay False" for line in pickle_loads(tree)]
    if module != ROUND_BUILDER:
        out += [
            f"{where}:{line}: only coordinator/rounds/builder.py constructs a RoundEngine"
            for line in round_engine_calls(tree)
        ]
    return out


MODULES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_modules_are_found():
    names = {".".join(module_name(p)) for p in MODULES}
    assert {
        "fedge.agent.cli",
        "fedge.agent.core.wire",
        "fedge.coordinator.service.cli",
        "fedge.simulations.cli",
    } <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_respects_layering(path):
    assert violations(module_name(path), path.read_text(), path.name == "__init__.py") == []


F = TOP


@pytest.mark.parametrize(
    "module,source,expected",
    [
        ((F, "agent", "x"), "import fedge.coordinator.store", "must not import fedge.coordinator.store"),
        ((F, "agent", "x"), "from fedge.simulations import driver", "must not import fedge.simulations"),
        ((F, "agent", "x"), "import agent.core", "one module, one name"),
        ((F, "simulations", "x"), "from coordinator.rounds import plan", "one module, one name"),
        ((F, "agent", "x"), "def f():\n    import tensorflow as tf", "must not import tensorflow"),
        ((F, "agent", "x"), "import importlib\nimportlib.import_module('ray')", "must not import ray"),
        ((F, "agent", "core", "x"), "from matplotlib import pyplot", "must not import matplotlib"),
        ((F, "agent", "x"), "from amqtt.broker import Broker", "must not import amqtt"),
        ((F, "agent", "core", "privacy", "x"), "import dp_accounting", "must not import dp_accounting"),
        ((F, "agent", "x"), "import sklearn", "sklearn is not an agent dependency"),
        (
            (F, "agent", "training", "modelgen", "build"),
            "import fedge.coordinator",
            "must not import fedge.coordinator",
        ),
        ((F, "agent", "core", "secagg", "x"), "import nacl.bindings", "only agent/core/crypto/"),
        ((F, "agent", "core", "crypto", "aead"), "from cryptography.hazmat import primitives", "must not import"),
        ((F, "coordinator", "service", "x"), "import nacl.signing", "only agent/core/crypto/"),
        ((F, "simulations", "x"), "import pickle", "nothing is pickled"),
        ((F, "coordinator", "x"), "from marshal import dumps", "nothing is pickled"),
        ((F, "agent", "x"), "import shelve", "nothing is pickled"),
        ((F, "simulations", "x"), "import numpy as np\nnp.load('a.npy', allow_pickle=True)", "allow_pickle"),
        ((F, "coordinator", "rounds", "x"), "import sqlite_utils", "is pure"),
        ((F, "coordinator", "rounds", "x"), "import time", "is pure"),
        ((F, "coordinator", "rounds", "x"), "from fedge.agent.core.transport import open_transport", "is pure"),
        ((F, "coordinator", "rounds", "x"), "from fedge.coordinator.store import Store", "itself only"),
        ((F, "coordinator", "rounds", "x"), "from fedge.coordinator.fleet import releases", "itself only"),
        (
            (F, "coordinator", "fleet", "x"),
            "from fedge.coordinator.rounds.engine import RoundStatus",
            "never imports rounds/",
        ),
        ((F, "coordinator", "fleet", "x"), "import fedge.coordinator.service.config", "never imports rounds/"),
        ((F, "coordinator", "fleet", "x"), "import signal", "only coordinator/service/"),
        (
            (F, "simulations", "x"),
            "from fedge.coordinator.service.service import serve",
            "never fedge.coordinator.service",
        ),
        ((F, "coordinator", "http_server"), "from fedge.coordinator.fleet import dashboard", "fedge.agent.core only"),
        ((F, "coordinator", "http_server"), "import signal", "only coordinator/service/"),
        ((F, "coordinator", "x"), "import threading", "only coordinator/service/"),
        ((F, "coordinator", "workers"), "from fedge.coordinator.rounds import grouped", "fedge.agent.core only"),
        ((F, "simulations", "x"), "e = RoundEngine(1, plan, s, w, ids, agg, clock)", "constructs a RoundEngine"),
        ((F, "coordinator", "service", "service"), "e = engine.RoundEngine(1)", "constructs a RoundEngine"),
    ],
)
def test_checker_catches_violations(module, source, expected):
    found = violations(module, source)
    assert any(expected in v for v in found), found


@pytest.mark.parametrize(
    "module,source",
    [
        ((F, "agent", "training", "modelgen", "build"), "import tensorflow as tf"),
        ((F, "agent", "core", "crypto", "aead"), "import nacl.bindings as _nb"),
        ((F, "coordinator", "service", "pki"), "from cryptography import x509"),
        ((F, "agent", "core", "x"), "from . import wire\nfrom ..core import errors\nimport sqlite3, numpy"),
        ((F, "simulations", "x"), "import matplotlib\nimport numpy as np\nnp.load('a.npz', allow_pickle=False)"),
        ((F, "simulations", "x"), "from fedge.coordinator.rounds.builder import build_round"),
        (
            (F, "coordinator", "rounds", "x"),
            "import numpy\nfrom fedge.agent.core.update import decode_aggregate\nfrom . import plan",
        ),
        ((F, "coordinator", "rounds", "builder"), "e = RoundEngine(1, plan, s, w, ids, agg, clock)"),
        ((F, "coordinator", "service", "service"), "import signal, threading, time\nimport sqlite_utils"),
        ((F, "coordinator", "http_server"), "import threading\nfrom fedge.agent.core.errors import ConfigError"),
        ((F, "coordinator", "fleet", "dashboard"), "from fedge.coordinator.http_server import BackgroundHTTPServer"),
    ],
)
def test_checker_allows_what_is_allowed(module, source):
    assert violations(module, source) == []


def test_agent_never_loads_cryptography_or_scipy():
    """The daemon and CLI, imported as the CLI does (pandas blocked), leave out ``cryptography``
    (8.7 MiB), ``dp_accounting`` and scipy (64+ MiB): the device ledger composes Gaussians itself."""
    code = (
        "import sys; sys.modules['pandas'] = None; import fedge.agent.daemon, fedge.agent.cli; "
        "print(sorted(m for m in ('cryptography', 'dp_accounting', 'scipy', 'pandas') if sys.modules.get(m)))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120, cwd=ROOT, env=env
    )
    assert out.stdout.strip() == "[]", out.stderr


# ---------------------------------------------------------------- stores and import cycles

#: The modules that make a store's tables: each side's ordered migration list (``MIGRATIONS`` in
#: its ``store.py``) and the fleet's schema that the coordinator's list names. They import
#: fedge.agent.core and each other only, never a feature, and no other module creates, alters or
#: drops a table (feature modules keep their queries). ``agent/core/migrations.py`` is the
#: mechanism: it makes the ``_migrations`` table it records them in.
SCHEMA_MODULES = {
    (TOP, "agent", "store"),
    (TOP, "coordinator", "store"),
    (TOP, "coordinator", "fleet_schema"),
}
MIGRATION_MECHANISM = (TOP, "agent", "core", "migrations")
_DDL = re.compile(r"\b(create|alter|drop)\s+(table|index|trigger|view)\b", re.IGNORECASE)
#: sqlite-utils calls that change a schema, on ``db["t"]`` or ``db.table("t")``.
_DDL_CALLS = {"create", "add_column", "create_index", "transform", "drop", "add_foreign_key"}


def _docstrings(tree: ast.AST) -> set[int]:
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def schema_violations(module: tuple[str, ...], source: str, is_package: bool = False) -> list[str]:
    """Schema code where it does not belong, in one module, as ``module:line: why``."""
    tree = ast.parse(source)
    where = ".".join(module)
    out = []
    if module in SCHEMA_MODULES:
        allowed = [(TOP, "agent", "core"), *SCHEMA_MODULES]
        for line, name in imports(tree, module, is_package):
            parts = tuple(name.split("."))
            # ``from fedge.coordinator import fleet_schema`` also names its package, which is no feature
            if parts[0] == TOP and not any(_under(name, a) or a[: len(parts)] == parts for a in allowed):
                out.append(f"{where}:{line}: a store's migrations import no feature code ({name})")
        return out
    for node in getattr(tree, "body", []):
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and any(getattr(t, "id", "") == "MIGRATIONS" for t in targets):
            out.append(f"{where}:{node.lineno}: one migration list per side, in its store.py (MIGRATIONS)")
    if module == MIGRATION_MECHANISM:
        return out
    docs = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if _DDL.search(node.value):
                out.append(f"{where}:{node.lineno}: schema SQL belongs to the store's migrations")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _DDL_CALLS:
            on = node.func.value
            if isinstance(on, ast.Subscript) or (
                isinstance(on, ast.Call) and isinstance(on.func, ast.Attribute) and on.func.attr == "table"
            ):
                out.append(f"{where}:{node.lineno}: schema changes belong to the store's migrations")
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_stores_make_tables(path):
    assert schema_violations(module_name(path), path.read_text(), path.name == "__init__.py") == []


def test_each_side_has_its_migration_list_in_a_schema_module():
    for module in [(TOP, "agent", "store"), (TOP, "coordinator", "store")]:
        assert module in SCHEMA_MODULES
        source = (ROOT / Path(*module[1:])).with_suffix(".py").read_text()
        assert re.search(r"^MIGRATIONS: ", source, re.MULTILINE), module


@pytest.mark.parametrize(
    "module,source,expected",
    [
        ((F, "agent", "store"), "from fedge.agent import outbox", "import no feature code"),
        ((F, "agent", "store"), "def m():\n    from fedge.agent.releases import x", "import no feature code"),
        ((F, "coordinator", "store"), "from fedge.coordinator.service import privacy_budget", "no feature code"),
        ((F, "coordinator", "store"), "from fedge.coordinator import service", "no feature code"),
        ((F, "agent", "outbox"), "def f(db):\n    db.execute('create table t (x)')", "schema SQL belongs"),
        ((F, "agent", "x"), "def f(db):\n    db.execute(f'ALTER TABLE {T} add column y')", "schema SQL belongs"),
        ((F, "coordinator", "service", "x"), "def f(db):\n    db['t'].create({'a': int})", "schema changes"),
        ((F, "agent", "core", "privacy", "x"), "def f(db):\n    db.table(T).add_column('y', str)", "schema changes"),
        ((F, "coordinator", "fleet", "x"), "MIGRATIONS = []", "one migration list per side"),
    ],
)
def test_schema_checker_catches_violations(module, source, expected):
    found = schema_violations(module, source)
    assert any(expected in v for v in found), found


@pytest.mark.parametrize(
    "module,source",
    [
        ((F, "agent", "store"), "from fedge.agent.core import migrations\ndef m(db):\n    db['t'].create({})"),
        ((F, "coordinator", "store"), "from fedge.coordinator import fleet_schema\nMIGRATIONS = []"),
        ((F, "agent", "outbox"), '"""Rows are kept until the create table check..."""\ndb.execute("select 1")'),
        ((F, "agent", "x"), "key = IdentityKey.create()\nrows = db['t'].insert({'a': 1})"),
        (MIGRATION_MECHANISM, "db.execute('create table if not exists _migrations (id integer)')"),
    ],
)
def test_schema_checker_allows_what_is_allowed(module, source):
    assert schema_violations(module, source) == []


#: Import edges allowed to close a cycle, each with its reason. The wire registry loads every message
#: module by name before its first encode or decode (``wire._ensure_loaded``), and each message
#: module registers itself with ``wire.message``: a plugin load, not a dependency.
CYCLE_EXCEPTIONS = {
    ("fedge.agent.core.wire", "fedge.agent.core.messages"): "the wire registry loads messages/ on first use",
}


def import_graph(root: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (wherever in the module), from the AST."""
    paths = {".".join(module_name(p)): p for p in (ROOT / root).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        module = module_name(path)
        found = imports(ast.parse(path.read_text()), module, path.name == "__init__.py")
        graph[name] = {n for _, n in found if n in paths and n != name and (name, n) not in CYCLE_EXCEPTIONS}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def test_the_agent_has_no_import_cycles():
    """No module of fedge.agent reaches itself through imports (including imports inside functions)."""
    graph = import_graph("agent")
    assert {"fedge.agent.store", "fedge.agent.local_data", "fedge.agent.core.messages.fleet"} <= set(graph)
    assert import_cycles(graph) == []


def test_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": set()}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"x": {"y"}, "y": {"x"}, "z": {"w"}, "w": set()}) == [["x", "y"]]


# ---------------------------------------------------------------------- fixtures come from the plugins

PLUGINS = ("tests.mqtt_fixtures", "tests.cli_fixtures")


def _fixture_names(module: str) -> set[str]:
    """Functions decorated with ``pytest.fixture`` (called or not) in a plugin module."""
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for d in node.decorator_list:
                target = d.func if isinstance(d, ast.Call) else d
                if isinstance(target, ast.Attribute) and target.attr == "fixture":
                    names.add(node.name)
    return names


def fixtures_imported_by_name(source: str, fixtures: dict[str, set[str]]) -> list[str]:
    """``module.name`` for every plugin fixture a test module imports (it must use it by name only:
    an import shadows the plugin's fixture and needs a ``noqa``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in fixtures:
            found += [f"{node.module}.{a.name}" for a in node.names if a.name in fixtures[node.module]]
    return found


def test_no_test_module_imports_a_plugin_fixture():
    fixtures = {m: _fixture_names(m) for m in PLUGINS}
    assert fixtures["tests.mqtt_fixtures"] >= {"mosquitto", "embedded_broker"}
    bad = {
        p.name: names
        for p in sorted((ROOT / "tests").glob("*.py"))
        if (names := fixtures_imported_by_name(p.read_text(), fixtures))
    }
    assert not bad, f"use plugin fixtures by name, do not import them: {bad}"


def test_fixture_import_checker_catches_an_import():
    fixtures = {"tests.mqtt_fixtures": {"mosquitto"}}
    src = "from tests.mqtt_fixtures import mosquitto, needs_mosquitto  # noqa: F401\n"
    assert fixtures_imported_by_name(src, fixtures) == ["tests.mqtt_fixtures.mosquitto"]
    assert fixtures_imported_by_name("from tests.mqtt_fixtures import needs_mosquitto\n", fixtures) == []
