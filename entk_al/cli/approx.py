"""``entk-al approx``: how close pNTK ⊗ I is to the eNTK for a model (see :mod:`entk_al.report.approx`).

A plain command function; the CLI hub registers it (this module never imports the hub).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ConfigError, EntkAlError
from ..progress import rich_bar
from ..run.config import RunConfig, check_finite, check_seed
from ..text import printable
from .options import PlainDataDir, PlainDevice, Quiet, check_out_dir
from .output import echo_error

_RUN = RunConfig()


def parse_int_list(text: str, option: str, allow_init: bool = False) -> list[int]:
    """``"32,128,512"`` -> [32, 128, 512]; with ``allow_init`` the token ``init`` is 0.

    Args:
        text: comma-separated integers.
        option: the option's name, used in the error message.
        allow_init: accept ``init`` (checkpoint 0).

    Raises:
        ConfigError: empty items, non-integers or values < 1.
    """
    out = []
    for tok in (t.strip() for t in text.split(",")):
        if allow_init and tok.lower() == "init":
            out.append(0)
            continue
        try:
            v = int(tok)
        except ValueError:
            v = 0
        if v < 1:
            want = "'init' or positive integers" if allow_init else "positive integers"
            raise ConfigError(f"{option} {text!r} does not parse: give comma-separated {want}, "
                              f"e.g. {'init,100,1000' if allow_init else '32,128,512'}")
        out.append(v)
    return list(dict.fromkeys(out))


def default_memory_gib(device) -> float:
    """Half of the device's memory (GPU memory on CUDA, physical RAM otherwise), in GiB."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2 / 2**30
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2 / 2**30
    except (ValueError, OSError, AttributeError):
        return 8.0


def approx(
    dataset: Annotated[str, typer.Option(help="Dataset name, numpy:PATH.npz or folder:PATH.")] = "digits",
    model: Annotated[str, typer.Option(
        help="mlp, cnn, wide_resnet, wide_resnet2, resnet18, or your module:Class / path/file.py:Class "
             "(called as Class(input_shape, num_classes[, width=w])).")] = "mlp",
    widths: Annotated[Optional[str], typer.Option(
        help="Comma-separated readout widths (MLP hidden width; CNN/WideResNet width parameter). "
             "Default: the model's own width.")] = None,
    checkpoints: Annotated[str, typer.Option(
        help="Comma-separated checkpoints: init, and n = after training on n labels.")] = "init,100,1000",
    n_points: Annotated[int, typer.Option(help="Test points N per kernel-distance subset.")] = 200,
    subsets: Annotated[int, typer.Option(help="Random test subsets for the kernel distance (spread).")] = 2,
    kr_labels: Annotated[int, typer.Option(help="Labeled points of the kernel regression.")] = 100,
    eval_size: Annotated[Optional[int], typer.Option(
        help="Test points the regression is evaluated on (default: min(1000, test split)).")] = None,
    cost_sizes: Annotated[str, typer.Option(help="N at which kernel time and memory are measured.")] = "64,128,256",
    method: Annotated[str, typer.Option(
        help="Kernel engine: auto (= gram), gram or jacobian (per-sample gradients; faster for eNTKs of "
             "wide CNNs, where the gram engine pays per pair of positions and outputs).")] = "auto",
    ridge_rel: Annotated[float, typer.Option(help="Ridge relative to trace(K)/dim(K), as in the look-ahead.")] = 1e-3,
    kernel_params: Annotated[Optional[list[str]], typer.Option(
        "--kernel-params",
        help="Also compare the pNTK over a parameter subset with the full pNTK (repeatable): trainable, all, "
             "last:N (the last N modules with parameters) or name prefixes 'fc.,layer4.', as the look-ahead's "
             "-o kernel_params. Reports the relative distance, kernel-regression agreement and time ratio.")] = None,
    memory_gib: Annotated[Optional[float], typer.Option(
        help="Memory budget (GiB) for eNTKs and for 'largest N' (default: half the device memory).")] = None,
    seed: Annotated[int, typer.Option(help="Seed (init, labeled set, subsets, mini-batches).")] = 0,
    epochs: Annotated[int, typer.Option(help="Training epochs per checkpoint (the run default).")] = _RUN.epochs,
    min_steps: Annotated[int, typer.Option(help="Minimum optimizer steps (the run default).")] = _RUN.min_steps,
    batch_size: Annotated[int, typer.Option(help="Training batch size (the run default).")] = _RUN.batch_size,
    lr: Annotated[float, typer.Option(help="OneCycle max learning rate (the run default).")] = _RUN.lr,
    loss: Annotated[str, typer.Option(help="mse or ce (the run default).")] = _RUN.loss,
    device: PlainDevice = None,
    threads: Annotated[int, typer.Option(
        help="CPU threads (1 is fastest for small models on a shared machine; 0 = torch's default).")] = 1,
    float64: Annotated[bool, typer.Option("--float64", help="Model and kernels in float64.")] = False,
    data_dir: PlainDataDir = None,
    out: Annotated[Path, typer.Option(help="Output folder for approx.json and the figures.")] = Path("runs/approx"),
    quiet: Quiet = False,
) -> None:
    """How close is pNTK ⊗ I to the eNTK? Kernel distance, spectrum, kernel regression, cost."""
    args = dict(locals())
    try:
        check_out_dir(out)
        from ..runlock import run_folder_lock

        with run_folder_lock(out):  # two studies writing one folder would replace each other's files
            _approx(**args)
    except EntkAlError as exc:  # one line and exit 2, also when the hub runs standalone
        echo_error(exc)
        raise typer.Exit(2) from None


def _approx(dataset, model, widths, checkpoints, n_points, subsets, kr_labels, eval_size, cost_sizes, method, ridge_rel,
            kernel_params, memory_gib, seed, epochs, min_steps, batch_size, lr, loss, device, threads, float64,
            data_dir, out, quiet):
    check_out_dir(out)
    width_list = parse_int_list(widths, "--widths") if widths is not None else [None]
    cps = parse_int_list(checkpoints, "--checkpoints", allow_init=True)
    sizes = parse_int_list(cost_sizes, "--cost-sizes")
    if method not in ("auto", "gram", "jacobian"):
        raise ConfigError(f"--method must be auto, gram or jacobian, got {method!r}")
    if threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {threads}")
    if memory_gib is not None:
        check_finite(memory_gib, "--memory-gib", strict=True)
    check_finite(ridge_rel, "--ridge-rel")
    check_seed(seed)
    cfg = RunConfig(dataset=dataset, model="mlp", epochs=epochs, min_steps=min_steps, batch_size=batch_size, lr=lr,
                    loss=loss, device=device or RunConfig().device, data_dir=data_dir).validate()

    import torch
    from rich.console import Console

    from ..data import load_dataset
    from ..fileio import write_json
    from ..nets.train import TrainConfig
    from ..report.approx import ApproxSettings, check_settings, make_model_factory
    from ..report.approx_report import slope_line, tables, write_figures
    from ..run.setup import resolve_device

    dev = resolve_device(cfg.device)
    data = load_dataset(dataset, data_dir)
    factory = make_model_factory(model, data.input_shape, data.num_classes, seed)
    settings = ApproxSettings(
        widths=width_list, checkpoints=cps, n_points=n_points, subsets=subsets, kr_labels=kr_labels,
        eval_size=eval_size if eval_size is not None else min(1000, len(data.x_test)), cost_sizes=sizes,
        ridge_rel=ridge_rel, memory_budget_gib=memory_gib if memory_gib is not None else default_memory_gib(dev),
        seed=seed, method=method, kernel_params=list(dict.fromkeys(kernel_params or [])))
    train_cfg = TrainConfig(loss=loss, epochs=epochs, min_steps=min_steps, batch_size=batch_size, lr=lr,
                            weight_decay=cfg.weight_decay, threads=cfg.threads)
    dtype = torch.float64 if float64 else torch.float32
    # refuse bad sizes (and eNTKs over budget) before training or allocating anything
    check_settings(settings, data.pool_size, len(data.x_test), data.num_classes, dtype.itemsize)
    kwargs = dict(device=dev, dtype=dtype)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        result = _measure(factory, data, settings, train_cfg, kwargs, model, dataset, len(width_list) * (len(cps) + 1),
                          quiet, out)
    finally:
        torch.set_num_threads(previous_threads)
    result["settings"]["threads"] = threads
    result["settings"]["model"] = model
    write_json(out / "approx.json", result)
    figs = write_figures(result, out, f"{model} on {dataset}")
    console = Console()
    for table in tables(result):
        console.print(table)
    console.print(slope_line(result))
    console.print(printable(f"wrote {out / 'approx.json'} and {', '.join(p.name for p in figs)}"), markup=False)


def _measure(factory, data, settings, train_cfg, kwargs, model, dataset, total, quiet, out):
    from ..fileio import write_json
    from ..report.approx import run_approx

    def save_partial(partial: dict) -> None:  # a killed study keeps the widths it finished
        partial["settings"]["model"] = model
        write_json(out / "approx.json", partial)

    kwargs = {**kwargs, "on_width": save_partial}

    if quiet:
        return run_approx(factory, data, settings, train_cfg, **kwargs)
    with rich_bar(status=True) as bar:
        task = bar.add_task(f"approx {model} on {dataset}", status="", total=total)
        return run_approx(factory, data, settings, train_cfg, **kwargs,
                          progress=lambda what, done: bar.update(task, completed=done, status=what))
