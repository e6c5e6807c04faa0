"""The pool-based active-learning loop, in one global id space, checkpointed every round.

Round r = 0..R: (re)train on the labeled set, evaluate on the held-out test split (never the
pool; no model selection on test; without a test split, e.g. a pool people label before
anyone made a test set, ``test_accuracy`` is None), draw this round's random candidate
subset, let the strategy select ``query`` ids, label them with the oracle, checkpoint. Every random choice
derives from (seed, round, component) (:mod:`entk_al.seeding`), so a resumed run ends with
the same results as an uninterrupted one on the CPU.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..data import ALDataset
from ..errors import CheckpointError, ConfigError, LabelError, TrainingDivergedError
from ..executor import Executor, make_executor
from ..fileio import write_json, write_jsonl
from ..nets.models import predict
from ..progress import NullProgress
from ..runlock import run_folder_lock
from .checkpoint import (
    CHECKPOINT,
    CHECKPOINT_VERSION,
    RESUMABLE_CHANGES,
    LoopState,
    read_checkpoint,
    state_from_checkpoint,
    write_checkpoint,
)
from .config import RunConfig
from .divergence import divergence_message
from .labeled import PoolState
from .metrics import aubc
from .oracle import FileOracle, RemoteOracle, SimulatedOracle, query_path, recorded_labels, write_labels, write_queries
from .query_step import select_queries
from .setup import RunSetup, resolve_device
from .stopping import StopMonitor

__all__ = ["ActiveLearningLoop", "run_experiment", "LoopState", "CHECKPOINT", "CHECKPOINT_VERSION",
           "RESUMABLE_CHANGES", "read_checkpoint", "resolve_device"]


class ActiveLearningLoop:
    """Runs one configuration into ``out_dir``; see the module docstring for a round.

    Args:
        cfg: the run configuration (validated here).
        out_dir: run directory (created). Holds config.json, rounds.jsonl, curve.png (with a curve_writer),
            checkpoint.pt and, once finished, summary.json.
        strategy: a strategy object; default: ``load_strategy(cfg.strategy, cfg.strategy_options)``.
        dataset: a loaded dataset; default: ``load_dataset(cfg.dataset, ...)``.
        oracle: ``oracle(ids) -> labels``; default: :class:`~entk_al.run.oracle.SimulatedOracle`,
            :class:`~entk_al.run.oracle.FileOracle` for ``cfg.oracle == "files"``, or
            :class:`~entk_al.run.labelstudio.LabelStudioOracle` for ``"label-studio"`` (token from
            the environment). A ``deferred`` oracle makes :meth:`run` stop after writing
            ``queries/round_XXX.csv`` (see :attr:`waiting_for`) and resume once ``entk-al label``
            recorded the answers; a :class:`~entk_al.run.oracle.RemoteOracle` also gets the queries
            pushed, and its finished labels are pulled when resuming.
        kernel_fn: pNTK implementation handed to strategies; default :func:`entk_al.ntk.pntk`.
        curve_writer: ``curve_writer(records, path, title)`` that draws ``curve.png`` after each
            round, e.g. :func:`entk_al.report.curve.plot_curve` (the CLI and ``bench`` pass it).
        progress: progress reporter for training, kernels and selection; default: none
            (:class:`~entk_al.progress.NullProgress`).

    Raises:
        ConfigError: invalid options, or a budget larger than the pool.
        StrategyError: the strategy cannot be loaded or returns invalid ids.
        DataNotFoundError: the dataset's files are missing.
        CheckpointError: (run, resume) the checkpoint is corrupted or was made with other options.
        LabelError: (run, resume) the labels for pending human queries are missing or invalid.
        TrainingDivergedError: (run, resume) a round's training diverged (NaN or infinite loss);
            nothing from that round is written, the checkpoint keeps the round before.
        LabelStudioError: (run, resume) the Label Studio server cannot be reached, refuses the
            token, or its project does not fit.
    """

    def __init__(self, cfg: RunConfig, out_dir: str | Path, *, strategy: Any = None,
                 dataset: ALDataset | None = None, oracle: Callable[[np.ndarray], np.ndarray] | None = None,
                 kernel_fn: Callable[..., torch.Tensor] | None = None,
                 curve_writer: Callable[[list[dict], Path, str], None] | None = None,
                 progress: NullProgress | None = None):
        self.setup = RunSetup.from_config(cfg, strategy=strategy, dataset=dataset, kernel_fn=kernel_fn)
        self.cfg = self.setup.cfg
        #: ``curve_writer(records, path, title)`` draws curve.png after each round; the loop
        #: itself draws nothing (plots belong to the results layer, which passes it in).
        self.curve_writer = curve_writer
        #: progress reporter for rounds, training steps, kernels and scoring (entk_al.progress).
        self.progress = progress or NullProgress()
        self.out_dir = Path(out_dir)
        if self.cfg.budget > self.data.pool_size:
            raise ConfigError(f"budget initial + query*rounds = {self.cfg.budget} exceeds the pool of "
                              f"{self.data.pool_size} {self.cfg.dataset} training points")
        self.oracle = oracle if oracle is not None else self.default_oracle()
        if getattr(self.oracle, "deferred", False) and getattr(self.strategy, "mode", "batch") in ("sequential",
                                                                                                   "hybrid"):
            # Fail before training rather than mid-selection (FileOracle also refuses at call time).
            raise ConfigError(f"strategy {self.strategy.name!r} in {self.strategy.mode} mode needs labels during "
                              f"selection, which --oracle {getattr(self.oracle, 'name', self.cfg.oracle)} cannot "
                              f"give; use mode=batch or --oracle simulated")
        self.setup.check_sizes()
        #: the run's stop rules (``cfg.stop``; :mod:`entk_al.run.stopping`), or None.
        self.stopper = StopMonitor.from_config(self.cfg, self.data.pool_size, self.setup.initial_ids(),
                                               self.data.num_classes)
        #: set when the run stopped to wait for human labels: the queries CSV to fill in.
        self.waiting_for: Path | None = None
        #: set when the run stopped to wait for labels in an annotation tool: where, how many.
        self.waiting_note: str | None = None
        #: pool id -> acquisition score of the last selection's queries (RoundContext.record_scores).
        self.last_query_scores: dict[int, float] = {}
        #: where pool scans run while :meth:`run` runs (:mod:`entk_al.executor`); None otherwise.
        self.executor: Executor | None = None

    # The parts of the setup, under the names users and tests know.
    data = property(lambda self: self.setup.data)
    strategy = property(lambda self: self.setup.strategy)
    device = property(lambda self: self.setup.device)
    train_cfg = property(lambda self: self.setup.train_cfg)
    kernel_fn = property(lambda self: self.setup.kernel_fn)

    def default_oracle(self) -> Any:
        """The oracle ``cfg.oracle`` names (see the class docstring)."""
        if self.cfg.oracle == "files":
            return FileOracle()
        if self.cfg.oracle == "label-studio":
            from .labelstudio import STATE_FILE, LabelStudioOracle

            return LabelStudioOracle(self.cfg.ls_url, self.cfg.ls_project, state_file=self.out_dir / STATE_FILE)
        return SimulatedOracle(self.data.y_train)

    # -- state ---------------------------------------------------------------------
    def fresh_state(self) -> LoopState:
        pool = PoolState(self.data.pool_size)
        first = self.setup.initial_ids()
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
        state, saved_cfg = state_from_checkpoint(read_checkpoint(path), path)
        diff = self.cfg.differing_options(saved_cfg, RESUMABLE_CHANGES)
        if diff:
            raise CheckpointError(f"checkpoint {path} was made with different options: {', '.join(diff)}")
        if state.next_round > self.cfg.rounds + 1:
            raise CheckpointError(f"{self.out_dir} already ran {state.next_round - 1} query rounds; --rounds "
                                  f"{self.cfg.rounds} cannot undo them (give --rounds >= {state.next_round - 1})")
        if state.pool.size != self.data.pool_size:
            raise CheckpointError(f"checkpoint {path} has a pool of {state.pool.size}, "
                                  f"dataset has {self.data.pool_size}")
        return state

    def save_state(self, state: LoopState, model: torch.nn.Module | None) -> None:
        state.stop = None if self.stopper is None else self.stopper.state_dict()
        write_checkpoint(self.out_dir / CHECKPOINT, state, model, self.cfg.to_dict(), list(self.data.classes))

    # -- the loop --------------------------------------------------------------------
    def new_model(self, round_idx: int) -> torch.nn.Module:
        """See :meth:`RunSetup.new_model`."""
        return self.setup.new_model(round_idx)

    def check_model(self, model: torch.nn.Module) -> None:
        """See :meth:`RunSetup.check_model`."""
        self.setup.check_model(model)

    def run(self, *, resume: bool = False, on_round: Callable[[dict], None] | None = None) -> list[dict]:
        """Run (or resume) to completion; returns the per-round records.

        ``on_round(record)`` is called after each round (for progress display). The global
        torch RNG is re-seeded per round inside and restored afterwards, so a program that
        embeds the loop keeps its own random stream. The run folder is locked meanwhile
        (:func:`entk_al.runlock.run_folder_lock`).

        Raises:
            RunFolderInUseError: another process holds the run folder's lock.
            StorageError: the disk is full or the run folder is read-only.
        """
        devices = [self.device] if self.device.type == "cuda" else []
        cfg = self.cfg
        self.waiting_for = self.waiting_note = None
        # One writer per run folder (entk_al.runlock; re-entrant, so the CLI may hold it already).
        with run_folder_lock(self.out_dir):
            if isinstance(self.oracle, RemoteOracle):  # an unreachable server fails before anything is written
                from .labelstudio_tasks import data_kind

                self.oracle.connect(self.data.classes, data_kind(self.data.input_shape))
            # Started before anything is written: a missing Ray or cluster fails as a one-line error.
            self.executor = make_executor(cfg.executor, self.setup.pool, self.device, address=cfg.address,
                                          workers=cfg.workers, gpus_per_worker=cfg.gpus_per_worker,
                                          cpus_per_worker=cfg.cpus_per_worker)
            try:
                with torch.random.fork_rng(devices=devices):
                    return self._run(resume, on_round)
            finally:
                self.executor.close()
                self.executor = None

    def _run(self, resume: bool, on_round: Callable[[dict], None] | None) -> list[dict]:
        model = self.new_model(0)
        self.check_model(model)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the output folder {self.out_dir} ({exc.strerror or exc})") from None
        state = self.load_state() if resume else self.fresh_state()
        write_json(self.out_dir / "config.json", self.cfg.to_dict())
        if resume and state.records:
            # The checkpoint is the one source of truth: a kill between the checkpoint and the
            # log (or curve) leaves them behind it, so rewrite both from its records first.
            self.write_results(state.records)
        if state.model_state is not None:
            model.load_state_dict(state.model_state)
        if self.stopper is not None and state.stop is not None:
            self.stopper.load_state_dict(state.stop)
        title = f"{self.cfg.strategy} on {self.cfg.dataset}"
        with self.progress.task(title, total=self.cfg.rounds + 1) as advance_round:
            advance_round(len(state.records))
            if state.pending is not None and not self.take_pending_labels(state, model, fresh=not resume):
                return state.records
            last = state.records[-1] if state.records else None
            stopped = self.stopper is not None and self.stopper.stopped is not None
            if last is not None and not last["queried"] and last["round"] < self.cfg.rounds and not stopped:
                # A finished run resumed with more --rounds: its last round trained but did not
                # query; query now with the same model and seeds, as an uninterrupted run would.
                if self.query_round(state, last, model):
                    return state.records
                stopped = self.stopper is not None and self.stopper.stopped is not None
                if stopped:  # the rule fired on that batch: record it before ending
                    self.save_state(state, model)
                    self.write_results(state.records)
            for r in range(state.next_round, self.cfg.rounds + 1):
                if stopped:  # a stop rule ended the run (now or before a resume)
                    break
                if r > 0 and self.cfg.retrain == "scratch":
                    model = self.new_model(r)
                record = self.train_and_evaluate(r, model, state.pool)
                state.records.append(record)
                state.next_round = r + 1
                stopped = self.stopper is not None and self.stopper.after_training(record, model, self.data.x_train,
                                                                                   self.device)
                if r < self.cfg.rounds and not stopped and self.query_round(state, record, model):
                    if on_round:
                        on_round(record)
                    return state.records
                # Checkpoint first: a crash in between leaves the log behind the checkpoint, and
                # resuming rewrites the log from the checkpoint's records.
                self.save_state(state, model)
                self.write_results(state.records)
                advance_round(1)
                if on_round:
                    on_round(record)
                stopped = self.stopper is not None and self.stopper.stopped is not None
        # Last, and only after the log holds every round: bench counts a run with summary.json
        # as finished.
        write_json(self.out_dir / "summary.json", self.summary(state.records))
        return state.records

    def train_and_evaluate(self, r: int, model: torch.nn.Module, pool: PoolState) -> dict:
        """Train ``model`` in place on the labeled set and evaluate it on the test split.

        Returns the round's record (``queried`` empty, ``select_seconds`` 0 until the query;
        ``test_accuracy`` None without a test split).

        Raises:
            TrainingDivergedError: the training loss or weights became NaN or infinite; the
                message names the round and the suspects (``--lr``, the inputs' magnitude).
        """
        # The global torch RNG (dropout, user code) is re-seeded per round in train_round, for resumability.
        lab = pool.labeled_ids()
        t0 = time.perf_counter()
        # A user's --train function reports no steps: its bar has no total.
        steps = self.train_cfg.steps_for(len(lab)) if self.setup.train_fn is None else None
        x_lab = self.data.x_train[lab]
        try:
            with self.progress.task(f"round {r}: training", total=steps) as advance:
                stats = self.setup.train_round(model, r, x_lab, self.data.y_train.new_tensor(pool.labels[lab]),
                                               on_step=advance)
        except TrainingDivergedError as exc:
            raise TrainingDivergedError(self.divergence_message(r, str(exc), x_lab)) from None
        train_s = time.perf_counter() - t0
        acc = self.evaluate(model)
        record: dict[str, Any] = {"round": r, "n_labeled": int(len(lab)), "test_accuracy": acc,
                                  "train_seconds": train_s, "train_steps": stats["steps"],
                                  "train_loss": stats["final_loss"], "queried": [], "select_seconds": 0.0,
                                  "kernel_seconds": 0.0, "score_seconds": 0.0}
        return record

    def query_round(self, state: LoopState, record: dict, model: torch.nn.Module) -> bool:
        """Select this round's queries and label them; True if the run now waits for a human.

        With a deferred oracle (``--oracle files``) the queries are written to
        ``queries/round_XXX.csv`` and the checkpoint records them as pending.
        """
        r = record["round"]
        t1 = time.perf_counter()
        queried, labels, info, kernel_s = self.select(r, model, state.pool)
        record["select_seconds"] = time.perf_counter() - t1 - (self.stopper.last_seconds if self.stopper else 0.0)
        # select = kernel (time inside kernel_fn) + score (everything else the strategy did).
        record["kernel_seconds"] = kernel_s
        record["score_seconds"] = max(0.0, record["select_seconds"] - kernel_s)
        if info:
            record["strategy_info"] = info
        if self.stopper is not None and self.stopper.after_selection(record):
            return False  # a stop rule fired on this batch: it is not labeled
        record["queried"] = queried.tolist()
        if labels is None:
            scores = self.last_query_scores
            state.pending = {"round": r, "ids": queried.tolist(),
                             "scores": [scores.get(i) for i in queried.tolist()]}
            self.request_labels(state, model)
            return True
        state.pool.add(queried, labels, r)
        return False

    def request_labels(self, state: LoopState, model: torch.nn.Module | None) -> None:
        """Write the pending queries CSV, then checkpoint (in that order, so a crash in between
        only repeats the round), and remember which file the person must fill in. A remote
        oracle then gets the queries pushed: a push that fails leaves a run to resume."""
        ids = np.asarray(state.pending["ids"], dtype=np.int64)
        probs = self.pending_probs(state, model)
        guesses = None if probs is None else [self.data.classes[int(c)] for c in probs.argmax(axis=1)]
        self.waiting_for = write_queries(self.out_dir, state.pending["round"], ids,
                                         [self.data.source_of(int(i)) for i in ids], guesses)
        self.save_state(state, model)
        if state.records:
            self.write_results(state.records)
        if isinstance(self.oracle, RemoteOracle):
            self.push_queries(self.oracle, state, probs)
            self.waiting_note = (f"{len(ids)} queries of {_round_name(state.pending['round'])} are tasks in "
                                 f"{getattr(self.oracle, 'where', 'the annotation tool')}")

    def pending_probs(self, state: LoopState, model: torch.nn.Module | None) -> np.ndarray | None:
        """(k, O) float64 class probabilities of the pending queries under ``model``; None for
        the initial set (no model has been trained yet)."""
        if state.pending["round"] == PoolState.INITIAL or model is None:
            return None
        ids = torch.from_numpy(np.asarray(state.pending["ids"], dtype=np.int64))
        logits = predict(model, self.data.x_train[ids], device=self.device)
        return torch.softmax(logits.double(), dim=1).cpu().numpy()

    def push_queries(self, oracle: Any, state: LoopState, probs: np.ndarray | None,
                     only: list[int] | None = None) -> dict:
        """Push the pending queries (``only`` some of them) to a remote oracle, in the strategy's
        order, with the model's probabilities and the strategy's scores; returns its answer."""
        ids = [int(i) for i in state.pending["ids"]]
        scores = state.pending.get("scores") or [None] * len(ids)
        wanted = set(ids if only is None else only)
        keep = [p for p, i in enumerate(ids) if i in wanted]
        sel = np.asarray([ids[p] for p in keep], dtype=np.int64)
        return oracle.push(sel, round=state.pending["round"], inputs=self.data.x_train[torch.from_numpy(sel)],
                           probs=None if probs is None else probs[keep], scores=[scores[p] for p in keep],
                           sources=[self.data.source_of(int(i)) for i in sel])

    def push_pending(self, oracle: Any) -> dict:
        """Push the queries the run in ``out_dir`` waits for to ``oracle`` (``entk-al label-studio
        push``); ``oracle.connect`` is called first. Returns the oracle's answer (pool id -> task id).

        Raises:
            LabelError: the run is not waiting for labels.
            CheckpointError: no readable checkpoint.
        """
        from .labelstudio_tasks import data_kind

        state = self.load_state()
        if state.pending is None:
            raise LabelError(f"{self.out_dir} is not waiting for labels (no pending queries)")
        model = None
        if state.model_state is not None:
            model = self.new_model(0)
            model.load_state_dict(state.model_state)
        oracle.connect(self.data.classes, data_kind(self.data.input_shape))
        return self.push_queries(oracle, state, self.pending_probs(state, model))

    def take_pending_labels(self, state: LoopState, model: torch.nn.Module, fresh: bool) -> bool:
        """Add the labels recorded for the pending queries; False if the run must stop to wait.

        Raises:
            LabelError: resuming, but no labels were recorded for the pending queries.
        """
        rnd, ids = state.pending["round"], np.asarray(state.pending["ids"], dtype=np.int64)
        labels = None if fresh else recorded_labels(self.out_dir, rnd, ids.tolist(), self.data.classes)
        if labels is None and not fresh and isinstance(self.oracle, RemoteOracle):
            report = self.oracle.pull_report(ids.tolist(), round=rnd)
            if not report.complete:
                if report.missing:  # never pushed (a push that failed) or deleted in the tool
                    self.push_queries(self.oracle, state, self.pending_probs(state, model), only=report.missing)
                    report = self.oracle.pull_report(ids.tolist(), round=rnd)
                self.waiting_for = query_path(self.out_dir, rnd)
                self.waiting_note = f"{getattr(self.oracle, 'where', 'the annotation tool')}: {report.summary()}"
                return False
            labels = np.array([report.labels[int(i)] for i in ids], dtype=np.int64)
            write_labels(self.out_dir, rnd, ids.tolist(), labels, self.data.classes)
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

    def select(self, r: int, model: torch.nn.Module, pool: PoolState
               ) -> tuple[np.ndarray, np.ndarray | None, dict, float]:
        """See :func:`entk_al.run.query_step.select_queries`."""
        self.last_query_scores = {}
        observe = self.stopper.observe_selection if self.stopper is not None and self.stopper.needs_effect else None
        return select_queries(self.setup, r, model, pool, self.oracle, progress=self.progress,
                              executor=self.executor, scores_out=self.last_query_scores, observe=observe)

    def divergence_message(self, r: int, what: str, x_labeled: torch.Tensor) -> str:
        """One line for a diverged round ``r`` (:func:`entk_al.run.divergence.divergence_message`)."""
        return divergence_message(self.cfg, self.out_dir, r, what, x_labeled)

    def evaluate(self, model: torch.nn.Module) -> float | None:
        """Accuracy (fraction in [0, 1]) on the held-out test split; None when the dataset
        has no test split."""
        if not self.data.has_test_split:
            return None
        logits = predict(model, self.data.x_test, device=self.device)
        return float((logits.argmax(dim=1).cpu() == self.data.y_test).double().mean())

    # -- outputs -----------------------------------------------------------------------
    def write_results(self, records: list[dict]) -> None:
        write_jsonl(self.out_dir / "rounds.jsonl", records)
        if self.curve_writer is not None:
            self.curve_writer(records, self.out_dir / "curve.png",
                              f"{self.cfg.strategy} on {self.cfg.dataset} (seed {self.cfg.seed})")

    def summary(self, records: list[dict]) -> dict:
        """summary.json: ``rounds`` the query rounds done (``--rounds`` once finished),
        ``evaluations`` the trained-and-evaluated rounds (round 0 and one per query round);
        ``test_size`` the test split's size; accuracies and ``aubc`` are None without a test split."""
        return {"strategy": self.cfg.strategy, "dataset": self.cfg.dataset, "seed": self.cfg.seed,
                "rounds": max(len(records) - 1, 0), "evaluations": len(records),
                "test_size": len(self.data.x_test), "final_n_labeled": records[-1]["n_labeled"] if records else 0,
                "final_test_accuracy": records[-1]["test_accuracy"] if records else None,
                "first_test_accuracy": records[0]["test_accuracy"] if records else None,
                "aubc": aubc(r["test_accuracy"] for r in records),
                "train_seconds": sum(r["train_seconds"] for r in records),
                "select_seconds": sum(r["select_seconds"] for r in records),
                **({} if self.stopper is None else {"stop": self.stopper.summary()})}


def _round_name(round_idx: int) -> str:
    return "the initial set" if round_idx == PoolState.INITIAL else f"round {round_idx}"


def run_experiment(cfg: RunConfig, out_dir: str | Path, **kwargs: Any) -> list[dict]:
    """Convenience: ``ActiveLearningLoop(cfg, out_dir, ...).run()``."""
    resume = kwargs.pop("resume", False)
    on_round = kwargs.pop("on_round", None)
    return ActiveLearningLoop(cfg, out_dir, **kwargs).run(resume=resume, on_round=on_round)
