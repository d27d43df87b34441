"""The layers of docs/architecture.md hold: data flows hashing -> similarity -> store -> batch, the
command line is on top, no domain module imports the CLI, and no two modules import each other
(directly or round a circle), counting imports inside functions too."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

# TELFHASH_ARCH_PACKAGE: check another tree (e.g. an older layout) with the same rules
PKG = Path(os.environ.get("TELFHASH_ARCH_PACKAGE") or Path(__file__).resolve().parent.parent / "telfhash_core")

# Old flat module names that only forward to the new ones (deprecated; not part of the layering).
SHIMS = {"api", "elf", "fallback", "tlshdist", "cluster", "index", "batch_cluster"}

# What each layer must not import (a prefix of telfhash_core.*).
FORBIDDEN = {
    "hashing": ("similarity", "store", "batch", "commands", "cli", "companion"),
    "companion": ("similarity", "store", "batch", "commands", "cli"),
    "similarity": ("store", "batch", "commands", "cli"),
    "store": ("batch", "commands", "cli"),
    "batch": ("store", "commands", "cli"),
    "digest": ("hashing", "similarity", "store", "batch", "commands", "cli"),
    "result": ("hashing", "similarity", "store", "batch", "commands", "cli"),
    "readers": ("hashing", "similarity", "store", "batch", "commands", "cli"),
    "progress": ("hashing", "similarity", "store", "batch", "commands", "cli"),
    "parallel": ("hashing", "similarity", "store", "batch", "commands", "cli"),
    "formats": ("hashing", "similarity", "store", "batch", "commands", "cli"),
    "plugins": ("hashing", "similarity", "store", "batch", "commands", "cli"),
    "hookspecs": ("hashing", "similarity", "store", "batch", "commands", "cli", "plugins"),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {_module_name(p): p for p in PKG.rglob("*.py")}
    return {m: p for m, p in found.items() if m.removeprefix("telfhash_core.") not in SHIMS}


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
        else:
            continue
        out.update(t for t in targets if t.startswith("telfhash_core") and t in MODULES and t != name)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_packages_are_there():
    for sub in (
        "hashing.api",
        "hashing.elfconst",
        "similarity.tlshdist",
        "store.index",
        "batch.run",
        "commands.batch",
        "readers",
        "progress",
        "parallel",
    ):
        assert f"telfhash_core.{sub}" in MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_layer_above_it(module):
    forbidden = FORBIDDEN.get(_layer(module), ())
    bad = sorted(t for t in GRAPH[module] if _layer(t) in forbidden)
    assert not bad, f"{module} imports {bad}"


def test_no_import_circles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_the_tests_listed_as_needing_the_whole_corpus_exist():
    """conftest's NEEDS_FULL_CORPUS names tests by file and function: a renamed test would
    otherwise run (and fail) on a clone without the corpus."""
    import conftest

    tests = Path(__file__).resolve().parent
    for entry in conftest.NEEDS_FULL_CORPUS:
        file, name = entry.split("::")
        assert f"def {name}(" in (tests / file).read_text(), entry
