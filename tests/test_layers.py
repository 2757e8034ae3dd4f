"""The layers stay apart: headroom/ imports nothing above it, and no project module's imports
form a cycle."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import headroom

ROOT = Path(__file__).resolve().parent.parent
ABOVE = ("flows", "blocks", "deployments")
PROJECT = ("headroom", "flows", "deployments")


def _headroom_modules() -> list[str]:
    found = pkgutil.walk_packages(headroom.__path__, prefix="headroom.")
    return ["headroom", *sorted(m.name for m in found)]


def test_every_headroom_module_imports_nothing_from_flows_blocks_or_deployments():
    modules = _headroom_modules()
    assert {"headroom.prefect", "headroom.prefect.blocks", "headroom.isolation.guard"} <= set(
        modules
    )
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {ABOVE!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_no_headroom_source_imports_from_above_even_inside_a_function():
    offending = []
    for path in sorted((ROOT / "headroom").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            offending += [
                f"{path.relative_to(ROOT)}:{node.lineno}: {name}"
                for name in names
                if name.split(".")[0] in ABOVE
            ]
    assert offending == []


def _project_modules() -> dict[str, Path]:
    modules = {}
    for package in PROJECT:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _import_edges(
    name: str, path: Path, modules: dict[str, Path], inside_functions: bool = False
) -> set[str]:
    """The project modules ``name`` imports while it is imported: its module-level imports
    (not those under ``if TYPE_CHECKING``; those inside functions too with
    ``inside_functions``), each as the module it names (a package's submodule when
    ``from package import submodule``)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    named: set[str] = set()
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if not inside_functions and isinstance(
            node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
        ):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            named |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                named.add(full if full in modules else base)
        stack.extend(ast.iter_child_nodes(node))
    edges = set()
    for target in named:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        # A module's own packages are imported before it: no edge back to them.
        if target and target != name and not name.startswith(target + "."):
            edges.add(target)
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for after in sorted(graph[node]):
            if after not in index:
                visit(after)
                low[node] = min(low[node], low[after])
            elif after in on_stack:
                low[node] = min(low[node], index[after])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_among_project_modules():
    modules = _project_modules()
    graph = {name: _import_edges(name, path, modules) for name, path in modules.items()}
    assert "headroom.isolation.guard" in graph["headroom.prefect.task"]  # sees real imports
    assert _cycles(graph) == []


def test_no_import_cycle_inside_headroom_even_through_deferred_imports():
    modules = {n: p for n, p in _project_modules().items() if n.split(".")[0] == "headroom"}
    graph = {name: _import_edges(name, path, modules, True) for name, path in modules.items()}
    assert "headroom.prefect.blocks" in graph["headroom.prefect.admission"]  # inside a function
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# Modules of a workload that may import prefect or pydantic: its flow and its parameters.
FLOW_SIDE = {"flow.py", "params.py"}


# Helpers a benchmark or test imports beside what it measures: importing prefect there would
# start headroom's temporary server in the measuring process.
LIGHT_HELPERS = ["deployments.kafka_broker", "deployments.ports"]


def _body_modules() -> list[str]:
    found = list(LIGHT_HELPERS)
    for path in sorted((ROOT / "flows").rglob("*.py")):
        if path.name == "__init__.py" or path.name in FLOW_SIDE:
            continue
        found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


def test_every_workload_package_init_is_empty():
    # A guarded child imports flows.<workload>.<module>: whatever an __init__ held, every child
    # would import too.
    inits = sorted((ROOT / "flows").glob("*/**/__init__.py"))
    assert len(inits) >= 6
    assert [str(p.relative_to(ROOT)) for p in inits if p.read_text().strip()] == []


def test_body_modules_import_neither_prefect_nor_pydantic():
    modules = _body_modules()
    assert {"flows.mitma_od.bronze", "flows.stream_stats.consume"} <= set(modules)
    code = (
        "import importlib, sys\n"
        "importlib.import_module(sys.argv[1])\n"
        "print(sorted(m for m in ('prefect', 'pydantic') if m in sys.modules))\n"
    )
    offending = {}
    for name in modules:
        out = subprocess.run(
            [sys.executable, "-c", code, name], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        if out != "[]":
            offending[name] = out
    assert offending == {}


def test_the_body_module_check_sees_a_module_that_imports_pydantic():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, flows.stream_stats.params; print('pydantic' in sys.modules)",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == "True"
