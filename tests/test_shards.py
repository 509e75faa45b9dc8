"""xdc.data.shards (`xdc prepare --shards`): tar shards in WebDataset's layout, samples read by
offset, resuming, and pretraining from a sharded manifest."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from xdc.cli import main as xdc_main
from xdc.config import DataConfig
from xdc.data.datasets import AudioVideoClips
from xdc.data.decode import decode_clips
from xdc.data.manifest import read_manifest, usable_rows, write_manifest
from xdc.data.prepare import prepare_shards
from xdc.data.scan import scan_paths
from xdc.data.shards import ShardMember, open_member, parse_size

PICKS = ["decord__video_90.mov", "mmaction2__test.avi", "moviepy__fire2.mp4", "imageio__cockatoo.mp4"]
CFG = DataConfig(frames=4, fps=4.0, short_side=64, crop=56, eval_clips=2, num_workers=0)


@pytest.fixture(scope="module")
def source(shared_videos, tmp_path_factory):
    """A manifest of a few real clips and one corrupt file that scans ok and fails to re-encode."""
    root = tmp_path_factory.mktemp("shards")
    corrupt = root / "corrupt.mp4"
    data = (shared_videos / "moviepy__fire2.mp4").read_bytes()
    corrupt.write_bytes(data[:2000] + bytes(len(data) - 2000))  # header intact, no decodable frames
    rows = scan_paths([shared_videos / name for name in PICKS], progress=False)
    rows.append({**rows[0], "path": str(corrupt)})  # as a scan that found it fine would list it
    return root, write_manifest(rows, root / "source.csv")


def test_parse_size():
    assert parse_size("1GB") == 2**30 and parse_size("500MB") == 500 * 2**20 and parse_size("4096") == 4096
    with pytest.raises(ValueError, match="not a size"):
        parse_size("big")


def test_shards_layout_offsets_and_resume(source):
    root, manifest = source
    out = root / "out"
    summary = prepare_shards(manifest, out, shard_size=1, progress=False)  # one sample per shard
    assert summary["failed"] == 1 and summary["samples"] == len(PICKS) and summary["shards"] == len(PICKS) + 1
    rows = read_manifest(out / "manifest.csv")
    assert rows.has_shards and len(rows) == len(PICKS) + 1
    assert [r["path"] for r in rows] == [r["path"] for r in read_manifest(manifest)]  # input order, source paths
    failed = rows[len(PICKS)]
    assert failed["status"] == "skip" and failed["reason"].startswith("re-encode failed")

    for i in range(len(PICKS)):  # WebDataset layout; the manifest's offset is the .mp4 member's data
        member = rows.source(i)
        with tarfile.open(member.shard) as tar:
            names = tar.getnames()
            key = names[0].split(".")[0]
            assert names == [f"{key}.mp4", f"{key}.json"]
            info = tar.getmember(f"{key}.mp4")
            assert (info.offset_data, info.size) == (member.offset, member.size)
            meta = json.loads(tar.extractfile(f"{key}.json").read())
            assert meta["path"] == rows[i]["path"] and meta["duration"] == pytest.approx(rows[i]["duration"])
            mp4 = tar.extractfile(info).read()
        with open_member(member) as handle:
            assert handle.read() == mp4
            handle.seek(-10, io.SEEK_END)
            assert handle.read() == mp4[-10:] and handle.read() == b""
        # Decoding by offset gives what decoding the extracted file gives.
        extracted = root / f"extracted_{i}.mp4"
        extracted.write_bytes(mp4)
        starts = [0.0, max(0.0, rows[i]["duration"] - 1.2)]
        for a, b in zip(decode_clips(member, starts, CFG), decode_clips(extracted, starts, CFG)):
            np.testing.assert_array_equal(a.video, b.video)
            assert (a.audio is None) == (b.audio is None)
            if a.audio is not None:
                np.testing.assert_array_equal(a.audio, b.audio)

    # A killed run: the last finished shard lost its index, and a half-written shard is left.
    shards = sorted((out / "shards").glob("shard-*.tar"))
    shards[-1].with_suffix(".csv").unlink()
    (out / "shards" / "shard-000099.tar.partial").write_bytes(b"half")
    again = prepare_shards(manifest, out, shard_size=1, progress=False)
    assert again["files"] == 1 and again["reused"] == len(PICKS) + 1 - 1
    assert not list((out / "shards").glob("*.partial"))
    assert list(read_manifest(out / "manifest.csv")) == list(rows)


def test_dataset_reads_shards_with_random_windows(source):
    root, manifest = source
    prepare_shards(manifest, root / "ds", progress=False, workers=2)
    rows, _ = usable_rows(read_manifest(root / "ds" / "manifest.csv"), require_audio=False)
    train = AudioVideoClips(rows, CFG, mode="train", require_audio=False)
    longest = int(np.nanargmax(rows.columns["duration"]))
    assert rows[longest]["duration"] > 3
    starts = {float(train[longest]["start"][0]) for _ in range(4)}
    assert len(starts) > 1  # temporal jittering
    item = AudioVideoClips(rows, CFG, mode="eval", require_audio=False)[len(rows) - 1]  # random access
    assert item["video"].shape == (2, 3, 4, 56, 56)
    gone = ShardMember(str(root / "nope.tar"), 0, 10)  # a missing shard later on: a skip, not a crash
    broken = rows.take(np.array([0]))
    broken.categories["shard"] = [gone.shard]
    broken.columns["shard"] = np.array([0], dtype=np.int32)
    skipped = AudioVideoClips(broken, CFG, mode="train", require_audio=False)[0]
    assert "nope.tar" in skipped["skipped"]


@pytest.mark.slow  # prepare 23 files, then a tiny pretraining run: ~1-2 min on 2 busy cores
def test_prepare_shards_then_pretrain(shared_videos, tmp_path, capsys):
    """Must show (issue 11): scan, prepare --shards, pretrain tiny_cpu on the sharded manifest runs to
    the end with the same usable videos as the unsharded path."""
    scan = tmp_path / "m.csv"
    assert xdc_main(["scan", str(shared_videos), "-o", str(scan)]) == 0
    assert xdc_main(["prepare", str(scan), "--out", str(tmp_path / "plain"), "--workers", "2"]) == 0
    assert xdc_main(["prepare", str(scan), "--out", str(tmp_path / "sharded"), "--shards",
                     "--shard-size", "1MB", "--workers", "2"]) == 0
    plain, _ = usable_rows(read_manifest(tmp_path / "plain" / "manifest.csv"), require_audio=True)
    sharded, _ = usable_rows(read_manifest(tmp_path / "sharded" / "manifest.csv"), require_audio=True)
    assert len(sharded) == len(plain) >= 8
    assert len(list((tmp_path / "sharded" / "shards").glob("shard-*.tar"))) >= 2
    capsys.readouterr()
    run = tmp_path / "run"
    assert xdc_main(["pretrain", "--config", "tiny_cpu", "--data", str(tmp_path / "sharded" / "manifest.csv"),
                     "--out", str(run), "optim.epoch_size=16", "iterations=1"]) == 0
    assert f"{len(plain)} usable videos" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"][0]["epochs"] >= 1 and summary["iterations"][0]["skipped"] == 0
    assert len(np.load(run / "iterations" / "00" / "labels_video.npy")) == len(plain)
    assert read_manifest(run / "rows.csv").has_shards
