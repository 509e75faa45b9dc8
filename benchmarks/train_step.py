"""Training-step throughput of pretraining: clips/s and the share of time spent waiting for data.

Makes a few real MP4s (xdc.data.synthetic: H.264 + AAC), then runs the real training loop
(`xdc.training.loop.train_one_epoch`: forward + backward + SGD step through both encoders and
XDC's two heads) twice: fed by the real DataLoader (decode + log-mel + augment), and fed by
batches already in memory (compute alone). Prints the figures; `--json` writes them.

    python benchmarks/train_step.py --json out.json                       # CPU-sized defaults
    python benchmarks/train_step.py --device cuda --width 64 --frames 8 --crop 112 --size 128 \\
        --batch-size 32 --steps 30 --num-workers 8 --json gpu.json         # the paper's network
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from xdc.config import load_config
from xdc.data.datasets import AudioVideoClips, EpochSampler, collate_clips, resolve_num_workers
from xdc.data.manifest import read_manifest, usable_rows
from xdc.data.synthetic import generate
from xdc.methods import get_method
from xdc.models import audio_encoder, video_encoder
from xdc.training.loop import PretrainModel, train_one_epoch
from xdc.training.schedule import make_scheduler


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=16, help="real clips generated")
    p.add_argument("--size", type=int, default=64, help="generated frame size (square)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--crop", type=int, default=56)
    p.add_argument("--width", type=int, default=16, help="encoder width (64 = torchvision's)")
    p.add_argument("--arch", default="r2plus1d_18")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--num-workers", default="1", help="DataLoader workers: an int, or auto (data.num_workers)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--json", type=Path, help="write the figures here")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(None, [
        f"data.frames={args.frames}", "data.fps=8.0", f"data.short_side={args.size}",
        f"data.crop={args.crop}", f"data.num_workers={args.num_workers}", f"model.width={args.width}",
        f"model.video_arch={args.arch}", f"optim.batch_size={args.batch_size}",
        f"optim.epoch_size={args.batch_size * args.steps}", "cluster.k_video=8", "cluster.k_audio=8",
        "optim.warmup_epochs=0", f"device={args.device}"])
    with tempfile.TemporaryDirectory() as tmp:
        manifest = generate(Path(tmp) / "clips", num_classes=4, videos_per_class=max(1, args.videos // 4),
                            seconds=max(2.0, 2 * args.frames / 8), size=args.size, progress=False)
        rows, _ = usable_rows(read_manifest(manifest), require_audio=True)
        result = measure(cfg, rows, device, args)
    result.update(device=str(device), gpu=torch.cuda.get_device_name() if device.type == "cuda" else None,
                  cpu=platform.processor() or platform.machine(), torch_threads=torch.get_num_threads(),
                  settings=vars(args) | {"json": str(args.json) if args.json else None})
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def measure(cfg, rows: list[dict], device: torch.device, args) -> dict:
    method = get_method("xdc")
    specs = method.heads(cfg.cluster)
    model = PretrainModel(video_encoder(cfg.model.video_arch, cfg.model.width),
                          audio_encoder(cfg.model.width)).to(device)
    if device.type == "cuda":
        model.video_encoder.to(memory_format=torch.channels_last_3d)
    model.reset_heads(specs)
    rng = np.random.default_rng(0)
    labels = {t: torch.as_tensor(rng.integers(0, 8, len(rows)), device=device) for t in ("video", "audio")}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    scheduler = make_scheduler(optimizer, cfg.optim, args.steps)
    dataset = AudioVideoClips(rows, cfg.data, mode="train")

    def loader(epoch_size: int, epoch: int) -> DataLoader:
        sampler = EpochSampler(len(dataset), epoch_size=epoch_size, seed=0)
        sampler.set_epoch(epoch)
        return DataLoader(dataset, sampler=sampler, batch_size=cfg.optim.batch_size,
                          collate_fn=collate_clips, num_workers=resolve_num_workers(cfg.data.num_workers),
                          pin_memory=device.type == "cuda")

    def timed(batches) -> tuple[float, dict]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        stats = train_one_epoch(model, specs, batches, labels, optimizer, scheduler, device, cfg.amp,
                                description="benchmark")
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, stats

    timed(loader(2 * cfg.optim.batch_size, 0))  # warm-up: workers, cudnn autotune, allocator
    seconds, stats = timed(loader(cfg.optim.epoch_size, 1))
    in_memory = list(loader(cfg.optim.epoch_size, 2))
    compute_seconds, compute_stats = timed(in_memory)
    clip_shape = tuple(in_memory[0]["video"].shape[2:])  # batch B×N×clip
    return {
        "steps": args.steps, "batch_size": cfg.optim.batch_size, "clip": clip_shape,
        "audio": tuple(in_memory[0]["audio"].shape[2:]), "width": cfg.model.width,
        "clips_per_s_end_to_end": stats["clips"] / seconds,
        "data_wait_fraction": stats["data_wait"],
        "clips_per_s_compute_only": compute_stats["clips"] / compute_seconds,
        "ms_per_step_compute_only": 1000 * compute_seconds / args.steps,
        "skipped": stats["skipped"],
    }


if __name__ == "__main__":
    main()
