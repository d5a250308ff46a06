"""The layering of docs/architecture.md, enforced: config -> engine -> store, llm -> runners ->
dagster -> cli. A module imports only its own layer and those below it; nothing below `dagster`
imports Dagster; the code location is a leaf; the product never imports its test support; and
no two modules import each other in a cycle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dd_assets"

# Rank of each layer; a module may import a layer of lower rank, or its own layer. `store` and
# `llm` share a rank but are siblings: neither imports the other.
RANK = {
    "errors": 0,
    "config": 1,
    "engine": 2,
    "store": 3,
    "llm": 3,
    "runners": 4,
    "dagster": 5,
    "cli": 6,
}
CODE_LOCATION = "dd_assets.dagster.definitions"
# Third-party packages a layer must not pull in, even indirectly (checked at import time).
FORBIDDEN_THIRD_PARTY = {
    "config": {"dagster", "aiohttp", "pyarrow", "numpy"},
    "engine": {"dagster", "aiohttp", "sqlite3"},
    "store": {"dagster", "aiohttp"},
    "llm": {"dagster"},
    "runners": {"dagster", "dagster_webserver"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """dd_assets modules a file imports (`from a.b import c` counts a.b, and a.b.c if a module)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks at top level
            for sub in node.body:
                if isinstance(sub, ast.ImportFrom) and sub.module:
                    found.add(sub.module)
    return {m for m in found if m in MODULES and m != "dd_assets"}


def test_every_module_belongs_to_a_layer() -> None:
    unknown = {m for m in MODULES if _layer(m) not in (*RANK, "testing", None)}
    assert not unknown, f"modules outside the layers of docs/architecture.md: {sorted(unknown)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) in RANK))
def test_imports_point_down(module: str) -> None:
    mine = _layer(module)
    assert mine is not None
    for target in sorted(_imports(MODULES[module], top_level_only=False)):
        theirs = _layer(target)
        assert theirs != "testing", f"{module} imports test support {target}"
        assert target != CODE_LOCATION, f"{module} imports the code location {target}"
        if theirs is None or theirs == mine:
            continue
        assert RANK[theirs] < RANK[mine], (
            f"{module} ({mine}) imports {target} ({theirs}): layers only import downwards"
            " (docs/architecture.md)"
        )


def test_no_import_cycles() -> None:
    graph = {m: _imports(p, top_level_only=True) for m, p in MODULES.items()}
    # A package's __init__ importing its own modules is the package's surface, not a cycle.
    for m in graph:
        graph[m] = {t for t in graph[m] if not (m in MODULES and t.startswith(m + "."))}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = [*stack[stack.index(t) :], t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN_THIRD_PARTY, key=RANK.__getitem__))
def test_importing_a_layer_loads_nothing_above_it(layer: str) -> None:
    """Import every module of the layer in a fresh interpreter (as DataDesigner's lazy-import
    test does) and look at what got loaded."""
    mods = [m for m in MODULES if _layer(m) == layer]
    script = (
        "import importlib, json, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = set(json.loads(out.stdout))
    above = sorted(
        m
        for m in loaded
        if m.startswith("dd_assets.")
        and _layer(m) in RANK
        and (
            RANK[_layer(m)] > RANK[layer] or (RANK[_layer(m)] == RANK[layer] and _layer(m) != layer)
        )
    )
    assert not above, f"importing {layer} loaded {above}"
    third = sorted(p for p in FORBIDDEN_THIRD_PARTY[layer] if p in loaded)
    assert not third, f"importing {layer} loaded {third}"


def test_nothing_imports_the_code_location() -> None:
    importers = [
        m for m, p in MODULES.items() if CODE_LOCATION in _imports(p, top_level_only=False)
    ]
    assert importers == []
