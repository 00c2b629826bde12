"""The package layout's rules, checked on the source itself (ast, no import of irkit):

* no import cycle between irkit's packages (``irkit.cir``, ``irkit.methods``, ...), nor between
  the modules of ``irkit.cli``;
* no ``_private`` name imported from another module;
* no dataset-name comparison (``dataset == "cirr"``, ``"circo" in (...)``) outside the benchmark
  specs (``irkit.benchmarks``) and the loaders (``irkit.data``).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
BENCHMARK_NAMES = {"cirr", "circo", "fashioniq", "traffic", "genecis"}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted((SRC / "irkit").rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def _imports(path: Path, module: str) -> list[tuple[str, list[str], int]]:
    """``(imported module, names, line)`` of every irkit import in ``path`` (relative ones resolved)."""
    found = []
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            if base == "irkit" or base.startswith("irkit."):
                found.append((base, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("irkit"):
                    found.append((alias.name, [], node.lineno))
    return found


def _group(module: str, depth: int) -> str:
    return ".".join(module.split(".")[:depth])


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle's node list found by a depth-first search (enough to report one)."""
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


def _edges(depth: int, within: str = "") -> dict[str, set[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = {}
    for module, path in modules.items():
        if within and not module.startswith(within):
            continue
        for target, names, _ in _imports(path, module):
            # ``from irkit.cli import cir_fusion`` imports the module irkit.cli.cir_fusion
            targets = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules] or [target]
            for t in targets:
                if within and not t.startswith(within):
                    continue
                a, b = _group(module, depth), _group(t, depth)
                if a != b and b != "irkit":
                    edges.setdefault(a, set()).add(b)
    return edges


def test_no_import_cycle_between_packages():
    edges = _edges(depth=2)
    assert "irkit.cir" in edges and "irkit.methods" in edges  # the walk sees the packages
    assert _cycles(edges) == []


def test_no_import_cycle_between_cli_modules():
    assert _cycles(_edges(depth=3, within="irkit.cli.")) == []


def test_cycle_detector_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_private_name_imported_across_modules():
    offenders = []
    for module, path in _modules().items():
        for target, names, line in _imports(path, module):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != module:
                offenders.append(f"{path.relative_to(SRC)}:{line} imports {private} from {target}")
    assert offenders == []


def _compares_dataset_name(node: ast.AST) -> bool:
    """``x == "cirr"``, ``"cirr" != x``, ``x in ("cirr", ...)`` and the like."""
    if not isinstance(node, ast.Compare):
        return False
    operands = [node.left, *node.comparators]
    for operand in operands:
        if isinstance(operand, ast.Constant) and operand.value in BENCHMARK_NAMES:
            return True
        if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) and any(
                isinstance(e, ast.Constant) and e.value in BENCHMARK_NAMES for e in operand.elts):
            return True
    return False


def test_dataset_names_are_compared_only_in_specs_and_loaders():
    offenders = []
    for module, path in _modules().items():
        if module.startswith(("irkit.benchmarks", "irkit.data")):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if _compares_dataset_name(node):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []


def test_the_dataset_name_check_can_fail():
    tree = ast.parse('if split.dataset == "cirr" or name in ("circo", "x"): pass')
    assert sum(_compares_dataset_name(n) for n in ast.walk(tree)) == 2
