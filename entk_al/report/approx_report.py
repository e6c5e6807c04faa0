"""Figures and the terminal table of ``entk-al approx`` (results layer over :mod:`entk_al.report.approx`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..fileio import atomic_write
from ..text import printable
from .approx import width_label

LABELS = {"error_pntk": "pNTK ⊗ I", "error_first_logit": "first logit ⊗ I", "error_trace": "trace ⊗ I",
          "error_random_logit": "random logit ⊗ I", "offdiag_share": "off-diagonal share"}


def _checkpoint_name(n: int) -> str:
    return "init" if n == 0 else f"{n} labels"


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_width(result: dict, path: str | Path, title: str = "") -> bool:
    """Relative kernel error vs readout width at init (log-log), with a 1/√width guide through the
    first pNTK point and the fitted slopes in the legend. False (nothing drawn) with < 2 widths.

    Args:
        result: the dict returned by :func:`entk_al.report.approx.run_approx`.
        path: PNG file to write (atomically).
        title: figure title.
    """
    init = [r for r in result["records"] if r["checkpoint"] == 0 and r["width"] is not None]
    if len({r["width"] for r in init}) < 2:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    w = np.array([r["width"] for r in init], dtype=float)
    fits = result["fits"].get("0", {})
    for key, style in zip(LABELS, ("o-", "s--", "^--", "v:", "d-.")):
        y = np.array([r["distance"][key] for r in init])
        spread = np.array([r["distance_spread"][key] for r in init])
        slope = fits.get(key, {}).get("slope", math.nan)
        ax.errorbar(w, y, yerr=spread / 2, fmt=style, ms=4, capsize=2,
                    label=f"{LABELS[key]} (slope {slope:.2f})")
    y0 = init[0]["distance"]["error_pntk"]
    ax.plot(w, y0 * np.sqrt(w[0] / w), color="gray", lw=1, ls=":", label="1/√width guide")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(w, [str(int(v)) for v in w])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xlabel("readout width")
    ax.set_ylabel("‖k⊗I − eNTK‖_F / ‖eNTK‖_F")
    ax.set_title(title or "kernel error at init", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    _save(fig, Path(path))
    return True


def plot_training(result: dict, path: str | Path, title: str = "") -> None:
    """pNTK ⊗ I error and off-diagonal share over the checkpoints, one line per width.

    Args:
        result: the dict returned by :func:`entk_al.report.approx.run_approx`.
        path: PNG file to write (atomically).
        title: figure title.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    cps = list(dict.fromkeys(r["checkpoint"] for r in result["records"]))
    for width in dict.fromkeys(r["width"] for r in result["records"]):
        rows = {r["checkpoint"]: r for r in result["records"] if r["width"] == width}
        for ax, key in zip(axes, ("error_pntk", "offdiag_share")):
            ax.plot(range(len(cps)), [rows[c]["distance"][key] for c in cps], marker="o",
                    label=f"width {width_label(width)}")
    for ax, key in zip(axes, ("error_pntk", "offdiag_share")):
        ax.set_xticks(range(len(cps)), [_checkpoint_name(c) for c in cps])
        ax.set_xlabel("checkpoint (trained on)")
        ax.set_ylabel(LABELS[key] + (" rel. error" if key != "offdiag_share" else ""))
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle(title or "kernel error over training", fontsize=9)
    _save(fig, Path(path))


def plot_regression(result: dict, path: str | Path, title: str = "") -> None:
    """Kernel-regression test accuracy with pNTK ⊗ I against the eNTK (y = x line), plain and
    linearized (prior = network outputs), one marker per checkpoint.

    Args:
        result: the dict returned by :func:`entk_al.report.approx.run_approx`.
        path: PNG file to write (atomically).
        title: figure title.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    markers = "osD^v<>p*"
    cps = list(dict.fromkeys(r["checkpoint"] for r in result["records"]))
    for ax, key, name in zip(axes, ("kernel_regression", "linearized"),
                             ("kernel regression (prior 0)", "linearized network (prior f)")):
        for c, mk in zip(cps, markers):
            rows = [r for r in result["records"] if r["checkpoint"] == c]
            ax.scatter([100 * r[key]["accuracy_entk"] for r in rows], [100 * r[key]["accuracy_pntk"] for r in rows],
                       marker=mk, label=_checkpoint_name(c))
            for r in rows:
                ax.annotate(width_label(r["width"]), (100 * r[key]["accuracy_entk"], 100 * r[key]["accuracy_pntk"]),
                            fontsize=6, xytext=(3, 2), textcoords="offset points")
        lo, hi = ax.get_xlim()
        lo, hi = min(lo, ax.get_ylim()[0]), max(hi, ax.get_ylim()[1])
        ax.plot([lo, hi], [lo, hi], color="gray", lw=1, ls=":")
        ax.set_xlabel("test accuracy with eNTK (%)")
        ax.set_ylabel("test accuracy with pNTK ⊗ I (%)")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or "kernel regression: pNTK vs eNTK (labels = width)", fontsize=9)
    _save(fig, Path(path))


def write_figures(result: dict, out: Path, title: str) -> list[Path]:
    """Draw all figures into ``out``; returns the paths written.

    Args:
        result: the dict returned by :func:`entk_al.report.approx.run_approx`.
        out: output folder.
        title: title shared by the figures.
    """
    paths = []
    title = printable(title)  # it names the dataset, which may be a path
    if plot_width(result, out / "approx_width.png", f"{title}: error at init"):
        paths.append(out / "approx_width.png")
    plot_training(result, out / "approx_training.png", f"{title}: error over training")
    plot_regression(result, out / "approx_regression.png", f"{title}: kernel regression")
    return paths + [out / "approx_training.png", out / "approx_regression.png"]


def tables(result: dict):
    """rich Tables: kernel distance per width × checkpoint; spectrum and regression; linearized vs
    trained network (init rows); cost per width; parameter-subset kernels (``--kernel-params``).

    Args:
        result: the dict returned by :func:`entk_al.report.approx.run_approx`.
    """
    from rich.markup import escape
    from rich.table import Table

    s = result["settings"]
    cp = lambda n: "init" if n == 0 else str(n)  # noqa: E731
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    dataset = escape(printable(s["dataset"]))  # may be a path; rich reads [brackets] as markup
    d_t = Table(title=f"‖k⊗I − eNTK‖_F/‖eNTK‖_F on {dataset} test points (N={s['n_points']}, mean of "
                      f"{s['subsets']} subsets)")
    for col in ("width", "trained on", "net acc %", "pNTK", "first logit", "trace", "rand logit", "off-diag"):
        d_t.add_column(col, justify="right")
    r_t = Table(title=f"spectrum (K on {s['kr_labels']} labels) and regression on {s['eval_size']} test points: "
                      f"pNTK⊗I vs eNTK")
    for col in ("width", "trained on", "λmax Δrel", "cond Δrel", "KR acc eNTK", "KR acc pNTK", "KR agree",
                "lin agree"):
        r_t.add_column(col, justify="right")
    for r in result["records"]:
        d, kr, lin, sp = r["distance"], r["kernel_regression"], r["linearized"], r["spectrum"]
        d_t.add_row(width_label(r["width"]), cp(r["checkpoint"]), pct(r["network_accuracy"]), f"{d['error_pntk']:.3f}",
                    f"{d['error_first_logit']:.3f}", f"{d['error_trace']:.3f}", f"{d['error_random_logit']:.3f}",
                    f"{d['offdiag_share']:.3f}")
        r_t.add_row(width_label(r["width"]), cp(r["checkpoint"]), f"{sp['lambda_max_rel_diff']:+.3f}",
                    f"{sp['cond_rel_diff']:+.3f}", pct(kr["accuracy_entk"]), pct(kr["accuracy_pntk"]),
                    pct(kr["agreement"]), pct(lin["agreement"]))
    lin_rows = [r for r in result["records"] if "rel_error_entk_vs_real" in r["linearized"]]
    l_t = Table(title=f"linearized at init vs the network trained on those {s['kr_labels']} labels "
                      f"(relative output error; argmax agreement %)")
    for col in ("width", "err eNTK-lin", "err pNTK-lin", "err f_init", "agree eNTK", "agree pNTK", "net acc %"):
        l_t.add_column(col, justify="right")
    for r in lin_rows:
        lin = r["linearized"]
        l_t.add_row(width_label(r["width"]), f"{lin['rel_error_entk_vs_real']:.3f}",
                    f"{lin['rel_error_pntk_vs_real']:.3f}",
                    f"{lin['rel_error_init_vs_real']:.3f}", pct(lin["agreement_entk_vs_real"]),
                    pct(lin["agreement_pntk_vs_real"]), pct(lin["real_accuracy"]))
    c = Table(title=f"kernel cost at init (max N within {s['memory_budget_gib']:.1f} GiB)")
    for col in ("width", "N", "pNTK s", "eNTK s", "pNTK MiB", "eNTK MiB", "max N pNTK", "max N eNTK"):
        c.add_column(col, justify="right")
    mib = lambda b: "n/a" if b is None else f"{b / 2**20:.1f}"  # noqa: E731
    for cost in result["cost"]:
        for row in cost["sizes"]:
            c.add_row(width_label(cost["width"]), str(row["n"]), f"{row['pntk_seconds']:.3f}",
                      f"{row['entk_seconds']:.3f}",
                      mib(row["pntk_peak_bytes"]), mib(row["entk_peak_bytes"]),
                      str(cost["largest_n_pntk"]), str(cost["largest_n_entk"]))
    out = [d_t, r_t, *([l_t] if lin_rows else []), c]
    sub_rows = [(r, k) for r in result["records"] for k in r.get("kernel_params", [])]
    if sub_rows:
        k_t = Table(title=f"pNTK over a parameter subset S vs all: ‖K_S−K‖_F/‖K‖_F on N={s['n_points']} (dist; "
                          f"scaled: after the best factor), linearized regression on {s['eval_size']} test points "
                          f"(argmax agreement, accuracy with K_S and K), time of K_S / K")
        for col in ("width", "trained", "subset", "params %", "dist", "scaled", "agree %", "acc S %", "acc %",
                    "time"):
            k_t.add_column(col, justify="right")
        for r, k in sub_rows:
            k_t.add_row(width_label(r["width"]), cp(r["checkpoint"]), escape(printable(k["spec"])),
                        pct(k["num_params"] / k["num_params_all"]), f"{k['rel_distance']:.3f}",
                        f"{k['rel_distance_scaled']:.3f}", pct(k["agreement"]), pct(k["accuracy_subset"]),
                        pct(k["accuracy_all"]), f"{k['time_ratio']:.2f}")
        out.append(k_t)
    return tuple(out)


def slope_line(result: dict) -> str:
    """One sentence with the fitted slopes of log error vs log width at init (pNTK ⊗ I and off-diagonal share).

    Args:
        result: the dict returned by :func:`entk_al.report.approx.run_approx`.
    """
    f = result["fits"].get("0", {})
    slope = f.get("error_pntk", {}).get("slope", math.nan)
    off = f.get("offdiag_share", {}).get("slope", math.nan)
    if math.isnan(slope):
        return "fitted slope at init: needs >= 2 widths and an init checkpoint"
    return (f"fitted slope of log error vs log width at init: pNTK ⊗ I {slope:.2f}, off-diagonal share "
            f"{off:.2f} (theorem: about -0.5)")
