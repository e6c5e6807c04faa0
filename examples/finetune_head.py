"""Fine-tuning a head on a frozen backbone, with a look-ahead over what is really trained.

A torchvision ``resnet18`` (``weights=None`` here, so that nothing is downloaded; load your
pretrained weights in practice) has every parameter frozen (``requires_grad = False``) except
its ``fc`` head, which a plain PyTorch loop trains with cross-entropy. The look-ahead
linearizes the network in the parameters that training moves: ``kernel_params="trainable"``
(the default; ``"last:1"`` or ``"fc."`` name the same head) gives the pNTK of the head alone,
i.e. the features' inner products, at a fraction of the cost of the full-network kernel
(``entk-al approx --kernel-params`` measures how far the two are apart).

Run::

    python examples/finetune_head.py            # digits upscaled to 3×32×32, 3 rounds
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import entk_al


def digits_32(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` scikit-learn digits as (n, 3, 32, 32) float32 images in [0, 1], and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    ids = np.random.default_rng(seed).permutation(len(d.images))[:n]
    x = torch.from_numpy(d.images[ids] / 16.0).float()[:, None]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return x, d.target[ids].astype(np.int64)


def frozen_resnet18(num_classes: int = 10) -> nn.Module:
    """torchvision resnet18 with a new ``fc`` head; everything but ``fc`` frozen."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=num_classes)  # weights="DEFAULT" for the pretrained ones
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("fc."))
    return model


def train_head(model: nn.Module, x: torch.Tensor, y: np.ndarray, *, steps: int, seed: int) -> None:
    """The user's loop: only ``fc`` is optimized; the backbone stays in eval mode (BatchNorm statistics fixed)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.fc.parameters(), lr=1e-2)
    yt = torch.as_tensor(y)
    model.eval()
    model.fc.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (min(32, len(x)),), generator=gen)
        loss = F.cross_entropy(model(x[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def main(small: bool = False, seed: int = 0, rounds: int = 3, kernel_params: str = "trainable") -> list[dict]:
    """``rounds`` rounds of: train the head -> look-ahead query over the head's kernel -> label.

    Args:
        small: 120 pool images, 60 test images and short training (what the test suite runs).
        seed: seed of everything random.
        rounds: query rounds.
        kernel_params: the look-ahead's kernel parameters (``trainable``, ``last:1``, ``fc.``, ``all``).

    Returns:
        one dict per round: ``round``, ``n_labeled``, ``test_accuracy``, ``queried``, ``kernel_seconds``.
    """
    n_pool, n_test = (120, 60) if small else (1200, 597)
    x, y = digits_32(n_pool + n_test, seed)
    pool, x_test, y_test = x[:n_pool], x[n_pool:], y[n_pool:]
    truth = y[:n_pool]
    first = np.random.default_rng(seed + 1).choice(n_pool, 20, replace=False)
    learner = entk_al.ActiveLearner(pool, strategy="lookahead", options={"kernel_params": kernel_params},
                                    seed=seed, labeled_ids=first, labels=truth[first])
    model, history = frozen_resnet18(), []
    for r in range(rounds):
        train_head(model, pool[learner.labeled_ids], learner.labels, steps=20 if small else 200, seed=seed + r)
        with torch.no_grad():
            acc = float((model(x_test).argmax(1).numpy() == y_test).mean())
        q = learner.query(model, k=5 if small else 20, metrics={"test_accuracy": acc})
        history.append({"round": r, "n_labeled": len(learner.labeled_ids), "test_accuracy": acc,
                        "queried": q.ids.tolist(), "kernel_seconds": q.kernel_seconds,
                        "kernel_params": q.info.get("kernel_params", "trainable")})
        print(f"round {r}: {len(learner.labeled_ids)} labels, test accuracy {100 * acc:.1f}%, picked "
              f"{q.ids.tolist()} (kernel over {history[-1]['kernel_params']}: {q.kernel_seconds:.2f} s)")
        learner.add_labels(q.ids, truth[q.ids])  # your annotators' answers
    return history


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="a small pool and short training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kernel-params", default="trainable", help="trainable | last:1 | fc. | all")
    args = ap.parse_args()
    main(small=args.small, seed=args.seed, kernel_params=args.kernel_params)
