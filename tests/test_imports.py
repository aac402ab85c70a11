"""The package's import graph, from the source: no import circles, and no module using a private name of another.

Every import statement counts, a function's lazy import and one under `if TYPE_CHECKING:` included: a circle
drawn only for the type checker is still two modules that each need the other."""

from __future__ import annotations

import ast
from pathlib import Path

import autoresearch

PACKAGE = Path(autoresearch.__file__).parent


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, whether it is a package's __init__), the templates (a target's files) left out."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if "templates" in parts:
            continue
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


def imports(name: str, path: Path, package: bool, known: dict) -> tuple[set[str], list[str]]:
    """The package's modules that `name` imports, and the private names of other modules it uses."""
    here = name.split(".") if package else name.split(".")[:-1]
    tree = ast.parse(path.read_text())
    deps: set[str] = set()
    private: list[str] = []
    aliases: dict[str, str] = {}  # a local name bound to one of the package's modules
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module or ""
            if source.split(".")[0] != "autoresearch":
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                if full in known:
                    deps.add(full)
                    aliases[alias.asname or alias.name] = full
                else:
                    deps.add(source)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append(f"{name} imports {alias.name} from {source}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    deps.add(alias.name)
                    if alias.asname:
                        aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                and node.attr.startswith("_") and not node.attr.startswith("__"):
            private.append(f"{name} uses {aliases[node.value.id]}.{node.attr}")
    deps.discard(name)
    return {d for d in deps if d in known}, private


def graph() -> tuple[dict[str, set[str]], list[str]]:
    known = modules()
    edges, private = {}, []
    for name, (path, package) in known.items():
        edges[name], found = imports(name, path, package, known)
        private += found
    return edges, private


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read_from_every_module():
    edges, _ = graph()
    assert {"autoresearch.cli", "autoresearch.session", "autoresearch.scheduler", "autoresearch.agents.hybrid"} <= \
        set(edges)
    assert "autoresearch.session" in edges["autoresearch.scheduler"]  # lazy and relative imports are followed
    assert "autoresearch.agents" in edges["autoresearch.agents.hybrid"]


def test_no_import_circles():
    edges, _ = graph()
    assert circles(edges) == []


def test_the_circle_finder_finds_circles():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_module_uses_a_private_name_of_another():
    _, private = graph()
    assert private == []


def test_a_private_import_is_caught(tmp_path):
    module = tmp_path / "probe.py"
    module.write_text("from autoresearch.session import _secret\nfrom autoresearch import sandbox\nsandbox._warned\n")
    known = modules()
    deps, private = imports("autoresearch.probe", module, False, known)
    assert deps == {"autoresearch.session", "autoresearch.sandbox"}
    assert private == ["autoresearch.probe imports _secret from autoresearch.session",
                       "autoresearch.probe uses autoresearch.sandbox._warned"]
