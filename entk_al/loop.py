"""The pool-based active-learning loop, in one global id space, checkpointed every round.

Round r = 0..R: (re)train on the labeled set, evaluate on the held-out test split (never the
pool; no model selection on test), draw this round's random candidate subset, let the
strategy select ``query`` ids, label them with the oracle, checkpoint. Every random choice
derives from (seed, round, component) (:mod:`entk_al.seeding`), so a resumed run ends with
the same results as an uninterrupted one on the CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .config import RunConfig
from .context import RoundContext
from .data import ALDataset, load_dataset
from .errors import CheckpointError, ConfigError, EntkAlError, LabelError, StrategyError
from .models import build_model, predict
from .ntk import pntk
from .oracle import FileOracle, SimulatedOracle, query_path, recorded_labels, write_queries
from .plugins import load_strategy
from .pool import PoolState, validate_selection
from .fileio import atomic_write, write_json, write_jsonl
from .metrics import aubc
from .seeding import int_seed, numpy_rng, torch_generator
from .train import TrainConfig, train_model

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_VERSION = 1
#: Options that may differ between a checkpoint and a resumed run.
RESUMABLE_CHANGES = {"rounds", "device", "data_dir", "download"}


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU. Raises ConfigError for missing CUDA."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def read_checkpoint(path: Path) -> dict:
    """Load ``checkpoint.pt`` on the CPU.

    Raises:
        CheckpointError: the file cannot be unpickled or is not a checkpoint dict.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupted ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupted (not a checkpoint)")
    return ckpt


@dataclass
class LoopState:
    """What a checkpoint restores: the round to run next, the model, the pool and the log."""

    next_round: int
    model_state: dict | None
    pool: PoolState
    records: list[dict]
    #: queries waiting for human labels (``--oracle files``): {"round": r, "ids": [...]};
    #: round -2 is the seeded initial set.
    pending: dict | None = None


class ActiveLearningLoop:
    """Runs one configuration into ``out_dir``; see the module docstring for a round.

    Args:
        cfg: the run configuration (validated here).
        out_dir: run directory (created). Holds config.json, rounds.jsonl, curve.png (with a curve_writer),
            checkpoint.pt and, once finished, summary.json.
        strategy: a strategy object; default: ``load_strategy(cfg.strategy, cfg.strategy_options)``.
        dataset: a loaded dataset; default: ``load_dataset(cfg.dataset, ...)``.
        oracle: ``oracle(ids) -> labels``; default: :class:`~entk_al.oracle.SimulatedOracle`, or
            :class:`~entk_al.oracle.FileOracle` for ``cfg.oracle == "files"``. A ``deferred``
            oracle makes :meth:`run` stop after writing ``queries/round_XXX.csv`` (see
            :attr:`waiting_for`) and resume once ``entk-al label`` recorded the answers.
        kernel_fn: pNTK implementation handed to strategies; default :func:`entk_al.ntk.pntk`.
        curve_writer: ``curve_writer(records, path, title)`` that draws ``curve.png`` after each
            round, e.g. :func:`entk_al.results.plot_curve` (the CLI and ``bench`` pass it).

    Raises:
        ConfigError: invalid options, or a budget larger than the pool.
        StrategyError: the strategy cannot be loaded or returns invalid ids.
        DataNotFoundError: the dataset's files are missing.
        CheckpointError: (run, resume) the checkpoint is corrupted or was made with other options.
        LabelError: (run, resume) the labels for pending human queries are missing or invalid.
    """

    def __init__(self, cfg: RunConfig, out_dir: str | Path, *, strategy: Any = None,
                 dataset: ALDataset | None = None, oracle: Callable[[np.ndarray], np.ndarray] | None = None,
                 kernel_fn: Callable[..., torch.Tensor] | None = None,
                 curve_writer: Callable[[list[dict], Path, str], None] | None = None):
        self.cfg = cfg.validate()
        #: ``curve_writer(records, path, title)`` draws curve.png after each round; the loop
        #: itself draws nothing (plots belong to the results layer, which passes it in).
        self.curve_writer = curve_writer
        self.out_dir = Path(out_dir)
        self.strategy = strategy if strategy is not None else load_strategy(cfg.strategy, cfg.strategy_options)
        self.data = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
        if cfg.budget > self.data.pool_size:
            raise ConfigError(f"budget initial + query*rounds = {cfg.budget} exceeds the pool of "
                              f"{self.data.pool_size} {cfg.dataset} training points")
        if oracle is None:
            oracle = FileOracle() if cfg.oracle == "files" else SimulatedOracle(self.data.y_train)
        self.oracle = oracle
        if getattr(oracle, "deferred", False) and getattr(self.strategy, "mode", "batch") in ("sequential", "hybrid"):
            # Fail before training rather than mid-selection (FileOracle also refuses at call time).
            raise ConfigError(f"strategy {self.strategy.name!r} in {self.strategy.mode} mode needs labels during "
                              f"selection, which --oracle files cannot give; use mode=batch or --oracle simulated")
        #: set when the run stopped to wait for human labels: the queries CSV to fill in.
        self.waiting_for: Path | None = None
        self.kernel_fn = kernel_fn or (lambda model, x1, x2=None: pntk(model, x1, x2))
        self.device = resolve_device(cfg.device)
        self.train_cfg = TrainConfig(loss=cfg.loss, epochs=cfg.epochs, min_steps=cfg.min_steps,
                                     batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                     threads=cfg.threads)

    # -- state ---------------------------------------------------------------------
    def fresh_state(self) -> LoopState:
        pool = PoolState(self.data.pool_size)
        first = numpy_rng(self.cfg.seed, -1, "initial").choice(self.data.pool_size, self.cfg.initial, replace=False)
        first.sort()
        if getattr(self.oracle, "deferred", False):
            return LoopState(next_round=0, model_state=None, pool=pool, records=[],
                             pending={"round": PoolState.INITIAL, "ids": first.tolist()})
        pool.add(first, self.oracle(first), PoolState.INITIAL)
        return LoopState(next_round=0, model_state=None, pool=pool, records=[])

    def load_state(self) -> LoopState:
        """Restore from ``out_dir/checkpoint.pt``. Raises CheckpointError if corrupt/mismatched."""
        path = self.out_dir / CHECKPOINT
        if not path.is_file():
            if not (self.out_dir / "rounds.jsonl").exists():
                # Stopped before round 0 was checkpointed (the log is written after the
                # checkpoint): nothing was completed, so resuming is starting at round 0.
                return self.fresh_state()
            raise CheckpointError(f"no checkpoint in {self.out_dir}; nothing to resume")
        ckpt = read_checkpoint(path)
        try:
            version, saved_cfg = ckpt["version"], ckpt["config"]
            state = LoopState(next_round=int(ckpt["next_round"]), model_state=ckpt["model"],
                              pool=PoolState.from_state_dict(ckpt["pool"]), records=list(ckpt["records"]),
                              pending=ckpt.get("pending"))
        except Exception as exc:
            raise CheckpointError(f"checkpoint {path} is unreadable or corrupted ({type(exc).__name__})") from None
        if version != CHECKPOINT_VERSION:
            raise CheckpointError(f"checkpoint {path} has version {version}, expected {CHECKPOINT_VERSION}")
        diff = self.cfg.differing_options(saved_cfg, RESUMABLE_CHANGES)
        if diff:
            raise CheckpointError(f"checkpoint {path} was made with different options: {', '.join(diff)}")
        if state.next_round > self.cfg.rounds + 1:
            raise CheckpointError(f"{self.out_dir} already ran {state.next_round - 1} query rounds; --rounds "
                                  f"{self.cfg.rounds} cannot undo them (give --rounds >= {state.next_round - 1})")
        if state.pool.size != self.data.pool_size:
            raise CheckpointError(f"checkpoint {path} has a pool of {state.pool.size}, dataset has {self.data.pool_size}")
        return state

    def save_state(self, state: LoopState, model: torch.nn.Module) -> None:
        ckpt = {"version": CHECKPOINT_VERSION, "config": self.cfg.to_dict(), "next_round": state.next_round,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "pool": state.pool.state_dict(), "records": state.records, "pending": state.pending,
                "classes": list(self.data.classes)}
        atomic_write(self.out_dir / CHECKPOINT, lambda p: torch.save(ckpt, p))

    # -- the loop --------------------------------------------------------------------
    def new_model(self, round_idx: int) -> torch.nn.Module:
        init_round = round_idx if self.cfg.retrain == "scratch" else -1
        model = build_model(self.cfg.model, self.data.input_shape, self.data.num_classes, self.cfg.width,
                            seed=int_seed(self.cfg.seed, init_round, "init"))
        return model.to(self.device)

    def check_model(self, model: torch.nn.Module) -> None:
        """Fail fast, before any file is written, if the model cannot take the dataset's inputs.

        Raises:
            ConfigError: the forward pass fails or does not give (N, num_classes) outputs.
        """
        x = self.data.x_train[:2]
        try:
            with torch.no_grad():
                out = predict(model, x, device=self.device)
        except RuntimeError as exc:
            raise ConfigError(f"model {self.cfg.model!r} cannot take {self.cfg.dataset} inputs of shape "
                              f"{tuple(self.data.input_shape)} ({' '.join(str(exc).split())[:200]})") from None
        if tuple(out.shape) != (len(x), self.data.num_classes):
            raise ConfigError(f"model {self.cfg.model!r} gives outputs of shape {tuple(out.shape[1:])}, "
                              f"expected ({self.data.num_classes},) for {self.cfg.dataset}")

    def run(self, *, resume: bool = False, on_round: Callable[[dict], None] | None = None) -> list[dict]:
        """Run (or resume) to completion; returns the per-round records.

        ``on_round(record)`` is called after each round (for progress display). The global
        torch RNG is re-seeded per round inside and restored afterwards, so a program that
        embeds the loop keeps its own random stream.
        """
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return self._run(resume, on_round)

    def _run(self, resume: bool, on_round: Callable[[dict], None] | None) -> list[dict]:
        model = self.new_model(0)
        self.check_model(model)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = self.load_state() if resume else self.fresh_state()
        write_json(self.out_dir / "config.json", self.cfg.to_dict())
        if state.model_state is not None:
            model.load_state_dict(state.model_state)
        if state.pending is not None and not self.take_pending_labels(state, model, fresh=not resume):
            return state.records
        last = state.records[-1] if state.records else None
        if last is not None and not last["queried"] and last["round"] < self.cfg.rounds:
            # A finished run resumed with more --rounds: its last round trained but did not
            # query; query now with the same model and seeds, as an uninterrupted run would.
            if self.query_round(state, last, model):
                return state.records
        for r in range(state.next_round, self.cfg.rounds + 1):
            if r > 0 and self.cfg.retrain == "scratch":
                model = self.new_model(r)
            record = self.run_round(r, model, state.pool)
            state.records.append(record)
            state.next_round = r + 1
            if r < self.cfg.rounds and self.query_round(state, record, model):
                if on_round:
                    on_round(record)
                return state.records
            # Checkpoint first: a crash in between leaves the log behind the checkpoint, and
            # resuming rewrites the log from the checkpoint's records.
            self.save_state(state, model)
            self.write_results(state.records)
            if on_round:
                on_round(record)
        write_json(self.out_dir / "summary.json", self.summary(state.records))
        return state.records

    def run_round(self, r: int, model: torch.nn.Module, pool: PoolState) -> dict:
        cfg = self.cfg
        # Global torch RNG (dropout, user code) is re-seeded per round for resumability.
        torch.manual_seed(int_seed(cfg.seed, r, "torch-global"))
        lab = pool.labeled_ids()
        t0 = time.perf_counter()
        stats = train_model(model, self.data.x_train[lab], self.data.y_train.new_tensor(pool.labels[lab]),
                            self.train_cfg, torch_generator(cfg.seed, r, "train"))
        train_s = time.perf_counter() - t0
        acc = self.evaluate(model)
        record: dict[str, Any] = {"round": r, "n_labeled": int(len(lab)), "test_accuracy": acc,
                                  "train_seconds": train_s, "train_steps": stats["steps"],
                                  "train_loss": stats["final_loss"], "queried": [], "select_seconds": 0.0}
        return record

    def query_round(self, state: LoopState, record: dict, model: torch.nn.Module) -> bool:
        """Select this round's queries and label them; True if the run now waits for a human.

        With a deferred oracle (``--oracle files``) the queries are written to
        ``queries/round_XXX.csv`` and the checkpoint records them as pending.
        """
        r = record["round"]
        t1 = time.perf_counter()
        queried, labels, info = self.select(r, model, state.pool)
        record["select_seconds"] = time.perf_counter() - t1
        record["queried"] = queried.tolist()
        if info:
            record["strategy_info"] = info
        if labels is None:
            state.pending = {"round": r, "ids": queried.tolist()}
            self.request_labels(state, model)
            return True
        state.pool.add(queried, labels, r)
        return False

    def request_labels(self, state: LoopState, model: torch.nn.Module | None) -> None:
        """Write the pending queries CSV, then checkpoint (in that order, so a crash in between
        only repeats the round), and remember which file the person must fill in."""
        ids = np.asarray(state.pending["ids"], dtype=np.int64)
        guesses = None
        if state.pending["round"] != PoolState.INITIAL and model is not None:
            pred = predict(model, self.data.x_train[torch.from_numpy(ids)], device=self.device).argmax(dim=1)
            guesses = [self.data.classes[int(c)] for c in pred.cpu()]
        self.waiting_for = write_queries(self.out_dir, state.pending["round"], ids,
                                         [self.data.source_of(int(i)) for i in ids], guesses)
        self.save_state(state, model)
        if state.records:
            self.write_results(state.records)

    def take_pending_labels(self, state: LoopState, model: torch.nn.Module, fresh: bool) -> bool:
        """Add the labels recorded for the pending queries; False if the run must stop to wait.

        Raises:
            LabelError: resuming, but no labels were recorded for the pending queries.
        """
        rnd, ids = state.pending["round"], np.asarray(state.pending["ids"], dtype=np.int64)
        labels = None if fresh else recorded_labels(self.out_dir, rnd, ids.tolist(), self.data.classes)
        if labels is None:
            if not fresh:
                raise LabelError(f"{self.out_dir} waits for labels of {len(ids)} queries in "
                                 f"{query_path(self.out_dir, rnd)}; fill in the label column and run "
                                 f"'entk-al label {self.out_dir} --from FILE.csv' before resuming")
            self.request_labels(state, model)
            return False
        state.pool.add(ids, labels, rnd)
        state.pending = None
        self.save_state(state, model)
        return True

    def select(self, r: int, model: torch.nn.Module, pool: PoolState) -> tuple[np.ndarray, np.ndarray | None, dict]:
        cfg = self.cfg
        unl = pool.unlabeled_ids()
        cand = unl
        if len(unl) > cfg.subset:
            cand = np.sort(numpy_rng(cfg.seed, r, "subset").choice(unl, cfg.subset, replace=False))
        answers: dict[int, int] = {}

        def ask(ids: np.ndarray) -> np.ndarray:
            ids = np.asarray(ids, dtype=np.int64)
            if pool.labeled_mask[ids].any():
                raise StrategyError(f"strategy {self.strategy.name!r} asked the oracle for an already-labeled id")
            got = self.oracle(ids)
            answers.update(zip(ids.tolist(), np.asarray(got).tolist()))
            return got

        # Re-seeded here too, so that a selection resumed on its own (more --rounds) draws
        # the same global numbers as one that followed training in the same process.
        torch.manual_seed(int_seed(cfg.seed, r, "torch-select"))
        lab = pool.labeled_ids()
        ctx = RoundContext(round=r, seed=cfg.seed, model=model, device=self.device, x_pool=self.data.x_train,
                           num_classes=self.data.num_classes, labeled_ids=lab, labeled_targets=pool.labels[lab],
                           unlabeled_ids=unl, candidate_ids=cand, rng=numpy_rng(cfg.seed, r, "strategy"),
                           torch_generator=torch_generator(cfg.seed, r, "strategy"), oracle=ask,
                           kernel_fn=self.kernel_fn)
        model.eval()
        k = min(cfg.query, len(unl))
        try:
            answer = self.strategy.select(ctx, k)
        except EntkAlError:
            raise
        except Exception as exc:
            # A user's strategy failing is a user-facing error that must name the strategy.
            raise StrategyError(f"strategy {self.strategy.name!r} failed in round {r}: "
                                f"{type(exc).__name__}: {exc}") from exc
        queried = validate_selection(self.strategy.name, answer, k, pool)
        stray = set(answers) - set(queried.tolist())
        if stray:
            raise StrategyError(f"strategy {self.strategy.name!r} asked the oracle for ids it did not select")
        if getattr(self.oracle, "deferred", False):
            return queried, None, ctx.info
        missing = np.array([i for i in queried.tolist() if i not in answers], dtype=np.int64)
        if missing.size:
            answers.update(zip(missing.tolist(), np.asarray(self.oracle(missing)).tolist()))
        labels = np.array([answers[i] for i in queried.tolist()], dtype=np.int64)
        return queried, labels, ctx.info

    def evaluate(self, model: torch.nn.Module) -> float:
        """Accuracy (fraction in [0, 1]) on the held-out test split."""
        logits = predict(model, self.data.x_test, device=self.device)
        return float((logits.argmax(dim=1).cpu() == self.data.y_test).double().mean())

    # -- outputs -----------------------------------------------------------------------
    def write_results(self, records: list[dict]) -> None:
        write_jsonl(self.out_dir / "rounds.jsonl", records)
        if self.curve_writer is not None:
            self.curve_writer(records, self.out_dir / "curve.png",
                              f"{self.cfg.strategy} on {self.cfg.dataset} (seed {self.cfg.seed})")

    def summary(self, records: list[dict]) -> dict:
        return {"strategy": self.cfg.strategy, "dataset": self.cfg.dataset, "seed": self.cfg.seed,
                "rounds": len(records), "final_n_labeled": records[-1]["n_labeled"] if records else 0,
                "final_test_accuracy": records[-1]["test_accuracy"] if records else float("nan"),
                "first_test_accuracy": records[0]["test_accuracy"] if records else float("nan"),
                "aubc": aubc(r["test_accuracy"] for r in records),
                "train_seconds": sum(r["train_seconds"] for r in records),
                "select_seconds": sum(r["select_seconds"] for r in records)}


def run_experiment(cfg: RunConfig, out_dir: str | Path, **kwargs: Any) -> list[dict]:
    """Convenience: ``ActiveLearningLoop(cfg, out_dir, ...).run()``."""
    resume = kwargs.pop("resume", False)
    on_round = kwargs.pop("on_round", None)
    return ActiveLearningLoop(cfg, out_dir, **kwargs).run(resume=resume, on_round=on_round)
