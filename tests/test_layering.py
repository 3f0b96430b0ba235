"""The package's imports flow one way (README's Layout, issue 26): layers and the plain-data modules at the bottom,
then models, losses, data, analysis and checkpoint files, then the engine, then train.py's flag parsing, the public
face, and the programs on top. A module never imports (at run time) from a layer above its own; annotations under
``if TYPE_CHECKING:`` do not count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "partialconv"
RANK = {
    **dict.fromkeys(("layers", "errors", "fileio", "run_dir_names", "recipe_flags"), 0),
    **dict.fromkeys(("models", "losses", "data", "analysis", "checkpoint_io"), 1),
    "engine": 2,
    **dict.fromkeys(("config", "seed_compat"), 3),
    "__init__": 4,  # the public face imports from everywhere
    "programs": 5,  # train.py and the scripts' code: may import anything, imported by nothing in the package
}


def _runtime_imports(tree: ast.Module) -> list[ast.stmt]:
    """Import statements outside ``if TYPE_CHECKING:`` blocks."""
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            todo.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        todo.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))
    return found


def upward_imports(path: Path) -> list[str]:
    """``path``'s run-time imports of project modules from a layer above its own."""
    rel = path.relative_to(PACKAGE).with_suffix("")
    own = RANK[rel.parts[0]]
    bad = []
    for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ["partialconv", *rel.parts[:-1]][: len(rel.parts) - node.level + 1]
            names = [".".join(base + ([node.module] if node.module else []))]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "partialconv" and len(parts) > 1 and RANK[parts[1]] > own:
                bad.append(f"{rel.as_posix()}.py imports {name}")
    return bad


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_top_level_entry_has_a_layer():
    tops = {p.relative_to(PACKAGE).with_suffix("").parts[0] for p in MODULES}
    assert tops <= set(RANK), f"give these a layer in RANK: {sorted(tops - set(RANK))}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_module_imports_from_a_layer_above(path: Path):
    assert upward_imports(path) == []
