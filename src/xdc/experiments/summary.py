"""Numbers over seeds: each method's mean and spread per score, XDC's paired difference with every
other method (mean over seeds with a 95% t-interval), and what guessing scores on the test set."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from xdc.models.device import MODALITIES

PROBES = ("linear", "fc", "knn", "retrieval")  # the `xdc finetune` modes an experiment runs
METRIC = {"retrieval": "recall@1"}  # the score reported per probe; the others: top1_video
CLUSTER_KEYS = ("purity", "nmi", "nmi_nuisance", "empty_clusters")
WINNER = "xdc"  # the method the paper puts ahead: every other one is compared with it
CONFIDENCE = 0.95
MIN_SEEDS_TO_CLAIM = 5
RULE = (f"XDC minus each method, paired by seed (same data split and initialisation for both): the mean "
        f"over seeds with its {CONFIDENCE:.0%} t-interval (Student's t, n - 1 degrees of freedom); "
        f"'beats' only when the interval lies above 0 with at least {MIN_SEEDS_TO_CLAIM} seeds")


def score(run: dict, mode: str, modality: str) -> float | None:
    """A piece's test score in one probe (None when that probe did not run)."""
    result = run.get("probes", {}).get(mode, {}).get(modality)
    return None if result is None else float(result[METRIC.get(mode, "top1_video")])


def mean_std(values) -> list[float] | None:
    """[mean, std (ddof 1; 0 for one value)] of the values that are not None; None when none are."""
    values = np.asarray([v for v in values if v is not None], np.float64)
    if values.size == 0:
        return None
    return [float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0]


def aggregate(runs: list[dict], methods: list[str], probes: list[str]) -> dict:
    """Per method with runs (in `methods` order): its seeds, and mean and std over them of each probe
    score, cluster metric, pseudo-label NMI (first and last iteration), head loss and piece time."""
    table = {}
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        row: dict = {"seeds": [r["seed"] for r in mine],
                     "probes": {mode: {m: mean_std(score(r, mode, m) for r in mine) for m in MODALITIES}
                                for mode in probes},
                     "seconds": mean_std(r["seconds"] for r in mine)}
        clustered = [r["clusters"] for r in mine if r.get("clusters")]
        if clustered:
            row["clusters"] = {m: {key: mean_std(c[m].get(key) for c in clustered if m in c) for key in CLUSTER_KEYS}
                               for m in MODALITIES}
        iterations = [r["iterations"] for r in mine if r.get("iterations")]
        if iterations:  # [first, last] iteration
            row["pseudo_labels"] = {m: {kind: [mean_std(its[i][m][f"nmi_{kind}"] for its in iterations)[0]
                                               for i in (0, -1)] for kind in ("class", "nuisance")}
                                    for m in MODALITIES if all(m in its[0] and m in its[-1] for its in iterations)}
        heads = [r["pretrain_summary"][-1].get("heads") or {} for r in mine if r.get("pretrain_summary")]
        if heads and heads[0]:  # the last epoch's losses beside chance (val_loss: None without early stopping)
            row["heads"] = {name: {key: mean_std(h[name].get(key) for h in heads if name in h)
                                   for key in ("train_loss", "val_loss", "chance", "prior_entropy")}
                            for name in heads[0]}
        table[method] = row
    return table


def paired_difference(seeds: list[int], differences: list[float]) -> dict:
    """Mean of the per-seed differences and its two-sided t-interval (None with one seed);
    `beats`: the interval lies above 0 and there are enough seeds to claim it."""
    n = len(differences)
    mean = float(np.mean(differences))
    result = {"seeds": seeds, "differences": differences, "mean": mean, "interval": None, "beats": False}
    if n >= 2:
        from scipy.stats import t

        half = float(t.ppf((1 + CONFIDENCE) / 2, n - 1)) * float(np.std(differences, ddof=1)) / math.sqrt(n)
        result["interval"] = [mean - half, mean + half]
        result["beats"] = bool(n >= MIN_SEEDS_TO_CLAIM and mean - half > 0)
    return result


def comparisons(runs: list[dict], methods: list[str], probes: list[str], score_of=score) -> dict:
    """{"xdc_minus_<method>": {probe: {modality: paired_difference}}} for every other method, over
    the seeds both ran (RULE); `score_of(run, probe, modality)` reads a piece's score."""
    if WINNER not in methods:
        return {}
    by_seed = {m: {r["seed"]: r for r in runs if r["method"] == m} for m in methods}
    out = {}
    for other in methods:
        if other == WINNER:
            continue
        per_probe: dict = {}
        for mode in probes:
            for modality in MODALITIES:
                pairs = [(seed, score_of(by_seed[WINNER][seed], mode, modality),
                          score_of(by_seed[other][seed], mode, modality))
                         for seed in sorted(by_seed[WINNER].keys() & by_seed[other].keys())]
                pairs = [(seed, a - b) for seed, a, b in pairs if a is not None and b is not None]
                if pairs:
                    per_probe.setdefault(mode, {})[modality] = paired_difference(
                        [seed for seed, _ in pairs], [d for _, d in pairs])
        out[f"{WINNER}_minus_{other}"] = per_probe
    return out


def budget_curve(runs: list[dict], methods: list[str], budget: tuple[int, ...]) -> list[dict]:
    """The budget curve: per probed iteration, the epochs trained by its end (mean over the pieces),
    each method's linear-probe score over seeds (mean, std) per modality, and XDC minus each other
    method paired by seed (RULE). Does the gap open with training?"""
    def at(iteration: int):
        def score_of(run: dict, mode: str, modality: str) -> float | None:
            result = run.get("budget", {}).get(str(iteration), {}).get(modality)
            return None if result is None else float(result["top1_video"])
        return score_of

    curve = []
    for iteration in budget:
        score_of = at(iteration)
        trained = [r for r in runs if str(iteration) in r.get("budget", {})]
        epochs = [sum(record.get("epochs", 0) for record in r["pretrain_summary"][:iteration + 1]) for r in trained]
        curve.append({"iteration": iteration, "epochs": mean_std(epochs)[0] if epochs else None,
                      "methods": {m: {modality: mean_std(score_of(r, "linear", modality) for r in trained
                                                         if r["method"] == m)
                                      for modality in MODALITIES}
                                  for m in methods if any(r["method"] == m for r in trained)},
                      "comparisons": comparisons(trained, methods, ["linear"], score_of)})
    return curve


def chance(test_labels: list) -> dict:
    """What guessing scores on the test set: 1 / classes, and the share of its largest class (what
    always answering that class scores)."""
    counts = Counter(test_labels)
    return {"classes": len(counts), "test_videos": len(test_labels), "chance": 1 / len(counts),
            "majority": max(counts.values()) / len(test_labels)}
