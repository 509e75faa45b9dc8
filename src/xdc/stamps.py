"""A folder's settings stamp: the one "same settings?" guard of every command that reuses work.

A rerun into the same output folder (pretrain's run folder, finetune's, the demo's, a benchmark's)
reuses what is there only if it was made with the same settings; otherwise old and new results
would mix. The folder records its settings in a file (YAML or JSON: the same reader), and
`check_stamp` compares them with a rerun's, naming the settings that differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from xdc.errors import XdcError
from xdc.files import write_text_atomic


class SettingsMismatch(XdcError):
    """An output folder holds work made with other settings."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: nested settings as dotted keys (lists and tuples are values)."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def differences(recorded: Any, wanted: Any) -> list[str]:
    """The dotted keys whose values differ (or that only one side has), sorted."""
    a, b = flatten(recorded), flatten(wanted)
    return sorted(key for key in a.keys() | b.keys() if a.get(key, KeyError) != b.get(key, KeyError))


def read_stamp(path: str | Path) -> dict:
    """The settings recorded in `path` (YAML or JSON); SettingsMismatch when unreadable."""
    path = Path(path)
    try:
        recorded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        recorded = None
    if not isinstance(recorded, dict):  # empty, cut short, or not settings at all
        raise SettingsMismatch(f"{path} is not a readable record of settings: choose another output "
                               f"folder, or delete it")
    return recorded


def check_stamp(path: str | Path, settings: Any, remedy: str = "choose another output folder (or delete it)",
                ignore: tuple[str, ...] = ()) -> bool:
    """True when `path` records these `settings` (the folder's work can be reused), False when it
    records nothing yet; SettingsMismatch naming the first differing keys, with both values,
    otherwise. Keys in `ignore` (dotted prefixes) are not compared."""
    path = Path(path)
    if not path.is_file():
        return False
    recorded, wanted = flatten(read_stamp(path)), flatten(json.loads(json.dumps(settings)))
    changed = [key for key in differences(recorded, wanted) if not key.startswith(ignore)]
    if changed:
        shown = "; ".join(f"{key}: {recorded.get(key, '(none)')} there, {wanted.get(key, '(none)')} asked"
                          for key in changed[:5]) + (f"; and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise SettingsMismatch(f"{path.parent} holds work made with other settings ({shown}): {remedy}")
    return True


def write_stamp(path: str | Path, settings: Any) -> Path:
    """Record `settings` in `path` (JSON, written atomically: a killed write leaves the old stamp)."""
    return write_text_atomic(path, json.dumps(settings, indent=1, sort_keys=True) + "\n")
