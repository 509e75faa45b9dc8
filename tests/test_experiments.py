"""xdc.experiments.summary: the numbers over seeds (means, XDC's paired differences with a
t-interval, chance) and the one table they make (xdc.reports.experiment). The runner itself runs in
tests/test_demo.py (in-process) and tests/test_benchmarks.py (the project's commands)."""

from __future__ import annotations

import math

import pytest
from scipy.stats import t

from xdc.experiments.summary import aggregate, chance, comparisons, paired_difference
from xdc.reports.experiment import markdown_table, table_text


def piece(method: str, seed: int, top1: float, recall: float | None = None) -> dict:
    """A runner record with linear and retrieval scores (the same for both modalities)."""
    probes = {"linear": {m: {"top1_video": top1} for m in ("video", "audio")}}
    if recall is not None:
        probes["retrieval"] = {m: {"recall@1": recall} for m in ("video", "audio")}
    return {"method": method, "seed": seed, "seconds": 10.0, "probes": probes}


def test_paired_difference_is_a_t_interval_and_claims_only_with_five_seeds():
    differences = [0.10, 0.20, 0.15, 0.12, 0.18]
    result = paired_difference([0, 1, 2, 3, 4], differences)
    half = t.ppf(0.975, 4) * (sum((d - 0.15) ** 2 for d in differences) / 4) ** 0.5 / math.sqrt(5)
    assert result["mean"] == pytest.approx(0.15)
    assert result["interval"] == pytest.approx([0.15 - half, 0.15 + half])
    assert result["beats"]  # above 0, 5 seeds
    assert not paired_difference([0, 1, 2, 3], differences[:4])["beats"]  # above 0, but 4 seeds
    assert not paired_difference([0, 1, 2, 3, 4], [0.3, -0.2, 0.1, 0.0, 0.05])["beats"]  # 0 inside
    one = paired_difference([0], [0.4])
    assert one["interval"] is None and not one["beats"] and one["mean"] == pytest.approx(0.4)


def test_comparisons_pair_the_methods_by_seed():
    # Seed 1 is easier for both: paired, XDC is ahead by exactly 0.1 each time (no spread); a
    # comparison of the two means would see two widely spread groups. Seed 2 has no RAND run.
    runs = [piece("xdc", 0, 0.5), piece("xdc", 1, 0.9), piece("xdc", 2, 0.1),
            piece("rand", 0, 0.4), piece("rand", 1, 0.8)]
    result = comparisons(runs, ["rand", "xdc"], ["linear", "retrieval"])
    video = result["xdc_minus_rand"]["linear"]["video"]
    assert video["seeds"] == [0, 1] and video["differences"] == pytest.approx([0.1, 0.1])
    assert video["interval"] == pytest.approx([0.1, 0.1])
    assert "retrieval" not in result["xdc_minus_rand"]  # not run: not compared
    assert comparisons(runs, ["rand"], ["linear"]) == {}  # no XDC, nothing to compare with


def test_aggregate_means_over_seeds_and_chance():
    runs = [piece("rand", 0, 0.20, 0.30), piece("rand", 1, 0.22, 0.34), piece("xdc", 0, 0.4, 0.5)]
    table = aggregate(runs, ["scratch", "rand", "xdc"], ["linear", "retrieval"])
    assert list(table) == ["rand", "xdc"]  # methods without runs are left out
    assert table["rand"]["seeds"] == [0, 1]
    assert table["rand"]["probes"]["retrieval"]["audio"] == pytest.approx([0.32, 0.02 * math.sqrt(2)])
    assert table["xdc"]["probes"]["linear"]["video"] == [0.4, 0.0]
    assert chance(["a", "a", "b", "c"]) == {"classes": 3, "test_videos": 4, "chance": 1 / 3, "majority": 0.5}


def test_table_shows_chance_spread_and_the_verdict():
    runs = [piece(m, seed, top1) for seed in range(5)
            for m, top1 in (("rand", 0.2 + 0.01 * seed), ("xdc", 0.5 + 0.02 * seed))]
    methods, probes = ["rand", "xdc"], ["linear"]
    results = {"methods": methods, "seeds": list(range(5)), "probes": probes, "runs": runs,
               "chance": chance(["0", "1", "1", "1"]), "rule": "the rule",
               "table": aggregate(runs, methods, probes), "comparisons": comparisons(runs, methods, probes)}
    text = table_text(results, "header")
    assert text.startswith("header\n")
    assert "| xdc " in text and "0.540 ± 0.032" in text
    assert "| chance (1/2)   |         0.500 |" in text and "| majority class |         0.750 |" in text
    assert "5 seeds (0, 1, 2, 3, 4); mean ± std over seeds" in text
    assert "Comparisons: the rule." in text and "| XDC − RAND |" in text
    assert "+0.320 [+0.300, +0.340] beats" in text


def test_markdown_table_reads_as_plain_text():
    text = markdown_table(["method", "score"], [["a", "0.5"], ["longer name", "0.25"]])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1  # columns line up
    assert lines[1] == "|-------------|------:|" and lines[3] == "| longer name |  0.25 |"


def test_budget_curve_pairs_each_iterations_probe_and_counts_epochs():
    """Per probed iteration: epochs trained by its end, each method's score, XDC − each method
    paired by seed; printed under the table (summary.budget_curve)."""
    from xdc.experiments.summary import budget_curve

    def trained(method, seed, scores):  # iteration -> linear top1 (both modalities); 3 epochs each
        record = piece(method, seed, scores[max(scores)])
        record["pretrain_summary"] = [{"epochs": 3} for _ in range(max(scores) + 1)]
        record["budget"] = {str(i): {m: {"top1_video": s} for m in ("video", "audio")} for i, s in scores.items()}
        return record

    runs = [trained("xdc", seed, {0: 0.20 + 0.01 * seed, 2: 0.40 + 0.01 * seed}) for seed in range(5)]
    runs += [trained("rand", seed, {0: 0.20, 2: 0.20}) for seed in range(5)]
    runs += [piece("scratch", seed, 0.1) for seed in range(5)]  # no pretraining: not on the curve
    methods = ["scratch", "rand", "xdc"]
    curve = budget_curve(runs, methods, (0, 2))
    assert [p["iteration"] for p in curve] == [0, 2] and [p["epochs"] for p in curve] == [3, 9]
    assert list(curve[1]["methods"]) == ["rand", "xdc"]
    assert curve[1]["methods"]["xdc"]["video"][0] == pytest.approx(0.42)
    gap = [p["comparisons"]["xdc_minus_rand"]["linear"]["audio"] for p in curve]
    assert gap[0]["mean"] == pytest.approx(0.02) and gap[1]["mean"] == pytest.approx(0.22) and gap[1]["beats"]
    assert curve[0]["comparisons"]["xdc_minus_scratch"] == {}
    results = {"methods": methods, "seeds": list(range(5)), "probes": ["linear"], "runs": runs,
               "chance": chance(["0", "1"]), "rule": "the rule", "table": aggregate(runs, methods, ["linear"]),
               "comparisons": comparisons(runs, methods, ["linear"]), "budget": curve}
    text = table_text(results, "header")
    assert "Budget curve" in text and "video XDC − RAND" in text
    assert "XDC − SCRATCH" not in text.split("Budget curve")[1]  # scratch has no iterations
    row = [line for line in text.split("Budget curve")[1].splitlines() if line.startswith("| 2 ")][0]
    assert row.split("|")[2].strip() == "9" and "+0.220 [+0.200, +0.240] beats" in row


def test_claim_takes_a_new_or_same_folder_and_refuses_others(tmp_path):
    """runner.claim: a new or empty folder, or one stamped with the same settings; other settings
    and a folder of someone else's files are refused (their pieces would be reused as ours)."""
    from xdc.experiments.runner import ExperimentError, claim
    from xdc.stamps import SettingsMismatch

    claim(tmp_path / "new", {"a": 1})
    claim(tmp_path / "new", {"a": 1, "seeds": [0]}, ignore=("seeds",))
    with pytest.raises(SettingsMismatch, match=r"\(a: 1 there, 2 asked;"):
        claim(tmp_path / "new", {"a": 2})
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    with pytest.raises(ExperimentError, match="holds files but no settings.json"):
        claim(tmp_path / "theirs", {"a": 1})
    (tmp_path / "empty").mkdir()
    claim(tmp_path / "empty", {"a": 1})
