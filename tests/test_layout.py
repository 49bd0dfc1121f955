"""The folders' import rules, read from the code's own imports (every ``import``, also inside functions).

- ``supervisor/core/`` (the owner of state) imports nothing from ``cluster/``, ``web/``, the CLI, the client, the
  service shell, zmq or ipyparallel: engine errors reach it as data.
- ``supervisor/client/`` imports nothing else of llmsup's (it talks to the server over HTTP only) but the run
  directory's names (``supervisor/runfiles.py``, which imports nothing).
- ``supervisor/store/`` and ``supervisor/metrics/`` import nothing from ``cluster/`` or ``web/``.
- ``engines/`` imports nothing from ``supervisor/`` or ``web/`` (it is shipped to engine processes).
- ``supervisor/`` imports nothing from ``web/``, except the CLI's ``serve``: the composition root above both.
- ``web/`` imports neither the service shell nor ``cluster/``: it holds the control plane through its port
  (``supervisor/port.py``).
- nothing in ``supervisor/core/`` reads a clock: its decisions take the moment from the caller.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"supervisor": "llmsup.supervisor", "engines": "llmsup.engines", "web": "llmsup.web"}

CORE_BANNED = ("llmsup.supervisor.cluster", "llmsup.supervisor.cli", "llmsup.supervisor.client", "llmsup.supervisor.service",
               "llmsup.web", "zmq", "ipyparallel")
RULES: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [  # (package, banned prefixes, allowed exceptions)
    ("llmsup.supervisor.core", CORE_BANNED, ()),
    ("llmsup.supervisor.client", ("llmsup.",), ("llmsup.supervisor.client", "llmsup.supervisor.runfiles")),
    ("llmsup.supervisor.runfiles", ("llmsup.",), ()),
    ("llmsup.supervisor.store", ("llmsup.supervisor.cluster", "llmsup.web", "zmq", "ipyparallel"), ()),
    ("llmsup.supervisor.metrics", ("llmsup.supervisor.cluster", "llmsup.web"), ()),
    ("llmsup.engines", ("llmsup.supervisor", "llmsup.web"), ()),
    ("llmsup.supervisor", ("llmsup.web",), ()),
    ("llmsup.web", ("llmsup.supervisor.service", "llmsup.supervisor.cluster"), ()),
]
COMPOSITION_ROOT = "llmsup.supervisor.cli.commands"  # `llmsup serve` wires the web app to the supervisor


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = [FOLDERS[rel.parts[0]], *rel.with_suffix("").parts[1:]]
    return ".".join(p for p in parts if p != "__init__")


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix.rstrip(".") or name.startswith(prefix if prefix.endswith(".") else prefix + ".")


def violations(module: str, imported: str) -> list[str]:
    broken = []
    for package, banned, allowed in RULES:
        if not _within(module, package) or any(_within(imported, a) for a in allowed):
            continue
        if package == "llmsup.supervisor" and module == COMPOSITION_ROOT:
            continue
        broken += [f"{module} imports {imported} ({package} may not import {b})" for b in banned if _within(imported, b)]
    return broken


def test_the_rules_catch_what_they_forbid() -> None:
    assert violations("llmsup.supervisor.core.owner", "ipyparallel.error")
    assert violations("llmsup.supervisor.core.owner", "llmsup.supervisor.cluster.driver")
    assert violations("llmsup.supervisor.client.sync", "llmsup.supervisor.core.jobs")
    assert violations("llmsup.engines.runtime", "llmsup.supervisor.settings")
    assert violations("llmsup.supervisor.service", "llmsup.web.app")
    assert not violations(COMPOSITION_ROOT, "llmsup.web.app")
    assert violations("llmsup.web.routes_admin", "llmsup.supervisor.cluster.driver")
    assert violations("llmsup.web.deps", "llmsup.supervisor.service")
    assert not violations("llmsup.web.deps", "llmsup.supervisor.port")
    assert not violations("llmsup.supervisor.core.owner", "llmsup.engines.messages")
    assert not violations("llmsup.supervisor.core.owner", "zmqlike")  # a prefix is a whole module name


def test_every_folder_keeps_its_import_rules() -> None:
    broken = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "childsite" in path.parts:
                continue
            module = module_name(path)
            for line, imported in imports_of(path):
                broken += [f"{path.relative_to(ROOT)}:{line}: {v}" for v in violations(module, imported)]
    assert not broken, "\n".join(broken)


def test_every_folder_says_what_lives_there_and_what_it_may_import() -> None:
    for init in sorted((ROOT / "supervisor").rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        if init.parent != ROOT / "supervisor":
            assert "May import" in doc, f"{init.relative_to(ROOT)} has no docstring naming what it may import"


# reading a clock: the time module's clocks, datetime's "now", an event loop's time, an injected clock function
CLOCK_CALLS = {"time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns", "process_time",
               "now", "utcnow", "today", "mono", "clock"}
CLOCK_MODULES = ("time", "datetime")


def clock_reads(source: str) -> list[tuple[int, str]]:
    """(line, what) of every clock read in ``source``: a call of a clock function by attribute or by name, or a
    clock imported by name from ``time`` / ``datetime``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in CLOCK_CALLS:
                found.append((node.lineno, f"{ast.unparse(func)}()"))
        elif isinstance(node, ast.ImportFrom) and node.module in CLOCK_MODULES:
            found += [(node.lineno, f"from {node.module} import {a.name}") for a in node.names
                      if a.name in CLOCK_CALLS or a.name in ("datetime", "date")]
    return found


def test_the_clock_check_catches_every_way_to_read_one() -> None:
    for read in ("time.time()", "time.monotonic()", "time.perf_counter()", "datetime.now()",
                 "datetime.datetime.now(tz)", "self.mono()", "self.clock()", "loop.time()", "monotonic()",
                 "from time import monotonic", "from datetime import datetime"):
        assert clock_reads(read), read
    assert not clock_reads("now.mono + run.deadline_s\nNow(1.0, 2.0)\nladder.due(esc, now.mono, grace)")


def test_the_core_reads_no_clock() -> None:
    reads = [f"{path.relative_to(ROOT)}:{line}: {what}" for path in sorted((ROOT / "supervisor" / "core").rglob("*.py"))
             for line, what in clock_reads(path.read_text())]
    assert not reads, "the core takes the time from its caller; it reads a clock at:\n" + "\n".join(reads)
