"""xdc.stamps: the one "same settings?" guard."""

import pytest

from xdc.stamps import SettingsMismatch, check_stamp, differences, flatten, write_stamp


def test_flatten_and_differences():
    assert flatten({"a": {"b": 1, "c": (1, 2)}, "d": None}) == {"a.b": 1, "a.c": [1, 2], "d": None}
    assert differences({"a": {"b": 1}, "x": 1}, {"a": {"b": 2}, "y": 1}) == ["a.b", "x", "y"]
    assert differences({"a": [1, 2]}, {"a": (1, 2)}) == []


def test_check_stamp_new_same_other(tmp_path):
    stamp = tmp_path / "settings.json"
    settings = {"optim": {"lr": 0.1, "lrs": [0.1, 0.2]}, "seed": 0}
    assert check_stamp(stamp, settings) is False  # nothing recorded yet
    write_stamp(stamp, settings)
    assert check_stamp(stamp, settings) is True
    with pytest.raises(SettingsMismatch, match=r"\(optim\.lr: 0\.1 there, 0\.2 asked\): use another --out"):
        check_stamp(stamp, {**settings, "optim": {"lr": 0.2, "lrs": [0.1, 0.2]}}, remedy="use another --out")
    assert check_stamp(stamp, {**settings, "seed": 1}, ignore=("seed",)) is True


def test_unreadable_stamp_is_one_line(tmp_path):
    stamp = tmp_path / "config.yaml"
    stamp.write_bytes(b"\xff\xfe: [")
    with pytest.raises(SettingsMismatch, match="not a readable record of settings"):
        check_stamp(stamp, {})
