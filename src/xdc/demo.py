"""`xdc demo [--out DIR] [--quick]`: the whole idea on a laptop, in about ten minutes.

1. Generate the built-in synthetic audio-visual data (xdc.data.synthetic): K classes shared by
   both modalities, each modality with its own nuisance (video: background; audio: loudness and
   noise). Class labels stay in labels.csv; pretraining never sees them.
2. Decode every video once into a clip cache (xdc.data.cache) that all runs read.
3. Pretrain RAND, SDC, MDC, CDC and XDC with the same budget (xdc.pretrain.pretrain).
4. Evaluate each, plus Scratch (random encoders): a linear probe of both encoders on a held-out
   split (xdc.evaluation.finetune, linear mode), weighted kNN and retrieval recall@k on the same
   split (knn and retrieval modes: no training), cluster purity and NMI against the classes and
   against the nuisances (xdc.reports.clusters), and conv1 filters (xdc.reports.filters).
5. Write DIR/results.json and DIR/report.html, print the table.

Settings: xdc.config.DemoConfig, from the packaged demo.yaml (`--quick`: demo_quick.yaml merged on
top) or `--config FILE`, then `key=value` overrides.

Runs are resumable: an interrupted demo started again with the same --out reuses the data, the
cache and every finished run.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from xdc.config import (DEMO_METHODS, ConfigError, DemoConfig, FinetuneConfig, PretrainConfig,
                        config_to_yaml, load_config)
from xdc.data.manifest import class_indices
from xdc.errors import XdcError
from xdc.models.device import MODALITIES
from xdc.training.run_folder import RunFolder



class DemoError(XdcError):
    """The output folder holds a demo run with other settings."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--out", type=Path, default=Path("demo_out"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the whole path in about a minute")
    parser.add_argument("--config", default="demo",
                        help="demo settings: a YAML file or a packaged name (demo: "
                             "xdc/configs/demo.yaml; --quick merges demo_quick.yaml on top)")
    parser.add_argument("--methods", type=_method_list, metavar="M1,M2",
                        help=f"comma-separated subset of: {','.join(DEMO_METHODS)}")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="overrides of the demo config, e.g. pretrain.iterations=2 synthetic.seed=1")


# -------------------------------------------------------------------------------------- settings

def _method_list(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in DEMO_METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}; choose from {','.join(DEMO_METHODS)}")
    return methods


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
    if (folder / "manifest.csv").is_file():  # written last; `check_out_dir` vouched for the settings
        print(f"reusing the synthetic data in {folder}")
        manifest = folder / "manifest.csv"
    else:
        try:
            manifest = synthetic.generate(folder, **synthetic_settings)
        except ValueError as err:  # out-of-range settings, said before anything is written
            raise ConfigError(f"synthetic: {err}") from None
    labeled = synthetic.labeled_manifest(manifest, folder / "labels.csv", folder / "labeled.csv")
    return manifest, labeled


def check_out_dir(out: Path, cfg: DemoConfig) -> None:
    """Reuse an output folder only for the same settings (any subset of methods): otherwise old
    data, runs or probes would mix with new ones."""
    stamp = {"synthetic": asdict(cfg.synthetic), "probe": asdict(cfg.probe),
             "pretrain": config_to_yaml(cfg.pretrain), "finetune": config_to_yaml(cfg.finetune)}
    path = out / "settings.json"
    if path.is_file() and json.loads(path.read_text()) != stamp:
        raise DemoError(f"{out} holds a demo run with other settings: choose another --out (or delete it)")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stamp, indent=1))


def probe_split(rows: list[dict], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[dict]]:
    """Stratified split of labelled rows into train / val / test (each class in each part)."""
    from xdc.evaluation.splits import stratified_split

    parts = stratified_split([row["label"] for row in rows], {"val": val_fraction, "test": test_fraction},
                             seed, strict=True)
    return {name: [rows[i] for i in part] for name, part in parts.items()}


def nuisance_labels(labels_csv: Path, rows: list[dict]) -> dict[str, np.ndarray]:
    """Per row, a discrete nuisance code per modality (synthetic.nuisance_codes)."""
    from xdc.data.synthetic import nuisance_codes, read_labels

    meta = read_labels(labels_csv)
    codes = np.array([nuisance_codes(meta[str(Path(row["path"]).resolve())]) for row in rows])
    return {"video": codes[:, 0], "audio": codes[:, 1]}


# ------------------------------------------------------------------------------------------ runs

def pretrain_method(method: str, cfg: PretrainConfig, rows: list[dict], run_dir: Path) -> float:
    """Pretrain one method into run_dir (resumed or skipped when already there); seconds spent."""
    from xdc.pretrain import pretrain

    if (run_dir / "summary.json").is_file() and final_checkpoint(run_dir, cfg.iterations).is_file():
        print(f"{method}: reusing the finished run in {run_dir}")
        return float(json.loads((run_dir / "demo_seconds.json").read_text())["seconds"]) \
            if (run_dir / "demo_seconds.json").is_file() else 0.0
    resume = RunFolder(run_dir).last.is_file()
    started = time.perf_counter()
    pretrain(replace(cfg, method=method), rows, run_dir, resume=resume)
    seconds = time.perf_counter() - started
    (run_dir / "demo_seconds.json").write_text(json.dumps({"seconds": seconds}))
    return seconds


def final_checkpoint(run_dir: Path, iterations: int) -> Path:
    return RunFolder(run_dir).iteration_checkpoint(iterations - 1)


# How each method's encoders are evaluated: a linear probe (the paper's frozen-feature protocol),
# and the two training-free views beside it, weighted kNN and retrieval (recall@k); results.json
# keys each under its own name, the linear probe's under "probe" (what comparisons and plots read).
PROBE_MODES = {"linear": "probe", "knn": "knn", "retrieval": "retrieval"}


def probe_method(checkpoint: Path | None, cfg: FinetuneConfig, splits: dict[str, list[dict]],
                 out: Path) -> dict[str, dict[str, dict]]:
    """Evaluate both encoders in every PROBE_MODES mode; {results key: {modality: results.json}}.
    `checkpoint` None = Scratch (random encoders, seeded). The modes read the same frozen
    features: the first mode's `features.pt` is shared with the others, not extracted again."""
    from xdc.evaluation.finetune import finetune
    from xdc.evaluation.finetune_folder import FEATURES_FILE
    from xdc.evaluation.weights import load_encoder

    results: dict[str, dict[str, dict]] = {key: {} for key in PROBE_MODES.values()}
    for modality in MODALITIES:
        loaded = None
        features = out / modality / FEATURES_FILE  # the linear probe's cache (extracted first)
        for mode, key in PROBE_MODES.items():
            folder = out / (modality if mode == "linear" else f"{mode}_{modality}")
            if (folder / "results.json").is_file():
                results[key][modality] = json.loads((folder / "results.json").read_text())
                continue
            if loaded is None:
                torch.manual_seed(cfg.seed)  # Scratch: the same random encoder every run
                loaded = load_encoder(modality, cfg.model, checkpoint, data=cfg.data)
            if mode != "linear" and features.is_file() and not (folder / FEATURES_FILE).exists():
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(features, folder / FEATURES_FILE)
            results[key][modality] = finetune(replace(cfg, model=loaded.model, mode=mode), loaded.encoder,
                                              modality, splits["train"], splits["val"], splits["test"],
                                              folder, loaded.source)
    return results


def cluster_metrics(run_dir: Path, labeled: Path, out: Path, nuisance: dict[str, np.ndarray],
                    media: bool) -> dict:
    """Purity, NMI, ARI, empty clusters of the last iteration's clusters (xdc clusters), plus the
    NMI of the clusters with each modality's nuisance."""
    from xdc.clustering.metrics import nmi
    from xdc.reports.clusters import cluster_report

    metrics = cluster_report(run_dir, out, labeled, media=media, clips_per_cluster=2, max_clusters=6)
    for modality in MODALITIES:
        if modality in metrics:
            clusters = RunFolder(run_dir).read_labels(metrics[modality]["iteration"], modality)
            metrics[modality]["nmi_nuisance"] = float(nmi(clusters, nuisance[modality]))
    return metrics


# ---------------------------------------------------------------------------------------- report

def results_table(results: dict) -> list[list[str]]:
    """One row per method: linear-probe, kNN and retrieval scores, cluster quality, per modality."""
    rows = []
    for method, r in results["methods"].items():
        row = [method]
        for key, metric in (("probe", "top1_video"), ("knn", "top1_video"), ("retrieval", "recall@1")):
            for modality in MODALITIES:
                row.append(_fmt(r.get(key, {}).get(modality, {}).get(metric)))
        for modality in MODALITIES:
            c = r.get("clusters", {}).get(modality, {})
            row += [_fmt(c.get("purity")), _fmt(c.get("nmi")), _fmt(c.get("nmi_nuisance")),
                    "-" if c.get("empty_clusters") is None else str(c["empty_clusters"])]
        rows.append(row)
    return rows


TABLE_HEADERS = ["method", "video acc", "audio acc", "video kNN", "audio kNN", "video R@1", "audio R@1",
                 "video purity", "video NMI", "video NMI nuisance", "video empty",
                 "audio purity", "audio NMI", "audio NMI nuisance", "audio empty"]


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_table(results: dict) -> None:
    rows = results_table(results)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(TABLE_HEADERS)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    print(line(TABLE_HEADERS))
    for row in rows:
        print(line(row))


def comparisons(results: dict) -> dict:
    """Per modality, probe accuracy of XDC minus each other method's (what the paper claims)."""
    methods = results["methods"]
    if "xdc" not in methods:
        return {}
    out = {}
    for other in methods:
        if other == "xdc":
            continue
        out[f"xdc_minus_{other}"] = {
            m: round(methods["xdc"]["probe"][m]["top1_video"] - methods[other]["probe"][m]["top1_video"], 4)
            for m in MODALITIES
            if m in methods["xdc"].get("probe", {}) and m in methods[other].get("probe", {})}
    return out


def write_report(out: Path, results: dict) -> Path:
    """report.html: the table, what it means, the filter picture, links to cluster browsers."""
    from xdc.reports import html

    data = results["data"]
    parts = [
        "<p>Built-in synthetic data: "
        f"{data['videos']} videos of {data['num_classes']} classes ({data['seconds']} s, "
        f"{data['size']}x{data['size']} px, {data['fps']} fps). Each class has a shape and motion "
        "in the video and a pitch contour and timbre in the audio; each modality also has a "
        "strong nuisance with no class information (video: background colour and brightness; "
        "audio: loudness and background noise).</p>",
        "<p>Accuracies are video-level top-1 of a linear probe on frozen encoders, on held-out "
        "videos (train/val/test split per class; lr chosen on val). <em>kNN</em>: top-1 of a "
        f"weighted vote of the {results['finetune_knn_k']} most similar training videos (cosine, "
        "no training); <em>R@1</em>: the share of test videos whose most similar training video "
        "has their class (retrieval). Purity and NMI are the last "
        "iteration's clusters against the classes; <em>NMI nuisance</em> is the NMI against the "
        "modality's own nuisance: high means the clusters follow the nuisance. Scratch has no "
        "clusters; RAND's labels are random by design.</p>",
        html.table(TABLE_HEADERS, results_table(results)),
    ]
    if results.get("comparisons"):
        rows = [[k.replace("_", " "), *(_fmt(v.get(m)) for m in MODALITIES)]
                for k, v in results["comparisons"].items()]
        parts += ["<h2>XDC against each other method (accuracy difference)</h2>",
                  html.table(["comparison", "video", "audio"], rows)]
    plots = results.get("plots", {})
    if plots:
        parts.append("<h2>At a glance</h2><p>Probe accuracy per method (the bars' error marks span the "
                     "seeds when there are several); NMI of each iteration's clusters with the classes; "
                     "the test videos' probe features (mean over clips) on their first two principal "
                     "components, one colour per class.</p>")
        parts += [html.image_tag(src, caption, "plot") for src, caption in plots.items()]
    if results.get("filters"):
        parts += ["<h2>conv1 filters of the video encoders</h2>",
                  html.image_tag(results["filters"], "conv1 filters")]
    links = [f'<li><a href="{html.escape(p)}">{html.escape(m)}</a></li>'
             for m, p in results.get("cluster_pages", {}).items()]
    if links:
        parts += ["<h2>Cluster browsers</h2>", "<ul>" + "".join(links) + "</ul>"]
    parts.append(f"<p class=\"muted\">{results['wall_seconds']:.0f} s wall on {html.escape(results['machine'])}; "
                 f"settings in results.json.</p>")
    path = out / "report.html"
    path.write_text(html.page("xdc demo: cross-modal deep clustering on synthetic data", "\n".join(parts)),
                    encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ main

def machine() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return f"{platform.node() or 'host'}, {device}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def demo(out: Path, cfg: DemoConfig) -> dict:
    """Everything above, in order; returns the results (also written to out/results.json)."""
    from xdc.data.cache import build_cache
    from xdc.data.manifest import describe_dropped, read_manifest, usable_rows, write_manifest
    from xdc.reports.filters import draw_filters

    started = time.perf_counter()
    check_out_dir(out, cfg)
    pretrain_cfg, finetune_cfg = cfg.pretrain, cfg.finetune
    methods = cfg.methods
    steps = 2 + len(methods)
    step = iter(range(1, steps + 1))

    def say(text: str) -> None:
        print(f"\n[demo {next(step)}/{steps}, {time.perf_counter() - started:.0f} s] {text}", flush=True)

    say("generating the synthetic videos")
    manifest, labeled = make_data(out, asdict(cfg.synthetic))
    rows, dropped = usable_rows(read_manifest(manifest), require_audio=True)
    if dropped:
        print(f"{manifest}: {describe_dropped(dropped)}")
    label_of = {r["path"]: r["label"] for r in read_manifest(labeled)}
    labeled_rows = [dict(r, label=label_of[r["path"]]) for r in rows]  # same order as `rows`

    say("decoding every video once into the clip cache")
    build_cache(rows, pretrain_cfg.data, out / "cache")
    pretrain_cfg = replace(pretrain_cfg, data=replace(pretrain_cfg.data, cache_dir=str(out / "cache")))
    finetune_cfg = replace(finetune_cfg, data=replace(finetune_cfg.data, cache_dir=str(out / "cache")))
    split = probe_split(labeled_rows, cfg.probe.val_fraction, cfg.probe.test_fraction, seed=cfg.synthetic.seed)
    for name, part in split.items():  # for the record (and `xdc finetune` by hand)
        write_manifest(part, out / "data" / f"probe_{name}.csv")
    nuisance = nuisance_labels(out / "data" / "labels.csv", rows)

    results = {"data": {**asdict(cfg.synthetic), "videos": len(rows),
                        "probe": {k: len(v) for k, v in split.items()}},
               "pretrain_config": config_to_yaml(pretrain_cfg), "finetune_config": config_to_yaml(finetune_cfg),
               "finetune_knn_k": finetune_cfg.knn_k, "methods": {}, "cluster_pages": {}}
    truth = class_indices([r["label"] for r in labeled_rows])[1]
    for method in methods:
        say(f"{method}: " + ("no pretraining (random encoders); linear probe" if method == "scratch"
                             else "pretraining, then linear probe and cluster analysis"))
        entry: dict = {}
        checkpoint = None
        if method != "scratch":
            run_dir = out / "runs" / method
            entry["pretrain_seconds"] = round(pretrain_method(method, pretrain_cfg, rows, run_dir), 1)
            checkpoint = final_checkpoint(run_dir, pretrain_cfg.iterations)
            entry["clusters"] = cluster_metrics(run_dir, labeled, out / "clusters" / method, nuisance, media=True)
            entry["iterations"] = iteration_nmis(run_dir, truth, nuisance)
            results["cluster_pages"][method] = f"clusters/{method}/index.html"
        probe_started = time.perf_counter()
        entry.update(probe_method(checkpoint, finetune_cfg, split, out / "probe" / method))
        entry["probe_seconds"] = round(time.perf_counter() - probe_started, 1)
        results["methods"][method] = entry
    runs = [m for m in ("xdc", "sdc") if m in methods]
    if runs:
        draw_filters([final_checkpoint(out / "runs" / m, pretrain_cfg.iterations) for m in runs],
                     out / "filters.png", titles=[m.upper() for m in runs])
        results["filters"] = "filters.png"
    results["comparisons"] = comparisons(results)
    results["plots"] = write_plots(out, results, split)
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    results["machine"] = machine()
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_report(out, results)
    return results


def write_plots(out: Path, results: dict, split: dict[str, list[dict]]) -> dict[str, str]:
    """The report's pictures (xdc.reports.plots), as {file relative to out: caption}."""
    from xdc.reports import plots

    methods = results["methods"]
    written = {}
    accuracy = {m: {modality: [e["probe"][modality]["top1_video"]] for modality in MODALITIES
                    if modality in e.get("probe", {})} for m, e in methods.items()}
    plots.save(plots.bar_plot(accuracy, "test top-1 (video level)", "linear probe accuracy"), out / "plot_probe.png")
    written["plot_probe.png"] = "linear probe accuracy per method"
    for modality in MODALITIES:
        curves = {m: [(r["iteration"], r[modality]["nmi_class"]) for r in e["iterations"] if modality in r]
                  for m, e in methods.items() if e.get("iterations")}
        if any(curves.values()):
            name = f"plot_nmi_{modality}.png"
            plots.save(plots.line_plot({m: c for m, c in curves.items() if c}, "iteration", "NMI with the classes",
                                       f"{modality} clusters per iteration"), out / name)
            written[name] = f"NMI of the {modality} clusters with the classes, per iteration"
    from xdc.evaluation.finetune_folder import FEATURES_FILE

    panels = []
    for modality in MODALITIES:
        for method in methods:
            cached = out / "probe" / method / modality / FEATURES_FILE
            if cached.is_file():
                features = torch.load(cached, map_location="cpu", weights_only=True)
                labels = [split["test"][int(i)]["label"] for i in features["test_index"]]
                panels.append((f"{method} {modality}", features["test"].mean(1).numpy(), labels))
    if panels:
        plots.save(plots.feature_maps(panels, columns=len(methods)), out / "plot_maps.png")
        written["plot_maps.png"] = "the test videos' probe features (PCA), per method and modality"
    return written


def iteration_nmis(run_dir: Path, truth: np.ndarray, nuisance: dict[str, np.ndarray]) -> list[dict]:
    """Per iteration and modality, NMI of the pseudo-labels with the classes and with the nuisance:
    do the first clusters hold class information, and does training make them hold more?"""
    from xdc.clustering.metrics import nmi

    out = []
    run = RunFolder(run_dir)
    for iteration in run.iterations():
        record = {"iteration": iteration}
        for modality in MODALITIES:
            if run.labels(iteration, modality).is_file():
                labels = run.read_labels(iteration, modality)
                record[modality] = {"nmi_class": round(nmi(labels, truth), 3),
                                    "nmi_nuisance": round(nmi(labels, nuisance[modality]), 3)}
        out.append(record)
    return out


def run(args: argparse.Namespace) -> int:
    cfg = load_demo_config(args.config, args.quick, args.overrides)
    if args.methods:
        cfg = replace(cfg, methods=[m for m in DEMO_METHODS if m in args.methods])
    torch.set_num_threads(cfg.threads)
    results = demo(args.out, cfg)
    print(f"\nxdc demo: {results['data']['videos']} synthetic videos, {len(results['methods'])} methods, "
          f"{results['wall_seconds']:.0f} s on {results['machine']}")
    print_table(results)
    for name, diff in results.get("comparisons", {}).items():
        print(f"  {name}: " + ", ".join(f"{m} {v:+.3f}" for m, v in diff.items()))
    print(f"wrote {args.out / 'report.html'} and {args.out / 'results.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xdc demo", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
