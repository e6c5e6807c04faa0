"""``entk-al fidelity``: how well the look-ahead predicts real retraining (see entk_al.report.fidelity)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from ..errors import ConfigError
from ..progress import rich_bar
from ..run.config import RunConfig, check_finite, lr_default_text
from .options import PlainDataDir, PlainDevice, Quiet, check_out_dir
from .output import echo

#: The run's defaults, which fidelity shares.
_RUN = RunConfig()
DEFAULT_DEVICE = _RUN.device


def fidelity(
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = _RUN.dataset,
    model: Annotated[str, typer.Option(
        help="Model: mlp, cnn, resnet18, wide_resnet, wide_resnet2, or module:Class / file.py:Class "
             "(as entk-al run --model).")] = _RUN.model,
    width: Annotated[Optional[int], typer.Option(help="Model width.")] = None,
    initial: Annotated[int, typer.Option(
        help="Size of the seeded random labeled set L the model is trained on.")] = _RUN.initial,
    candidates: Annotated[int, typer.Option(help="Candidates retrained one by one (each a full retraining).")] = 50,
    eval_size: Annotated[int, typer.Option(
        help="Evaluation set U (random unlabeled points; holds the candidates).")] = 500,
    seed: Annotated[int, typer.Option(help="Seed (initial set, init, candidates, mini-batches).")] = _RUN.seed,
    ridge_rel: Annotated[float, typer.Option(
        "--ridge-rel", help="Ridge relative to trace(K)/n (lookahead's ridge_rel).")] = 1e-3,
    top_k: Annotated[int, typer.Option(help="k of the top-k overlap.")] = 10,
    epochs: Annotated[int, typer.Option(help="Training epochs per (re)training (the run's default).")] = _RUN.epochs,
    min_steps: Annotated[int, typer.Option(
        help="Minimum optimizer steps per (re)training (the run's default).")] = _RUN.min_steps,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = _RUN.batch_size,
    lr: Annotated[Optional[float], typer.Option(
        help=f"OneCycle max learning rate (default: {lr_default_text()}).")] = None,
    loss: Annotated[str, typer.Option(
        help="Loss of the training and of every retraining: mse or ce (the look-ahead's prediction is the "
             "squared-loss one either way; ce measures how well it predicts a cross-entropy-trained "
             "network).")] = _RUN.loss,
    device: PlainDevice = DEFAULT_DEVICE,
    data_dir: PlainDataDir = None,
    out: Annotated[Path, typer.Option(
        help="Output folder for fidelity.json and fidelity.png.")] = Path("runs/fidelity"),
    quiet: Quiet = False,
) -> None:
    """Compare look-ahead predictions with real warm-started retraining on L ∪ {(x, ŷ)}."""
    check_out_dir(out)
    from ..runlock import run_folder_lock

    with run_folder_lock(out):  # two measurements writing one folder would replace each other's files
        _fidelity(dataset, model, width, initial, candidates, eval_size, seed, ridge_rel, top_k, epochs, min_steps,
                  batch_size, lr, loss, device, data_dir, out, quiet)


def _fidelity(dataset, model, width, initial, candidates, eval_size, seed, ridge_rel, top_k, epochs, min_steps,
              batch_size, lr, loss, device, data_dir, out, quiet) -> None:

    from ..fileio import write_json
    from ..report.fidelity import measure_fidelity, plot_fidelity
    from ..run.labeled import PoolState
    from ..run.oracle import SimulatedOracle
    from ..run.setup import RunSetup
    from ..seeding import FIDELITY_CANDIDATES, FIDELITY_EVAL, numpy_rng

    check_finite(ridge_rel, "--ridge-rel")
    if top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    if candidates < 3 or eval_size < candidates:
        raise ConfigError(f"need 3 <= --candidates <= --eval-size, got {candidates} and {eval_size}")
    cfg = RunConfig(strategy="random", dataset=dataset, model=model, width=width, initial=initial, query=1,
                    rounds=0, seed=seed, epochs=epochs, min_steps=min_steps, batch_size=batch_size, lr=lr,
                    loss=loss, device=device, data_dir=data_dir)
    setup = RunSetup.from_config(cfg, with_strategy=False)
    if initial > setup.data.pool_size:
        raise ConfigError(f"--initial {initial} exceeds the {dataset} pool of {setup.data.pool_size}")
    # The loop's seeded initial set (RunSetup.initial_ids), labeled by a simulated oracle.
    pool = PoolState(setup.data.pool_size)
    first = setup.initial_ids()
    pool.add(first, SimulatedOracle(setup.data.y_train)(first), PoolState.INITIAL)
    lab = pool.labeled_ids()
    unl = pool.unlabeled_ids()
    if eval_size > len(unl):
        raise ConfigError(f"--eval-size {eval_size} exceeds the {len(unl)} unlabeled points")
    # The loop's round-0 training (RunSetup.train_round): θ_L is what the look-ahead linearizes around.
    net = setup.new_model(0)
    x_l, y_l = setup.data.x_train[lab], setup.data.y_train[lab]
    setup.train_round(net, 0, x_l, y_l)
    eval_ids = np.sort(numpy_rng(seed, 0, FIDELITY_EVAL).choice(unl, eval_size, replace=False))
    cand = np.sort(numpy_rng(seed, 0, FIDELITY_CANDIDATES).choice(eval_size, candidates, replace=False))
    x_u = setup.data.x_train[eval_ids]
    make_gen = lambda: setup.train_generator(1)  # noqa: E731  (the loop's round-1 stream)

    def measure(progress=None):
        return measure_fidelity(net, setup.kernel_fn, x_l, y_l, x_u, cand, setup.train_cfg, make_gen,
                                setup.data.num_classes, ridge_rel=ridge_rel, top_k=top_k, progress=progress)

    if quiet:
        result = measure()
    else:
        with rich_bar() as bar:
            task = bar.add_task(f"retraining on {dataset}", total=candidates)
            result = measure(lambda done: bar.update(task, completed=done))
    result.update(dataset=dataset, model=model, seed=seed, eval_ids=eval_ids.tolist(),
                  candidate_ids=eval_ids[cand].tolist(), labeled_ids=lab.tolist(), device=str(setup.device))
    write_json(out / "fidelity.json", result)
    plot_fidelity(result, out / "fidelity.png", title=f"look-ahead fidelity: {model} on {dataset} ({loss}), "
                  f"n={len(lab)}, {candidates} candidates, |U|={eval_size}")
    echo(f"{loss}: Spearman {result['spearman']:.3f} (vs control {result['spearman_vs_control']:.3f}), "
         f"Pearson {result['pearson']:.3f}, top-{result['top_k']} overlap {result['top_k_overlap']:.2f}, "
         f"mean rel. error {result['mean_relative_error']:.4f} (no-change guess "
         f"{result['mean_relative_error_no_change']:.4f}), real/predicted change {result['change_ratio']:.2f}x; "
         f"in probabilities: Spearman {result['spearman_probs']:.3f} (vs control "
         f"{result['spearman_probs_vs_control']:.3f}); reference=base: Spearman vs control "
         f"{result['spearman_reference_base_vs_control']:.3f}; retrain/look-ahead time "
         f"{result['speedup_retrain_over_lookahead']:.0f}x; wrote {out}/fidelity.json and fidelity.png")
