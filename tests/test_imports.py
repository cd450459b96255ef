"""Imports run one way: no circle among evolkv's modules, lazy (function-level) imports and
``importlib.import_module`` calls (the scorer and quantizer registries load their modules by name) included."""

import ast
from pathlib import Path

import evolkv

ROOT = Path(evolkv.__file__).resolve().parent


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_import_module(func: ast.expr) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id == "import_module")


def _named(arg: ast.expr, strings: set[str], modules) -> list[str]:
    """The modules an ``import_module`` argument can name: a constant, or an f-string's constant prefix joined with
    any string constant of the same file (``f"evolkv.scorers.{name}"`` over ``MODULES = ("snapkv", ...)``)."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value]
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        prefix = arg.values[0].value
        return [prefix + s for s in strings if prefix + s in modules]
    return []


def test_import_module_calls_are_followed():
    """The registries' ``importlib.import_module(f"evolkv.quantizers.{_module}")`` is an edge like an import."""
    graph = _graph()
    assert "evolkv.quantizers.kivi" in graph["evolkv.quantizers"]
    assert "evolkv.scorers.snapkv" in graph["evolkv.scorers"]


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in ROOT.rglob("*.py") if "migrations" not in p.parts}
    graph = {}
    for name, path in modules.items():
        edges = set()
        tree = ast.parse(path.read_text())
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
                targets = _named(node.args[0], strings, modules)
            edges |= {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
        graph[name] = edges
    return graph


def test_no_import_circles():
    graph, circles = _graph(), []

    def visit(node, stack):
        for nxt in graph[node]:
            if nxt in stack:
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, stack + [nxt])
        done.add(node)

    done: set[str] = set()
    for start in graph:
        if start not in done:
            visit(start, [start])
    assert not circles, f"import circles: {circles[:3]}"
