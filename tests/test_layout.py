"""The package's layers (every module of src/xdc): imports point down the layers of docs/DESIGN.md
("How the code is laid out"), and every module has a layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A module may import from its own layer and the ones before it, never after.
# The config sits above data..methods (it checks values against their lists); those import it
# for annotations only (under TYPE_CHECKING), which this test does not count.
LAYERS = [
    ("foundation", ("xdc", "xdc.errors", "xdc.files", "xdc.locks", "xdc.progress", "xdc.console", "xdc.stamps",
                    "xdc.distributed", "xdc.checkpoint")),
    ("data", ("xdc.data",)),
    ("models", ("xdc.models",)),
    ("clustering", ("xdc.clustering",)),
    ("methods", ("xdc.methods",)),
    ("config", ("xdc.config",)),
    ("training", ("xdc.training",)),
    ("evaluation", ("xdc.evaluation",)),
    ("reports", ("xdc.reports",)),
    ("commands", ("xdc.pretrain", "xdc.demo", "xdc.experiments", "xdc.cli")),
]


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the most specific prefix that names `module` (None: no layer)."""
    best, best_length = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(source: str, name: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every xdc import in the source of module `name`, at any depth (imports
    inside functions count), except under `if TYPE_CHECKING:`."""
    package = name if is_package else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []

    def exists(module: str) -> bool:
        path = SRC / Path(*module.split("."))
        return path.is_dir() or path.with_suffix(".py").is_file()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "xdc")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = package.split(".")
                target = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "xdc":
                # `from xdc import clustering` imports the module xdc.clustering, not xdc
                found.extend((node.lineno, f"{target}.{alias.name}" if exists(f"{target}.{alias.name}") else target)
                             for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def imports_of(path: Path) -> list[tuple[int, str]]:
    return imported_modules(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")


MODULES = sorted((SRC / "xdc").rglob("*.py"))


def test_every_module_has_a_layer():
    assert MODULES
    assert [module_name(p) for p in MODULES if layer_of(module_name(p)) is None] == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_point_down(path):
    mine = layer_of(module_name(path))
    upward = [f"{path.relative_to(SRC)}:{line} imports {target} ({LAYERS[layer_of(target)][0]})"
              for line, target in imports_of(path)
              if layer_of(target) is not None and layer_of(target) > mine]
    assert upward == [], f"{module_name(path)} is in layer {LAYERS[mine][0]}"


def test_the_check_catches_an_upward_import():
    """The test above can fail: a data module importing training (at the top or inside a function)
    is reported; a TYPE_CHECKING import of the config is not."""
    source = ("from typing import TYPE_CHECKING\nfrom xdc.training import loop\n"
              "if TYPE_CHECKING:\n    from xdc.config import DataConfig\n"
              "def f():\n    from ..evaluation.knn import recall\n")
    targets = [target for _, target in imported_modules(source, "xdc.data.probe")]
    assert targets == ["xdc.training.loop", "xdc.evaluation.knn"]
    assert all(layer_of(t) > layer_of("xdc.data.probe") for t in targets)
