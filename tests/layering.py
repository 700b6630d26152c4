"""The layer checker behind tests/test_layers.py: every import of a package, module-level and inside
functions, resolved to the package's own modules; upward imports, circles and unlisted modules."""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package folder ``root``."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = f
    return out


def imports(root: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> package modules it imports, module -> top-level names of other imports)."""
    mods = modules(root)
    internal: dict[str, set[str]] = {m: set() for m in mods}
    external: dict[str, set[str]] = {m: set() for m in mods}
    pkg = root.name
    for m, f in mods.items():
        base = m if f.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = base.split(".")
                    stem = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                # `from pkg.x import y` may name a module pkg.x.y or an attribute of pkg.x
                targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in mods else stem for a in node.names]
            else:
                continue
            for t in targets:
                if t.split(".")[0] != pkg:
                    external[m].add(t.split(".")[0])
                    continue
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m:
                    internal[m].add(t)
    return internal, external


def layer_index(module: str, layers: list[tuple[str, list[str]]], root_pkg: str) -> int | None:
    """The layer of ``module``: the entry that names it or its longest package prefix (the root
    package entry names only the package's ``__init__``)."""
    best, best_len = None, -1
    for i, (_, names) in enumerate(layers):
        for name in names:
            hit = module == name or (name != root_pkg and module.startswith(name + "."))
            if hit and len(name) > best_len:
                best, best_len = i, len(name)
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def problems(root: Path, layers: list[tuple[str, list[str]]], foundation_allowed: tuple[str, ...] = ()) -> list[str]:
    """Everything wrong with the package's layering, one line each (empty when it is clean)."""
    internal, external = imports(root)
    pkg = root.name
    found = []
    for m in internal:
        if layer_index(m, layers, pkg) is None:
            found.append(f"{m}: in no layer (add it to the layer list)")
    for m, targets in sorted(internal.items()):
        lm = layer_index(m, layers, pkg)
        for t in sorted(targets):
            lt = layer_index(t, layers, pkg)
            if lm is not None and lt is not None and lt > lm:
                found.append(f"{m} ({layers[lm][0]}) imports {t} ({layers[lt][0]}): an upward import")
    for comp in cycles(internal):
        found.append("import circle: " + " <-> ".join(comp))
    allowed = set(sys.stdlib_module_names) | {pkg, "__future__", *foundation_allowed}
    for m, names in sorted(external.items()):
        if layer_index(m, layers, pkg) == 0:
            for name in sorted(names - allowed):
                found.append(f"{m} ({layers[0][0]}) imports {name}: the bottom layer uses the standard library only")
    return found
