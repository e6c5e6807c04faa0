"""The single-run learning curve, ``curve.png`` (the results layer, after the loop)."""

from __future__ import annotations

from pathlib import Path

from ..fileio import atomic_write
from ..text import printable

#: What a run without a test split shows where a test accuracy would be.
NO_TEST_SPLIT = "no test split"


def accuracy_text(accuracy: float | None, decimals: int = 1) -> str:
    """``"test accuracy 93.1%"`` for a fraction in [0, 1], ``"no test split"`` for None.

    Args:
        accuracy: a round's ``test_accuracy`` (None without a test split).
        decimals: digits after the point of the percentage.
    """
    return NO_TEST_SPLIT if accuracy is None else f"test accuracy {100 * accuracy:.{decimals}f}%"


def plot_curve(records: list[dict], path: str | Path, title: str = "") -> None:
    """Draw test accuracy (%) against the number of labels and save it as PNG atomically.

    A run without a test split (``test_accuracy`` None) gets a figure that says so instead of
    a curve.

    Args:
        records: the run's per-round records (``n_labeled``, ``test_accuracy`` in [0, 1] or None).
        path: the PNG file to write.
        title: figure title (made printable: it may name files).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    n_labeled = [r["n_labeled"] for r in records]
    if any(r["test_accuracy"] is None for r in records):
        last = records[-1]
        ax.text(0.5, 0.5, f"{NO_TEST_SPLIT}: test accuracy not measured\n"
                          f"(rounds 0-{last['round']}, {last['n_labeled']} labels)",
                ha="center", va="center", transform=ax.transAxes, fontsize=9)
        ax.set_axis_off()
    else:
        ax.plot(n_labeled, [100 * r["test_accuracy"] for r in records], marker="o")
        ax.set_xlabel("number of labels")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    ax.set_title(printable(title), fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
