"""Grid summaries against hand computations: AUBC, t-intervals, the penalty matrix."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from entk_al.errors import ConfigError
from entk_al.fileio import write_json, write_jsonl
from entk_al.report.plot import load_runs, mean_ci, penalty_matrix, plot_runs

# Student-t 97.5% quantiles from printed tables (df = 1, 2, 4).
T975 = {1: 12.706, 2: 4.303, 4: 2.776}


def make_run(root: Path, strategy: str, seed: int, accs: list[float], query: int = 10, finished: bool = True):
    d = root / f"{strategy}-q{query}-seed{seed}"
    write_json(d / "config.json", {"strategy": strategy, "seed": seed, "query": query})
    write_jsonl(d / "rounds.jsonl", [{"round": i, "n_labeled": 20 + query * i, "test_accuracy": a}
                                     for i, a in enumerate(accs)])
    if finished:
        write_json(d / "summary.json", {"rounds": len(accs)})


def test_mean_ci_hand_computed():
    m, h = mean_ci([0.5, 0.6, 0.7])
    assert m == pytest.approx(0.6)
    assert h == pytest.approx(T975[2] * 0.1 / math.sqrt(3), rel=1e-3)  # s = 0.1
    m, h = mean_ci([0.2, 0.4])
    assert h == pytest.approx(T975[1] * math.sqrt(0.02) / math.sqrt(2), rel=1e-3)
    assert math.isnan(mean_ci([0.3])[1])


def test_summary_csv_aubc_and_ci(tmp_path):
    make_run(tmp_path, "a", 0, [0.5, 0.7, 0.9])   # AUBC 0.7
    make_run(tmp_path, "a", 1, [0.5, 0.6, 0.7])   # AUBC 0.6
    make_run(tmp_path, "a", 2, [0.5, 0.8, 0.8])   # AUBC 0.7
    make_run(tmp_path, "b", 0, [0.5, 0.5, 0.5])
    make_run(tmp_path, "b", 1, [0.4, 0.5, 0.6], finished=False)  # left out
    paths = plot_runs(tmp_path)
    assert [p.name for p in paths] == ["curves.png", "summary.csv", "penalty.png"]
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    a_rows = {r["seed"]: r for r in rows if r["strategy"] == "a"}
    assert float(a_rows["0"]["aubc"]) == pytest.approx(0.7, abs=1e-6)
    assert float(a_rows["1"]["aubc"]) == pytest.approx(0.6, abs=1e-6)
    mean = a_rows["mean"]
    aubcs = [0.7, 0.6, 0.7]
    s = math.sqrt(sum((x - 2 / 3) ** 2 for x in aubcs) / 2)
    half = T975[2] * s / math.sqrt(3)
    assert float(mean["aubc"]) == pytest.approx(2 / 3, abs=1e-6)
    assert float(mean["aubc_ci95_low"]) == pytest.approx(2 / 3 - half, abs=2e-4)
    assert float(mean["aubc_ci95_high"]) == pytest.approx(2 / 3 + half, abs=2e-4)
    assert int(mean["n_runs"]) == 3
    b_rows = [r for r in rows if r["strategy"] == "b"]
    assert [r["seed"] for r in b_rows] == ["0", "mean"] and b_rows[1]["aubc_ci95_low"] == "nan"
    assert {r["seed_index"] for r in rows} == {""}  # runs outside a grid have no seed index


def test_summary_csv_names_the_grid_seed_index(tmp_path):
    # a grid run's seed is derived from (base_seed, index); the index is what names its folder
    for index, seed in ((0, 1650423692), (1, 2003167257)):
        make_run(tmp_path, "a", seed, [0.5, 0.6 + index / 10])
        write_json(tmp_path / f"a-q10-seed{seed}" / "bench.json", {"label": "a", "seed_index": index})
    plot_runs(tmp_path)
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [(r["seed"], r["seed_index"]) for r in rows] == [("1650423692", "0"), ("2003167257", "1"),
                                                            ("mean", "")]
    for name in ("curves.png", "penalty.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_penalty_matrix_hand_case(tmp_path):
    # 'good' beats 'bad' at both query rounds by 0.10, 0.11, 0.12 on the three seeds:
    # paired t = 0.11 / (0.01/√3) ≈ 19 (p ≈ 0.003) -> P[good, bad] = 1.
    # 'noisy' differs from 'bad' by +0.1, −0.1, +0.05: t ≈ 0.3, not significant -> 0.
    base = {0: 0.50, 1: 0.55, 2: 0.60}
    for seed, b in base.items():
        make_run(tmp_path, "bad", seed, [0.4, b, b])
        make_run(tmp_path, "good", seed, [0.4, b + 0.10 + 0.01 * seed, b + 0.10 + 0.01 * seed])
        noise = [0.1, -0.1, 0.05][seed]
        make_run(tmp_path, "noisy", seed, [0.4, b + noise, b + noise])
    runs, unfinished = load_runs(tmp_path)
    names, pen = penalty_matrix(runs)
    assert names == ["bad", "good", "noisy"] and unfinished == 0
    p = dict(zip(names, range(3)))
    assert pen[p["good"], p["bad"]] == pytest.approx(1.0)
    assert pen[p["bad"], p["good"]] == 0.0
    assert pen[p["noisy"], p["bad"]] == 0.0 and pen[p["bad"], p["noisy"]] == 0.0
    assert np.all(np.diag(pen) == 0)


def test_penalty_with_one_seed_is_untested_not_zero(tmp_path):
    """One seed per strategy allows no paired t-test: the matrix says so (NaN, drawn as –)
    instead of 0, which read as "never beaten" although x beat y in every round."""
    make_run(tmp_path, "x", 0, [0.4, 0.6, 0.7])
    make_run(tmp_path, "y", 0, [0.4, 0.5, 0.5])
    names, pen = penalty_matrix(load_runs(tmp_path)[0])
    assert np.isnan(pen[0, 1]) and np.isnan(pen[1, 0]) and np.all(np.diag(pen) == 0)
    plot_runs(tmp_path)
    assert (tmp_path / "penalty.png").stat().st_size > 0


def test_penalty_counts_fraction_of_rounds(tmp_path):
    # 'x' beats 'y' significantly in round 2 only, of rounds 1..2 -> 0.5.
    for seed in range(3):
        make_run(tmp_path, "y", seed, [0.4, 0.5 + 0.01 * seed, 0.5])
        make_run(tmp_path, "x", seed, [0.4, 0.5 + 0.01 * seed, 0.6 + 0.01 * seed])
    names, pen = penalty_matrix(load_runs(tmp_path)[0])
    assert pen[names.index("x"), names.index("y")] == pytest.approx(0.5)


def test_plot_errors(tmp_path):
    with pytest.raises(ConfigError):
        plot_runs(tmp_path / "missing")
    with pytest.raises(ConfigError):
        plot_runs(tmp_path)  # no runs at all
    make_run(tmp_path, "a", 0, [0.5], finished=False)
    with pytest.raises(ConfigError, match="finished"):
        plot_runs(tmp_path)


def test_mixed_settings_refused_before_writing(tmp_path):
    """Runs of different protocols in one folder: a clear error and no output files."""

    from entk_al.errors import ConfigError
    from entk_al.report.plot import plot_runs

    for name, initial in (("a", 10), ("b", 20)):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"strategy": "random", "query": 5, "seed": 0,
                                                   "dataset": "digits", "initial": initial}))
        (d / "rounds.jsonl").write_text(json.dumps({"n_labeled": initial, "test_accuracy": 0.5}) + "\n")
        (d / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="initial differ"):
        plot_runs(tmp_path)
    assert not list(tmp_path.glob("*.png")) and not (tmp_path / "summary.csv").exists()


def paired_grid(root: Path) -> dict[str, np.ndarray]:
    """Random, margin and two strategies on 6 seeds; AUBC differences constructed by hand.

    Every run is a flat curve of 4 evaluations at a known level, so its AUBC is that level;
    'tie' equals random on two seeds. Returns each strategy's per-seed AUBC (seed order).
    """
    rng = np.random.default_rng(7)
    random_ = 0.70 + 0.02 * rng.random(6)
    levels = {"random": random_,
              "margin": random_ + np.array([0.010, 0.012, 0.004, 0.020, 0.008, 0.015]),
              "good": random_ + np.array([0.031, 0.022, 0.027, 0.018, 0.040, 0.025]),
              "tie": random_ + np.array([0.0, 0.0, 0.005, -0.010, 0.003, -0.002])}
    for name, lv in levels.items():
        for seed, a in enumerate(lv):
            # The same level at every round, but not all rounds equal: AUBC is still the mean.
            make_run(root, name, 100 + seed, [a - 0.01, a + 0.01, a - 0.005, a + 0.005])
    return levels


def test_paired_csv_against_numpy_and_scipy(tmp_path):
    from scipy import stats

    levels = paired_grid(tmp_path)
    make_run(tmp_path, "good", 999, [0.9, 0.9, 0.9, 0.9])  # a seed no reference has: not paired
    paths = plot_runs(tmp_path)
    assert [p.name for p in paths][3:] == ["paired.csv", "paired.png"] and paths[4].stat().st_size > 0
    rows = list(csv.DictReader((tmp_path / "paired.csv").open()))
    assert {r["reference"] for r in rows} == {"random", "margin"}
    assert len(rows) == 6  # 3 strategies against each of 2 references
    for row in rows:
        d = levels[row["strategy"]] - levels[row["reference"]]
        n = d.size
        half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n)
        assert int(row["n_seeds"]) == n == 6
        assert float(row["mean_diff"]) == pytest.approx(d.mean(), abs=2e-6)
        assert float(row["ci95_low"]) == pytest.approx(d.mean() - half, abs=2e-6)
        assert float(row["ci95_high"]) == pytest.approx(d.mean() + half, abs=2e-6)
        nonzero = d[np.abs(d) > 1e-12]
        assert float(row["wilcoxon_p"]) == pytest.approx(stats.wilcoxon(nonzero).pvalue, abs=2e-6)
        assert (int(row["wins"]), int(row["ties"]), int(row["losses"])) == (
            int((d > 1e-12).sum()), int((np.abs(d) <= 1e-12).sum()), int((d < -1e-12).sum()))
    good = next(r for r in rows if r["strategy"] == "good" and r["reference"] == "random")
    assert (good["wins"], good["losses"]) == ("6", "0") and float(good["ci95_low"]) > 0
    assert float(good["wilcoxon_p"]) == pytest.approx(2 / 2**6)  # exact: all 6 signs positive
    tie = next(r for r in rows if r["strategy"] == "tie" and r["reference"] == "random")
    assert (tie["wins"], tie["ties"], tie["losses"]) == ("2", "2", "2")
    # Rows are ordered best first within a reference.
    order = [r["strategy"] for r in rows if r["reference"] == "random"]
    assert order == ["good", "margin", "tie"]
    # Holm within each reference's family of 3, by hand: sorted p times 3, 2, 1, kept monotone.
    for ref in ("random", "margin"):
        fam = sorted((float(r["wilcoxon_p"]), float(r["holm_p"])) for r in rows if r["reference"] == ref)
        by_hand, running = [], 0.0
        for rank, (p, _) in enumerate(fam):
            running = max(running, min(1.0, (3 - rank) * p))
            by_hand.append(running)
        assert [h for _, h in fam] == pytest.approx(by_hand, abs=2e-6)


def test_holm_adjust_on_a_known_family():
    """Holm (1979) on p = (0.01, 0.04, 0.03, 0.005): 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06,
    0.04·1 = 0.04 → raised to 0.06 (step-down monotone); NaN is left out of m."""
    from entk_al.report.plot import holm_adjust

    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm_adjust([0.2, float("nan"), 0.5])
    assert out[0] == pytest.approx(0.4) and np.isnan(out[1]) and out[2] == pytest.approx(0.5)
    assert holm_adjust([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_paired_reference_option_and_errors(tmp_path, capsys):
    paired_grid(tmp_path)
    code, err = run_plot([str(tmp_path), "--reference", "tie"], capsys)
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "paired.csv").open()))
    assert {r["reference"] for r in rows} == {"tie"} and len(rows) == 3
    code, err = run_plot([str(tmp_path), "--reference", "bald"], capsys)
    assert code == 2 and "reference bald has no finished run" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def run_plot(args, capsys):
    """``entk-al plot ARGS`` in-process through the console entry point: (exit code, stderr)."""
    from entk_al.cli import main

    with pytest.raises(SystemExit) as ex:
        main(["plot", *args])
    return ex.value.code, capsys.readouterr().err


def test_all_zero_differences_give_p_one(tmp_path):
    for seed in range(3):
        make_run(tmp_path, "random", seed, [0.5, 0.6])
        make_run(tmp_path, "same", seed, [0.5, 0.6])
    rows = list(csv.DictReader((tmp_path / "paired.csv").open())) if plot_runs(tmp_path) else []
    assert rows[0]["wilcoxon_p"] == "1.000000" and rows[0]["ties"] == "3" and float(rows[0]["mean_diff"]) == 0.0


class FigureSpy:
    """matplotlib.pyplot with ``close`` recording the figure, so a test can read what was drawn."""

    def __init__(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt, self.figures = plt, []

    def __getattr__(self, name):
        return getattr(self.plt, name)

    def close(self, fig=None):
        self.figures.append(fig)
        self.plt.close(fig)

    @staticmethod
    def texts(fig) -> list[str]:
        import matplotlib.text

        return [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_text()]


def test_curve_views_difference_against_hand_computed_pairs(tmp_path, capsys):
    """Issue 19, item 13: eight overlapping bands are hard to read; `--view panels` draws one
    panel per strategy, `--view difference` the paired accuracy difference to the reference."""
    from scipy import stats

    from entk_al.report.plot import curve_differences

    rng = np.random.default_rng(3)
    acc = {name: 0.5 + 0.3 * rng.random((4, 3)) for name in ("random", "a", "b")}
    for name, table in acc.items():
        for seed in range(4):
            make_run(tmp_path, name, 10 + seed, table[seed].tolist())
    make_run(tmp_path, "a", 99, [0.9, 0.9, 0.9])  # no random run on seed 99: not paired
    diffs = curve_differences(load_runs(tmp_path)[0], "random")
    assert sorted(diffs) == [(10, "a"), (10, "b")]
    for name in ("a", "b"):
        x, mean, half, n = diffs[(10, name)]
        d = (acc[name] - acc["random"]) * 100
        assert n == 4 and x.tolist() == [20, 30, 40]
        np.testing.assert_allclose(mean, d.mean(axis=0), atol=1e-9)
        np.testing.assert_allclose(half, stats.t.ppf(0.975, 3) * d.std(axis=0, ddof=1) / 2, atol=1e-9)
    code, err = run_plot([str(tmp_path), "--view", "panels", "--view", "difference"], capsys)
    assert code == 0, err
    assert (tmp_path / "curves_panels.png").stat().st_size > 0 and (tmp_path / "curves_difference.png").exists()
    assert not (tmp_path / "curves.png").exists()  # only the views asked for
    code, err = run_plot([str(tmp_path), "--view", "spaghetti"], capsys)
    assert code == 2 and "unknown view spaghetti" in err
    code, err = run_plot([str(tmp_path), "--view", "difference", "--reference", "nope"], capsys)
    assert code == 2 and err.count("\n") == 1


def test_difference_view_needs_a_reference(tmp_path, capsys):
    for seed in range(2):
        make_run(tmp_path, "a", seed, [0.5, 0.6])
        make_run(tmp_path, "b", seed, [0.5, 0.7])
    code, err = run_plot([str(tmp_path), "--view", "difference"], capsys)
    assert code == 2 and "--reference" in err and not list(tmp_path.glob("*.png"))
    code, err = run_plot([str(tmp_path), "--view", "difference", "--reference", "a"], capsys)
    assert code == 0, err


def test_paired_png_says_what_the_numbers_beside_the_rows_are(tmp_path, monkeypatch):
    """`right: wins/ties/losses` read as "the right panel"; the counts get a column heading and
    the caption says they are seeds won / tied / lost against the reference."""
    import entk_al.report.plot as plot

    spy = FigureSpy()
    monkeypatch.setattr(plot, "_pyplot", lambda: spy)
    paired_grid(tmp_path)
    plot_runs(tmp_path)
    texts = FigureSpy.texts(spy.figures[-1])  # paired.png, drawn last
    assert not any("right:" in t for t in texts), texts
    assert texts.count("seeds\nW/T/L") == 2  # one heading per reference panel
    assert any("W/T/L beside each row: seeds won / tied / lost against the reference" in t for t in texts)
    assert "6/0/0" in texts


def test_fidelity_png_explains_f_l_and_the_control(tmp_path, monkeypatch):
    import matplotlib.pyplot

    from entk_al.report.fidelity import plot_fidelity

    figures = []
    monkeypatch.setattr(matplotlib.pyplot, "close", lambda fig=None: figures.append(fig))
    result = {"predicted_change": [1.0, 2.0, 3.0], "real_change": [1.1, 2.2, 2.9], "real_change_vs_control": [1, 2, 3],
              "spearman": 1.0, "spearman_vs_control": 1.0}
    plot_fidelity(result, tmp_path / "fidelity.png")
    texts = " ".join(FigureSpy.texts(figures[0]))
    assert "f_L, the model trained on L" in texts and "control retrained on L alone" in texts
    assert "same steps and mini-batch seed" in texts and "drift" in texts  # the caption
    assert (tmp_path / "fidelity.png").stat().st_size > 0
