"""entk-al from your own training loop: your network, your training, your images on disk.

The pool is a plain ``torch.utils.data.Dataset`` that reads PNG files lazily by index (here:
the scikit-learn digits written to a temporary folder); the network is trained by an ordinary
PyTorch loop (cross-entropy, random-shift augmentation, AdamW) that entk-al never sees. Each
round, :class:`entk_al.ActiveLearner` asks the NTK look-ahead which images to label next;
the labels come from the files' ground truth here, from your annotators in practice
(``oracle=LabelStudioOracle(...)``, docs/api.md).

Run::

    python examples/own_training_loop.py --out runs/own-loop      # then: entk-al plot runs/own-loop
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import entk_al


class PngFolder(torch.utils.data.Dataset):
    """Grayscale PNGs read from disk when an item is asked for: item i -> ((1, H, W) float32 in [0, 1], label)."""

    def __init__(self, files: list[Path], labels: np.ndarray):
        self.files, self.targets = files, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.files[i]) as im:
            x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)[None]
        return x, int(self.targets[i])


def write_digits(folder: Path, ids: np.ndarray) -> tuple[list[Path], np.ndarray]:
    """scikit-learn digits ``ids`` as 8×8 PNG files; returns (files, labels)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    files = []
    for i in ids.tolist():
        path = folder / f"{i:05d}.png"
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(path)
        files.append(path)
    return files, digits.target[ids].astype(np.int64)


class Net(nn.Module):
    """A small CNN for (1, 8, 8) images: any nn.Module mapping inputs to logits works."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Labeled(torch.utils.data.Dataset):
    """The labeled part of the pool with the learner's labels (your annotators', not the files')."""

    def __init__(self, pool: torch.utils.data.Dataset, ids: np.ndarray, labels: np.ndarray):
        self.pool, self.ids, self.labels = pool, ids, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, int]:
        return self.pool[int(self.ids[j])][0], int(self.labels[j])


def train(model: nn.Module, pool: torch.utils.data.Dataset, ids: np.ndarray, labels: np.ndarray, *,
          epochs: int, seed: int) -> None:
    """An ordinary PyTorch loop: DataLoader, random one-pixel shifts, AdamW, cross-entropy."""
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(Labeled(pool, ids, labels), batch_size=32, shuffle=True, generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
            x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))  # augmentation
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, dataset: torch.utils.data.Dataset, ids: np.ndarray) -> float:
    x = torch.stack([dataset[int(i)][0] for i in ids])
    y = torch.tensor([dataset[int(i)][1] for i in ids])
    return float((model(x).argmax(1) == y).double().mean())


def main(small: bool = False, out: str | Path | None = None, seed: int = 0, rounds: int = 3) -> list[dict]:
    """Three rounds of: train (your loop) -> query (entk-al) -> label (here: the ground truth).

    Args:
        small: a 300-image pool, 200 test images and short training (seconds; what the test suite runs).
        out: run folder in ``entk-al run``'s format (``entk-al plot OUT``), or None.
        seed: seed of everything random.
        rounds: query rounds.

    Returns:
        one dict per round: ``round``, ``n_labeled``, ``test_accuracy``, ``queried`` (pool ids).
    """
    torch.manual_seed(seed)
    n_pool, n_test = (300, 200) if small else (1400, 397)
    order = np.random.default_rng(seed).permutation(1797)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "pool").mkdir()
        (Path(tmp) / "test").mkdir()
        pool = PngFolder(*write_digits(Path(tmp) / "pool", order[:n_pool]))
        test = PngFolder(*write_digits(Path(tmp) / "test", order[n_pool:n_pool + n_test]))
        first = np.random.default_rng(seed + 1).choice(n_pool, 20, replace=False)
        learner = entk_al.ActiveLearner(pool, strategy="lookahead", out=out, seed=seed, name="digits-png",
                                        labeled_ids=first, labels=pool.targets[first])
        model, history = Net(), []
        for r in range(rounds):
            train(model, pool, learner.labeled_ids, learner.labels, epochs=40 if small else 60, seed=seed + r)
            acc = accuracy(model, test, np.arange(len(test)))
            q = learner.query(model, k=5 if small else 10, metrics={"test_accuracy": acc})
            history.append({"round": r, "n_labeled": len(learner.labeled_ids), "test_accuracy": acc,
                            "queried": q.ids.tolist()})
            print(f"round {r}: {len(learner.labeled_ids)} labels, test accuracy {100 * acc:.1f}%, "
                  f"look-ahead picked {q.ids.tolist()} ({q.select_seconds:.1f} s)")
            learner.add_labels(q.ids, pool.targets[q.ids])  # your annotators' answers
    return history


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="run folder (entk-al plot reads it)")
    ap.add_argument("--small", action="store_true", help="a small pool and short training")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    main(small=args.small, out=args.out, seed=args.seed)
