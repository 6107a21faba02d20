"""Imports in mixvlp_ds point down. The package is a stack of layers (LAYERS, lowest first); a module
may import its own layer and the layers below it, never one above, and the leaves import nothing of
the package. No import cycles either. Every import counts, the ones inside functions too (a lazy
import hides an upward edge or a cycle; it does not remove it)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mixvlp_ds"


def module_graph() -> dict[str, set[str]]:
    """{module: modules of the package it imports}; importing a package means its __init__."""
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    head = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(head + ([node.module] if node.module else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in mods:
                    name = name.rsplit(".", 1)[0] if "." in name else ""
                # a module's own package (__init__) runs before it anyway: not an edge of its own
                if name and name != m and not m.startswith(name + "."):
                    graph[m].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(module_graph()) == []


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = module_graph()
    assert "mixvlp_ds.model.mixvlp" in graph["mixvlp_ds.model.export"]   # it reads the package's imports


# ----------------------------------------------------------------------------- layers
# Lowest first. A module may import modules of its own layer and of the layers below it. Entries
# name a module or a package (its modules too); the longest entry that names a module decides its
# layer, except "mixvlp_ds" itself, which is the package's __init__ alone. Any `__main__` module is
# a program. A new module with no entry fails test_every_module_has_a_layer: give it one here.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # import nothing of the package (test_leaves_import_nothing_of_the_package)
    ("leaf", ("mixvlp_ds", "mixvlp_ds.labels", "mixvlp_ds.patch_masking", "mixvlp_ds.shipped",
              "mixvlp_ds.storage", "mixvlp_ds.cpu_kernels", "mixvlp_ds.streaming_compat",
              "mixvlp_ds.stage_progress")),
    ("config", ("mixvlp_ds.config", "mixvlp_ds.status")),
    ("text", ("mixvlp_ds.text",)),
    # the model takes batches as tensors: it imports no shard or data code (the masks' draw rule is
    # the leaf patch_masking), so it sits below them and neither pipeline stage can leak into it
    ("model", ("mixvlp_ds.model",)),
    ("shard", ("mixvlp_ds.shard",)),
    ("data", ("mixvlp_ds.data",)),
    ("train", ("mixvlp_ds.train",)),
    ("apps", ("mixvlp_ds.apps",)),
    ("programs", ("mixvlp_ds.programs",)),
)
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}


def layer_of(module: str) -> str | None:
    """The layer of a module, or None when LAYERS has no entry for it."""
    if module.endswith(".__main__"):
        return "programs"
    best, found = -1, None
    for name, entries in LAYERS:
        for e in entries:
            hit = module == e or (e != "mixvlp_ds" and module.startswith(e + "."))
            if hit and len(e) > best:
                best, found = len(e), name
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """One line per import that points up the layers: importer, imported, and both layers."""
    out = []
    for m in sorted(graph):
        for d in sorted(graph[m]):
            lm, ld = layer_of(m), layer_of(d)
            if lm is not None and ld is not None and RANK[lm] < RANK[ld]:
                out.append(f"{m} (layer {lm}) imports {d} (layer {ld}), a layer above it")
    return out


def test_every_module_has_a_layer():
    assert [m for m in sorted(module_graph()) if layer_of(m) is None] == [], \
        "modules with no layer: add each to LAYERS in tests/test_imports.py"


def test_imports_point_down():
    bad = upward_imports(module_graph())
    assert not bad, "upward imports (order: " + " < ".join(RANK) + "):\n" + "\n".join(bad)


def test_leaves_import_nothing_of_the_package():
    graph = module_graph()
    leaves = [m for m in graph if layer_of(m) == "leaf"]
    assert "mixvlp_ds.labels" in leaves and "mixvlp_ds.patch_masking" in leaves
    assert {m: sorted(graph[m]) for m in leaves if graph[m]} == {}


def test_the_layer_check_names_an_upward_import():
    assert layer_of("mixvlp_ds") == "leaf" and layer_of("mixvlp_ds.shard.__main__") == "programs"
    assert layer_of("mixvlp_ds.apps.nih_regen") == "apps" and layer_of("mixvlp_ds.new_module") is None
    graph = {"mixvlp_ds.text.labeller": {"mixvlp_ds.shard.format", "mixvlp_ds.labels"},
             "mixvlp_ds.shard.format": {"mixvlp_ds.labels"}, "mixvlp_ds.labels": set()}
    assert upward_imports(graph) == ["mixvlp_ds.text.labeller (layer text) imports mixvlp_ds.shard.format "
                                     "(layer shard), a layer above it"]
