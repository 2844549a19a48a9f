"""Layer guard: the pure cores of ``actors`` (and the field simulator) never reach Ray or the actors.

Two checks, because each misses what the other sees:

- a static scan of the repository's imports, transitively (every ``import`` in a module, function
  bodies included, ``if TYPE_CHECKING:`` blocks excluded), which names the chain that leads to a
  forbidden module;
- one fresh interpreter that imports the modules and reports what ended up in ``sys.modules``
  (catches imports the scan cannot see: ``importlib``, a third-party package that pulls Ray in).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PURE = [
    "actors.cores.topology",
    "actors.cores.powerflow",
    "actors.cores.fdir",
    "actors.cores.control",
    "actors.cores.outages",
    "actors.cores.events",
    "actors.ingest",
    "actors.arbiter",
]
CORES = ROOT / "actors" / "cores"
if CORES.is_dir():  # every module of actors/cores, when that folder exists
    PURE += sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in CORES.rglob("*.py")
    )

FORBIDDEN_FOR_PURE = ("ray", "actors.feeder_actor", "actors.fleet")
FORBIDDEN_FOR_SIMULATOR = ("actors.feeder_actor", "actors.fleet")


def _forbidden(module: str, forbidden: tuple[str, ...]) -> bool:
    return any(module == f or module.startswith(f + ".") for f in forbidden)


def _module_file(module: str) -> Path | None:
    """The repository file of ``module`` (a package's ``__init__.py``), or None when not ours."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk_runtime(node: ast.AST):  # type: ignore[no-untyped-def]
    """Every node below ``node`` except the bodies of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from _walk_runtime(other)
            continue
        yield child
        yield from _walk_runtime(child)


@cache
def _imports(module: str) -> frozenset[str]:
    """Modules ``module`` imports (absolute names; parents of dotted names included: their
    ``__init__`` runs too)."""
    path = _module_file(module)
    if path is None:
        return frozenset()
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: set[str] = set()

    def add(name: str) -> None:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))

    for node in _walk_runtime(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            add(base)
            for alias in node.names:  # ``from pkg import name``: a submodule when such a file exists
                if _module_file(f"{base}.{alias.name}") is not None:
                    add(f"{base}.{alias.name}")
    out.discard(module)
    return frozenset(out)


def _chain_to_forbidden(start: str, forbidden: tuple[str, ...]) -> list[str] | None:
    """The import chain from ``start`` to a forbidden module through the repository, or None."""
    parent: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        mod = queue.pop(0)
        for dep in sorted(_imports(mod)):
            if dep in parent:
                continue
            parent[dep] = mod
            if _forbidden(dep, forbidden):
                chain = [dep]
                while (up := parent[chain[-1]]) is not None:
                    chain.append(up)
                return chain[::-1]
            if _module_file(dep) is not None:
                queue.append(dep)
    return None


def test_the_scan_sees_imports() -> None:
    # The scan must find what it guards against, or a passing guard means nothing.
    assert _chain_to_forbidden("actors.fleet", ("ray",)) == ["actors.fleet", "ray"]
    assert _chain_to_forbidden("actors.execution", ("actors.arbiter",)) == ["actors.execution", "actors.arbiter"]
    assert "actors.cores.control" in _imports("actors.arbiter")


@pytest.mark.parametrize("module", PURE)
def test_pure_core_imports_no_ray_and_no_actor(module: str) -> None:
    assert _module_file(module) is not None, f"{module} is listed as a pure core but has no file"
    chain = _chain_to_forbidden(module, FORBIDDEN_FOR_PURE)
    assert chain is None, (f"{module} reaches {chain[-1]} through {' -> '.join(chain)}; pure cores must not "
                           f"import Ray or the actor host (move the import to the actor, or pass a callable in)")


def test_simulator_does_not_import_the_actors() -> None:
    chain = _chain_to_forbidden("protocols.simulator", FORBIDDEN_FOR_SIMULATOR)
    assert chain is None, f"protocols.simulator reaches {chain[-1]} through {' -> '.join(chain)}"


def test_importing_the_pure_cores_loads_no_ray_nor_actor() -> None:
    """One fresh interpreter imports them all: what lands in sys.modules is the ground truth."""
    modules = [*PURE, "protocols.simulator"]
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.') "
        "or m.startswith('actors.'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    bad = [m for m in loaded if _forbidden(m, FORBIDDEN_FOR_PURE)]
    assert bad == [], f"importing the pure cores and the simulator loaded {bad}"


# -- reports: heavy libraries stay out of the feeder actors ----------------------------------------

# Libraries only the reports (server/reports) and the historian's reader need: the feeder actor
# process must never import them (ARCHITECTURE, "Heavy work leaves the actor"), nor the server.
FORBIDDEN_FOR_ACTORS = ("matplotlib", "openpyxl", "fpdf", "apscheduler", "duckdb", "server")
ACTOR_MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for p in (ROOT / "actors").rglob("*.py")
)
# actors/tasks runs in Ray workers (forecast training, ...), not in the actor process: it may import
# analysis libraries; no actor module may import it (checked below).
TASK_PACKAGE = "actors.tasks"
ACTOR_MODULES = [m for m in ACTOR_MODULES if m != TASK_PACKAGE and not m.startswith(TASK_PACKAGE + ".")]


@pytest.mark.parametrize("module", ACTOR_MODULES)
def test_actors_import_no_report_renderer_nor_duckdb(module: str) -> None:
    chain = _chain_to_forbidden(module, FORBIDDEN_FOR_ACTORS)
    assert chain is None, (f"{module} reaches {chain[-1]} through {' -> '.join(chain)}; report renderers, the "
                           "scheduler and DuckDB belong in server/reports or a Ray task, never in the actor process")


def test_the_reliability_core_is_listed_as_pure() -> None:
    assert "actors.cores.reliability" in PURE


def test_the_server_imports_no_report_renderer_until_a_report_is_rendered() -> None:
    """fpdf2 and APScheduler load when a report is rendered or the scheduler starts, not at import.
    (matplotlib and openpyxl are not checked here: pandapower, which the server imports, loads them.)"""
    code = ("import sys, server.app, server.cli, server.reports.jobs, server.reports.builders, server.reports.http\n"
            "print(sorted(m for m in ('fpdf', 'apscheduler') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("module", ["actors.feeder_actor", "actors.fleet", "actors.apps"])
def test_the_actor_process_never_reaches_the_task_modules_nor_lightgbm(module: str) -> None:
    chain = _chain_to_forbidden(module, (TASK_PACKAGE, "lightgbm", "holidays"))
    assert chain is None, (f"{module} reaches {chain[-1]} through {' -> '.join(chain)}; forecast training and "
                           "its libraries run in Ray tasks (actors/tasks), never in the feeder actor's process")
