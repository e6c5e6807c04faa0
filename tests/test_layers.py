"""The package's rooms import only down the chain (README "Where things live"), and no module
imports another package's private names."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The chain, top (imported by everything below) to bottom; a module may import from its own
#: room and the rooms before it.
LAYERS = [
    ("entk_al.errors", "entk_al.fileio", "entk_al.text", "entk_al.progress", "entk_al.seeding",
     "entk_al.runlock", "entk_al.specs", "entk_al.docstrings"),
    ("entk_al.data",), ("entk_al.nets",), ("entk_al.ntk",), ("entk_al.lookahead",), ("entk_al.executor",),
    ("entk_al.scans",), ("entk_al.round",), ("strategies",), ("entk_al.run",), ("entk_al.report",),
    ("entk_al.cli", "entk_al.__main__"),
]


def layer(module: str) -> int | None:
    for i, room in enumerate(LAYERS):
        if any(module == r or module.startswith(r + ".") for r in room):
            return i
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, source: str | None = None):
    """(line, imported module, imported names) of every import in ``path`` (or in ``source``
    read as that file), lazy ones included."""
    mod = module_name(path)
    pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(pkg[: len(pkg) - node.level + 1]) if node.level else ""
            yield node.lineno, ".".join(x for x in (base, node.module or "") if x), [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, []


def sources() -> list[Path]:
    return sorted([*(ROOT / "entk_al").rglob("*.py"), *(ROOT / "strategies").rglob("*.py")])


def test_every_module_has_a_room():
    assert [module_name(p) for p in sources() if layer(module_name(p)) is None] == ["entk_al"]


def test_no_import_reaches_up_the_chain():
    upward = []
    for path in sources():
        here = layer(module_name(path))
        if here is None:  # entk_al/__init__.py: the curated surface, loaded lazily
            continue
        for line, target, names in imports(path):
            rooms = [layer(t) for t in (target, *(f"{target}.{n}" for n in names)) if layer(t) is not None]
            if rooms and min(rooms) > here:
                upward.append(f"{module_name(path)}:{line} imports {target} ({LAYERS[min(rooms)][0]})")
    assert upward == []


def test_no_private_name_crosses_a_package():
    crossing = []
    for path in sources():
        mod = module_name(path)
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for line, target, names in imports(path):
            target_pkg = target if (ROOT / target.replace(".", "/")).is_dir() else target.rpartition(".")[0]
            crossing += [f"{mod}:{line} imports {target}.{n}" for n in names
                         if n.startswith("_") and not n.startswith("__") and target_pkg != pkg]
    assert crossing == []


def test_the_checks_catch_what_they_look_for():
    """The walker resolves relative imports (so the tests above can fail)."""
    fake = ROOT / "entk_al" / "ntk" / "probe.py"  # never written: its source is given
    found = list(imports(fake, "from ..run.loop import ActiveLearningLoop\ndef f():\n    from . import _x\n"))
    assert found == [(1, "entk_al.run.loop", ["ActiveLearningLoop"]), (3, "entk_al.ntk", ["_x"])]
    assert layer("entk_al.run.loop") > layer(module_name(fake))
