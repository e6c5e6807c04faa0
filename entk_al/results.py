"""The single-run learning curve, ``curve.png`` (the results layer, after the loop)."""

from __future__ import annotations

from pathlib import Path

from .fileio import atomic_write
from .text import printable


def plot_curve(records: list[dict], path: str | Path, title: str = "") -> None:
    """Draw test accuracy (%) against the number of labels and save it as PNG atomically.

    Args:
        records: the run's per-round records (``n_labeled``, ``test_accuracy`` in [0, 1]).
        path: the PNG file to write.
        title: figure title (made printable: it may name files).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot([r["n_labeled"] for r in records], [100 * r["test_accuracy"] for r in records], marker="o")
    ax.set_xlabel("number of labels")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(printable(title), fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)

