"""The project's import graph, read from its sources (``ast``; nothing is imported or executed).

Used for two things: the code digest a cached flow task is keyed on (every project module a stage's code can
reach, :func:`closure`), and the layering rule that no package imports one above it
(``pipeline < ingest < features < models < inference < catalogs < flows < clustermass``).
Imports inside functions count like top-level ones: they are code the caller runs. Relative imports are resolved.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from functools import cache
from pathlib import Path

#: the project's packages, lowest first: a module may import its own package and those before it
LAYERS = ("pipeline", "ingest", "features", "models", "inference", "catalogs", "flows", "clustermass")
ROOT = Path(__file__).resolve().parent.parent


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The source file of project module ``name`` (a package's ``__init__.py``), or None if there is none."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def modules(root: Path = ROOT) -> list[str]:
    """Every module of the project's packages, sorted."""
    out = []
    for pkg in LAYERS:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = f.relative_to(root).with_suffix("").parts
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(out)


def imports_in(tree: ast.AST, name: str, *, is_package: bool = False, root: Path = ROOT) -> set[str]:
    """Project modules imported anywhere in ``tree`` (the source of module ``name``).

    ``from a.b import c`` counts as ``a.b.c`` when that is a module, else as ``a.b``.
    """
    found: set[str] = set()
    package = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] in LAYERS and module_file(m, root) is not None}


@cache
def imports_of(name: str, root: Path = ROOT) -> frozenset[str]:
    """Project modules that module ``name`` imports (directly)."""
    path = module_file(name, root)
    if path is None:
        raise ModuleNotFoundError(f"no project module {name!r} under {root}")
    tree = ast.parse(path.read_text(), filename=str(path))
    return frozenset(imports_in(tree, name, is_package=path.name == "__init__.py", root=root) - {name})


def closure(names: Iterable[str], root: Path = ROOT) -> list[str]:
    """``names`` and every project module they import, transitively, sorted — with the packages' ``__init__``
    modules, which importing a submodule runs."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imports_of(name, root))
            parents = (".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1))
            todo.extend(p for p in parents if module_file(p, root) is not None)
    return sorted(seen)


def layer(name: str) -> int:
    """The rank of module ``name``'s package in :data:`LAYERS`."""
    return LAYERS.index(name.split(".")[0])
