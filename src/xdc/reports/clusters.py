"""`xdc clusters RUN_DIR [--labels manifest.csv] --out DIR`: what the clusters of a pretraining run hold.

For each modality's clusters of one iteration (`iterations/NN/labels_{video,audio}.npy`, aligned
with `RUN_DIR/rows.csv`), against the true labels of a manifest (matched by the manifest's `id`
column, so labels of the originals fit a run on `xdc prepare` copies; else by file path), or
without labels (the self-supervised case: cluster sizes and NMI with the previous iteration):
- `clusters_<modality>.md`: top and bottom 10 clusters ranked by purity, each with its 5 most
  frequent labels and their share of the cluster (the paper's Tables 6-7 format);
- `clusters_<modality>.csv`: every non-empty cluster;
- `metrics.json`: `{"video": {purity, nmi, ari, accuracy, num_clusters, empty_clusters, ...},
  "audio": {...}}` (accuracy = Hungarian accuracy), written last: the report is finished when it is there;
- `index.html`: the run's cluster statistics per iteration as a plot, then per cluster (ranked by
  purity, or by size without labels) a few member clips as frame strips with their audio in a
  player and as a spectrogram over the same time span; the media are written under `assets/`,
  linked by relative paths.
Rows without a true label count in cluster sizes but not in the label metrics; rows the run could
not cluster (label -1) are counted as `num_unclustered` and left out of both.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import numpy as np

from xdc.clustering.metrics import ari, cluster_sizes_summary, hungarian_accuracy, nmi, per_cluster_purity, purity
from xdc.config import ConfigError, DataConfig, PretrainConfig, load_config
from xdc.data.manifest import class_indices, read_manifest
from xdc.errors import XdcError
from xdc.files import disk_full_names, write_text_atomic
from xdc.models.device import MODALITIES
from xdc.progress import progress
from xdc.reports import html, plots
from xdc.training.run_folder import RunFolder

TABLE_ROWS = 10  # top and bottom clusters in the Markdown tables, as the paper's Tables 6-7
THUMB_FRAMES = 4  # frames in a member's strip, spread over its window
THUMB_SECONDS = 4.0  # at most this much of the video (and its audio) per member
THUMB_SHORT_SIDE = 72


class ReportError(XdcError, ValueError):
    """The run folder or the labels cannot make a report."""


def find_iteration(run_dir: Path, iteration: int | None = None) -> int:
    """The iteration asked for, or the last one that holds cluster labels."""
    run = RunFolder(run_dir)
    found = [n for n in run.iterations() if any(run.iteration_dir(n).glob("labels_*.npy"))]
    if not found:
        raise ReportError(f"{run_dir} has no iterations/NN/labels_*.npy: is it a `xdc pretrain` run folder?")
    if iteration is None:
        iteration = max(found)
    if iteration not in found:
        raise ReportError(f"iteration {iteration} not in {run.root / 'iterations'} "
                          f"(found {', '.join(map(str, found))})")
    return iteration


def true_labels(rows: list[dict], labels_manifest: str | Path | None) -> list[str | None]:
    """Each run row's class name: from the labels manifest (matched by `id`, else by resolved
    path), else the row's own `label`."""
    if labels_manifest is None:
        return [row.get("label") for row in rows]
    # Only the labels are needed: rows whose file has gone since still name their video.
    labelled = read_manifest(labels_manifest, drop_missing=True)
    by_id = {r["id"]: r.get("label") for r in labelled if r.get("id")}
    conflicting = sorted({r["id"] for r in labelled if r.get("id") and r.get("label") != by_id[r["id"]]})
    if conflicting:  # which label is true cannot be told: every purity would be made up
        shown = ", ".join(conflicting[:5]) + (f" and {len(conflicting) - 5} more" if len(conflicting) > 5 else "")
        raise ReportError(f"{labels_manifest}: {len(conflicting)} id(s) appear on several rows with different "
                          f"labels ({shown}): keep one label per id")
    by_path = {str(Path(r["path"]).resolve()): r.get("label") for r in labelled}
    return [by_id[row["id"]] if row.get("id") in by_id else by_path.get(str(Path(row["path"]).resolve()))
            for row in rows]


def num_clusters_of(run_dir: Path, iteration: int, modality: str, clusters: np.ndarray) -> int:
    """k from summary.json (it counts empty clusters too), else one past the largest id."""
    summary = RunFolder(run_dir).summary
    if summary.is_file():
        try:
            records = json.loads(summary.read_text()).get("iterations", [])
        except (ValueError, AttributeError) as err:
            raise ReportError(f"cannot read {summary}: {err} (not a summary written by xdc pretrain)") from err
        for record in records:
            if record.get("iteration") == iteration and modality in record:
                return int(record[modality]["num_clusters"])
    return int(clusters.max()) + 1


def modality_report(clusters: np.ndarray, names: list[str | None], k: int,
                    previous: np.ndarray | None = None) -> tuple[dict, list[dict]]:
    """(metrics, ranked cluster rows) of one modality's clustering; `previous`: the previous
    iteration's clusters (for `nmi_prev`). Without labels clusters are ranked by size."""
    classes, indices = class_indices([n for n in names if n is not None])
    truth = np.full(len(names), -1, np.int64)  # -1: a row without a true label
    truth[[i for i, n in enumerate(names) if n is not None]] = indices
    sizes = cluster_sizes_summary(clusters, k)
    metrics = {"num_clusters": sizes["num_clusters"], "empty_clusters": sizes["empty_clusters"],
               "sizes": {key: sizes[key] for key in ("min", "median", "max")},
               "num_items": int(len(clusters)), "num_unclustered": int((clusters < 0).sum()),
               "num_labelled": int((truth >= 0).sum()),
               "num_classes": len(classes),
               "nmi_prev": None if previous is None else nmi(clusters, previous)}
    if not classes:
        sizes = np.bincount(clusters[clusters >= 0], minlength=k)
        order = sorted(np.flatnonzero(sizes), key=lambda c: (-sizes[c], c))
        ranked = [{"rank": rank, "cluster": int(c), "size": int(sizes[c]), "purity": None, "top": []}
                  for rank, c in enumerate(order, start=1)]
        return {**metrics, "purity": None, "nmi": None, "ari": None, "accuracy": None}, ranked
    metrics.update(purity=purity(clusters, truth), nmi=nmi(clusters, truth), ari=ari(clusters, truth),
                   accuracy=hungarian_accuracy(clusters, truth))
    return metrics, per_cluster_purity(clusters, truth, classes, top=5)


def iteration_scores(run: RunFolder, names: list[str | None]) -> dict[str, list[tuple[int, float]]]:
    """Per modality, (iteration, score) points of NMI with the previous iteration's clusters and,
    with labels, purity and NMI against them: do the clusters settle, and on what?"""
    classes = {n: i for i, n in enumerate(sorted({n for n in names if n is not None}))}
    truth = np.array([classes.get(n, -1) for n in names], np.int64)
    curves: dict[str, list[tuple[int, float]]] = {}
    for modality in MODALITIES:
        previous = None
        for n in run.iterations():
            path = run.labels(n, modality)
            if not path.is_file():
                continue
            clusters = run.read_labels(n, modality)
            if len(clusters) != len(names):
                continue  # said by the report itself when it is the iteration reported
            if previous is not None:
                curves.setdefault(f"{modality} NMI with previous", []).append((n, nmi(clusters, previous)))
            if classes and (clusters >= 0).any():
                curves.setdefault(f"{modality} purity", []).append((n, purity(clusters, truth)))
                curves.setdefault(f"{modality} NMI with labels", []).append((n, nmi(clusters, truth)))
            previous = clusters
    return curves


def _concepts(row: dict, cell=str) -> str:
    """A cluster's most frequent labels with their shares, each label written by `cell`."""
    return ", ".join(f"{cell(name)}({share:.2f})" for name, share in row["top"])


def _cell(text: str) -> str:
    """A label as Markdown table cell text: `|` would end the cell and a newline the row; HTML in
    a label (Markdown renders it) is shown as text."""
    text = html.escape(str(text)).replace("\\", "\\\\").replace("|", "\\|")
    return " ".join(text.splitlines())


def _purity(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown_table(ranked: list[dict], modality: str, rows: int = TABLE_ROWS) -> str:
    """Top and bottom `rows` clusters ranked by purity, as the paper's Tables 6-7 (by size without labels)."""
    shown = ranked if len(ranked) <= 2 * rows else ranked[:rows] + ranked[-rows:]
    lines = [f"# {modality} clusters: top and bottom {rows} by purity", "",
             "| # | cluster | size | purity | 5 most frequent labels (share) |", "|---|---|---|---|---|"]
    for i, row in enumerate(shown):
        if i == rows and len(ranked) > 2 * rows:
            lines.append("| … | | | | |")
        lines.append(f"| {row['rank']} | {row['cluster']} | {row['size']} | {_purity(row['purity'])} | "
                     f"{_concepts(row, _cell)} |")
    return "\n".join(lines) + "\n"


def write_cluster_csv(ranked: list[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "cluster", "size", "purity"] + [f"label{i}" for i in range(1, 6)]
                        + [f"share{i}" for i in range(1, 6)])
        for row in ranked:
            names = [n for n, _ in row["top"]] + [""] * (5 - len(row["top"]))
            shares = [f"{s:.4f}" for _, s in row["top"]] + [""] * (5 - len(row["top"]))
            shown = "" if row["purity"] is None else f"{row['purity']:.4f}"
            writer.writerow([row["rank"], row["cluster"], row["size"], shown] + names + shares)


# ------------------------------------------------------------------------------- media assets

def thumbnail_config(data: DataConfig, duration: float | None) -> DataConfig:
    """A few frames spread over (up to) THUMB_SECONDS, and the audio of the same window."""
    window = min(THUMB_SECONDS, duration) if duration else THUMB_SECONDS
    window = max(window, 0.25)
    return replace(data, frames=THUMB_FRAMES, fps=THUMB_FRAMES / window, short_side=THUMB_SHORT_SIDE,
                   crop=THUMB_SHORT_SIDE, audio_seconds=window)


def member_assets(row: dict, index: int, data: DataConfig, assets: Path) -> dict:
    """Frame strip, WAV and spectrogram of one row's middle window; a note instead when it cannot
    be decoded (the page says why rather than the report failing). The member's file is linked by
    its path relative to the report (`assets.parent`), so a moved or shared folder still works."""
    from xdc.data.audio import LogMel
    from xdc.data.decode import DecodeError, decode_clip

    cfg = thumbnail_config(data, row.get("duration"))
    start = max(0.0, ((row.get("duration") or 0.0) - cfg.clip_seconds) / 2)
    href = os.path.relpath(Path(row["path"]).resolve(), assets.parent.resolve())
    out = {"name": row.get("id") or Path(row["path"]).name, "href": quote(Path(href).as_posix()),
           "seconds": cfg.clip_seconds}
    try:
        clip = decode_clip(row["path"], start, cfg, with_audio=bool(row.get("has_audio")))
    except DecodeError as err:
        out["note"] = f"could not decode: {err.what}"
        return out
    out["strip"] = html.write_strip(clip.video, assets / f"{index:06d}.jpg").relative_to(assets.parent).as_posix()
    if clip.audio is None:
        out["note"] = "no audio"
        return out
    out["wav"] = html.write_wav(clip.audio, cfg.sample_rate, assets / f"{index:06d}.wav").relative_to(assets.parent).as_posix()
    logmel = LogMel(cfg.sample_rate, cfg.n_mels, cfg.win_ms, cfg.hop_ms, normalize="none")(clip.audio)
    out["spectrogram"] = html.write_spectrogram(logmel[0].numpy(), assets / f"{index:06d}_mel.png").relative_to(assets.parent).as_posix()
    return out


def pick_members(clusters: np.ndarray, cluster: int, count: int) -> list[int]:
    """Up to `count` members of `cluster`, drawn at random (seeded by the cluster id), in row order."""
    members = np.flatnonzero(clusters == cluster)
    if len(members) > count:
        members = np.random.default_rng(cluster).choice(members, count, replace=False)
    return sorted(int(i) for i in members)


def cluster_section(modality: str, metrics: dict, ranked: list[dict], members: dict[int, list[int]],
                    assets: dict[int, dict], names: list[str | None]) -> str:
    shown = {k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in metrics.items() if k != "sizes"}
    parts = [f'<h2 id="{modality}">{modality} clusters</h2>',
             html.table(list(shown), [list(shown.values())]),
             f'<p>Tables: <a href="clusters_{modality}.md">Markdown (top/bottom 10)</a>, '
             f'<a href="clusters_{modality}.csv">CSV (all)</a>. Clusters ranked by '
             f'{"size (no labels)" if metrics.get("purity") is None else "purity"}.</p>']
    for row in ranked:
        if row["cluster"] not in members:
            continue
        cards = []
        for i in members[row["cluster"]]:
            media = assets.get(i, {})
            name = html.link(media["href"], media["name"]) if "href" in media else ""
            bits = [f"<div>{name} · {html.escape(names[i] or 'no label')}</div>"]
            if "strip" in media:
                bits.append(html.image_tag(media["strip"], f"frames of {media['name']}"))
            if "wav" in media:
                bits.append(html.image_tag(media["spectrogram"], f"log-mel spectrogram of {media['name']}",
                                            "spectrogram"))
            if "strip" in media:  # frames and spectrogram span the same window, at the same width
                bits.append(html.time_axis(media["seconds"]))
            if "wav" in media:
                bits.append(html.audio_tag(media["wav"]))
            if "note" in media:
                bits.append(f'<div class="muted">{html.escape(media["note"])}</div>')
            cards.append(f'<div class="member">{"".join(bits)}</div>')
        what = (f'{row["size"]} members' if row["purity"] is None else
                f'{row["size"]} labelled members · purity {row["purity"]:.2f}')
        parts.append(f'<div class="cluster" id="{modality}-{row["cluster"]}">'
                     f'<h3>#{row["rank"]} · cluster {row["cluster"]} · {what}</h3>'
                     f'<div>{html.escape(_concepts(row))}</div>'
                     f'<div class="members">{"".join(cards)}</div></div>')
    return "\n".join(parts)


# ------------------------------------------------------------------------------------- report

def _row_labels(run: RunFolder, iteration: int, modality: str, num_rows: int) -> np.ndarray:
    """An iteration's labels, one per row of rows.csv (ReportError otherwise)."""
    labels = run.read_labels(iteration, modality)
    if len(labels) != num_rows:
        raise ReportError(f"{run.labels(iteration, modality)} has {len(labels)} labels but rows.csv has "
                          f"{num_rows} rows")
    return labels


def cluster_report(run_dir: str | Path, out_dir: str | Path, labels_manifest: str | Path | None = None,
                   iteration: int | None = None, clips_per_cluster: int = 3,
                   max_clusters: int | None = None, media: bool = True) -> dict:
    """Write the tables, metrics.json and index.html; returns the metrics. A full disk is
    DiskFullError naming `out_dir`."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run = RunFolder(run_dir)
    iteration = find_iteration(run_dir, iteration)
    if not run.rows.is_file():
        raise ReportError(f"{run.rows} not found: the labels cannot be matched to files")
    rows = read_manifest(run.rows)
    names = true_labels(rows, labels_manifest)
    if labels_manifest is not None and all(n is None for n in names):
        raise ReportError(f"no row of the run matches a labelled row of {labels_manifest} (by id or "
                          f"path): is it the manifest these videos were scanned into?")
    data = DataConfig()
    if run.config.is_file():
        try:
            data = load_config(run.config, schema=PretrainConfig).data
        except ConfigError as err:
            print(f"warning: {err}; thumbnails use the default data settings")
    with disk_full_names(out_dir):  # a full disk: one line naming the report folder
        out_dir.mkdir(parents=True, exist_ok=True)

        metrics, sections, reports = {}, [], {}
        for modality in MODALITIES:
            path = run.labels(iteration, modality)
            if not path.is_file():
                continue
            clusters = _row_labels(run, iteration, modality, len(rows))
            k = num_clusters_of(run_dir, iteration, modality, clusters)
            before = run.labels(iteration - 1, modality)
            previous = _row_labels(run, iteration - 1, modality, len(rows)) \
                if iteration and before.is_file() else None
            metrics[modality], ranked = modality_report(clusters, names, k, previous)
            metrics[modality]["iteration"] = iteration
            (out_dir / f"clusters_{modality}.md").write_text(markdown_table(ranked, modality), encoding="utf-8")
            write_cluster_csv(ranked, out_dir / f"clusters_{modality}.csv")
            shown = ranked if max_clusters is None else ranked[:max_clusters]
            reports[modality] = (ranked, {r["cluster"]: pick_members(clusters, r["cluster"], clips_per_cluster)
                                          for r in shown})

        assets: dict[int, dict] = {}
        if media:
            needed = sorted({i for _, members in reports.values() for ids in members.values() for i in ids})
            for i in progress(needed, desc="cluster media", unit="clip"):
                assets[i] = member_assets(rows[i], i, data, out_dir / "assets")
        for modality, (ranked, members) in reports.items():
            sections.append(cluster_section(modality, metrics[modality], ranked, members, assets, names))
        nav = "<nav>" + "".join(f'<a href="#{m}">{m}</a>' for m in reports) + \
              '<a href="metrics.json">metrics.json</a></nav>'
        curves = iteration_scores(run, names)
        if curves:
            plots.save(plots.line_plot(curves, "iteration", "score", "clusters per iteration"),
                       out_dir / "iterations.png")
            nav += "\n" + html.image_tag("iterations.png", "cluster statistics per iteration", "plot")
        title = f"Clusters of {run_dir.name}, iteration {iteration}"
        page = html.page(title, nav + "\n" + "\n".join(sections))
        (out_dir / "index.html").write_text(page, encoding="utf-8")
        # Last and whole: a folder with metrics.json holds a finished report (the experiment runner
        # reuses it; a report killed before this is made again).
        write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="a `xdc pretrain` run folder")
    parser.add_argument("--labels", metavar="MANIFEST", help="manifest with a label column, matched on its id "
                        "column (else by path), e.g. the one `xdc scan --labels-from-dirs` wrote before `xdc prepare` "
                        "(default: rows.csv's own labels; none at all: the browser and label-free statistics)")
    parser.add_argument("-o", "--out", required=True, metavar="OUT",
                        help="output folder: index.html, metrics.json, tables")
    parser.add_argument("--iteration", type=int, metavar="N", help="iteration to report (default: the last)")
    parser.add_argument("--clips", type=int, default=3, metavar="N", help="member clips shown per cluster")
    parser.add_argument("--max-clusters", type=int, metavar="N",
                        help="show media for the first N clusters of the ranking only: the purest (the largest "
                        "without labels) (default: all)")
    parser.add_argument("--no-media", action="store_true", help="tables and metrics only, no decoding")


def run(args: argparse.Namespace) -> int:
    metrics = cluster_report(args.run_dir, args.out, args.labels, args.iteration, args.clips,
                             args.max_clusters, media=not args.no_media)
    for modality, m in metrics.items():
        if m["purity"] is None:
            print(f"{modality}: {m['num_clusters']} clusters ({m['empty_clusters']} empty), no labels")
            continue
        print(f"{modality}: purity {m['purity']:.3f}  NMI {m['nmi']:.3f}  ARI {m['ari']:.3f}  "
              f"accuracy {m['accuracy']:.3f}  {m['num_clusters']} clusters ({m['empty_clusters']} empty)")
    print(f"wrote {Path(args.out) / 'index.html'}")
    return 0
