"""`xdc demo [--out DIR] [--quick] [--seeds S ...]`: the whole idea on a laptop, in about ten minutes.

1. Generate the built-in synthetic audio-visual data (xdc.data.synthetic): K classes shared by
   both modalities, each modality with its own nuisance (video: background; audio: loudness and
   noise). Class labels stay in labels.csv; pretraining never sees them.
2. Decode every video once into a clip cache (xdc.data.cache) that all runs read.
3. For each seed, Scratch (random encoders) and RAND, SDC, MDC, CDC and XDC pretrained with the
   same budget, each evaluated in-process by the experiment runner (xdc.experiments.runner): a
   linear probe of both encoders on a held-out split, weighted kNN and retrieval recall@k on the
   same split (no training), cluster purity and NMI against the classes and against the
   nuisances, per iteration too. A seed sets pretraining and probe initialisation; the data and
   its split stay the same, so seeds pair the methods.
4. Write DIR/results.json, DIR/table.md (the printed table: scores beside chance, XDC's paired
   differences with each method) and DIR/report.html (xdc.reports.experiment).

Settings: xdc.config.DemoConfig, from the packaged demo.yaml (`--quick`: demo_quick.yaml merged on
top) or `--config FILE`, then `key=value` overrides. Seeds: `--seeds`, else the config's
`pretrain.seed`.

Runs are resumable: an interrupted demo started again with the same --out reuses the data, the
cache and every finished step; more seeds or methods only add to it.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from xdc.config import DEMO_METHODS, ConfigError, DemoConfig, load_config
from xdc.console import run_log
from xdc.experiments import runner

PROBES = ["linear", "knn", "retrieval"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--out", type=Path, default=Path("demo_out"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the whole path in about a minute")
    parser.add_argument("--config", default="demo",
                        help="demo settings: a YAML file or a packaged name (demo: "
                             "xdc/configs/demo.yaml; --quick merges demo_quick.yaml on top)")
    parser.add_argument("--methods", type=_method_list, metavar="METHODS",
                        help=f"comma-separated subset of: {','.join(DEMO_METHODS)}")
    parser.add_argument("--seeds", type=_seed, nargs="+", metavar="S",
                        help="seeds to run every method with, e.g. 0 1 2 3 4 (default: the config's "
                             "pretrain.seed); 5 or more give XDC's comparisons a verdict")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="overrides of the demo config, e.g. pretrain.iterations=2 synthetic.seed=1")


def _method_list(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in DEMO_METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}; choose from {','.join(DEMO_METHODS)}")
    return methods


def _seed(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed: expected an integer >= 0")
    return int(text)


def load_demo_config(config: str | Path = "demo", quick: bool = False,
                     overrides: list[str] | None = None) -> DemoConfig:
    """The demo's settings: `config` (a file or packaged name), demo_quick.yaml on top when
    `quick`, then the `key=value` overrides; validated."""
    return load_config([config, "demo_quick"] if quick else config, overrides, schema=DemoConfig)


# ------------------------------------------------------------------------------------------ data

def make_data(out: Path, synthetic_settings: dict) -> tuple[Path, Path]:
    """Generate the videos (reused when out/data already holds them); returns the
    pretraining manifest (no labels) and the evaluation manifest (labels)."""
    from xdc.data import synthetic

    folder = out / "data"
    if (folder / "manifest.csv").is_file():  # written last; the folder's stamp vouched for the settings
        print(f"reusing the synthetic data in {folder}")
        manifest = folder / "manifest.csv"
    else:
        try:
            manifest = synthetic.generate(folder, **synthetic_settings)
        except ValueError as err:  # out-of-range settings, said before anything is written
            raise ConfigError(f"synthetic: {err}") from None
    labeled = synthetic.labeled_manifest(manifest, folder / "labels.csv", folder / "labeled.csv")
    return manifest, labeled


def probe_split(rows: list[dict], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[dict]]:
    """Stratified split of labelled rows into train / val / test (each class in each part)."""
    from xdc.evaluation.splits import stratified_split

    parts = stratified_split([row["label"] for row in rows], {"val": val_fraction, "test": test_fraction},
                             seed, strict=True)
    return {name: [rows[i] for i in part] for name, part in parts.items()}


def truth(labels_csv: Path, labeled_rows: list[dict]) -> runner.Truth:
    """Each video's class, and its nuisance codes per modality (synthetic.nuisance_codes)."""
    from xdc.data.synthetic import nuisance_codes, read_labels

    meta = {Path(path).name: row for path, row in read_labels(labels_csv).items()}
    codes = {name: nuisance_codes(row) for name, row in meta.items()}
    return runner.Truth(classes={Path(r["path"]).name: r["label"] for r in labeled_rows},
                        nuisance={m: {name: c[i] for name, c in codes.items()} for i, m in enumerate(("video", "audio"))})


# ------------------------------------------------------------------------------------------ main

def demo(out: Path, cfg: DemoConfig, seeds: list[int]) -> dict:
    """Everything above, in order; returns the results (also written to out/results.json)."""
    from xdc.data.cache import build_cache
    from xdc.data.manifest import (
        describe_dropped,
        read_manifest,
        usable_rows,
        write_manifest,
    )
    from xdc.reports.experiment import write_plots, write_report
    from xdc.reports.filters import draw_filters

    started = time.perf_counter()
    settings = {"synthetic": asdict(cfg.synthetic), "probe": asdict(cfg.probe),
                "pretrain": asdict(cfg.pretrain), "finetune": asdict(cfg.finetune)}
    runner.claim(out, settings, ignore=("pretrain.seed", "finetune.seed"))  # seeds add pieces

    print("\n[demo, 0 s] generating the synthetic videos", flush=True)
    manifest, labeled = make_data(out, asdict(cfg.synthetic))
    rows, dropped = usable_rows(read_manifest(manifest), require_audio=True)
    if dropped:
        print(f"{manifest}: {describe_dropped(dropped)}")
    label_of = {r["path"]: r["label"] for r in read_manifest(labeled)}
    labeled_rows = [dict(r, label=label_of[r["path"]]) for r in rows]  # same order as `rows`

    print(f"\n[demo, {time.perf_counter() - started:.0f} s] decoding every video once into the clip cache", flush=True)
    build_cache(rows, cfg.pretrain.data, out / "cache")
    pretrain_cfg = replace(cfg.pretrain, data=replace(cfg.pretrain.data, cache_dir=str(out / "cache")))
    finetune_cfg = replace(cfg.finetune, data=replace(cfg.finetune.data, cache_dir=str(out / "cache")))
    split = probe_split(labeled_rows, cfg.probe.val_fraction, cfg.probe.test_fraction, seed=cfg.synthetic.seed)
    for name, part in split.items():  # for the record (and `xdc finetune` by hand)
        write_manifest(part, out / "data" / f"probe_{name}.csv")

    test_labels = [r["label"] for r in split["test"]]
    experiment = runner.Experiment(out, list(cfg.methods), seeds, PROBES, cfg.pretrain.iterations,
                                   truth(out / "data" / "labels.csv", labeled_rows), test_labels)
    steps = runner.InProcess(pretrain_cfg, finetune_cfg, rows, split, labeled)
    results = {"data": {**asdict(cfg.synthetic), "videos": len(rows), "probe": {k: len(v) for k, v in split.items()}},
               "settings": settings, **runner.run_experiment(experiment, steps),
               "clusters_shown": steps.clusters_shown}
    first = {r["method"]: r for r in results["runs"] if r["seed"] == seeds[0]}
    drawn = [m for m in ("xdc", "sdc") if m in first]
    if drawn:
        draw_filters([first[m]["checkpoint"] for m in drawn], out / "filters.png", titles=[m.upper() for m in drawn])
        results["filters"] = "filters.png"
    results["plots"] = write_plots(out, results, test_labels)
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    results["machine"] = runner.machine()
    write_report(out, results)
    header = (f"xdc demo: {len(rows)} synthetic videos, {len(results['table'])} methods, "
              f"{results['wall_seconds']:.0f} s on {results['machine']}, {cfg.threads} torch thread(s)")
    runner.finish(out, results, header, others=("report.html",))
    return results


def run(args: argparse.Namespace) -> int:
    cfg = load_demo_config(args.config, args.quick, args.overrides)
    if args.methods:
        cfg = replace(cfg, methods=[m for m in DEMO_METHODS if m in args.methods])
    torch.set_num_threads(cfg.threads)
    with run_log(args.out / "log.txt"):  # the demo's own lines; each pretraining run keeps its own log too
        demo(args.out, cfg, list(dict.fromkeys(args.seeds)) if args.seeds else [cfg.pretrain.seed])
    return 0
