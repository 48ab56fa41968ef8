"""The import structure of src/vltrim: no import circle between its modules, counting imports inside functions too,
and no function-level import of the package's own modules (a lazy import that would hide a circle). The layer order
itself is import-linter's contract in pyproject.toml (`lint-imports`, run by .ci/run)."""

from __future__ import annotations

import ast
from pathlib import Path

import vltrim

SRC = Path(vltrim.__file__).parent


def _module_name(file: Path) -> str:
    parts = ("vltrim", *file.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(f): f for f in sorted(SRC.rglob("*.py"))}


def _target(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``from ... import`` names (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
    package = package[: len(package) - node.level + 1]
    return ".".join(package + ([node.module] if node.module else []))


def _own(name: str) -> str | None:
    """The vltrim module ``name`` is, or is inside (None for other packages)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, ast.AST, bool]]:
    """(vltrim module imported, node, whether inside a function) for every import statement of ``module``."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    in_function = {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(f)
        if isinstance(n, (ast.Import, ast.ImportFrom))
    }
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _target(module, node)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            own = _own(name)
            if own is not None and own != module:
                out.append((own, node, id(node) in in_function))
    return out


GRAPH = {m: {t for t, _, _ in _imports(m)} for m in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in MODULES:
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_the_package():
    assert {"vltrim.structure.plan", "vltrim.arch.apply", "vltrim.run.runner", "vltrim.cli"} <= set(MODULES)
    assert "vltrim.structure.plan" in GRAPH["vltrim.arch.apply"]
    assert "vltrim.run.chain" in GRAPH["vltrim.run.compress"]


def test_no_import_circle():
    assert _cycles() == []


def test_the_cycle_finder_finds_one():
    GRAPH["vltrim.structure.plan"].add("vltrim.cli")
    try:
        assert any({"vltrim.structure.plan", "vltrim.cli"} <= set(c) for c in _cycles())
    finally:
        GRAPH["vltrim.structure.plan"].discard("vltrim.cli")


def test_no_function_level_import_of_own_modules():
    lazy = [
        f"{MODULES[m].relative_to(SRC.parent)}:{node.lineno} imports {t}"
        for m in MODULES
        for t, node, inside in _imports(m)
        if inside
    ]
    assert lazy == []
