"""An experiment's results as a reader sees them (`xdc.experiments` makes the numbers): the one
table (printed, table.md, report.html) with chance beside the scores, XDC's paired comparisons,
and the demo's report page with its pictures."""

from __future__ import annotations

from pathlib import Path

from xdc.files import write_text_atomic
from xdc.models.device import MODALITIES

PROBE_NAMES = {"linear": "linear", "fc": "fc", "knn": "kNN", "retrieval": "R@1"}
CLUSTER_COLUMNS = {"purity": "purity", "nmi": "NMI", "nmi_nuisance": "NMI nuisance"}


def _cell(value: list | None, seeds: int) -> str:
    """mean ± std over seeds (the mean alone for one seed)."""
    if value is None:
        return "-"
    return f"{value[0]:.3f} ± {value[1]:.3f}" if seeds > 1 else f"{value[0]:.3f}"


def main_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): per method its probe scores and cluster quality, then chance and the test
    set's majority-class rate under the scores they bound."""
    probes, table, chance = results["probes"], results["table"], results["chance"]
    clustered = any("clusters" in row for row in table.values())
    headers = ["method", *(f"{m} {PROBE_NAMES[p]}" for p in probes for m in MODALITIES)]
    if clustered:
        headers += [f"{m} {name}" for m in MODALITIES for name in CLUSTER_COLUMNS.values()] + ["empty (v / a)"]
    headers.append("s per seed")
    rows = []
    for method, row in table.items():
        seeds = len(row["seeds"])
        cells = [method, *(_cell(row["probes"][p][m], seeds) for p in probes for m in MODALITIES)]
        clusters = row.get("clusters")
        if clustered and clusters:
            cells += [_cell(clusters[m][key], seeds) for m in MODALITIES for key in CLUSTER_COLUMNS]
            cells.append(" / ".join(f"{round(clusters[m]['empty_clusters'][0], 1):g}" for m in MODALITIES))
        elif clustered:
            cells += ["-"] * (2 * len(CLUSTER_COLUMNS) + 1)
        cells.append(f"{row['seconds'][0]:.0f}" if row["seconds"] else "-")
        rows.append(cells)
    rest = ["-"] * (len(headers) - 1 - 2 * len(probes))
    rows.append([f"chance (1/{chance['classes']})", *[f"{chance['chance']:.3f}"] * (2 * len(probes)), *rest])
    # Always answering the largest class: what a top-1 accuracy must beat (not a retrieval score).
    rows.append(["majority class", *("-" if p == "retrieval" else f"{chance['majority']:.3f}"
                                     for p in probes for _ in MODALITIES), *rest])
    return headers, rows


def one_seed_only(results: dict) -> bool:
    """No comparison has an interval: the table says so once, not in every cell."""
    return all(d["interval"] is None for per_probe in results["comparisons"].values()
               for per_modality in per_probe.values() for d in per_modality.values())


def difference(value: dict | None, say_one_seed: bool = True) -> str:
    """A paired difference: mean [95% t-interval], 'beats' when the rule says so."""
    if value is None:
        return "-"
    if value["interval"] is None:
        return f"{value['mean']:+.3f}" + (" (one seed: no interval)" if say_one_seed else "")
    low, high = value["interval"]
    return f"{value['mean']:+.3f} [{low:+.3f}, {high:+.3f}]" + (" beats" if value["beats"] else "")


def comparison_label(name: str) -> str:
    """"XDC − SDC" for summary.comparisons' key "xdc_minus_sdc"."""
    return f"XDC − {name.rpartition('_minus_')[2].upper()}"


def comparison_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): XDC minus each other method, per probe and modality (summary.RULE)."""
    probes = [p for p in results["probes"] if any(p in c for c in results["comparisons"].values())]
    headers = ["comparison", *(f"{m} {PROBE_NAMES[p]}" for p in probes for m in MODALITIES)]
    say_one_seed = not one_seed_only(results)
    rows = [[comparison_label(name),
             *(difference(per_probe.get(p, {}).get(m), say_one_seed) for p in probes for m in MODALITIES)]
            for name, per_probe in results["comparisons"].items()]
    return headers, rows


def comparison_caption(results: dict) -> str:
    return results["rule"] + (". One seed: no interval." if one_seed_only(results) else ".")


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table that also reads as plain text: columns padded, numbers right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ("-" if i == 0 else ":") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), rule, *map(line, rows)])


def chance_sentence(results: dict) -> str:
    chance, seeds = results["chance"], results["seeds"]
    return (f"Video-level top-1 on {chance['test_videos']} test videos of {chance['classes']} classes: chance "
            f"1/{chance['classes']} = {chance['chance']:.3f}, always answering the largest class "
            f"{chance['majority']:.3f}. {len(seeds)} seed{'s' * (len(seeds) > 1)} ({', '.join(map(str, seeds))})"
            + ("; mean ± std over seeds." if len(seeds) > 1 else "."))


def budget_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): per probed iteration (and the epochs trained by its end), each method's
    linear-probe score per modality and XDC minus each other method (summary.budget_curve)."""
    curve = results["budget"]
    methods = [m for m in results["methods"] if any(m in point["methods"] for point in curve)]
    others = [name for name in curve[0]["comparisons"] if any(p["comparisons"][name] for p in curve)]
    say_one_seed = not one_seed_only(results)
    headers = ["iteration", "epochs", *(f"{modality} {m}" for modality in MODALITIES for m in methods),
               *(f"{modality} {comparison_label(name)}" for modality in MODALITIES for name in others)]
    seeds = max((len(r["seeds"]) for r in results["table"].values()), default=1)
    rows = []
    for point in curve:
        rows.append([str(point["iteration"]), "-" if point["epochs"] is None else f"{point['epochs']:g}",
                     *(_cell(point["methods"].get(m, {}).get(modality), seeds) for modality in MODALITIES
                       for m in methods),
                     *(difference(point["comparisons"][name].get("linear", {}).get(modality), say_one_seed)
                       for modality in MODALITIES for name in others)])
    return headers, rows


def table_text(results: dict, header: str) -> str:
    """What the command prints and table.md holds: the table, chance, pseudo-label NMIs, head losses,
    the comparisons and their rule."""
    table = results["table"]
    parts = [header, "", markdown_table(*main_table(results)), "", chance_sentence(results)]
    with_labels = {m: row["pseudo_labels"] for m, row in table.items() if row.get("pseudo_labels")}
    if with_labels:
        columns = [(m, kind) for m in MODALITIES for kind in ("class", "nuisance")]
        rows = [[method, *(f"{p[m][kind][0]:.3f} -> {p[m][kind][1]:.3f}" if m in p else "-" for m, kind in columns)]
                for method, p in with_labels.items()]
        parts += ["", "Pseudo-labels: NMI with the class and with the nuisance, first iteration -> last, mean "
                  "over seeds:", "", markdown_table(["method", *(f"{m}: {kind}" for m, kind in columns)], rows)]
    heads = [[method, name, *(_cell(h[key], 1) for key in ("train_loss", "val_loss", "chance", "prior_entropy"))]
             for method, row in table.items() for name, h in row.get("heads", {}).items()]
    if heads:
        parts += ["", "Each head's loss at the last epoch, mean over seeds, beside chance: ln k, and the entropy "
                  "of its labels (what knowing only the cluster sizes scores):", "",
                  markdown_table(["method", "head", "train", "val", "ln k", "labels' entropy"], heads)]
    if results["comparisons"]:
        parts += ["", f"Comparisons: {comparison_caption(results)}", "", markdown_table(*comparison_table(results))]
    if results.get("budget"):
        parts += ["", "Budget curve: the linear probe of each probed iteration's checkpoint (video-level top-1, "
                  "mean ± std over seeds) against the epochs trained by then, and XDC minus each method, "
                  "paired by seed as above:", "", markdown_table(*budget_table(results))]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------ the demo's page

def write_plots(out: Path, results: dict, test_labels: list[str]) -> dict[str, str]:
    """The report's pictures (xdc.reports.plots) as {file relative to out: caption}: linear-probe
    accuracy per method (error marks: the seeds' range), NMI of each iteration's clusters with the
    classes (mean over seeds), the first seed's test features on two principal components."""
    from xdc.checkpoint import load_checkpoint
    from xdc.reports import plots

    runs, seeds = results["runs"], results["seeds"]
    written = {}
    accuracy = {method: {m: [r["probes"]["linear"][m]["top1_video"] for r in runs if r["method"] == method]
                         for m in MODALITIES} for method in results["table"]}
    figure = plots.bar_plot(accuracy, "test top-1 (video level)", "linear probe accuracy")
    figure.axes[0].axhline(results["chance"]["chance"], color="grey", linestyle="--", linewidth=1)
    figure.axes[0].annotate(f"chance 1/{results['chance']['classes']}", (1.0, results["chance"]["chance"]),
                            xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize="small", color="grey")
    plots.save(figure, out / "plot_probe.png")
    written["plot_probe.png"] = "linear probe accuracy per method, chance dashed"
    for modality in MODALITIES:
        curves = {}
        for method in results["table"]:
            its = [r["iterations"] for r in runs if r["method"] == method and r.get("iterations")]
            if its:
                curves[method] = [(rec["iteration"], sum(i[n][modality]["nmi_class"] for i in its) / len(its))
                                  for n, rec in enumerate(its[0]) if modality in rec]
        if any(curves.values()):
            name = f"plot_nmi_{modality}.png"
            plots.save(plots.line_plot({m: c for m, c in curves.items() if c}, "iteration", "NMI with the classes",
                                       f"{modality} clusters per iteration"), out / name)
            written[name] = f"NMI of the {modality} clusters with the classes, per iteration"
    panels = []
    for modality in MODALITIES:
        for run in (r for r in runs if r["seed"] == seeds[0] and modality in r.get("features", {})):
            features = load_checkpoint(out / run["features"][modality])
            labels = [test_labels[int(i)] for i in features["test_index"]]
            panels.append((f"{run['method']} {modality}", features["test"].mean(1).numpy(), labels))
    if panels:
        plots.save(plots.feature_maps(panels, columns=len(results["table"])), out / "plot_maps.png")
        written["plot_maps.png"] = "the test videos' probe features (PCA), per method and modality"
    return written


def write_report(out: Path, results: dict) -> Path:
    """report.html of `xdc demo`: the data, what each number means, the table beside chance, the
    comparisons, the pictures, and links to the cluster browsers."""
    from xdc.reports import html

    data, seeds, table = results["data"], results["seeds"], results["table"]
    several = len(seeds) > 1
    parts = [
        "<p>Built-in synthetic data: "
        f"{data['videos']} videos of {data['num_classes']} classes ({data['seconds']} s, "
        f"{data['size']}x{data['size']} px, {data['fps']} fps). Each class has a shape and motion "
        "in the video and a pitch contour and timbre in the audio; each modality also has a "
        "strong nuisance with no class information (video: background colour and brightness; "
        "audio: loudness and background noise).</p>",
        "<p>Accuracies are video-level top-1 of a linear probe on frozen encoders, on held-out "
        "videos (train/val/test split per class; lr chosen on val). <em>kNN</em>: top-1 of a "
        f"weighted vote of the {results['settings']['finetune']['knn_k']} most similar training videos "
        "(cosine, no training); <em>R@1</em>: the share of test videos whose most similar training video "
        "has their class (retrieval). Purity and NMI are the last "
        "iteration's clusters against the classes; <em>NMI nuisance</em> is the NMI against the "
        "modality's own nuisance: high means the clusters follow the nuisance. Scratch has no "
        "clusters; RAND's labels are random by design.</p>",
        f"<p>{html.escape(chance_sentence(results))} A seed sets the pretraining and probe initialisation; "
        "the data and its split are the same for every seed.</p>",
        html.table(*main_table(results)),
    ]
    if "cdc" in table and table["cdc"].get("clusters"):
        parts.append("<p>CDC clusters the video and audio features together (one joint clustering whose "
                     "labels both heads predict), so its video and audio purity and NMI are the same numbers; "
                     "only the NMI with each modality's nuisance differs.</p>")
    if results["comparisons"]:
        parts += ["<h2>XDC against each other method</h2>", f"<p>{html.escape(comparison_caption(results))}</p>",
                  html.table(*comparison_table(results))]
    if results.get("plots"):
        marks = (f"bars are means over the {len(seeds)} seeds, their error marks span the lowest to the highest "
                 "seed" if several else "one seed, so no error marks")
        parts.append(f"<h2>At a glance</h2><p>Linear probe accuracy per method ({marks}; chance dashed); NMI of each "
                     f"iteration's clusters with the classes{' (mean over seeds)' if several else ''}; the test "
                     f"videos' probe features (mean over clips){f' of seed {seeds[0]}' if several else ''} on "
                     "their first two principal components, one colour per class.</p>")
        parts += [html.image_tag(src, caption, "plot") for src, caption in results["plots"].items()]
    if results.get("filters"):
        parts += ["<h2>conv1 filters of the video encoders</h2>", html.image_tag(results["filters"], "conv1 filters")]
    links = [f"<li>{html.link(run['cluster_page'], 'seed {seed}, {method}'.format(**run))}: "
             f"{html.escape(clusters_shown(run['clusters'], results['clusters_shown']))}</li>"
             for run in results["runs"] if run.get("cluster_page")]
    if links:
        parts += ["<h2>Cluster browsers</h2>", "<ul>" + "".join(links) + "</ul>"]
    parts.append(f"<p class=\"muted\">{results['wall_seconds']:.0f} s wall on {html.escape(results['machine'])}; "
                 f"settings in results.json.</p>")
    return write_text_atomic(out / "report.html",
                             html.page("xdc demo: cross-modal deep clustering on synthetic data", "\n".join(parts)))


def clusters_shown(metrics: dict, most: int) -> str:
    """'video: 6 of 12 clusters shown, ...': a browser shows the `most` purest non-empty clusters."""
    return ", ".join(f"{m}: {min(most, c['num_clusters'] - c['empty_clusters'])} of {c['num_clusters']} "
                     f"clusters shown" for m, c in metrics.items()) + " (the purest)"
