"""xdc.data.synthetic, the built-in synthetic data: real, deterministic files; labels kept apart;
class and nuisance information where the design says it is."""

from __future__ import annotations

import csv

import av
import numpy as np
import pytest
import torch

from xdc.config import DataConfig
from xdc.data import synthetic
from xdc.data.audio import log_mel
from xdc.data.manifest import read_manifest


def _decode(path):
    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(path)) as container:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    return frames, audio


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    manifest = synthetic.generate(out, num_classes=3, videos_per_class=2, seed=7, seconds=1.0,
                                  progress=False)
    return out, manifest


def test_writes_decodable_mp4_with_audio(small_set):
    out, manifest = small_set
    rows = read_manifest(manifest)
    assert len(rows) == 6
    for row in rows:
        assert row["status"] == "ok", row["reason"]
        assert row["has_audio"] and not row["audio_silent"]
        assert row["video_codec"] == "h264" and (row["width"], row["height"]) == (32, 32)
        assert row["path"].endswith(".mp4")
    frames, audio = _decode(rows[0]["path"])
    assert frames.shape == (8, 32, 32, 3)
    assert audio.size >= 15000 and np.abs(audio).max() > 1e-3  # ~1 s of audible 16 kHz audio
    with av.open(rows[0]["path"]) as container:
        assert container.streams.audio[0].codec_context.name == "aac"


def test_labels_are_kept_out_of_the_pretraining_manifest(small_set, tmp_path):
    out, manifest = small_set
    rows = read_manifest(manifest)
    assert all(row["label"] is None for row in rows)
    with open(out / "labels.csv", newline="") as f:
        labels = list(csv.DictReader(f))
    assert sorted(int(r["label"]) for r in labels) == [0, 0, 1, 1, 2, 2]
    names = {p.name for p in synthetic.class_patterns(3)}
    # Neither the file names nor the folders give the class away.
    assert not any(part in row["path"] for row in rows for name in names for part in name.split("/"))
    evaluation = read_manifest(synthetic.labeled_manifest(manifest, out / "labels.csv",
                                                          tmp_path / "eval.csv"))
    by_path = {str((out / r["path"]).resolve()): r["class_name"] for r in labels}
    assert [r["label"] for r in evaluation] == [by_path[r["path"]] for r in evaluation]


def test_deterministic_from_seed(small_set, tmp_path):
    out, manifest = small_set
    again = synthetic.generate(tmp_path / "again", num_classes=3, videos_per_class=2, seed=7,
                               seconds=1.0, progress=False)
    other = synthetic.generate(tmp_path / "other", num_classes=3, videos_per_class=2, seed=8,
                               seconds=1.0, progress=False)
    assert (out / "labels.csv").read_text() == (again.parent / "labels.csv").read_text()
    assert (out / "labels.csv").read_text() != (other.parent / "labels.csv").read_text()
    first, second = read_manifest(manifest)[0]["path"], read_manifest(again)[0]["path"]
    (f1, a1), (f2, a2) = _decode(first), _decode(second)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(a1, a2)
    f3, _ = _decode(read_manifest(other)[0]["path"])
    assert not np.array_equal(f1, f3)


def test_bad_arguments_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        synthetic.generate(tmp_path, num_classes=1)
    with pytest.raises(ValueError, match="size"):
        synthetic.generate(tmp_path, size=33)


def _nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Train on even samples, test on odd ones."""
    train, test = np.arange(0, len(labels), 2), np.arange(1, len(labels), 2)
    classes = np.unique(labels)
    centroids = np.stack([features[train][labels[train] == c].mean(0) for c in classes])
    dist = ((features[test][:, None] - centroids[None]) ** 2).sum(-1)
    return float((classes[dist.argmin(1)] == labels[test]).mean())


def test_classes_differ_in_both_modalities_and_nuisances_carry_no_class():
    num_classes, per_class = 4, 16
    patterns = synthetic.class_patterns(num_classes)
    cfg = DataConfig(sample_rate=16000, n_mels=40)
    motion, spectra, background, noise_level, labels = [], [], [], [], []
    for c in range(num_classes):
        for i in range(per_class):
            rng = np.random.default_rng([c, i])
            nuisance = synthetic.sample_nuisance(rng)
            frames = synthetic.render_frames(patterns[c], nuisance, rng, 8, 8.0, 32).astype(np.float32)
            audio = synthetic.render_audio(patterns[c], nuisance, rng, 1.0, 16000)
            # Class view: the shape's trace once the static background is removed.
            motion.append(np.abs(frames - np.median(frames, axis=0)).mean(axis=(0, 3)).ravel())
            spectra.append(log_mel(torch.from_numpy(audio), cfg)[0].numpy().mean(-1))
            # Nuisance view: what random features see first.
            background.append(frames.mean(axis=(0, 1, 2)))
            noise_level.append([nuisance.noise_db, nuisance.gain_db])
            labels.append(c)
    labels = np.asarray(labels)
    chance = 1 / num_classes
    assert _nearest_centroid_accuracy(np.asarray(motion), labels) > 0.8
    assert _nearest_centroid_accuracy(np.asarray(spectra), labels) > chance + 0.35
    assert _nearest_centroid_accuracy(np.asarray(background), labels) < chance + 0.25
    assert _nearest_centroid_accuracy(np.asarray(noise_level), labels) < chance + 0.25


def _views(pattern, nuisance_seed: int, variation_seed: int) -> tuple[np.ndarray, np.ndarray]:
    nuisance = synthetic.sample_nuisance(np.random.default_rng(nuisance_seed))
    frames = synthetic.render_frames(pattern, nuisance, np.random.default_rng(variation_seed), 8, 8.0, 32)
    audio = synthetic.render_audio(pattern, nuisance, np.random.default_rng(variation_seed), 1.0, 16000)
    return frames.astype(np.float32), log_mel(torch.from_numpy(audio), DataConfig())[0].numpy()


def test_each_modality_is_dominated_by_its_own_nuisance():
    """Raw inputs of one class under two nuisances lie further apart than inputs of two classes
    under one nuisance: clustering a modality alone is drawn to its nuisance."""
    patterns = synthetic.class_patterns(6)
    same_class, same_nuisance = [], []
    for i in range(24):
        a, b = patterns[i % 6], patterns[(i + 1 + i // 6) % 6]
        ref = _views(a, 1000 + i, i)
        other_nuisance = _views(a, 2000 + i, 500 + i)
        other_class = _views(b, 1000 + i, 900 + i)
        same_class.append([np.linalg.norm(x - y) for x, y in zip(ref, other_nuisance)])
        same_nuisance.append([np.linalg.norm(x - y) for x, y in zip(ref, other_class)])
    same_class, same_nuisance = np.mean(same_class, 0), np.mean(same_nuisance, 0)
    assert same_class[0] > 1.2 * same_nuisance[0], "video nuisance (background) too weak"
    assert same_class[1] > 1.05 * same_nuisance[1], "audio nuisance (loudness, noise) too weak"
