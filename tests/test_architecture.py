"""The rooms of docs/architecture.md and what each may import, checked from the source.

A rule broken here is how a layout decays: the wire layer reading a clock, the simulator borrowing
the client's code, the session learning about Locust.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "athos_load"
# The Locust layer (the plugin package): the only modules that import Locust, and nothing below imports them.
LOCUST_LAYER = "plugin"
# What the sans-I/O wire layer may import besides itself: no socket, no clock, no event loop.
WIRE_ALLOWED = {"__future__", "base64", "collections", "dataclasses", "datetime", "enum", "hashlib", "hmac",
                "json", "math", "os", "re", "typing", "numpy"}  # fmt: skip


def modules(room: str = "") -> list[Path]:
    return sorted((PACKAGE / room).glob("*.py"))


def imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, at any depth of the file (relative ones resolved)."""
    package = ["athos_load", *path.parent.relative_to(PACKAGE).parts]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            names.add(module)
            if node.module is None:  # from . import x: x is a module of the package
                names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def room(name: str) -> str | None:
    """athos_load.sim.calls -> 'sim'; athos_load.call -> 'call'; None outside the package."""
    parts = name.split(".")
    return parts[1] if parts[0] == "athos_load" and len(parts) > 1 else None


@pytest.mark.parametrize("path", modules("wire"), ids=lambda p: p.name)
def test_the_wire_layer_has_no_socket_no_clock_and_needs_nothing_else(path):
    for name in imports(path):
        top = name.split(".")[0]
        assert top in WIRE_ALLOWED or name.startswith("athos_load.wire"), f"{path.name} imports {name}"


@pytest.mark.parametrize("path", modules("sim"), ids=lambda p: p.name)
def test_the_simulator_shares_only_the_wire_layer_with_the_client(path):
    for name in imports(path):
        assert room(name) in (None, "sim", "wire"), f"sim/{path.name} imports {name}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_locust_layer_imports_locust_and_nothing_imports_it_from_below(path):
    found = imports(path)
    if path.parent.name == LOCUST_LAYER:
        return
    assert not any(name.split(".")[0] == "locust" for name in found), f"{path.name} imports Locust"
    upward = {name for name in found if room(name) == LOCUST_LAYER}
    assert not upward, f"{path.name} imports the Locust layer: {upward}"


def test_every_module_of_the_locust_layer_imports_locust_or_serves_one_that_does():
    """The layer holds what needs Locust, not a drawer for anything else."""
    layer = [p for p in modules(LOCUST_LAYER) if p.stem != "__init__"]
    uses_locust = {p.stem for p in layer if any(n.split(".")[0] in ("locust", "flask") for n in imports(p))}
    assert {"users", "runtime", "shapes", "distributed", "webui"} <= {p.stem for p in layer}
    assert uses_locust == {p.stem for p in layer}, (
        f"in the Locust layer without needing Locust: {set(p.stem for p in layer) - uses_locust}"
    )


def test_the_rules_see_real_imports():
    """The checker itself: it must find what these modules are known to import."""
    assert "athos_load.wire" in imports(PACKAGE / "session.py")
    assert "athos_load.sim.connection" in imports(PACKAGE / "sim" / "server.py")
    assert "locust" in imports(PACKAGE / "plugin" / "users.py")
    assert "athos_load.wire.errors" in imports(PACKAGE / "wire" / "frames.py")


def test_no_module_imports_another_that_imports_it_back():
    """No import cycles, not even for type hints: a cycle is two rooms that cannot be read apart."""
    names = {p: ".".join(["athos_load", *p.relative_to(PACKAGE).with_suffix("").parts]) for p in PACKAGE.rglob("*.py")}
    names = {p: n.removesuffix(".__init__") for p, n in names.items()}
    known = set(names.values())
    graph = {n: {i for i in imports(p) if i in known and i != n} for p, n in names.items()}

    def reaches(start: str, goal: str) -> list[str] | None:
        seen, stack = set(), [[start]]
        while stack:
            path = stack.pop()
            for nxt in graph[path[-1]]:
                if nxt == goal:
                    return [*path, nxt]
                if nxt not in seen and not nxt.startswith(goal + "."):
                    seen.add(nxt)
                    stack.append([*path, nxt])
        return None

    for name in sorted(known):
        # a package's __init__ gathers its own modules: those edges are not a cycle
        cycle = reaches(name, name)
        assert cycle is None or all(m.startswith(name) for m in cycle), " -> ".join(cycle or [])
