"""The shape of the package: masklab's import graph, read with `ast` (imports inside functions and under
TYPE_CHECKING included, since they are dependencies all the same), has no cycle, and every import runs down
the data flow (docs/design.md, "Data flow"):

    base (errors, units, config, config_file, keep, published, progress) -> nn -> limits -> data -> train -> store
    -> analysis -> plots -> runs in and out (generation, interop, report) -> scale (executors, sweep)
    -> tools (warm, cli)

A module may import its own layer and the layers below it, never one above. A new module must be given a
layer here (the test names any that has none)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "masklab"

# Bottom to top. A module belongs to the layer of the longest prefix that names it (a module or a package).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("masklab", "masklab.errors", "masklab.units", "masklab.config", "masklab.config_file", "masklab.keep",
              "masklab.published", "masklab.progress")),
    ("nn", ("masklab.nn",)),
    ("limits", ("masklab.limits",)),
    ("data", ("masklab.data",)),
    ("train", ("masklab.train",)),
    ("store", ("masklab.store",)),
    ("analysis", ("masklab.analysis",)),
    ("plots", ("masklab.plots",)),
    ("runs in and out", ("masklab.generation", "masklab.interop", "masklab.report", "masklab.tracking")),
    ("scale", ("masklab.scale", "masklab.sweep")),
    ("tools", ("masklab.warm", "masklab.cli", "masklab.__main__")),
]


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of masklab (a package is its __init__.py)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The masklab modules `module` imports, anywhere in its file. `from P import x` is an import of the
    submodule P.x where x is one, else of P."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
            names = subs if len(subs) == len(node.names) else [base, *subs]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import masklab.store.run as R` names the module itself
                name = name.rpartition(".")[0]
            if name.startswith("masklab") and name != module:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {module: imported(module, path, known) for module, path in known.items()}


def layer(module: str) -> int:
    best, index = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, index = len(prefix), i
    return index


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    assert cycles(graph()) == []


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer(m) < 0] == []


def test_no_import_runs_up_the_data_flow():
    upward = sorted(f"{a} ({LAYERS[layer(a)][0]}) imports {b} ({LAYERS[layer(b)][0]})"
                    for a, targets in graph().items() for b in targets if layer(b) > layer(a))
    assert upward == []


def test_the_checks_see_imports_inside_functions_and_find_cycles(tmp_path):
    """An import inside a function counts, relative imports resolve, `from P import m` is the submodule P.m,
    and a cycle of two modules is found as one."""
    source = tmp_path / "a.py"
    source.write_text("import os\n\ndef f():\n    from masklab.b import thing\n    from .c import d\n"
                      "    from masklab import b\n")
    known = {"masklab": tmp_path, "masklab.a": source, "masklab.b": source, "masklab.c": source}
    assert imported("masklab.a", source, known) == {"masklab.b", "masklab.c"}
    assert cycles({"masklab.a": {"masklab.b"}, "masklab.b": {"masklab.a"}, "masklab.c": {"masklab.a"}}) == \
        [["masklab.a", "masklab.b"]]
    assert layer("masklab.store.run") == [name for name, _ in LAYERS].index("store")
    assert layer("masklab.storeroom") == 0  # a prefix names a module or a package: this is masklab's, base
