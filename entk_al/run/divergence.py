"""What a diverged round's error says: the suspects, likelier first, and what was kept."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import CHECKPOINT
from .config import RunConfig, model_default

#: Labeled inputs above this magnitude are named as the first suspect of a diverged round.
HUGE_INPUT = 1e4


def divergence_message(cfg: RunConfig, out_dir: str | Path, r: int, what: str, x_labeled: torch.Tensor) -> str:
    """One line for a diverged round ``r``: what happened, the suspects (the learning rate,
    the labeled inputs' magnitude; the likelier one first) and what was kept.

    Args:
        cfg: the run's configuration (model, lr, ``--train``).
        out_dir: the run folder (named first in the line).
        r: the round (0-based).
        what: what diverged ("loss NaN at step 12", ...).
        x_labeled: (n, *input_shape) the round's labeled inputs.
    """
    x_max = float(x_labeled.abs().max()) if x_labeled.numel() else 0.0
    big_inputs = not x_max <= HUGE_INPUT  # also NaN
    model_lr = model_default("lr", cfg.model)
    if cfg.train is not None:  # the user's own training: its settings are theirs
        lr_part = f"the learning rate and loss in --train {cfg.train}"
    elif cfg.lr > model_lr:  # set above the model's default: suggest that
        lr_part = f"the learning rate (--lr {cfg.lr:g}; try {cfg.model}'s default, --lr {model_lr:g})"
    else:
        lr_part = f"the learning rate (--lr {cfg.lr:g}; try --lr {cfg.lr / 10:.2g})"
    input_part = (f"the inputs (the labeled points reach |x| = {x_max:.3g}"
                  f"{'; rescale them, e.g. to [0, 1], or drop those rows' if big_inputs else ''})")
    suspects = [input_part, lr_part] if big_inputs else [lr_part, input_part]
    kept = f"{CHECKPOINT} keeps round {r - 1}" if r > 0 else "no round was completed"
    return (f"{out_dir}: round {r} of model {cfg.model!r}: {what}; suspects: "
            f"{' and '.join(suspects)}. Nothing from round {r} was written ({kept})")
