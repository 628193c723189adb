"""The State Service's modules import downwards only: api -> service -> store, auth below both."""

from __future__ import annotations

import ast
from pathlib import Path

import shoal.state

ROOT = Path(shoal.state.__file__).parent


def module_imports() -> dict[str, set[str]]:
    """Each module's shoal.state imports made at import time (TYPE_CHECKING blocks and imports
    inside functions are not)."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        name = "shoal." + ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        name = name.removesuffix(".__init__")
        deps: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shoal.state"):
                for alias in node.names:  # `from shoal.state import models` imports the submodule
                    sub = f"{node.module}.{alias.name}"
                    is_module = (ROOT.parent / Path(*sub.split(".")[1:])).with_suffix(".py").exists()
                    deps.add(sub if is_module else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("shoal.state")}
        graph[name] = deps - {name}
    return graph


def reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph.get(m, ())
    return seen


def test_no_import_cycles():
    graph = module_imports()
    cycles = [m for m in graph if m in reaches(graph, m)]
    assert not cycles, cycles


def test_api_over_service_over_store_auth_below_both():
    graph = module_imports()
    assert "shoal.state.service" in graph["shoal.state.api"]
    assert "shoal.state.store" in reaches(graph, "shoal.state.service")
    for low in ("shoal.state.service", "shoal.state.store"):
        assert "shoal.state.api" not in reaches(graph, low)
    assert "shoal.state.service" not in reaches(graph, "shoal.state.store")
    for auth in [m for m in graph if m.startswith("shoal.state.auth")]:
        up = reaches(graph, auth)
        assert "shoal.state.api" not in up and "shoal.state.service" not in up, auth
