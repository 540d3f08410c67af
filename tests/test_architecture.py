"""The layout docs/architecture.md draws is the layout the code has.

Every import between embedfleet's own modules is read from the source (module
level, inside functions, under ``TYPE_CHECKING`` and through ``importlib`` /
``__import__`` with a literal name): none may form a cycle, and each must point
down (or across) the layers listed in the diagram of docs/architecture.md.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "src"
PACKAGE = SOURCE / "embedfleet"
ARCHITECTURE = REPO / "docs" / "architecture.md"
MAX_MODULE_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def resolve(name: str) -> str | None:
    """The embedfleet module an imported dotted name lands in (a submodule if it is
    one, else its closest module parent), or None outside embedfleet."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, source: str | None = None) -> set[str]:
    """Every embedfleet module ``name`` imports, wherever in the file (``source``: its
    text, when not read from the tree)."""
    tree = ast.parse(source if source is not None else MODULES[name].read_text("utf-8"))
    package = name if name in MODULES and is_package(name) else name.rpartition(".")[0]
    found: set[str | None] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(resolve(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # `from package import submodule` imports the submodule
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in MODULES else resolve(base))
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args:
            literal = node.args[0]
            if isinstance(literal, ast.Constant) and isinstance(literal.value, str):
                found.add(resolve(literal.value))
    found.discard(None)
    found.discard(name)
    return found  # type: ignore[return-value]


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


GRAPH = {name: imports_of(name) for name in MODULES}


def documented_layers() -> list[list[str]]:
    """The diagram under "## Layers" in docs/architecture.md: one layer per line, top
    first; the first column names the layer's modules, comma-separated, relative to
    the package (``embedfleet`` itself is the package root); a list ending in a comma
    goes on in the first column of the next, indented, line."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1]
    block = section.split("```", 2)[1]
    layers: list[list[str]] = []
    continued = False  # the last layer's module list ended with a comma
    for line in block.splitlines()[1:]:
        column = re.split(r"\s{2,}", line.strip())[0] if line.strip() else ""
        if line.startswith(" ") and not continued:
            continue  # a continued description
        names = [item.strip() for item in column.split(",") if item.strip()]
        if continued:
            layers[-1] += names
        elif names:
            layers.append(names)
        continued = column.endswith(",")
    return layers


LAYERS = documented_layers()


def layer_of(name: str) -> int:
    """The index of the layer holding ``name`` (the longest documented prefix wins)."""
    best, best_length = None, -1
    for index, layer in enumerate(LAYERS):
        for entry in layer:
            full = "embedfleet" if entry == "embedfleet" else f"embedfleet.{entry}"
            if (name == full or name.startswith(full + ".")) and len(full) > best_length:
                best, best_length = index, len(full)
    assert best is not None, f"{name} is in no layer of docs/architecture.md"
    return best


def test_the_diagram_places_every_module():
    unplaced = []
    for name in MODULES:
        try:
            layer_of(name)
        except AssertionError:
            unplaced.append(name)
    assert unplaced == []
    assert len(LAYERS) >= 5


def test_no_import_cycle_among_embedfleet_modules():
    cycles = [sorted(group) for group in strongly_connected(GRAPH) if len(group) > 1]
    assert cycles == [], cycles


def test_every_import_points_down_the_documented_layers():
    upward = [
        f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
        for name, targets in GRAPH.items()
        for target in sorted(targets)
        if layer_of(target) < layer_of(name)
    ]
    assert upward == [], "\n".join(upward)


def test_no_module_imports_the_package_root():
    assert sorted(name for name, targets in GRAPH.items() if "embedfleet" in targets) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small_enough_to_read_in_one_sitting(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{MODULES[name]} has {lines} lines"


def test_the_reader_sees_every_kind_of_import():
    """The checks above are only as good as the reader: it must see imports inside
    functions, relative ones, ``importlib`` calls and names imported from a package."""
    source = (
        "import importlib\n"
        "from . import spec\n"
        "from ..embedding_functions import DefaultEmbeddingFunction\n"
        "def late():\n"
        "    from embedfleet.fleet import replica\n"
        "    importlib.import_module('embedfleet.quota')\n"
        "    __import__('embedfleet.errors')\n"
    )
    found = imports_of("embedfleet.job.probe", source)
    assert found == {
        "embedfleet.job.spec",
        "embedfleet.embedding_functions",
        "embedfleet.fleet.replica",
        "embedfleet.quota",
        "embedfleet.errors",
    }


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    groups.append(group)
    return groups
