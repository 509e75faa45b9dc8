"""docs/DESIGN.md names what exists: every module it lists is in src/xdc (and every module there is
listed), and every dotted name it cites in backticks resolves (a module, an attribute of one, a
class's member, or a config key)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re

import pytest
from conftest import REPO

import xdc
from xdc.config import DemoConfig, FinetuneConfig, PretrainConfig

DESIGN = (REPO / "docs" / "DESIGN.md").read_text(encoding="utf-8")
PACKAGE = REPO / "src" / "xdc"
# Dotted names that are not ours: other libraries, and files named by their suffix.
FOREIGN = ("torch", "np", "numpy", "faiss", "av", "yaml", "OmegaConf", "torchvision", "tqdm", "os", "sys",
           "json", "random", "matplotlib", "scipy", "sklearn", "fcntl", "frame", "importlib", "pip", "setuptools")
FILE_SUFFIXES = (".json", ".txt", ".yaml", ".pt", ".pth", ".csv", ".npy", ".html", ".md", ".png", ".py", ".tar",
                 ".sh", ".mp4", ".wav", ".jpg", ".tmp", ".lock", ".partial", ".gz", ".rankR", ".f16")


def listed_modules() -> list[str]:
    """The paths of the module list's code block ("Every module, by layer")."""
    block = DESIGN.split("Every module, by layer", 1)[1].split("```", 2)[1]
    return [line.split()[0] for line in block.splitlines() if line.strip() and line.split()[0].endswith(".py")]


def test_the_module_list_is_the_package():
    listed = listed_modules()
    on_disk = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))
    assert sorted(set(listed)) == on_disk, "docs/DESIGN.md's module list and src/xdc differ"
    assert len(listed) == len(set(listed))


def _modules() -> dict[str, object]:
    """Every xdc module, imported."""
    found = {"xdc": xdc}
    for info in pkgutil.walk_packages(xdc.__path__, "xdc."):
        found[info.name] = importlib.import_module(info.name)
    return found


MODULES = _modules()


def _member(owner: object, names: list[str]) -> bool:
    for at, name in enumerate(names):
        if dataclasses.is_dataclass(owner) and name in {f.name for f in dataclasses.fields(owner)}:
            return at == len(names) - 1  # a field (its type is an annotation string: no deeper)
        if not hasattr(owner, name):
            if inspect.isclass(owner):  # an instance attribute set in __init__ (or a dataclass field)
                source = inspect.getsource(owner)
                if re.search(rf"self\.{re.escape(name)}\b", source) or re.search(rf"^\s+{name}\s*:", source, re.M):
                    return True
            return False
        owner = getattr(owner, name)
    return True


def _defined_in(module: object, names: list[str]) -> bool:
    """`module.names[0]` is defined there, not imported from elsewhere (where it would belong)."""
    if not names:
        return True
    value = getattr(module, names[0], None)
    home = getattr(value, "__module__", None) if inspect.isclass(value) or inspect.isfunction(value) else None
    # a package may offer what its own modules define (xdc.models.encode)
    return home is None or home == module.__name__ or home.startswith(module.__name__ + ".")


def _config_key(parts: list[str]) -> bool:
    for schema in (PretrainConfig, FinetuneConfig, DemoConfig):
        value = schema()
        for part in parts:
            if not dataclasses.is_dataclass(value) or part not in {f.name for f in dataclasses.fields(value)}:
                break
            value = getattr(value, part)
        else:
            return True
    return False


def resolves(token: str) -> bool:
    """Whether a dotted name of DESIGN.md names something that exists."""
    parts = token.split(".")
    if parts[0] == "xdc":
        parts = parts[1:]
    if _config_key(parts):
        return True
    for cut in range(len(parts), 0, -1):  # the longest module prefix, then attributes
        module = MODULES.get("xdc." + ".".join(parts[:cut]))
        if module is not None:
            return _defined_in(module, parts[cut:]) and _member(module, parts[cut:])
    # `Class.member`, `function`-less: a name defined in some module, then its members.
    owners = [getattr(m, parts[0]) for m in MODULES.values() if hasattr(m, parts[0])]
    return any(_member(owner, parts[1:]) for owner in owners)


def cited_names() -> list[str]:
    """Dotted names in backticks (a call's arguments dropped), not files and not other libraries'."""
    names = set()
    for code in re.findall(r"`([^`\n]+)`", DESIGN):
        for token in re.findall(r"[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)+(?:\([^)]*\))?", code):
            token = token.split("(")[0]
            if token.startswith(FOREIGN) and token.split(".")[0] in FOREIGN:
                continue
            if token.endswith(FILE_SUFFIXES) or any(f"{s}." in f".{token}." for s in FILE_SUFFIXES):
                continue
            names.add(token)
    return sorted(names)


def test_design_cites_names_at_all():
    assert len(cited_names()) > 50  # the parser below would pass vacuously otherwise


@pytest.mark.parametrize("name", cited_names())
def test_every_cited_name_resolves(name):
    assert resolves(name), f"docs/DESIGN.md cites `{name}`, which names nothing in xdc (or a config key)"


def test_the_check_catches_stale_names():
    assert resolves("xdc.training.resume.IterationState") and resolves("optim.head_reduction")
    assert resolves("RunFolder.read_labels") and resolves("checkpoint.save_checkpoint")
    assert not resolves("pretrain.same_run") and not resolves("checkpoint.atomic_file")
    assert not resolves("optim.no_such_key") and not resolves("RunError")
