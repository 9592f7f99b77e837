"""labkit's modules as a whole (docs/architecture.md): no import circle among them, counting the imports inside
functions too, and none so long that it is likely to hold more than one idea."""

import ast
from pathlib import Path

import pytest

LABKIT = Path(__file__).resolve().parent.parent / "labkit"
MAX_LINES = 1000
# Modules allowed past MAX_LINES, each with the reason it is still one idea. Empty today; add with care.
LONG_MODULES: dict[str, str] = {}


def module_name(path: Path) -> str:
    """'vram' for labkit/vram.py, 'grading.check' for labkit/grading/check.py, 'grading' for its __init__."""
    parts = list(path.relative_to(LABKIT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sibling_imports(path: Path, known: set[str]) -> set[str]:
    """The labkit modules `path` imports anywhere in its body (top level or inside a function)."""
    package = module_name(path).split(".")[:-1] if path.name != "__init__.py" else module_name(path).split(".")
    package = [p for p in package if p]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            base = base + (node.module.split(".") if node.module else [])
            targets = [base + [alias.name] for alias in node.names] + [base]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "labkit":
            base = node.module.split(".")[1:]
            targets = [base + [alias.name] for alias in node.names] + [base]
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".")[1:] for a in node.names if a.name.split(".")[0] == "labkit"]
        for target in targets:
            name = ".".join(target)
            if name in known:  # the most specific module the import names (a submodule, else its package)
                found.add(name)
                break
    return found - {module_name(path)}


def module_graph() -> dict[str, set[str]]:
    # the package's __init__ (a façade over the modules) and __main__ (the command line) import many
    # modules and are imported by none of them, so they can close no circle; they are left out
    paths = [p for p in LABKIT.rglob("*.py") if module_name(p) not in ("", "__main__")]
    known = {module_name(p) for p in paths}
    return {module_name(p): sibling_imports(p, known) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return trail[trail.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep, trail + [dep])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_cycle_finder_finds_a_circle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_imports_inside_functions():
    graph = module_graph()
    assert "attention_triton" in graph["attention"]  # imported inside triton_attention (triton is optional)
    assert {"architecture", "vram"} <= graph["vram_measure"]


def test_no_import_circle_among_labkit_modules():
    cycle = find_cycle(module_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("path", sorted(LABKIT.rglob("*.py")), ids=lambda p: str(p.relative_to(LABKIT)))
def test_no_module_is_longer_than_one_idea_needs(path):
    lines = len(path.read_text().splitlines())
    if module_name(path) in LONG_MODULES:
        return
    assert lines <= MAX_LINES, (f"labkit/{path.relative_to(LABKIT)} has {lines} lines: split it by idea "
                                "(docs/architecture.md), or list it in LONG_MODULES with the reason it is one idea")
