"""xdc.data.datasets: AudioVideoClips items, bad input, collate/skip reporting, EpochSampler,
manifests; xdc.data.transforms' per-clip video norm."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from xdc.config import DataConfig
from xdc.data.audio import mel_band_centres, num_audio_frames
from xdc.data.datasets import (AudioClips, AudioVideoClips, EpochSampler, SkipCounter, clip_loader,
                               collate_clips, eval_starts, worker_init_fn)
from xdc.data.decode import decode_audio_windows, decode_clips
from xdc.data.manifest import empty_row, write_manifest
from xdc.data.manifest_csv import ManifestError
from xdc.data.transforms import train_video_transform

CFG = DataConfig(frames=4, fps=8.0, short_side=64, crop=56, eval_clips=3, max_retries=2)
MEDIA = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".wav")


def row(path, **fields):
    out = empty_row(path)
    out.update(fields)
    return out


def check_eval_item(item, clips, cfg=CFG):
    assert item["video"].shape == (clips, 3, cfg.frames, cfg.crop, cfg.crop) and item["video"].dtype == torch.float32
    assert item["audio"].shape == (clips, 1, cfg.n_mels, num_audio_frames(cfg))
    assert item["audio"].dtype == torch.float32
    assert item["start"].shape == (clips,) and item["start"].dtype == torch.float64
    assert torch.isfinite(item["video"]).all() and torch.isfinite(item["audio"]).all()


def check_train_item(item, cfg=CFG):
    check_eval_item(item, 1, cfg)  # the same keys and shapes: one clip on the clip axis


def test_every_shared_file_gives_items_or_a_clear_skip(shared_videos):
    paths = sorted(p for p in shared_videos.iterdir() if p.suffix in MEDIA)
    assert len(paths) == 23
    rows = [row(p) for p in paths]  # no durations: the dataset reads them from the files
    for mode in ("train", "eval"):
        dataset = AudioVideoClips(rows, CFG, mode=mode, require_audio=False)
        for i, path in enumerate(paths):
            item = dataset[i]
            if path.suffix == ".wav":
                assert "no video stream" in item["skipped"] and str(path) in item["skipped"]
                continue
            assert "skipped" not in item, item.get("skipped")
            check_train_item(item) if mode == "train" else check_eval_item(item, CFG.eval_clips)
            assert item["index"] == i


def test_train_item_keys_jitter_and_labels(clip_factory):
    paths = [clip_factory(f"{name}.mp4", seconds=3.0, seed=k) for k, name in enumerate("abc")]
    rows = [row(p, duration=3.0, has_audio=True, label=lab) for p, lab in zip(paths, ["walk", "run", "walk"])]
    dataset = AudioVideoClips(rows, CFG)
    assert dataset.classes == ["run", "walk"] and dataset.labels.tolist() == [1, 0, 1] and dataset.has_labels
    torch.manual_seed(0)
    items = [dataset[0] for _ in range(6)]
    for item in items:
        check_train_item(item)
        assert set(item) == {"video", "audio", "index", "start", "label", "has_audio"}
        assert item["label"] == 1 and item["has_audio"] and 0 <= float(item["start"]) <= 3.0 - CFG.clip_seconds
    assert len({round(float(item["start"]), 6) for item in items}) == 6, "temporal jittering: random starts"
    # The audio is the clip's own: a 440 Hz tone, not silence.
    assert items[0]["audio"].std() > 0.5


def test_train_item_is_one_window_with_a_clip_axis(clip_factory):
    """A train item is the decoded window at the drawn start, cropped and flipped with the draws
    that follow: the clip axis is the only thing it adds to the window."""
    path = clip_factory("a.mp4", seconds=3.0)
    dataset = AudioVideoClips([row(path, duration=3.0, has_audio=True)], CFG)
    torch.manual_seed(5)
    item = dataset[0]
    torch.manual_seed(5)
    start = float(torch.rand(())) * (3.0 - CFG.clip_seconds)  # the same draws, in the same order
    clip = decode_clips(path, [start], CFG)[0]
    assert torch.equal(item["video"][0], train_video_transform(clip.video, CFG))
    assert torch.equal(item["audio"][0], dataset.log_mel(torch.from_numpy(clip.audio[None]))[0])
    assert item["start"].tolist() == [start]


def test_batches_are_videos_by_clips(clip_factory):
    rows = [row(clip_factory(f"{k}.mp4", seconds=2.0, seed=k), duration=2.0, has_audio=True) for k in range(3)]
    frames = num_audio_frames(CFG)
    for mode, clips in (("train", 1), ("eval", CFG.eval_clips)):
        batch = next(iter(clip_loader(AudioVideoClips(rows, CFG, mode=mode), batch_size=3)))
        assert batch["video"].shape == (3, clips, 3, CFG.frames, CFG.crop, CFG.crop)
        assert batch["audio"].shape == (3, clips, 1, CFG.n_mels, frames)
        assert batch["start"].shape == (3, clips) and batch["index"].tolist() == [0, 1, 2]


def test_audio_clips_carry_the_clip_axis(clip_factory):
    path = clip_factory("a.mp4", seconds=3.0)
    rows = [row(path, duration=3.0, label="tone")]
    torch.manual_seed(0)
    train = AudioClips(rows, CFG)[0]
    assert train["audio"].shape == (1, 1, CFG.n_mels, num_audio_frames(CFG)) and train["start"].shape == (1,)
    evaluate = AudioClips(rows, CFG, mode="eval")
    item = evaluate[0]
    assert item["audio"].shape == (CFG.eval_clips, 1, CFG.n_mels, num_audio_frames(CFG))
    windows = decode_audio_windows(path, item["start"].tolist(), CFG)
    assert torch.equal(item["audio"], evaluate.log_mel(torch.from_numpy(np.stack(windows))))
    assert item["label"] == 0 and item["has_audio"]


def test_eval_items_uniform_starts_and_clip_override(clip_factory):
    path = clip_factory("a.mp4", seconds=4.0)
    rows = [row(path, duration=4.0, has_audio=True)]
    item = AudioVideoClips(rows, CFG, mode="eval")[0]
    check_eval_item(item, 3)
    assert item["start"].tolist() == pytest.approx([0.0, 1.75, 3.5])
    assert "label" not in item
    assert torch.equal(item["video"], AudioVideoClips(rows, CFG, mode="eval")[0]["video"]), "eval is deterministic"
    single = AudioVideoClips(rows, CFG, mode="eval", clips_per_video=1)[0]
    check_eval_item(single, 1)
    assert single["start"].tolist() == pytest.approx([1.75])
    assert eval_starts(0.5, 1.0, 2) == [0.0, 0.0]  # shorter than a clip: loop from the start


def test_video_only_items_skip_the_audio_and_keep_the_same_frames(clip_factory):
    path = clip_factory("a.mp4", seconds=4.0)
    rows = [row(path, duration=4.0, has_audio=True)]
    both = AudioVideoClips(rows, CFG, mode="eval", require_audio=False)[0]
    video_only = AudioVideoClips(rows, CFG, mode="eval", require_audio=False, with_audio=False)[0]
    assert "audio" not in video_only and "has_audio" not in video_only
    assert torch.equal(video_only["video"], both["video"]) and torch.equal(video_only["start"], both["start"])
    torch.manual_seed(0)
    train = AudioVideoClips(rows, CFG, require_audio=False, with_audio=False)[0]
    assert "audio" not in train and train["video"].shape == (1, 3, CFG.frames, CFG.crop, CFG.crop)
    with pytest.raises(ValueError, match="require_audio"):
        AudioVideoClips(rows, CFG, require_audio=True, with_audio=False)


def test_loaded_clips_keep_flash_and_beep_aligned(tmp_path):
    from test_decode import BEEP_HZ, FLASH_FPS, FLASH_TIME, make_flash_beep

    path = make_flash_beep(tmp_path / "flash.mp4")  # 3 s; white frame + 1 kHz beep at 1.0 s
    cfg = dataclasses.replace(CFG, frames=24, fps=FLASH_FPS, short_side=48, crop=40, audio_seconds=1.5)
    band = int((mel_band_centres(cfg.n_mels, cfg.sample_rate) - BEEP_HZ).abs().argmin())
    rows = [row(path, duration=3.0, has_audio=True)]
    train, evaluate = AudioVideoClips(rows, cfg), AudioVideoClips(rows, cfg, mode="eval", clips_per_video=1)
    torch.manual_seed(0)
    items = [train[0] for _ in range(12)] + [evaluate[0]]  # each with one clip
    checked = 0
    for item in items:
        start = float(item["start"][0])
        if not start < FLASH_TIME < start + cfg.clip_seconds - 1 / cfg.fps:
            continue
        flash = start + int(item["video"][0].mean(dim=(0, 2, 3)).argmax()) / cfg.fps
        audio_start = start + cfg.clip_seconds / 2 - cfg.audio_window_seconds / 2
        beep = audio_start + int(item["audio"][0, 0, band].argmax()) * cfg.hop_ms / 1000
        assert FLASH_TIME - 1e-3 <= flash < FLASH_TIME + 1 / cfg.fps, (start, flash)  # 1 ms: TIME_EPS
        assert abs(beep - flash) <= 1 / cfg.fps, (start, flash, beep)
        checked += 1
    assert checked >= 4


def test_video_without_audio(clip_factory):
    rows = [row(clip_factory("mute.mp4", seconds=2.0, audio=False), duration=2.0, has_audio=False)]
    item = AudioVideoClips(rows, CFG, require_audio=False)[0]
    check_train_item(item)
    assert item["has_audio"] is False and torch.count_nonzero(item["audio"]) == 0
    eval_item = AudioVideoClips(rows, CFG, mode="eval", require_audio=False)[0]
    check_eval_item(eval_item, 3)
    # Pretraining needs audio: such a row is skipped (with the reason) rather than faked.
    skipped = AudioVideoClips(rows, CFG, require_audio=True)[0]
    assert "no audio stream" in skipped["skipped"]


def test_short_video_is_looped_in_a_longer_clip(shared_videos):
    path = shared_videos / "imageio__realshort.mp4"  # 1.2 s, clip 2 s
    cfg = dataclasses.replace(CFG, frames=8, fps=4.0)
    item = AudioVideoClips([row(path, duration=1.2)], cfg)[0]
    check_train_item(item, cfg)
    assert item["start"].tolist() == [0.0]


def write_bad_files(tmp_path, clip_factory):
    """Zero bytes, text named .mp4, a truncated MP4, and one good clip."""
    good = clip_factory("good.mp4", seconds=2.0)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video\n" * 100)
    data = clip_factory("whole.mp4", seconds=2.0).read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    names = ["empty.mp4", "good.mp4", "text.mp4", "truncated.mp4"]
    return [tmp_path / n for n in names], good


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_files_are_skipped_and_the_epoch_completes(tmp_path, clip_factory, workers):
    paths, good = write_bad_files(tmp_path, clip_factory)
    rows = [row(p, duration=2.0, has_audio=True) for p in paths]  # metadata says fine: the file lies
    dataset = AudioVideoClips(rows, CFG)
    sampler = EpochSampler(len(dataset), epoch_size=8, seed=0, rank=0, world_size=1)
    loader = clip_loader(dataset, batch_size=4, sampler=sampler, num_workers=workers)
    counter, decoded = SkipCounter(), []
    for batch in loader:
        counter.add(batch)
        if "video" in batch:
            assert batch["video"].shape[1:] == (1, 3, CFG.frames, CFG.crop, CFG.crop)
            decoded += batch["index"].tolist()
    assert counter.total + len(decoded) == 8
    assert set(decoded) == {paths.index(good)}
    assert {index for index, _ in counter.skipped} == {0, 2, 3}
    assert all(f"after {1 + CFG.max_retries} tries" in reason for _, reason in counter.skipped)
    summary = counter.summary()
    assert summary.startswith(f"{counter.total} samples skipped (3 videos)") and "truncated.mp4" in summary
    counter.reset()
    assert counter.total == 0 and counter.summary() == "no samples skipped"


def test_windows_past_a_truncated_end_are_retried(tmp_path, clip_factory):
    whole = clip_factory("whole.mkv", seconds=4.0).read_bytes()
    (tmp_path / "half.mkv").write_bytes(whole[: len(whole) // 2])  # decodes up to about 2 s
    dataset = AudioVideoClips([row(tmp_path / "half.mkv", duration=4.0, has_audio=True)],
                              dataclasses.replace(CFG, max_retries=6))  # the manifest says 4 s
    torch.manual_seed(0)
    items = [dataset[0] for _ in range(6)]
    assert all("skipped" not in item for item in items), "another window inside the readable part"
    assert all(float(item["start"]) < 2.1 for item in items)


def test_collate_drops_skipped_items():
    good = {"video": torch.zeros(1, 3, 2, 4, 4), "audio": torch.zeros(1, 1, 5, 6), "index": 1,
            "start": torch.tensor([0.5], dtype=torch.float64), "has_audio": True}
    batch = collate_clips([{"index": 0, "skipped": "x: bad"}, good, dict(good, index=2)])
    assert batch["video"].shape == (2, 1, 3, 2, 4, 4) and batch["index"].tolist() == [1, 2]
    assert batch["skipped"] == [(0, "x: bad")]
    assert collate_clips([{"index": 3, "skipped": "y"}]) == {"skipped": [(3, "y")]}


def test_from_manifest_drops_unusable_rows_and_says_why(tmp_path, clip_factory, caplog):
    rows = [row(clip_factory("a.mp4"), duration=2.0, has_audio=True, audio_silent=False),
            row(clip_factory("b.mp4", audio=False), duration=2.0, has_audio=False),
            row(tmp_path / "notes.txt", status="skip", reason="no video stream")]
    (tmp_path / "notes.txt").write_text("hello")
    manifest = write_manifest(rows, tmp_path / "m.csv")
    with caplog.at_level(logging.INFO, logger="xdc.data.datasets"):
        dataset = AudioVideoClips.from_manifest(manifest, CFG)
    assert len(dataset) == 1 and dataset.rows[0]["path"].endswith("a.mp4")
    assert dataset.dropped == {"no audio": 1, "skip: no video stream": 1}
    assert "using 1 of 3 videos" in caplog.text and "no audio" in caplog.text
    everything = AudioVideoClips.from_manifest(manifest, CFG, mode="eval", require_audio=False)
    assert len(everything) == 2
    check_eval_item(everything[1], CFG.eval_clips)


def test_missing_manifest_paths_error_or_drop(tmp_path, clip_factory):
    kept = clip_factory("kept.mp4")
    gone = clip_factory("gone.mp4")
    manifest = write_manifest([row(kept, duration=2.0, has_audio=True),
                               row(gone, duration=2.0, has_audio=True)], tmp_path / "m.csv")
    gone.unlink()
    with pytest.raises(ManifestError, match="gone.mp4"):
        AudioVideoClips.from_manifest(manifest, CFG)
    dataset = AudioVideoClips.from_manifest(manifest, CFG, drop_missing=True)
    assert [r["path"] for r in dataset.rows] == [str(kept)]


def test_bad_arguments_are_rejected(clip_factory):
    path = clip_factory("a.mp4")
    with pytest.raises(ValueError, match="mode"):
        AudioVideoClips([row(path)], CFG, mode="test")
    with pytest.raises(ValueError, match="no usable video"):
        AudioVideoClips([], CFG)
    with pytest.raises(ValueError, match="1 of 2 rows have no label"):
        AudioVideoClips([row(path, label="a"), row(path)], CFG)


def test_epoch_sampler_is_deterministic_balanced_and_split_across_ranks():
    sampler = EpochSampler(10, epoch_size=25, seed=3, rank=0, world_size=1)
    first = list(sampler)
    assert len(first) == 25 and first == list(sampler)
    counts = np.bincount(first, minlength=10)
    assert counts.max() - counts.min() <= 1, "unweighted: shuffled passes, every video evenly"
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(EpochSampler(10, 25, seed=4, rank=0, world_size=1)) != first

    ranks = [EpochSampler(10, 25, seed=3, rank=r, world_size=4) for r in range(4)]
    shares = [list(s) for s in ranks]
    assert all(len(s) == len(share) == 7 for s, share in zip(ranks, shares))  # ceil(25 / 4)
    interleaved = [shares[r][i] for i in range(7) for r in range(4)]
    assert interleaved[:25] == first, "the ranks split the one common draw"


def test_epoch_sampler_weights():
    weights = np.array([0.0, 1.0, 3.0, 0.0])
    draw = list(EpochSampler(4, epoch_size=4000, weights=weights, rank=0, world_size=1))
    counts = np.bincount(draw, minlength=4)
    assert counts[0] == counts[3] == 0
    assert counts[2] / counts[1] == pytest.approx(3.0, rel=0.15)
    for bad in (np.zeros(4), np.array([1.0, -1.0, 1.0, 1.0]), np.ones(3)):
        with pytest.raises(ValueError):
            EpochSampler(4, 10, weights=bad, rank=0, world_size=1)


def test_worker_init_fn_seeds_numpy_from_torch():
    torch.manual_seed(1234)
    worker_init_fn(0)
    first = np.random.rand()
    torch.manual_seed(1234)
    worker_init_fn(0)
    assert np.random.rand() == first
    torch.manual_seed(99)
    worker_init_fn(0)
    assert np.random.rand() != first


def test_workers_draw_different_windows(clip_factory):
    rows = [row(clip_factory("a.mp4", seconds=4.0), duration=4.0, has_audio=True)]
    dataset = AudioVideoClips(rows, CFG)
    loader = DataLoader(dataset, batch_size=1, sampler=[0] * 4, num_workers=2, collate_fn=collate_clips,
                        worker_init_fn=worker_init_fn)
    starts = [float(batch["start"][0]) for batch in loader]
    assert len(set(starts)) == 4, "each worker must have its own random stream"


def test_per_clip_video_norm_removes_brightness():
    from dataclasses import replace

    from xdc.config import DataConfig
    from xdc.data.transforms import eval_video_transform

    cfg = replace(DataConfig(crop=8, short_side=8), video_norm="per_clip")
    rng = np.random.default_rng(0)
    pattern = rng.integers(0, 60, (4, 8, 8, 3))
    dark, bright = pattern.astype(np.uint8), (pattern * 3 + 70).astype(np.uint8)  # brighter, more contrast
    a, b = eval_video_transform(dark, cfg), eval_video_transform(bright, cfg)
    assert a.mean(dim=(1, 2, 3)).abs().max() < 1e-5  # each channel: mean 0, std 1 over the clip
    torch.testing.assert_close(a.std(dim=(1, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)  # the same clip once normalised
    plain = eval_video_transform(dark, DataConfig(crop=8, short_side=8))
    assert not torch.allclose(plain, eval_video_transform(bright, DataConfig(crop=8, short_side=8)))
