"""README.md's "Your own videos" commands (the CLI as a user meets it; no one module), run as written
(no overrides, the presets chosen for a CPU) on ten real clips laid out as the README says, from a
folder that stands for the clone."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, subprocess_env

# Ten of ../shared/data/videos (SOURCES.md) in two classes anyone can see: indoors and outdoors.
# The eight with audible audio are the ones pretraining uses; the other two are probed only.
MY_VIDEOS = {
    "train/indoors": ["decord__flipping_a_pancake.mkv", "mmaction2__test.avi", "imageio__realshort.mp4",
                      "mmaction2__demo.mp4"],  # the last has no audio
    "val/indoors": ["moviepy__fire2.mp4"],
    "test/indoors": ["torchcodec__nasa_13013.mp4"],
    "train/outdoors": ["moviepy__chaplin.mp4", "moviepy__video_with_failing_audio.mp4"],
    "val/outdoors": ["moviepy__big_buck_bunny_432_433.webm"],
    "test/outdoors": ["mmaction2__test.mp4"],  # no audio
}
ESTIMATE_LIMIT_MINUTES = 10  # what the README promises for this path on 2 cores


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


def test_readme_commands_run_from_the_clone_as_written():
    """No placeholder paths, no bare `python`: each line is a command of the installed venv."""
    commands = readme_commands()
    assert [c.split()[1] for c in commands if c.startswith("xdc ")] == \
        ["scan", "scan", "scan", "scan", "prepare", "pretrain", "clusters", "finetune", "export"]
    for command in commands:
        assert "/path/to" not in command and shlex.split(command)[0] in ("xdc", ".venv/bin/python"), command
        if command.startswith("xdc "):  # every option of it exists
            from xdc.cli import command_parser

            argv = shlex.split(command)
            _, parser = command_parser(argv[1])
            parser.parse_args(argv[2:])
    assert "torch.hub.load('.', " in commands[-1]


def clone_with_my_videos(root: Path, shared_videos: Path) -> None:
    """`root` stands for the clone: hubconf.py and the venv (links), and my_videos/ as the README lays it out."""
    (root / "hubconf.py").symlink_to(REPO / "hubconf.py")
    (root / ".venv").symlink_to(Path(sys.prefix))
    for folder, names in MY_VIDEOS.items():
        (root / "my_videos" / folder).mkdir(parents=True)
        for name in names:
            (root / "my_videos" / folder / name).symlink_to(shared_videos / name)


@pytest.mark.slow
def test_readme_own_videos_path(tmp_path, shared_videos):
    clone_with_my_videos(tmp_path, shared_videos)
    # A CPU machine, as the README's cost says; the package is this checkout.
    env = {**subprocess_env(), "CUDA_VISIBLE_DEVICES": ""}
    printed, seconds = {}, {}
    for command in readme_commands():
        argv = shlex.split(command)
        if argv[0] == "xdc":
            argv = [sys.executable, "-m", "xdc.cli", *argv[1:]]
        started = time.perf_counter()
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        name = command.split()[1] if command.startswith("xdc ") else "hub"
        printed[name], seconds[name] = done.stdout + done.stderr, seconds.get(name, 0) + time.perf_counter() - started
    print("seconds per step:", {name: round(s) for name, s in seconds.items()})

    # The plan: the cpu preset fitted to the 8 videos with audio, and an estimate within the promise.
    plan = printed["pretrain"]
    assert "no --config given: using" in plan and "8 usable videos, 2 dropped (2 no audio)" in plan
    assert "k video/audio/joint 2/2/2" in plan and "epochs of 1 pass(es) over 8 videos = 8 clips" in plan
    estimate = re.search(r"estimate: about ([\d.]+) (s|min)\b", plan)
    minutes = float(estimate.group(1)) / (60 if estimate.group(2) == "s" else 1)
    assert minutes < ESTIMATE_LIMIT_MINUTES, plan
    run = tmp_path / "runs" / "xdc"
    log = (run / "log.txt").read_text()
    assert "plan: xdc pretraining" in log and "estimate: about" in log and "\r" not in log

    # Prepared copies kept the scan's ids; the labels of the originals matched the run's rows.
    prepared = (tmp_path / "prepared" / "manifest.csv").read_text()
    assert "train/indoors/decord__flipping_a_pancake.mkv" in prepared
    metrics = json.loads((tmp_path / "clusters" / "xdc" / "metrics.json").read_text())
    for modality in ("video", "audio"):
        assert metrics[modality]["num_labelled"] == metrics[modality]["num_items"] == 8
        assert 0.5 <= metrics[modality]["purity"] <= 1.0
    assert "<audio" in (tmp_path / "clusters" / "xdc" / "index.html").read_text()

    # The probe: its score beside chance and the majority rate, with the warnings small data earns.
    results = json.loads((tmp_path / "probe" / "xdc" / "results.json").read_text())
    assert results["val_source"] == "val manifest" and results["width"] == 16 and 0 <= results["top1_video"] <= 1
    assert results["chance"] == 0.5 and results["majority"] == 0.5 and "top5_video" not in results
    assert results["warnings"], results
    assert (tmp_path / "probe" / "xdc" / "log.txt").read_text().startswith("no --config given: using")

    # The export, and the hub's encoder is the exported one: the same features for the same clip.
    exported = torch.load(tmp_path / "xdc_video.pth", weights_only=True)
    assert exported["xdc"]["width"] == 16 and exported["xdc"]["frames"] == 8
    assert printed["hub"].startswith("128 {")
    from xdc.config import ModelConfig
    from xdc.evaluation.weights import load_encoder

    hub = torch.hub.load(str(tmp_path), "xdc_video", source="local", weights=str(tmp_path / "xdc_video.pth"))
    ours = load_encoder("video", ModelConfig(), checkpoint=run / "checkpoints" / "iteration_02.pt").encoder
    clip = torch.randn(1, 3, 8, 56, 56)
    hub.eval(), ours.eval()
    assert np.allclose(hub(clip).detach().numpy(), ours(clip).detach().numpy(), atol=1e-5)
