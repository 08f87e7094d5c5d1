"""The layout rules of the core, checked from the source: no import cycle, no framework in the
core, and a routing centre that does no I/O."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "asgi_groups"
FRAMEWORKS = {"starlette", "fastapi", "quart", "flask", "django", "werkzeug"}
IO = {"asyncio", "socket", "selectors", "threading", "redis", "sqlalchemy"}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def imports(name: str) -> set[str]:
    """Modules ``name`` imports at run time, anywhere in it (not under ``TYPE_CHECKING``)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                found.add(candidate if candidate in MODULES else module)

    Visitor().visit(ast.parse(path.read_text()))
    return found - {name}


def test_the_core_has_no_import_cycle() -> None:
    graph = {name: {m for m in imports(name) if m in MODULES} for name in MODULES}
    graph["asgi_groups"] = set()  # the package re-exports; nothing imports it back
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = [*path[path.index(name) :], name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_the_core_imports_no_framework() -> None:
    for name in MODULES:
        used = {module.split(".")[0] for module in imports(name)} & FRAMEWORKS
        assert not used, f"{name} imports {used}: frameworks belong in asgi_groups.adapters"


@pytest.mark.parametrize("name", ["asgi_groups.router", "asgi_groups.channels"])
def test_the_routing_centre_does_no_io(name: str) -> None:
    used = {module.split(".")[0] for module in imports(name)}
    assert not used & IO, f"{name} imports {used & IO}"
    assert {m for m in imports(name) if m.startswith("asgi_groups.")} <= {"asgi_groups.channels"}


def test_connections_know_nothing_of_the_registry() -> None:
    assert not {"asgi_groups.registry", "asgi_groups.router"} & imports("asgi_groups.connection")


@pytest.mark.parametrize("name", ["asgi_groups.history", "asgi_groups.stream"])
def test_positions_and_the_resume_seam_do_no_io(name: str) -> None:
    """History decisions and the replay/live seam are plain code, testable without a loop."""
    used = {module.split(".")[0] for module in imports(name)}
    assert not used & IO, f"{name} imports {used & IO}"
    ours = {m for m in imports(name) if m.startswith("asgi_groups.")}
    assert ours <= {"asgi_groups.frames", "asgi_groups.history"}
