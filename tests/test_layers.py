"""The package's layers: imports flow one way (docs/architecture.md).

Walks every module of ``lindifuse`` with ``ast`` (imports at module level, inside functions and
under ``TYPE_CHECKING`` alike) and fails when a module imports from a higher layer, when two
packages of the same layer import each other's modules, or when modules import each other in a
circle. Pure static analysis: nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "lindifuse"

# Higher number = higher layer. A module may import from its own unit or from lower layers.
LAYERS: dict[str, int] = {
    "lindifuse": 0,  # the package root: __init__ (version)
    "lindifuse.errors": 0,
    "lindifuse.refs": 0,
    "lindifuse.progress": 0,
    "lindifuse.stormlog": 0,
    "lindifuse.mounttable": 0,
    "lindifuse.sources": 1,
    "lindifuse.cache": 1,
    "lindifuse.formats": 2,
    "lindifuse.archive": 3,
    "lindifuse.fs": 4,
    "lindifuse.service": 5,
    "lindifuse.cli": 6,
    "lindifuse.__main__": 7,
    "lindifuse.dask": 7,
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    """The entry of LAYERS a module belongs to (its longest matching prefix)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in LAYERS:
            return name
    raise KeyError(module)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, imported module) for every lindifuse import in the file, relative ones resolved;
    ``from X import name`` counts as an import of ``X.name`` when that is a module."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [
                (node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "lindifuse"
            ]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "lindifuse":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((node.lineno, sub if sub in known else target))
    return out


def graph() -> dict[str, list[tuple[int, str]]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def test_every_module_has_a_layer():
    missing = []
    for m in modules():
        try:
            unit_of(m)
        except KeyError:
            missing.append(m)
    assert not missing, f"modules outside every layer (add them to LAYERS): {missing}"


def test_no_import_goes_up():
    bad = []
    for m, imps in graph().items():
        u = unit_of(m)
        for line, target in imps:
            t = unit_of(target)
            if LAYERS[t] > LAYERS[u]:
                bad.append(f"{m}:{line} imports {target} ({t} is above {u})")
            elif LAYERS[t] == LAYERS[u] and t != u and LAYERS[u] > 0:
                bad.append(f"{m}:{line} imports {target} (same layer as {u}: keep them apart)")
    assert not bad, "\n".join(bad)


def test_no_import_circle():
    g = {m: sorted({t for _, t in imps if t != m}) for m, imps in graph().items()}
    # the package root and subpackage __init__ files are implicitly imported by their
    # submodules; only explicit imports count
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, []):
            if w not in g:
                continue
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
                circles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize(
    ("importer", "target", "allowed"),
    [
        ("lindifuse.fs.content", "lindifuse.service.daemon", False),
        ("lindifuse.sources.http", "lindifuse.cache.disk", False),
        ("lindifuse.formats.container", "lindifuse.sources.http", True),
        ("lindifuse.cli.mount", "lindifuse.service.mount", True),
        ("lindifuse.refs", "lindifuse.errors", True),
        ("lindifuse.errors", "lindifuse.refs", True),
        ("lindifuse.archive.tar", "lindifuse.fs.writer", False),
    ],
)
def test_the_rule_itself(importer, target, allowed):
    """The checker says what docs/architecture.md says (so a broken LAYERS table fails)."""
    u, t = unit_of(importer), unit_of(target)
    ok = LAYERS[t] < LAYERS[u] or t == u or (LAYERS[t] == LAYERS[u] == 0)
    assert ok is allowed


def test_the_daemon_imports_no_optional_or_remote_only_library_at_start():
    """A mount of local files starts without httpx (about 25 ms of the mount -> ls time; loaded
    on the first HTTP request) and the daemon never imports the Dask extra."""
    import subprocess
    import sys

    code = (
        "import sys, lindifuse.service.daemon, lindifuse.cli.app\n"
        "print(sorted(m for m in ('httpx', 'distributed', 'dask') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
