"""Grid summaries: learning curves with 95% CIs, AUBC table, pairwise penalty matrix.

Inputs are run directories (``config.json`` + ``rounds.jsonl`` + ``summary.json``) under one
folder, as written by ``entk-al bench``. Only finished runs (``summary.json`` present) count,
so a partly run grid is summarized on the runs that completed. Runs are grouped by the
``label`` in the ``bench.json`` the grid runner writes (a strategy or protocol variant name),
falling back to config.json's ``strategy`` for runs made by ``entk-al run``.

Statistics:
* AUBC of a run: the mean test accuracy over its rounds (Lüth et al., NeurIPS 2023).
* 95% CI over seeds: Student-t interval mean ± t_{0.975, n−1} · s / √n, s the sample standard
  deviation (ddof 1); undefined (NaN) for n < 2.
* Penalty matrix (Ash et al., ICLR 2020, Sec. 5 "pairwise comparison"): for every setting
  (query size) and every round r ≥ 1 (round 0 precedes any query and is shared), a two-sided
  paired t-test over the seeds both strategies share; when p < 0.05 and strategy i has the
  higher mean accuracy, P[i, j] += 1 / (number of rounds compared in that setting). Row i
  beats column j; a column's mean is how often that strategy is beaten. A pair that never
  shares 2 seeds is NaN (drawn as –): untested, not "never beaten".
* Paired AUBC differences (``paired.csv``, ``paired.png``): seeds are paired across
  strategies (a grid gives every strategy the same run seed at a seed index: the same initial
  set, model initialization and candidate draws before the first query). For each strategy S,
  each reference R (default ``random`` and ``margin`` when present) and query size, over the
  seeds both finished: d_s = AUBC(S, s) − AUBC(R, s); the mean of d, its 95% Student-t
  interval mean ± t_{0.975, n−1} · sd(d) / √n (NaN for n < 2), the two-sided Wilcoxon
  signed-rank p-value (scipy.stats.wilcoxon, zero differences dropped as in Wilcoxon's
  original test; 1.0 when every difference is 0, NaN when n = 0), the same p Holm-adjusted
  within the family of every strategy compared with that reference at that query size
  (``holm_p``; Holm, Scand. J. Statist. 1979: the i-th smallest of m p-values times m − i + 1,
  made monotone, capped at 1; NaN p-values are not counted in m), and wins/ties/losses
  (d > 0 / d = 0 / d < 0). Differences are AUBC fractions (× 100 = percentage points).
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..fileio import atomic_write, read_jsonl, write_text_atomic
from ..run.metrics import aubc
from ..text import printable


@dataclass
class RunResult:
    """One finished run: strategy, query size, seed, and per-round (n_labeled, accuracy);
    ``seed_index`` is the grid's seed index (bench.json) or None for a run outside a grid."""

    strategy: str
    query: int
    seed: int
    n_labeled: np.ndarray
    accuracy: np.ndarray
    seed_index: int | None = None

    @property
    def aubc(self) -> float:
        return aubc(self.accuracy)


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the Student-t half-width of its ``confidence`` interval.

    Args:
        values: 1-D sequence of floats (one per seed).
    Returns:
        (mean, half_width); half_width is NaN when fewer than 2 values.
    """
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size < 2:
        return float(x.mean()), float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, df=x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return float(x.mean()), float(half)


#: Options that must agree between runs plotted together (strategy, seed and query may vary).
SETTING_KEYS = ("dataset", "model", "width", "initial", "rounds", "subset", "retrain", "loss", "epochs",
                "min_steps", "batch_size", "lr", "weight_decay")


def load_runs(runs_dir: str | Path) -> tuple[list[RunResult], int]:
    """Finished runs under ``runs_dir`` (searched recursively) and the count of unfinished ones.

    Raises:
        ConfigError: ``runs_dir`` does not exist or holds no run directory, or a finished run
            has no test split (``test_accuracy`` null: no learning curve to compare).
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ConfigError(f"{runs_dir} is not a folder")
    runs, unfinished, settings = [], 0, {}
    for cfg_path in sorted(runs_dir.rglob("config.json")):
        d = cfg_path.parent
        if not (d / "summary.json").is_file() or not (d / "rounds.jsonl").is_file():
            unfinished += 1
            continue
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError:
            raise ConfigError(f"{cfg_path} is corrupted (not JSON)") from None
        # Curves, CIs and penalties only compare runs of one protocol: same data and budget.
        setting = tuple((k, json.dumps(cfg.get(k), sort_keys=True)) for k in SETTING_KEYS)
        settings.setdefault(setting, d)
        recs = read_jsonl(d / "rounds.jsonl")
        missing = [int(r.get("round", i)) for i, r in enumerate(recs) if r.get("test_accuracy") is None]
        if missing and len(missing) == len(recs):
            raise ConfigError(f"{d}: no test split (test_accuracy is null), so no learning curve to compare; "
                              f"plot runs on a dataset with a test split")
        if missing:
            raise ConfigError(f"{d}: round(s) {', '.join(map(str, missing[:10]))} have no test_accuracy (an "
                              f"ActiveLearner round queried without metrics={{'test_accuracy': ...}}?); a "
                              f"learning curve needs one every round")
        if len(recs) != int(cfg.get("rounds", len(recs) - 1)) + 1:
            # Paired curves, AUBC and penalties assume every run spent the same budget.
            raise ConfigError(f"{d} ended after {len(recs)} of {int(cfg['rounds']) + 1} rounds (a stop rule, see its "
                              f"summary.json); grids compare strategies over one budget: run them with "
                              f"stop_action = \"log\"")
        label, seed_index = _bench_info(d, cfg)
        runs.append(RunResult(strategy=label, query=int(cfg["query"]), seed=int(cfg["seed"]),
                              n_labeled=np.array([r["n_labeled"] for r in recs]),
                              accuracy=np.array([r["test_accuracy"] for r in recs], dtype=np.float64),
                              seed_index=seed_index))
    if len(settings) > 1:
        (a, da), (b, db) = list(settings.items())[:2]
        differ = [k for (k, va), (_, vb) in zip(a, b) if va != vb]
        raise ConfigError(f"{runs_dir} mixes runs made with different settings ({', '.join(differ)} differ, "
                          f"e.g. {da} and {db}); plot each grid's folder separately")
    if not runs and not unfinished:
        raise ConfigError(f"{runs_dir} holds no run directories (config.json + rounds.jsonl)")
    return runs, unfinished


def _bench_info(run_dir: Path, cfg: dict) -> tuple[str, int | None]:
    """The name a run is grouped under (bench.json's ``label`` for variants, else its strategy)
    and its grid seed index (None outside a grid), which names the run folder ``...-seed<index>``."""
    info_path = run_dir / "bench.json"
    label, index = None, None
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError:
            raise ConfigError(f"{info_path} is corrupted (not JSON)") from None
        label, index = info.get("label"), info.get("seed_index")
    label = label if isinstance(label, str) and label else str(cfg["strategy"])
    return label, index if isinstance(index, int) and not isinstance(index, bool) else None


def _groups(runs: list[RunResult]) -> dict[tuple[int, str], list[RunResult]]:
    out: dict[tuple[int, str], list[RunResult]] = defaultdict(list)
    for r in runs:
        out[(r.query, r.strategy)].append(r)
    return dict(sorted(out.items()))


def summary_rows(runs: list[RunResult]) -> list[dict]:
    """Rows of summary.csv: one per run (AUBC, final accuracy; ``seed_index`` the grid's index
    that names the run folder, empty outside a grid), then one ``seed="mean"`` row per
    (strategy, query) with the mean and its 95% t-interval over seeds. Accuracies are
    fractions in [0, 1].

    Args:
        runs: finished runs of the grid.
    """
    rows = []
    for (q, strat), group in _groups(runs).items():
        for r in sorted(group, key=lambda r: r.seed):
            rows.append(dict(strategy=strat, query=q, seed=r.seed,
                             seed_index="" if r.seed_index is None else r.seed_index, n_runs=1, aubc=r.aubc,
                             aubc_ci95_low="", aubc_ci95_high="", final_accuracy=float(r.accuracy[-1]),
                             final_n_labeled=int(r.n_labeled[-1])))
        m, h = mean_ci([r.aubc for r in group])
        fm, _ = mean_ci([r.accuracy[-1] for r in group])
        rows.append(dict(strategy=strat, query=q, seed="mean", seed_index="", n_runs=len(group), aubc=m,
                         aubc_ci95_low=m - h, aubc_ci95_high=m + h, final_accuracy=fm,
                         final_n_labeled=int(group[0].n_labeled[-1])))
    return rows


def write_summary_csv(runs: list[RunResult], path: str | Path) -> None:
    """Write :func:`summary_rows` as ``summary.csv`` (atomically).

    Args:
        runs: finished runs of the grid.
        path: the CSV file.
    """
    rows = summary_rows(runs)
    buf = io.StringIO()
    fields = ["strategy", "query", "seed", "seed_index", "n_runs", "aubc", "aubc_ci95_low", "aubc_ci95_high",
              "final_accuracy", "final_n_labeled"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text_atomic(path, buf.getvalue())


def penalty_matrix(runs: list[RunResult], alpha: float = 0.05) -> tuple[list[str], np.ndarray]:
    """Pairwise penalty matrix (see module docstring).

    Args:
        runs: finished runs of the grid.
        alpha: significance level of each per-round paired test.

    Returns:
        (strategies sorted by name, P (S, S) float64); P[i, j] ∈ [0, number of settings] is the
        summed fraction of rounds in which strategy i significantly beat strategy j; NaN where
        i ≠ j never shared 2 seeds and 2 rounds in any setting (no test was possible: not a 0).
    """
    from scipy import stats

    strategies = sorted({r.strategy for r in runs})
    pos = {s: i for i, s in enumerate(strategies)}
    pen = np.zeros((len(strategies), len(strategies)))
    compared = np.eye(len(strategies), dtype=bool)
    by_query: dict[int, dict[str, dict[int, np.ndarray]]] = defaultdict(lambda: defaultdict(dict))
    for r in runs:
        by_query[r.query][r.strategy][r.seed] = r.accuracy
    for table in by_query.values():
        names = sorted(table)
        for a in names:
            for b in names:
                if a == b:
                    continue
                seeds = sorted(set(table[a]) & set(table[b]))
                if len(seeds) < 2:
                    continue
                xa = np.stack([table[a][s] for s in seeds])
                xb = np.stack([table[b][s] for s in seeds])
                n_rounds = min(xa.shape[1], xb.shape[1])
                if n_rounds < 2:
                    continue
                compared[pos[a], pos[b]] = True
                for t in range(1, n_rounds):
                    diff = xa[:, t] - xb[:, t]
                    if np.all(diff == diff[0]):
                        # Constant differences: the t statistic is ±inf (or undefined if 0).
                        significant = diff[0] != 0
                    else:
                        significant = stats.ttest_rel(xa[:, t], xb[:, t]).pvalue < alpha
                    if significant and diff.mean() > 0:
                        pen[pos[a], pos[b]] += 1.0 / (n_rounds - 1)
    pen[~compared] = np.nan
    return strategies, pen


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curve(group: list[RunResult]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels (T,), mean accuracy % (T,), 95% half-width (T,), 0 where undefined) over the seeds of ``group``."""
    length = min(len(r.accuracy) for r in group)
    acc = np.stack([r.accuracy[:length] for r in group]) * 100
    stats = [mean_ci(acc[:, t]) for t in range(length)]
    return (group[0].n_labeled[:length], np.array([m for m, _ in stats]),
            np.nan_to_num(np.array([h for _, h in stats])))


def plot_curves(runs: list[RunResult], path: str | Path, title: str = "") -> None:
    """Test accuracy (%) against labels: mean ± 95% t-interval over seeds, per strategy, in one panel.

    Args:
        runs: finished runs of the grid.
        path: PNG file to write.
        title: figure title.
    """
    plt = _pyplot()
    groups = _groups(runs)
    queries = sorted({q for q, _ in groups})
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for (q, strat), group in groups.items():
        x, mean, half = _curve(group)
        label = strat if len(queries) == 1 else f"{strat} (q={q})"
        line, = ax.plot(x, mean, marker="o", markersize=3, label=printable(f"{label} (n={len(group)})"),
                        linestyle="-" if strat == "lookahead" else "--" if strat == "random" else "-",
                        linewidth=2.2 if strat == "lookahead" else 1.3)
        # Accuracy is bounded; a t-interval is not, so clip the band to [0, 100].
        ax.fill_between(x, np.clip(mean - half, 0, 100), np.clip(mean + half, 0, 100), alpha=0.15,
                        color=line.get_color())
    ax.set_xlabel("number of labels")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(printable(title) or "mean ± 95% CI over seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def _panel_grid(plt, n: int):
    """A figure of ``n`` small panels, at most 4 a row, shared axes."""
    cols = min(4, n)
    rows = -(-n // cols)
    return plt.subplots(rows, cols, figsize=(2.6 * cols, 2.1 * rows + 0.6), dpi=120, sharex=True, sharey=True,
                        squeeze=False)


def _band_panel(ax, x, low, mean, high, title: str) -> None:
    """One panel: the mean curve and its band."""
    ax.plot(x, mean, marker="o", markersize=2, color="tab:blue", linewidth=1.4)
    ax.fill_between(x, low, high, alpha=0.25, color="tab:blue")
    ax.set_title(printable(title), fontsize=8)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)


def _label_grid(axes, n: int, ylabel: str) -> None:
    """Hide the unused panels; label the bottom row's x axes and the left column's y axes."""
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("number of labels", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)


def plot_curve_panels(runs: list[RunResult], path: str | Path, reference: str | None = None,
                      title: str = "") -> None:
    """Small multiples: one panel per strategy (and query size) with its mean test accuracy (%)
    ± 95% t-interval over seeds, the reference's mean drawn in gray in every panel; shared axes.

    Args:
        runs: finished runs of the grid.
        path: PNG file to write.
        reference: strategy drawn in gray for comparison (None: none).
        title: figure title.
    """
    plt = _pyplot()
    groups = _groups(runs)
    queries = sorted({q for q, _ in groups})
    n = len(groups)
    fig, axes = _panel_grid(plt, n)
    for ax, ((q, strat), group) in zip(axes.flat, groups.items()):
        if reference is not None and (q, reference) in groups and strat != reference:
            rx, rmean, _ = _curve(groups[(q, reference)])
            ax.plot(rx, rmean, color="gray", linestyle="--", linewidth=1.0, label=printable(reference))
            ax.legend(fontsize=6, loc="lower right")
        x, mean, half = _curve(group)
        name = strat if len(queries) == 1 else f"{strat} (q={q})"
        _band_panel(ax, x, np.clip(mean - half, 0, 100), mean, np.clip(mean + half, 0, 100),
                    f"{name} (n={len(group)})")
    _label_grid(axes, n, "test accuracy (%)")
    fig.suptitle(printable(title) or "mean ± 95% CI over seeds, one panel per strategy", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def curve_differences(runs: list[RunResult], reference: str) -> dict[tuple[int, str], tuple]:
    """Per-round paired accuracy differences to ``reference``: for each (query, strategy ≠
    reference) and round t, d_s(t) = acc(S, s, t) − acc(R, s, t) over the seeds both finished,
    in percentage points; its mean and 95% Student-t half-width (0 where undefined, n < 2).

    Args:
        runs: finished runs of the grid.
        reference: the reference strategy's name.

    Returns:
        (query, strategy) -> (labels (T,), mean (T,), half-width (T,), number of paired seeds).
    """
    table: dict[int, dict[str, dict[int, RunResult]]] = defaultdict(lambda: defaultdict(dict))
    for r in runs:
        table[r.query][r.strategy][r.seed] = r
    out = {}
    for q in sorted(table):
        if reference not in table[q]:
            continue
        for strat in sorted(table[q]):
            seeds = sorted(set(table[q][strat]) & set(table[q][reference]))
            if strat == reference or not seeds:
                continue
            length = min(min(len(table[q][s][i].accuracy) for i in seeds) for s in (strat, reference))
            d = np.stack([table[q][strat][i].accuracy[:length] - table[q][reference][i].accuracy[:length]
                          for i in seeds]) * 100
            stats = [mean_ci(d[:, t]) for t in range(length)]
            out[(q, strat)] = (table[q][strat][seeds[0]].n_labeled[:length], np.array([m for m, _ in stats]),
                               np.nan_to_num(np.array([h for _, h in stats])), len(seeds))
    return out


def plot_curve_differences(runs: list[RunResult], path: str | Path, reference: str, title: str = "") -> None:
    """Test accuracy minus the reference's, paired over seeds (:func:`curve_differences`): one
    panel per strategy (and query size), mean ± 95% CI in percentage points, zero line marked.

    Args:
        runs: finished runs of the grid.
        path: PNG file to write.
        reference: the reference strategy.
        title: figure title.

    Raises:
        ConfigError: ``reference`` has no finished run paired with another strategy.
    """
    diffs = curve_differences(runs, reference)
    if not diffs:
        raise ConfigError(f"the difference view needs finished runs of {reference!r} and of another strategy "
                          f"on the same seeds; strategies here: {', '.join(sorted({r.strategy for r in runs}))}")
    plt = _pyplot()
    queries = sorted({q for q, _ in diffs})
    n = len(diffs)
    fig, axes = _panel_grid(plt, n)
    for ax, ((q, strat), (x, mean, half, n_seeds)) in zip(axes.flat, diffs.items()):
        ax.axhline(0.0, color="black", linewidth=0.8)
        name = strat if len(queries) == 1 else f"{strat} (q={q})"
        _band_panel(ax, x, mean - half, mean, mean + half, f"{name} (n={n_seeds})")
    _label_grid(axes, n, printable(f"accuracy − {reference} (points)"))
    fig.suptitle(printable(title) or printable(f"test accuracy minus {reference}'s, paired over seeds: "
                                               f"mean ± 95% CI"), fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def plot_penalty(strategies: list[str], pen: np.ndarray, path: str | Path, title: str = "") -> None:
    """Heat map of the penalty matrix, with the column means (how often each is beaten) below.

    Args:
        strategies: S strategy names (row/column order of ``pen``).
        pen: (S, S) float64 penalty matrix from :func:`penalty_matrix`.
        path: PNG file to write.
        title: figure title.
    """
    plt = _pyplot()
    s = len(strategies)
    top = max(1.0, float(np.nanmax(pen))) if np.isfinite(pen).any() else 1.0
    fig, ax = plt.subplots(figsize=(1.6 + 0.75 * s, 1.6 + 0.75 * s), dpi=120)
    ax.imshow(pen, cmap="viridis", vmin=0.0, vmax=top)
    for i in range(s):
        for j in range(s):
            untested = np.isnan(pen[i, j])
            ax.text(j, i, "–" if untested else f"{pen[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if untested or pen[i, j] >= 0.5 * top else "white")
    names = [printable(n) for n in strategies]
    ax.set_xticks(range(s), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(s), names, fontsize=8)
    means = [("n/a" if np.isnan(col[np.arange(s) != j]).all() else f"{np.nanmean(col):.2f}")
             for j, col in enumerate(pen.T)]
    ax.set_xlabel("column mean (beaten): " + "  ".join(means), fontsize=6)
    ax.set_title(printable(title) or "P[row, col]: fraction of rounds\nrow beats col (paired t, p<0.05)\n"
                 "–: fewer than 2 shared seeds", fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


#: References of paired.csv when none is named: those of these present in the grid.
DEFAULT_REFERENCES = ("random", "margin")

#: What the numbers beside paired.png's rows mean (its default title).
PAIRED_CAPTION = "paired over seeds; W/T/L beside each row: seeds on which it won / tied / lost against the reference"

PAIRED_FIELDS = ["strategy", "reference", "query", "n_seeds", "mean_diff", "ci95_low", "ci95_high",
                 "wilcoxon_p", "holm_p", "wins", "ties", "losses"]


def holm_adjust(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order.

    Args:
        pvalues: m p-values of one family; NaN entries stay NaN and are not counted in m.

    Returns:
        The adjusted p-values: the i-th smallest times (m − i + 1), made non-decreasing in
        that order, capped at 1.
    """
    finite = [i for i, p in enumerate(pvalues) if not np.isnan(p)]
    adjusted = [float("nan")] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(finite, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (len(finite) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def paired_rows(runs: list[RunResult], references: list[str] | tuple[str, ...] | None = None) -> list[dict]:
    """Rows of paired.csv: every strategy against every reference (see the module docstring).

    Args:
        runs: finished runs.
        references: reference strategy names; default: ``random`` and ``margin`` where present.

    Returns:
        One dict per (reference, query, strategy ≠ reference) with the keys of
        :data:`PAIRED_FIELDS`; ordered by reference, query, then mean difference (best first).

    Raises:
        ConfigError: a named reference has no finished run in the grid.
    """
    from scipy import stats

    names = {r.strategy for r in runs}
    if references is None:
        references = [r for r in DEFAULT_REFERENCES if r in names]
    else:
        missing = [r for r in references if r not in names]
        if missing:
            raise ConfigError(f"reference {', '.join(missing)} has no finished run here; "
                              f"strategies: {', '.join(sorted(names))}")
    table: dict[int, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in runs:
        table[r.query][r.strategy][r.seed] = r.aubc
    rows = []
    for ref in references:
        for q in sorted(table):
            if ref not in table[q]:
                continue
            block = []
            for strat in sorted(table[q]):
                if strat == ref:
                    continue
                seeds = sorted(set(table[q][strat]) & set(table[q][ref]))
                d = np.array([table[q][strat][s] - table[q][ref][s] for s in seeds], dtype=np.float64)
                mean, half = mean_ci(d)
                if d.size == 0:
                    p = float("nan")
                elif not np.any(d != 0):
                    p = 1.0
                else:
                    p = float(stats.wilcoxon(d).pvalue)
                block.append(dict(strategy=strat, reference=ref, query=q, n_seeds=int(d.size), mean_diff=mean,
                                  ci95_low=mean - half, ci95_high=mean + half, wilcoxon_p=p,
                                  wins=int((d > 0).sum()), ties=int((d == 0).sum()), losses=int((d < 0).sum())))
            for row, holm in zip(block, holm_adjust([row["wilcoxon_p"] for row in block])):
                row["holm_p"] = holm
            rows += sorted(block, key=lambda row: -row["mean_diff"] if row["n_seeds"] else np.inf)
    return rows


def write_paired_csv(rows: list[dict], path: str | Path) -> None:
    """Write the paired AUBC comparison rows as ``paired.csv`` (atomically).

    Args:
        rows: one dict per (reference, strategy, query) comparison.
        path: the CSV file.
    """
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=PAIRED_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text_atomic(path, buf.getvalue())


def plot_paired(rows: list[dict], path: str | Path, title: str = "") -> None:
    """One panel per reference: mean paired AUBC difference (points) with its 95% t-interval.

    Args:
        rows: paired comparison rows (as written to ``paired.csv``).
        path: PNG file to write.
        title: figure title.
    """
    plt = _pyplot()
    refs = list(dict.fromkeys(r["reference"] for r in rows))
    height = max(len([r for r in rows if r["reference"] == ref]) for ref in refs)
    fig, axes = plt.subplots(1, len(refs), figsize=(4.2 * len(refs), 1.2 + 0.35 * height), dpi=120,
                             squeeze=False)
    for ax, ref in zip(axes[0], refs):
        mine = [r for r in rows if r["reference"] == ref][::-1]
        labels = [r["strategy"] if len({x["query"] for x in rows}) == 1 else f"{r['strategy']} (q={r['query']})"
                  for r in mine]
        y = np.arange(len(mine))
        mean = np.array([r["mean_diff"] for r in mine]) * 100
        low = np.array([r["ci95_low"] for r in mine]) * 100
        high = np.array([r["ci95_high"] for r in mine]) * 100
        err = np.nan_to_num(np.stack([mean - low, high - mean]))
        colors = ["tab:green" if lo > 0 else "tab:red" if hi < 0 else "tab:gray" for lo, hi in zip(low, high)]
        for i, color in enumerate(colors):
            ax.errorbar(mean[i], y[i], xerr=err[:, i:i + 1], fmt="o", color=color, ecolor=color, capsize=3,
                        markersize=4)
        for yi, r in zip(y, mine):
            ax.annotate(f"{r['wins']}/{r['ties']}/{r['losses']}", (1.0, yi), xycoords=("axes fraction", "data"),
                        xytext=(3, 0), textcoords="offset points", va="center", fontsize=6)
        # The numbers beside the rows get a column heading: they are seed counts, not a panel.
        ax.annotate("seeds\nW/T/L", (1.0, 1.0), xycoords="axes fraction", xytext=(3, 2), textcoords="offset points",
                    va="bottom", ha="left", fontsize=6)
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_yticks(y, [printable(lab) for lab in labels], fontsize=7)
        ax.set_xlabel(printable(f"AUBC − {ref} (points), mean ± 95% CI"), fontsize=8)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(printable(title) or PAIRED_CAPTION, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


#: Views of the learning curves (``entk-al plot --view``) and the file each writes.
CURVE_VIEWS = {"overlay": "curves.png", "panels": "curves_panels.png", "difference": "curves_difference.png"}


def plot_runs(runs_dir: str | Path, out_dir: str | Path | None = None,
              references: list[str] | None = None, views: list[str] | tuple[str, ...] = ("overlay",)) -> list[Path]:
    """Write the learning curves (``curves.png`` and the other ``views``), ``summary.csv`` and
    ``penalty.png`` for the finished runs, and ``paired.csv`` / ``paired.png`` when the grid
    holds a reference strategy.

    Args:
        references: references of the paired comparison; default ``random`` and ``margin``
            where present (no paired files when neither is). The first is also the reference
            of the ``panels`` and ``difference`` views.
        runs_dir: folder holding one sub-folder per run.
        out_dir: where the files go (default: ``runs_dir``).
        views: learning-curve figures (:data:`CURVE_VIEWS`): ``overlay`` (every strategy in one
            panel, ``curves.png``), ``panels`` (small multiples, one panel per strategy with the
            reference in gray, ``curves_panels.png``), ``difference`` (accuracy minus the
            reference's, paired over seeds, ``curves_difference.png``).

    Raises:
        ConfigError: no run directory, none finished, a named reference not in the grid, an
            unknown view, or the difference view without a reference.
    """
    unknown = [v for v in views if v not in CURVE_VIEWS]
    if unknown:
        raise ConfigError(f"unknown view {', '.join(unknown)}; choose from {', '.join(CURVE_VIEWS)}")
    runs_dir = Path(runs_dir)
    out_dir = Path(out_dir) if out_dir is not None else runs_dir
    runs, unfinished = load_runs(runs_dir)
    if not runs:
        raise ConfigError(f"{runs_dir}: none of its {unfinished} runs has finished yet; nothing to plot")
    note = f" ({unfinished} unfinished runs left out)" if unfinished else ""
    strategies, pen = penalty_matrix(runs)  # computed first: a failure writes no file at all
    paired = paired_rows(runs, references)
    names = {r.strategy for r in runs}
    reference = (references or [r for r in DEFAULT_REFERENCES if r in names] or [None])[0]
    if "difference" in views and (reference is None or not curve_differences(runs, reference)):
        raise ConfigError(f"the difference view needs a reference strategy with runs on the same seeds as "
                          f"another: pass --reference NAME (strategies here: {', '.join(sorted(names))})")
    paths = []
    for view in [v for v in CURVE_VIEWS if v in views]:
        path = out_dir / CURVE_VIEWS[view]
        if view == "overlay":
            plot_curves(runs, path, title=f"{runs_dir.name}: mean ± 95% CI over seeds{note}")
        elif view == "panels":
            plot_curve_panels(runs, path, reference, title=f"{runs_dir.name}: mean ± 95% CI over seeds{note}"
                              + (f"; gray: {reference}" if reference else ""))
        else:
            plot_curve_differences(runs, path, reference, title=f"{runs_dir.name}: test accuracy minus "
                                   f"{reference}'s, paired over seeds, mean ± 95% CI{note}")
        paths.append(path)
    paths += [out_dir / "summary.csv", out_dir / "penalty.png"]
    write_summary_csv(runs, paths[-2])
    plot_penalty(strategies, pen, paths[-1])
    if paired:
        paths += [out_dir / "paired.csv", out_dir / "paired.png"]
        write_paired_csv(paired, paths[-2])
        plot_paired(paired, paths[-1], title=f"{runs_dir.name}: paired AUBC differences over seeds{note}; "
                                             f"W/T/L beside each row: seeds won / tied / lost against the reference")
    return paths
