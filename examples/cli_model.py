"""Your network and your training step in ``entk-al run`` (``--model`` / ``--train``).

Run::

    entk-al run --model examples/cli_model.py:SmallCNN --train examples/cli_model.py:fit --rounds 5

``SmallCNN(input_shape, num_classes, width=None)`` is built by the run (``width=`` is passed
only with ``--width``); ``fit`` replaces the built-in SGD recipe each round: cross-entropy,
random one-pixel shifts and AdamW, with mini-batches drawn from the run's seeded generator so
that the run is reproducible and ``--resume`` continues it exactly. Both specs are stored in
``config.json``. The contracts: docs/api.md, "Your model and your training in entk-al run".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SmallCNN(nn.Module):
    """conv(w) -> ReLU -> conv(2w) -> ReLU -> 2×2 average pool -> linear head, for (C, H, W) images."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int | None = None):
        super().__init__()
        w = width or 16
        self.features = nn.Sequential(nn.Conv2d(input_shape[0], w, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                      nn.Flatten())
        self.head = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator, config,
        device: torch.device) -> nn.Module:
    """One round of training: AdamW on cross-entropy with random shifts, ``config.epochs`` passes
    or ``config.min_steps`` steps, whichever is more (20 labels make one batch per epoch, so the
    step floor is what trains a small labeled set, as in the built-in recipe)."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    model.train()
    steps, epoch = 0, 0
    while epoch < max(1, config.epochs) or steps < config.min_steps:
        for idx in torch.randperm(len(x), generator=generator).split(config.batch_size):
            dx, dy = torch.randint(-1, 2, (2,), generator=generator).tolist()
            xb = torch.roll(x[idx], shifts=(dx, dy), dims=(2, 3)).to(device)
            loss = F.cross_entropy(model(xb), y[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
        epoch += 1
    return model
