"""The layers (tbcore ← datasets_synth ← theorybench) and an import graph without circles.

Read from the sources (every import statement, lazy ones inside functions included), so a
lazy import that climbs a layer fails here even if no test happens to execute it.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("tbcore", "datasets_synth", "theorybench")  # each imports only those before it


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name → (file, is a package's __init__) for the three packages."""
    found = {}
    for package in LAYERS:
        for file in (ROOT / package).rglob("*.py"):
            parts = list(file.relative_to(ROOT).with_suffix("").parts)
            is_init = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_init else parts)] = (file, is_init)
    return found


def _imports(name: str, file: Path, is_init: bool, modules) -> set[str]:
    """The project modules that ``name`` imports (the closest existing module of each)."""
    package = name.split(".") if is_init else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            targets.add(module)
            targets.update(f"{module}.{alias.name}" for alias in node.names)
    resolved = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return {name: _imports(name, file, is_init, modules)
            for name, (file, is_init) in modules.items()}


def test_resolver_sees_relative_and_lazy_imports(graph):
    assert "datasets_synth.references.disks" in graph["datasets_synth.manifolds"]  # relative
    assert "tbcore.denoiser" in graph["theorybench.evaluation"]
    assert "datasets_synth" in graph["theorybench.experiments.cells"]


def test_each_layer_imports_only_the_layers_below(graph):
    climbing = [(module, target) for module, targets in graph.items() for target in targets
                if LAYERS.index(target.split(".")[0]) > LAYERS.index(module.split(".")[0])]
    assert not climbing, f"imports that climb a layer: {climbing}"


def _circle(graph) -> list[str] | None:
    """One import circle of ``graph`` (module → imported modules), or None."""
    done, stack = set(), []

    def visit(module):
        if module in stack:
            return stack[stack.index(module):] + [module]
        if module in done:
            return None
        stack.append(module)
        for target in sorted(graph[module]):
            if (circle := visit(target)) is not None:
                return circle
        stack.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        if (circle := visit(module)) is not None:
            return circle
    return None


def test_circle_finder_finds_a_circle():
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle(graph):
    circle = _circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle or [])
