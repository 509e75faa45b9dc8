"""README.md's "Your own videos" commands, run as written (plus tiny-size overrides) on real
clips laid out as the README says: class folders under train/, val/ and test/."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# Tiny sizes, so that the whole path takes a few minutes on 2 CPU cores; 3 iterations, as the
# README's CPU preset, so its checkpoint names hold.
TINY = {"pretrain": ["--config", "tiny_cpu", "iterations=3", "cluster.k_video=3", "cluster.k_audio=3"],
        "finetune": ["--config", "tiny"]}


def readme_commands() -> list[str]:
    """The bash block of the "Your own videos" section, one command per line (continuations joined)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Your own videos", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s+#\s.*$", "", line).strip()  # a comment after two spaces and '#'
        if line:
            commands.append(line)
    return commands


def my_videos(root: Path, shared_videos: Path) -> None:
    """The shared clips with a video stream in two classes, split per class into train/val/test."""
    clips = sorted(p for p in shared_videos.iterdir() if p.suffix in (".mp4", ".mkv", ".avi", ".webm", ".mov"))
    for i, clip in enumerate(clips):
        label = ("indoors", "outdoors")[i % 2]
        subset = ("train", "train", "train", "val", "test")[(i // 2) % 5]
        target = root / "my_videos" / subset / label / clip.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(clip)


@pytest.mark.slow
def test_readme_own_videos_path(tmp_path, shared_videos):
    my_videos(tmp_path, shared_videos)
    commands = readme_commands()
    assert [c.split()[1] for c in commands if c.startswith("xdc ")] == \
        ["scan", "scan", "scan", "scan", "prepare", "pretrain", "clusters", "finetune", "export"]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    for command in commands:
        argv = shlex.split(command.replace("/path/to/xdc", str(REPO)))
        if argv[0] == "xdc":
            argv = [sys.executable, "-m", "xdc.cli", *argv[1:], *TINY.get(argv[1], [])]
        elif argv[0] == "python":
            argv[0] = sys.executable
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"

    # Prepared copies kept the scan's ids; the labels of the originals matched the run's rows.
    prepared = (tmp_path / "prepared" / "manifest.csv").read_text()
    assert "train/indoors/decord__flipping_a_pancake.mkv" in prepared
    metrics = json.loads((tmp_path / "clusters" / "xdc" / "metrics.json").read_text())
    for modality in ("video", "audio"):
        assert metrics[modality]["num_labelled"] == metrics[modality]["num_items"] >= 6
        assert 0.5 <= metrics[modality]["purity"] <= 1.0
    assert "<audio" in (tmp_path / "clusters" / "xdc" / "index.html").read_text()
    run = tmp_path / "runs" / "xdc"
    log = (run / "log.txt").read_text()
    assert "plan: xdc pretraining" in log and "estimate: about" in log and "\r" not in log
    results = json.loads((tmp_path / "probe" / "xdc" / "results.json").read_text())
    assert results["val_source"] == "val manifest" and results["width"] == 8 and 0 <= results["top1_video"] <= 1
    exported = torch.load(tmp_path / "xdc_video.pth", weights_only=True)
    assert exported["xdc"]["width"] == 8 and exported["xdc"]["frames"] == 4
    # The hub's encoder is the exported one: the same features for the same clip.
    from xdc.config import ModelConfig
    from xdc.evaluation.weights import load_encoder

    hub = torch.hub.load(str(REPO), "xdc_video", source="local", weights=str(tmp_path / "xdc_video.pth"))
    ours = load_encoder("video", ModelConfig(), checkpoint=run / "checkpoints" / "iteration_02.pt").encoder
    clip = torch.randn(1, 3, 4, 56, 56)
    hub.eval(), ours.eval()
    assert np.allclose(hub(clip).detach().numpy(), ours(clip).detach().numpy(), atol=1e-5)
