"""The experiment runner behind `xdc demo` and benchmarks/avdigits.py: for each (seed, method) one
piece — pretrain (not for Scratch), the cluster report and per-iteration NMIs (not for Superv),
the probes of both encoders — then the numbers over seeds (`xdc.experiments.summary`) and the one
table (`xdc.reports.experiment`). How a step runs is the caller's choice: `InProcess` (the demo)
calls the library, `Commands` (benchmarks) runs the project's commands in fresh processes, as a
user would, several pieces side by side.

The output folder:
    settings.json        the settings stamp (`xdc.stamps`): a rerun reuses finished work only for
                         the same settings; more seeds, methods or probes only add pieces
    seed<S>/<method>/    one piece: run/ (its pretraining run folder, `RunFolder`),
                         <probe>_<modality>/ (an `xdc finetune` folder), iteration<NN>_linear_
                         <modality>/ (the budget curve's probes of earlier checkpoints), clusters/ (an `xdc
                         clusters` folder), piece.json (its numbers), log.txt (Commands side by side)
    results.json         every piece, the means over seeds, the comparisons, chance
    table.md             the table the command printed
Each step whose output is there (the last iteration's checkpoint, results.json, metrics.json) is
reused; an interrupted pretraining run is resumed.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from xdc.errors import XdcError
from xdc.experiments import summary
from xdc.files import holds_files, write_text_atomic
from xdc.models.device import MODALITIES
from xdc.stamps import check_stamp, write_stamp
from xdc.training.run_folder import RunFolder

if TYPE_CHECKING:
    from xdc.config import FinetuneConfig, PretrainConfig

SCRATCH = "scratch"  # random encoders: no pretraining
SUPERVISED = "superv"  # pretrains on the classes: no clusters to analyse, the labelled manifest
FEATURE_PROBES = ("linear", "knn", "retrieval")  # read the same frozen features (FEATURES_FILE)


class ExperimentError(XdcError):
    """A step of an experiment failed: a command's exit status, with where its output is."""


def claim(out: Path, settings: dict, ignore: tuple[str, ...] = ()) -> None:
    """Take `out` for an experiment with these settings: a new (or empty) folder, or one made with
    the same settings (SettingsMismatch otherwise, naming what differs; ExperimentError for a folder
    of other files, whose pieces would be taken for this experiment's). Keys in `ignore` may differ."""
    stamp = out / "settings.json"
    if not check_stamp(stamp, settings, "choose another --out (or delete it)", ignore) \
            and holds_files(out, besides=("log.txt",)):  # the command's own log may come first
        raise ExperimentError(f"{out} holds files but no {stamp.name} of an experiment: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_stamp(out / "settings.json", settings)


@dataclass(frozen=True)
class Piece:
    """One (seed, method) of an experiment and where its files go."""

    seed: int
    method: str
    folder: Path

    @property
    def run(self) -> RunFolder:
        return RunFolder(self.folder / "run")

    @property
    def clusters_dir(self) -> Path:
        return self.folder / "clusters"

    @property
    def log(self) -> Path:
        return self.folder / "log.txt"

    def probe_dir(self, mode: str, modality: str, iteration: int | None = None) -> Path:
        """A probe's folder: of the last checkpoint, or of iteration `iteration`'s (budget curve)."""
        return self.folder / (f"{mode}_{modality}" if iteration is None else f"iteration{iteration:02d}_{mode}_{modality}")


@dataclass
class Truth:
    """What pseudo-labels are scored against, per video file name (unique in the data set): its
    class, and per modality a code of its nuisance (what the clusters should not follow)."""

    classes: dict[str, str]
    nuisance: dict[str, dict[str, object]]

    def of_run(self, run: RunFolder) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(class indices, nuisance indices per modality), one per row of the run's rows.csv.
        Matched by file name: rows.csv holds absolute paths, which a moved folder breaks."""
        from xdc.data.manifest import class_indices

        with open(run.rows, newline="") as handle:
            names = [Path(row["path"]).name for row in csv.DictReader(handle)]
        return (class_indices([self.classes[n] for n in names])[1],
                {m: class_indices([codes[n] for n in names])[1] for m, codes in self.nuisance.items()})


@dataclass
class Experiment:
    """What an experiment runs, and what its numbers are judged against."""

    out: Path
    methods: list[str]
    seeds: list[int]
    probes: list[str]  # among summary.PROBES
    iterations: int  # pretraining's: its last iteration's checkpoint is probed
    truth: Truth
    test_labels: list  # the probes' test videos' classes: chance and the majority rate
    # Iterations whose checkpoints the linear probe also scores (the last is the main probe's): the
    # budget curve, XDC − each method against the epochs trained so far (summary.budget_curve).
    budget: tuple[int, ...] = ()

    def pieces(self) -> list[Piece]:
        return [Piece(seed, method, self.out / f"seed{seed}" / method) for seed in self.seeds
                for method in self.methods]


class Steps(Protocol):
    """How a piece's steps run; each writes its output where the piece says."""

    def pretrain(self, piece: Piece, resume: bool) -> None: ...

    def probe(self, piece: Piece, mode: str, modality: str, checkpoint: Path | None, folder: Path) -> None: ...

    def clusters(self, piece: Piece) -> None: ...


class InProcess:
    """Each step a call in this process (`xdc demo`); the cluster report with a browser of the
    `clusters_shown` purest clusters, 2 clips each."""

    def __init__(self, pretrain_cfg: PretrainConfig, finetune_cfg: FinetuneConfig, rows: list[dict],
                 splits: dict[str, list[dict]], labelled: Path, clusters_shown: int = 6):
        self.pretrain_cfg, self.finetune_cfg = pretrain_cfg, finetune_cfg
        self.rows, self.splits, self.labelled, self.clusters_shown = rows, splits, labelled, clusters_shown
        self._loaded: tuple = (None, None)  # ((piece folder, modality, checkpoint), the encoder its probes read)

    def pretrain(self, piece: Piece, resume: bool) -> None:
        from xdc.pretrain import pretrain

        pretrain(replace(self.pretrain_cfg, method=piece.method, seed=piece.seed), self.rows, piece.run.root,
                 resume=resume)

    def probe(self, piece: Piece, mode: str, modality: str, checkpoint: Path | None, folder: Path) -> None:
        from xdc.evaluation.finetune import finetune
        from xdc.evaluation.weights import load_encoder

        cfg = replace(self.finetune_cfg, seed=piece.seed)
        if self._loaded[0] != (piece.folder, modality, checkpoint):
            torch.manual_seed(cfg.seed)  # Scratch: the same random encoder as `xdc finetune --scratch`
            self._loaded = ((piece.folder, modality, checkpoint),
                            load_encoder(modality, cfg.model, checkpoint, data=cfg.data))
        loaded = self._loaded[1]
        finetune(replace(cfg, model=loaded.model, mode=mode), loaded.encoder, modality, self.splits["train"],
                 self.splits["val"], self.splits["test"], folder, loaded.source)

    def clusters(self, piece: Piece) -> None:
        from xdc.reports.clusters import cluster_report

        cluster_report(piece.run.root, piece.clusters_dir, self.labelled, clips_per_cluster=2,
                       max_clusters=self.clusters_shown, media=True)


class Commands:
    """Each step an `xdc` command in a fresh process, as a user would type it (benchmarks):
    `xdc pretrain` (or `--resume`), `xdc finetune`, `xdc clusters --no-media`. `configs`: the
    pretrain and finetune YAMLs; `data`: the manifests `pretrain`, `pretrain_labeled` (Superv's,
    and the cluster report's labels), `train`, `val`, `test`; `overrides`: extra `key=value`s per
    method or probe; `quiet`: each piece's commands write to its log.txt (pieces side by side)."""

    def __init__(self, configs: dict[str, Path], data: dict[str, Path], overrides: dict[str, list[str]],
                 quiet: bool = False):
        self.configs, self.data, self.overrides, self.quiet = configs, data, overrides, quiet

    def pretrain(self, piece: Piece, resume: bool) -> None:
        if resume:
            self.xdc(piece, "pretrain", "--resume", str(piece.run.root))
            return
        data = self.data["pretrain_labeled" if piece.method == SUPERVISED else "pretrain"]
        self.xdc(piece, "pretrain", "--config", str(self.configs["pretrain"]), "--data", str(data),
                 "--out", str(piece.run.root), f"method={piece.method}", f"seed={piece.seed}",
                 *self.overrides.get(piece.method, ()))

    def probe(self, piece: Piece, mode: str, modality: str, checkpoint: Path | None, folder: Path) -> None:
        source = ["--checkpoint", str(checkpoint)] if checkpoint else ["--scratch"]
        splits = [arg for name in ("train", "val", "test") for arg in (f"--{name}", str(self.data[name]))]
        self.xdc(piece, "finetune", *source, "--modality", modality, "--mode", mode, "--config",
                 str(self.configs["finetune"]), *splits, "--out", str(folder),
                 f"seed={piece.seed}", *self.overrides.get(mode, ()))

    def clusters(self, piece: Piece) -> None:
        self.xdc(piece, "clusters", str(piece.run.root), "--labels", str(self.data["pretrain_labeled"]), "-o",
                 str(piece.clusters_dir), "--no-media")

    def xdc(self, piece: Piece, *args: str) -> None:
        command(*args, log=piece.log if self.quiet else None, what=f" of seed {piece.seed}, {piece.method}")


def command(*args: str, log: Path | None = None, what: str = "") -> None:
    """Run `xdc ARGS` in a fresh process, as a user would; its output goes to the file `log`
    (appended) if given. ExperimentError when it fails."""
    with open(log, "a") if log else contextlib.nullcontext() as handle:
        print("$ xdc " + " ".join(args), file=handle or sys.stdout, flush=True)
        done = subprocess.run([sys.executable, "-m", "xdc.cli", *args], check=False, stdout=handle,
                              stderr=subprocess.STDOUT if handle else None)
    if done.returncode:
        where = f" (its output: {log})" if log else ""
        raise ExperimentError(f"`xdc {args[0]}`{what} failed with exit status {done.returncode}{where}")


# ---------------------------------------------------------------------------------- the pieces

@contextlib.contextmanager
def timed(seconds: dict, step: str):
    started = time.perf_counter()
    yield
    seconds[step] = round(seconds.get(step, 0.0) + time.perf_counter() - started, 1)


def run_piece(experiment: Experiment, steps: Steps, piece: Piece) -> dict:
    """Pretrain, analyse the clusters, probe (each step reused when its output is there); returns
    the piece's numbers, also written to its piece.json."""
    piece.folder.mkdir(parents=True, exist_ok=True)
    record_path = piece.folder / "piece.json"
    # Seconds per step, summed over the runs that did the work (a reused step costs nothing).
    seconds = json.loads(record_path.read_text()).get("step_seconds", {}) if record_path.is_file() else {}
    record: dict = {"seed": piece.seed, "method": piece.method,
                    "folder": str(piece.folder.relative_to(experiment.out))}
    checkpoint = None
    if piece.method != SCRATCH:
        run = piece.run
        checkpoint = run.iteration_checkpoint(experiment.iterations - 1)
        if checkpoint.is_file() and run.summary.is_file():
            print(f"seed {piece.seed}, {piece.method}: reusing the finished run in {run.root}")
        else:
            with timed(seconds, "pretrain"):
                steps.pretrain(piece, resume=run.last.is_file())
        record["checkpoint"] = str(checkpoint)
        record["pretrain_summary"] = json.loads(run.summary.read_text())["iterations"]
        if piece.method != SUPERVISED:
            if not (piece.clusters_dir / "metrics.json").is_file():
                with timed(seconds, "clusters"):
                    steps.clusters(piece)
            record["clusters"], record["iterations"] = cluster_scores(piece, experiment.truth)
            if (piece.clusters_dir / "index.html").is_file():
                record["cluster_page"] = str((piece.clusters_dir / "index.html").relative_to(experiment.out))
    record["probes"] = {}
    for modality in MODALITIES:
        for mode in experiment.probes:
            folder = piece.probe_dir(mode, modality)
            if not (folder / "results.json").is_file():
                share_features(piece, mode, modality)
                with timed(seconds, "probes"):
                    steps.probe(piece, mode, modality, checkpoint, folder)
            record["probes"].setdefault(mode, {})[modality] = json.loads((folder / "results.json").read_text())
    if experiment.budget and piece.method != SCRATCH:  # the linear probe of earlier checkpoints
        record["budget"] = {}
        for iteration in experiment.budget:
            last = iteration == experiment.iterations - 1
            for modality in MODALITIES:
                folder = piece.probe_dir("linear", modality, None if last else iteration)
                if not (folder / "results.json").is_file():
                    with timed(seconds, "probes"):
                        steps.probe(piece, "linear", modality, piece.run.iteration_checkpoint(iteration), folder)
                record["budget"].setdefault(str(iteration), {})[modality] = json.loads(
                    (folder / "results.json").read_text())
    record["features"] = {m: str(path.relative_to(experiment.out)) for m in MODALITIES
                          for path in features_of(piece, experiment.probes, m)[:1]}
    record["step_seconds"] = seconds
    record["seconds"] = round(sum(seconds.values()), 1)
    write_text_atomic(record_path, json.dumps(record, indent=1))
    return record


def features_of(piece: Piece, probes: list[str], modality: str) -> list[Path]:
    """The frozen-feature files the piece's probes of one encoder hold (linear, knn, retrieval)."""
    from xdc.evaluation.finetune_folder import FEATURES_FILE

    return [path for mode in FEATURE_PROBES if mode in probes
            if (path := piece.probe_dir(mode, modality) / FEATURES_FILE).is_file()]


def share_features(piece: Piece, mode: str, modality: str) -> None:
    """Give a probe the frozen features another probe of the same encoder extracted: same encoder,
    same clips, so the same features, not extracted again."""
    from xdc.evaluation.finetune_folder import FEATURES_FILE

    target = piece.probe_dir(mode, modality) / FEATURES_FILE
    found = features_of(piece, FEATURE_PROBES, modality)
    if mode in FEATURE_PROBES and found and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found[0], target)


def cluster_scores(piece: Piece, truth: Truth) -> tuple[dict, list[dict]]:
    """The cluster report's metrics (last iteration), each with the NMI of the clusters with the
    modality's nuisance; and per iteration, the NMI of each modality's pseudo-labels with the
    classes and with the nuisance: do the first clusters hold the class, does training add to it?"""
    from xdc.clustering.metrics import nmi

    run = piece.run
    classes, nuisance = truth.of_run(run)
    metrics = json.loads((piece.clusters_dir / "metrics.json").read_text())
    for modality, values in metrics.items():
        values["nmi_nuisance"] = float(nmi(run.read_labels(values["iteration"], modality), nuisance[modality]))
    iterations = []
    for iteration in run.iterations():
        scores: dict = {"iteration": iteration}
        for modality in MODALITIES:
            if run.labels(iteration, modality).is_file():
                labels = run.read_labels(iteration, modality)
                scores[modality] = {"nmi_class": round(nmi(labels, classes), 3),
                                    "nmi_nuisance": round(nmi(labels, nuisance[modality]), 3)}
        iterations.append(scores)
    return metrics, iterations


# ------------------------------------------------------------------------------- the experiment

def run_experiment(experiment: Experiment, steps: Steps, jobs: int = 1) -> dict:
    """Every piece (`jobs` at a time: only for Commands, whose pieces are processes), then the
    numbers over seeds; returns results.json's entries (the caller adds its own)."""
    pieces = experiment.pieces()
    started = time.perf_counter()
    runs: list[dict] = []
    if jobs == 1:
        for i, piece in enumerate(pieces, 1):
            work = {SCRATCH: "random encoders, probes", SUPERVISED: "pretraining on the classes, probes"}.get(
                piece.method, "pretraining, clusters, probes")
            print(f"\n[{i}/{len(pieces)}, {time.perf_counter() - started:.0f} s] seed {piece.seed}, "
                  f"{piece.method}: {work}", flush=True)
            runs.append(run_piece(experiment, steps, piece))
    else:  # each piece's commands write to its log.txt
        print(f"{len(pieces)} pieces, {jobs} at a time; their output: {experiment.out}/seed*/*/log.txt", flush=True)
        with ThreadPoolExecutor(jobs) as pool:
            futures = {pool.submit(run_piece, experiment, steps, piece): piece for piece in pieces}
            try:
                for done, future in enumerate(as_completed(futures), 1):
                    piece = futures[future]
                    runs.append(future.result())
                    print(f"[{done}/{len(pieces)}] seed {piece.seed}, {piece.method}: {runs[-1]['seconds']:.0f} s "
                          f"({time.perf_counter() - started:.0f} s so far)", flush=True)
            except BaseException:  # a failed piece: start no other (those running finish)
                pool.shutdown(cancel_futures=True)
                raise
        order = {(p.seed, p.method): i for i, p in enumerate(pieces)}
        runs.sort(key=lambda r: order[r["seed"], r["method"]])
    methods, probes = experiment.methods, experiment.probes
    return {"methods": methods, "seeds": experiment.seeds, "probes": probes,
            "chance": summary.chance(experiment.test_labels), "rule": summary.RULE, "runs": runs,
            "table": summary.aggregate(runs, methods, probes),
            "comparisons": summary.comparisons(runs, methods, probes),
            **({"budget": summary.budget_curve(runs, methods, experiment.budget)} if experiment.budget else {})}


def machine() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return f"{platform.node() or 'host'}, {device}, {os.cpu_count()} CPUs, torch {torch.__version__}"


def finish(out: Path, results: dict, header: str, others: tuple[str, ...] = ()) -> str:
    """Write results.json and table.md (the table, as printed); print the table and what the
    folder holds (`others`: the caller's files in it)."""
    from xdc.reports.experiment import table_text

    text = table_text(results, header)
    write_text_atomic(out / "results.json", json.dumps(results, indent=2))
    write_text_atomic(out / "table.md", text)
    print("\n" + text)
    print(f"wrote {', '.join((*others, 'table.md', 'results.json'))} in {out}")
    return text
