"""The acceptance check for the first GPU (issue 20): one script, under 8 minutes on one H100/H200.

    bash benchmarks/gpu_check.sh OUT_DIR [--quick]     # runs this file

Writes OUT_DIR/gpu_check.json after every step (a kill leaves what was measured). Each figure says
which item of issue 20 it checks ("item"); a step that cannot run here says why ("skipped": no
CUDA device, no faiss GPU build, the time budget) and one that failed says how ("error"). Steps:
- environment: torch, CUDA, GPU, faiss and where k-means runs (`kmeans_device_note`);
- train_step (benchmarks/train_step.py, in this process, at the paper's settings: R(2+1)D-18 and
  ResNet-18 at width 64, 8×112² clips, batch 32, 8 loader workers), run with
  `torch.backends.cudnn.benchmark` off then on: bf16 autocast asserted from the dtype of the
  video encoder's first convolution in the real loop; compute-only and end-to-end clips/s,
  data-wait share, peak GPU memory;
- loader_from_shards (benchmarks/decode.py): train items per second read from `xdc prepare
  --shards` tar shards, one process;
- feature_extraction: `clustering.extract_features` clips/s through the real loader (8 workers);
- kmeans (benchmarks/kmeans.py --gpu): the project's k-means on the GPU vs on the CPU, and vs raw
  faiss on the GPU;
- rng_resume: a checkpoint written by 2 ranks that each saved 2 CUDA generator states (the old
  format) restored on this one GPU, and the current one-device format;
- two_ranks_cpu: `torchrun --nproc_per_node 2` (gloo, CPU) through two deep-clustering iterations
  (benchmarks/elastic.py's reference run): the ranks end with the same labels and weights;
- cuda_end_to_end: `xdc demo --quick`, `torchrun --nproc_per_node 1` (NCCL), the same with
  `model.sync_bn=true`, `xdc finetune --mode full`, all on CUDA.
On a machine without CUDA the GPU steps are skipped with the reason and the others run; `--quick`
shrinks the CPU steps (tests/test_benchmarks.py runs it so). Exit code 1 when a step failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
BUDGET_S = 450  # steps that would start later are skipped: the whole check stays under 8 minutes
PAPER = ["--width", "64", "--frames", "8", "--crop", "112", "--size", "128", "--batch-size", "32"]


class Check:
    """The run's folder, its figures and its clock."""

    def __init__(self, out: Path, quick: bool):
        self.out, self.quick = out, quick
        self.cuda = torch.cuda.is_available()
        self.started = time.monotonic()
        self.results: dict = {"environment": environment(), "figures": {}}
        self.failed = False

    def left(self) -> float:
        return BUDGET_S - (time.monotonic() - self.started)

    def save(self) -> None:
        self.results["seconds"] = round(time.monotonic() - self.started, 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=2))

    def step(self, name: str, item: str, fn, needs_cuda: bool = False) -> None:
        """Run `fn()` (a dict of figures) and record it under `name`, tagged with the `item` of issue
        20 it checks; or record why it was skipped, or how it failed."""
        print(f"\n=== {name} ({time.monotonic() - self.started:.0f} s)", flush=True)
        record = {"item": item}
        started = time.monotonic()
        if needs_cuda and not self.cuda:
            record["skipped"] = "no CUDA device"
        elif self.left() <= 0:
            record["skipped"] = f"time budget ({BUDGET_S} s) spent"
        else:
            try:
                record.update(fn())
            except Exception as err:  # noqa: BLE001 (every failure is recorded, then the next step runs)
                self.failed = True
                record["error"] = f"{type(err).__name__}: {err}"[-2000:]
                traceback.print_exc()
        record["seconds"] = round(time.monotonic() - started, 1)
        print(json.dumps(record, indent=1), flush=True)
        self.results["figures"][name] = record
        self.save()

    def run(self, command: list[str], log: str, **kwargs) -> str:
        """A subprocess within the time left; its output goes to OUT/log, and its tail into the
        error when it fails."""
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(10.0, self.left() + 60),
                              check=False, **kwargs)
        text = done.stdout + done.stderr
        (self.out / log).write_text(text)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:6])} ... exited {done.returncode}:\n{text[-1500:]}")
        return text


def environment() -> dict:
    import faiss
    import torchvision

    from xdc.clustering.kmeans import kmeans_device_note

    return {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "torchvision": torchvision.__version__,
            "faiss": faiss.__version__, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "kmeans": kmeans_device_note("cuda" if torch.cuda.is_available() else "cpu"),
            "cpus": os.cpu_count(), "python": platform.python_version()}


def train_step(check: Check, cudnn_benchmark: bool) -> dict:
    """benchmarks/train_step.py's own measurement, in this process so that the cuDNN setting, the
    autocast dtype and the peak memory are this run's."""
    import train_step as benchmark

    first_conv: list[torch.dtype] = []

    def record_dtype(module, inputs, output):  # the first Conv3d forward: the video encoder's stem
        if isinstance(module, torch.nn.Conv3d) and output.is_cuda:
            first_conv.append(output.dtype)
            hook.remove()

    steps = "30"
    path = check.out / f"train_step_cudnn_{'on' if cudnn_benchmark else 'off'}.json"
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.cuda.reset_peak_memory_stats()
    hook = torch.nn.modules.module.register_module_forward_hook(record_dtype)
    argv = sys.argv
    sys.argv = ["train_step.py", "--device", "cuda", *PAPER, "--steps", steps, "--num-workers", "8",
                "--json", str(path)]
    try:
        with open(check.out / f"{path.stem}.log", "w") as log, contextlib.redirect_stdout(log):
            benchmark.main()
    finally:
        sys.argv = argv
        hook.remove()
        torch.backends.cudnn.benchmark = False
    figures = json.loads(path.read_text())
    if first_conv != [torch.bfloat16]:
        raise AssertionError(f"the video encoder's first convolution ran in {first_conv}, not bf16 autocast")
    return {"bf16_autocast": True, "clips_per_s_compute_only": round(figures["clips_per_s_compute_only"], 1),
            "ms_per_step_compute_only": round(figures["ms_per_step_compute_only"], 1),
            "clips_per_s_end_to_end": round(figures["clips_per_s_end_to_end"], 1),
            "data_wait_percent": round(100 * figures["data_wait_fraction"], 1),
            "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_gpu_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 2),
            "settings": "width 64, 8x112x112, batch 32, 8 workers, " + steps + " steps"}


def loader_from_shards(check: Check, long_clips: Path) -> dict:
    windows, decodes = ("12", "12") if check.quick else ("60", "60")
    path = check.out / "decode.json"
    check.run([sys.executable, str(BENCHMARKS / "decode.py"), "--json", str(path), "--videos", str(long_clips),
               "--decodes", decodes, "--windows", windows, "--workers", str(min(8, os.cpu_count() or 1))],
              "decode.log")
    figures = json.loads(path.read_text())
    return {"clips_per_s_from_shards_one_process": round(figures["sharded_clips_per_s"], 1),
            "clips_per_s_prepared_files_one_process": round(figures["prepared_clips_per_s"], 1),
            "shards_vs_prepared": round(figures["shards_vs_prepared"], 2),
            "note": "train items (decode + log-mel + augment) in one process; a loader with W workers "
                    "reads up to W times that"}


def feature_extraction(check: Check, manifest: Path) -> dict:
    from xdc.clustering import extract_features
    from xdc.config import load_config
    from xdc.data.datasets import AudioVideoClips, clip_loader
    from xdc.data.manifest import read_manifest, usable_rows
    from xdc.models import audio_encoder, video_encoder

    device = torch.device("cuda")
    cfg = load_config(None, ["data.frames=8", "data.fps=8.0", "data.short_side=128", "data.crop=112",
                             "model.width=64"])
    rows, _ = usable_rows(read_manifest(manifest), require_audio=True)
    video = video_encoder(cfg.model.video_arch, cfg.model.width).to(device).to(memory_format=torch.channels_last_3d)
    encoders = {"video": video, "audio": audio_encoder(cfg.model.width).to(device)}
    dataset = AudioVideoClips(rows, cfg.data, mode="eval", clips_per_video=1)
    seconds = []
    for attempt in range(2):  # the first: workers start, cuDNN and the allocator warm up
        loader = clip_loader(dataset, 32, num_workers=8, pin_memory=True)
        torch.cuda.synchronize()
        started = time.perf_counter()
        features = extract_features(encoders, loader, len(rows), check.out / f"features{attempt}", device, amp=True)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
        del loader
    return {"clips_per_s": round(int(features.present.sum()) / seconds[-1], 1), "videos": len(rows),
            "settings": "eval mode, 1 clip of 8x112x112 per video, batch 32, 8 workers, bf16"}


def kmeans(check: Check) -> dict:
    path = check.out / "kmeans.json"
    size = ["--n", "20000", "--repeats", "1"] if check.quick else []
    check.run([sys.executable, str(BENCHMARKS / "kmeans.py"), "--skip-sklearn", "--gpu", "--json", str(path), *size],
              "kmeans.log")
    figures = json.loads(path.read_text())
    keep = ("seconds_project", "seconds_faiss", "seconds_project_gpu", "seconds_faiss_gpu", "ratio_vs_faiss_gpu",
            "gpu_speedup", "nmi_project_gpu_vs_cpu", "gpu_skipped")
    return {key: figures[key] for key in keep if key in figures} | {
        "settings": f"n {figures['config']['n']}, d {figures['config']['d']}, k {figures['config']['k']}"}


def rng_resume(check: Check) -> dict:
    """A checkpoint of 2 ranks, each holding 2 CUDA states (as every rank saved every visible GPU
    before), resumed by this one process; then the current format (this device's state only)."""
    from xdc.checkpoint import (
        load_checkpoint,
        restore_rank_rng,
        rng_state,
        save_checkpoint,
    )

    state = rng_state()
    if not check.cuda:
        old = state | {"cuda": [torch.tensor([seed, 0], dtype=torch.int64).view(torch.uint8) for seed in (1, 2)]}
        save_checkpoint({"rng": [old, old]}, check.out / "rng_two_gpus.pt")
        restore_rank_rng(load_checkpoint(check.out / "rng_two_gpus.pt")["rng"])
        return {"restored_without_cuda": True,
                "skipped_gpu_part": "no CUDA device: the CUDA states were left alone, the CPU ones restored"}
    torch.cuda.manual_seed(1)
    first = torch.cuda.get_rng_state()
    torch.cuda.manual_seed(2)
    second = torch.cuda.get_rng_state()
    save_checkpoint({"rng": [state | {"cuda": [first, second]}] * 2}, check.out / "rng_two_gpus.pt")
    restore_rank_rng(load_checkpoint(check.out / "rng_two_gpus.pt")["rng"])
    took_own = torch.equal(torch.cuda.get_rng_state(), first)  # device 0's entry
    save_checkpoint({"rng": [rng_state()]}, check.out / "rng_now.pt")
    saved = load_checkpoint(check.out / "rng_now.pt")["rng"][0]["cuda"]
    drawn = torch.randn(4, device="cuda")
    restore_rank_rng(load_checkpoint(check.out / "rng_now.pt")["rng"])
    again = torch.randn(4, device="cuda")
    if not (took_own and torch.equal(drawn, again) and isinstance(saved, torch.Tensor)):
        raise AssertionError(f"CUDA RNG: device 0's state taken {took_own}, one tensor saved "
                             f"{isinstance(saved, torch.Tensor)}, the stream resumed {torch.equal(drawn, again)}")
    return {"resumed_two_gpu_checkpoint_on_one": True, "stream_resumes_exactly": True}


def two_ranks_cpu(check: Check) -> dict:
    import elastic

    from xdc.data.synthetic import generate

    manifest = generate(check.out / "two_ranks_clips", num_classes=2, videos_per_class=4, size=64, progress=False)
    elastic.one_agent_run(manifest, check.out / "two_ranks")
    digests = elastic.digests(check.out / "two_ranks")
    if not all(len(ranks) == 2 and ranks[0] == ranks[1] for ranks in digests):
        raise AssertionError(f"the 2 ranks hold different labels or weights: {digests}")
    return {"ranks_agree": True, "iterations": len(digests)}


def cuda_end_to_end(check: Check) -> dict:
    out, python = check.out, sys.executable
    tiny = ["--config", "tiny_cpu", "--data", str(out / "demo" / "data" / "manifest.csv"), "device=cuda",
            "cluster.k_video=4", "cluster.k_audio=4", "cluster.k_joint=4"]
    torchrun = [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "xdc.pretrain"]
    seconds = {}
    for name, command in (
            ("demo_quick", [python, "-m", "xdc.cli", "demo", "--quick", "--out", str(out / "demo"),
                            "pretrain.device=cuda", "finetune.device=cuda"]),
            ("torchrun_nccl", [*torchrun, *tiny, "--out", str(out / "ddp")]),
            ("torchrun_sync_bn", [*torchrun, *tiny, "--out", str(out / "syncbn"), "model.sync_bn=true",
                                  "optim.lr_scaling=linear", "optim.reference_batch=8", "iterations=1",
                                  "optim.total_epochs=1"]),
            ("finetune_full", [python, "-m", "xdc.cli", "finetune", "--checkpoint",
                               str(out / "ddp" / "checkpoints" / "iteration_01.pt"), "--modality", "video",
                               "--mode", "full", "--config", "tiny", "--train", str(out / "demo" / "data" / "labeled.csv"),
                               "--val", str(out / "demo" / "data" / "labeled.csv"), "--test",
                               str(out / "demo" / "data" / "labeled.csv"), "--out", str(out / "finetune"),
                               "device=cuda"])):
        started = time.monotonic()
        check.run(command, f"{name}.log")
        seconds[name] = round(time.monotonic() - started, 1)
    return {"passed": list(seconds), "seconds_each": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--quick", action="store_true", help="small CPU steps (the test on CPU-only machines)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.out, args.quick)
    check.save()

    from xdc.data.synthetic import generate

    clips = generate(args.out / "clips", num_classes=4, videos_per_class=16, seconds=2.0, size=128,
                     progress=False) if check.cuda else None
    long_clips = args.out / "long_clips"
    generate(long_clips, num_classes=2, videos_per_class=1 if args.quick else 4, seconds=10.5, size=128,
             progress=False)  # decode.py times clips of >= 10 s
    check.step("train_step_cudnn_benchmark_off", "7: compute-only rate (per-step host syncs), bf16 autocast "
               "asserted, end-to-end rate and data wait, peak GPU memory", lambda: train_step(check, False), True)
    check.step("train_step_cudnn_benchmark_on", "7: torch.backends.cudnn.benchmark with the training "
               "loop's fixed shapes", lambda: train_step(check, True), True)
    check.step("loader_from_shards", "acceptance: the data side, from `xdc prepare --shards` shards",
               lambda: loader_from_shards(check, long_clips / "videos"))
    check.step("feature_extraction", "2, 5: the extraction before each clustering",
               lambda: feature_extraction(check, clips), True)
    check.step("kmeans", "5: k-means on the GPU (faiss GPU build) vs the CPU", lambda: kmeans(check))
    check.step("rng_resume", "1: a checkpoint holding 2 CUDA RNG states resumed on 1 GPU", lambda: rng_resume(check))
    check.step("two_ranks_cpu", "2, 9: collectives in lockstep over 2 gloo ranks; the scenario runs "
               "without pytest", lambda: two_ranks_cpu(check))
    check.step("cuda_end_to_end", "the CUDA paths end to end (NCCL, SyncBatchNorm conversion, "
               "fine-tuning)", lambda: cuda_end_to_end(check), True)
    off = check.results["figures"]["train_step_cudnn_benchmark_off"]
    on = check.results["figures"]["train_step_cudnn_benchmark_on"]
    if "clips_per_s_compute_only" in off and "clips_per_s_compute_only" in on:
        check.results["figures"]["cudnn_benchmark_speedup"] = {
            "item": "7: where shapes are fixed, set torch.backends.cudnn.benchmark",
            "compute_only_on_vs_off": round(on["clips_per_s_compute_only"] / off["clips_per_s_compute_only"], 3)}
    check.save()
    print(f"\n{args.out / 'gpu_check.json'}: {'a step FAILED' if check.failed else 'every step passed or was skipped'} "
          f"in {check.results['seconds']} s", flush=True)
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
