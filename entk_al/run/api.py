"""entk-al from your own code: your model, your training loop, your pool.

- :func:`query`: one call, "model, labeled ids, pool → the next k ids", with any registered
  strategy (the NTK look-ahead by default). The same model, labeled set and seed give exactly
  the ids ``entk-al run`` selects in that round.
- :class:`ActiveLearner`: the bookkeeping for a loop you write yourself (labeled ids and
  labels, the round, the RNG streams), optionally kept in a run folder in ``entk-al run``'s
  format (``rounds.jsonl``, a safe ``checkpoint.pt``), so ``entk-al plot`` reads it and
  :meth:`ActiveLearner.resume` continues it. You train; entk-al never touches your optimizer.
  With ``oracle=LabelStudioOracle(...)`` each round's queries become Label Studio tasks and
  :meth:`ActiveLearner.pull` collects the answers.

Example::

    import entk_al
    learner = entk_al.ActiveLearner(pool, strategy="lookahead", out="runs/mine", seed=0)
    learner.add_labels(first_ids, first_labels)
    for r in range(3):
        train(model, pool, learner.labeled_ids, learner.labels)   # your loop
        q = learner.query(model, k=20, metrics={"test_accuracy": evaluate(model)})
        learner.add_labels(q.ids, annotate(q.ids))                # your annotators
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..data.pool import Pool, as_pool
from ..errors import CheckpointError, ConfigError, LabelError
from ..executor import Executor, make_executor
from ..fileio import write_json, write_jsonl
from .checkpoint import CHECKPOINT, LoopState, plain, read_checkpoint, state_from_checkpoint, write_checkpoint
from .config import RunConfig
from .labeled import PoolState
from .metrics import aubc
from .query_step import select_round
from .setup import check_kernel_params, resolve_device

#: Candidates drawn per round when ``candidates`` is not given (``entk-al run --subset``'s default).
DEFAULT_SUBSET = RunConfig.subset


@dataclass
class Query:
    """What a query round chose.

    Attributes:
        ids: (k,) int64 global pool ids to label, in the strategy's order.
        candidate_ids: (C,) int64 the candidates the strategy chose from.
        scores: (S,) float64 acquisition scores (higher = queried first) of ``score_ids``,
            where the strategy reports them (the look-ahead, the uncertainty strategies), else None.
        score_ids: (S,) int64 ids the scores belong to, or None.
        info: what the strategy logged (``strategy_info`` in ``rounds.jsonl``).
        labels: (k,) int64 the oracle's answers when one was given, else None.
        select_seconds: wall time of the selection.
        kernel_seconds: the part spent computing kernels.
        num_classes: O, the model's output count (0 when unknown).
    """

    ids: np.ndarray
    candidate_ids: np.ndarray
    scores: np.ndarray | None = None
    score_ids: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    labels: np.ndarray | None = None
    select_seconds: float = 0.0
    kernel_seconds: float = 0.0
    num_classes: int = 0


@contextmanager
def _modes_kept(model: nn.Module) -> Iterator[None]:
    """Give every submodule its train/eval mode back afterwards: selection runs the model in eval
    mode, and a user's loop (a frozen BatchNorm backbone in eval, a head in train) expects its own."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _num_outputs(model: nn.Module, pool: Pool, device: torch.device) -> int:
    x = pool.get(np.zeros(1, dtype=np.int64))
    dtype = next(model.parameters()).dtype
    try:
        with _modes_kept(model), torch.no_grad():
            model.eval()
            out = model(x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype))
    except RuntimeError as exc:
        raise ConfigError(f"the model cannot take the pool's inputs of shape {tuple(pool.input_shape)} "
                          f"({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"the model must return an (N, num_classes) tensor of logits, got a {type(out).__name__}; "
                          f"wrap it so that forward returns the logits only")
    if out.dim() != 2:
        raise ConfigError(f"the model must return (N, num_classes) logits, got shape {tuple(out.shape)} for a "
                          f"batch of N={len(x)} input(s) of shape {tuple(x.shape[1:])}")
    return int(out.shape[1])


def _integers(values: Any, what: str, error: type[Exception] = LabelError) -> np.ndarray:
    """``values`` as a 1-d int64 array; floats with a fractional part, booleans and non-numbers
    are refused instead of being truncated."""
    arr = np.asarray(values if values is not None else [])
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.number) or arr.size == 0):
        raise error(f"{what} must be integers, got {arr.dtype} values")
    if arr.ndim > 1:
        raise error(f"{what} must be a 1-d sequence, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
        bad = arr[~(np.isfinite(arr) & (arr == np.round(arr)))][0]
        raise error(f"{what} must be integers, got {float(bad):g}")
    return arr.astype(np.int64).reshape(-1)


def _check_labeled(ids: Any, labels: Any, size: int, num_classes: int | None,
                   whose_classes: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    ids = _integers(ids, "labeled ids")
    labels = _integers(labels, "labels")
    if len(ids) != len(labels):
        raise LabelError(f"{len(ids)} labeled ids but {len(labels)} labels; give one label per labeled id")
    if ids.size and (ids.min() < 0 or ids.max() >= size):
        bad = ids[(ids < 0) | (ids >= size)][0]
        raise LabelError(f"labeled id {int(bad)} is out of range for a pool of {size}")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise LabelError(f"id {int(uniq[counts > 1][0])} is labeled twice")
    if labels.size and labels.min() < 0:
        raise LabelError(f"label {int(labels.min())} is negative")
    if num_classes is not None and labels.size and labels.max() >= num_classes:
        whose = whose_classes or f"the model has {num_classes} outputs"
        raise LabelError(f"label {int(labels.max())} is outside [0, {num_classes}) ({whose})")
    return ids, labels


def _check_int(name: str, value: Any, low: int) -> None:
    """``value`` is an integer >= ``low`` (booleans and floats refused)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_model(model: Any) -> None:
    """A module with parameters: every kernel is a gradient with respect to them."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got a {type(model).__name__}")
    if next(model.parameters(), None) is None:
        raise ConfigError(f"the model ({type(model).__name__}) has no parameters; entk-al's kernels are gradients "
                          f"with respect to them")


def _device(device: Any, model: nn.Module) -> torch.device:
    """The device to run on: ``device`` (checked), else the model's."""
    if device is None:
        return next(model.parameters()).device
    return resolve_device(device, what="device")


def _strategy(strategy: Any, options: dict | None) -> Any:
    from .plugins import load_strategy

    if isinstance(strategy, str):
        return load_strategy(strategy, options or {})
    if options:
        raise ConfigError("options= applies to a strategy given by name; configure a strategy object yourself")
    if not callable(getattr(strategy, "select", None)):
        raise ConfigError(f"strategy must be a name or an object with select(ctx, k), got a {type(strategy).__name__}")
    return strategy


def _executor(executor: Any, pool: Pool, device: torch.device) -> tuple[Executor, bool]:
    if isinstance(executor, Executor):
        return executor, False
    if isinstance(executor, str):
        return make_executor(executor, pool, device), True
    raise ConfigError(f"executor must be 'local', 'ray' or an Executor, got {executor!r}")


def _check_oracle(oracle: Any) -> Any:
    if oracle is not None and not all(callable(getattr(oracle, m, None)) for m in ("connect", "push", "pull_report")):
        raise ConfigError(f"oracle must have connect, push and pull_report (e.g. entk_al.run.labelstudio."
                          f"LabelStudioOracle), got a {type(oracle).__name__}")
    return oracle


def query(model: nn.Module, pool: Any, labeled_ids: Any, labels: Any, k: int, strategy: Any = "lookahead", *,
          options: dict | None = None, seed: int = 0, round: int = 0, candidates: Any = None,
          subset: int = DEFAULT_SUBSET, device: torch.device | str | None = None,
          oracle: Callable[[np.ndarray], np.ndarray] | None = None, executor: Any = "local",
          progress: Any = None) -> Query:
    """The next ``k`` pool ids to label.

    The model is used as it is (eval mode; its parameters are not changed). Randomness comes
    from the (``seed``, ``round``, component) streams of :mod:`entk_al.seeding`, as in
    ``entk-al run``: with the run's model, labeled set, ``seed`` and ``round`` this returns the
    ids the run selects in that round. The global torch RNG is left as it was.

    Args:
        model: your trained network, mapping (N, *input_shape) to (N, O) logits.
        pool: the pool: a :class:`~entk_al.data.pool.Pool`, a tensor or array (N, *input_shape),
            a torch ``Dataset`` (items ``x`` or ``(x, y)``), or ``"memmap:PATH.npy"``.
        labeled_ids: (n,) global ids labeled so far (distinct, in range).
        labels: (n,) their class indices in [0, O).
        k: ids to return (>= 1).
        strategy: a registered name (``entk-al strategies``), ``module:Class`` /
            ``file.py:Class``, or a strategy object (``name`` and ``select(ctx, k)``).
        options: the strategy's options (as ``-o key=value``), for a strategy given by name.
        seed: run seed.
        round: round index (it keys the random streams).
        candidates: (S,) unlabeled ids to choose from; default: a random subset of ``subset``
            unlabeled ids, drawn as ``entk-al run`` draws it.
        subset: size of that random subset.
        device: where the model runs (default: its own device).
        oracle: ``oracle(ids) -> labels`` for strategies that ask for labels mid-selection (the
            look-ahead's sequential mode); its answers come back in :attr:`Query.labels`.
        executor: ``"local"`` (in this process), ``"ray"`` (a private local Ray cluster), or an
            :class:`~entk_al.executor.Executor` you manage.
        progress: a progress reporter (:mod:`entk_al.progress`), or None.

    Returns:
        a :class:`Query`.

    Raises:
        ConfigError: bad ``k``, a model that does not return an (N, O) tensor, a bad strategy spec,
            ``kernel_params`` (a strategy option) that match no parameter of the model.
        LabelError: labeled ids out of range or repeated, labels missing or out of range.
        DataFormatError: pool items that are not tensors/arrays or differ in shape.
        StrategyError: the strategy fails or returns invalid ids.
    """
    _check_model(model)
    pool = as_pool(pool)
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    for name, value, low in (("seed", seed, 0), ("round", round, 0), ("subset", subset, 1)):
        _check_int(name, value, low)
    dev = _device(device, model)
    num_classes = _num_outputs(model, pool, dev)
    lab, y = _check_labeled(labeled_ids, labels, len(pool), num_classes)
    if candidates is None and len(pool) - len(lab) < k:
        raise ConfigError(f"k={k} is more than the {len(pool) - len(lab)} unlabeled ids")
    if candidates is None and subset < k:
        raise ConfigError(f"subset ({subset}) must be >= k ({k}): the candidates are a random subset of that size")
    if candidates is not None:
        candidates = _integers(candidates, "candidates")
        if candidates.size and (candidates.min() < 0 or candidates.max() >= len(pool)):
            raise LabelError(f"candidate ids must lie in [0, {len(pool)})")
        uniq, counts = np.unique(candidates, return_counts=True)
        if (counts > 1).any():
            raise LabelError(f"candidate id {int(uniq[counts > 1][0])} is given twice; give each candidate once")
        if np.isin(candidates, lab).any():
            raise LabelError("candidates must be unlabeled ids; some are labeled")
        if len(candidates) < k:
            raise ConfigError(f"k={k} is more than the {len(candidates)} candidates")
    strat = _strategy(strategy, options)
    check_kernel_params(strat, model)
    ex, own = _executor(executor, pool, dev)
    devices = [dev] if dev.type == "cuda" else []
    t0 = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=devices), _modes_kept(model):
            ids, answered, ctx = select_round(strat, model=model, pool=pool, labeled_ids=lab, labeled_targets=y,
                                              num_classes=num_classes, k=int(k), seed=int(seed), round_idx=int(round),
                                              subset=int(subset), candidates=candidates, oracle=oracle, device=dev,
                                              executor=ex, progress=progress)
    finally:
        if own:
            ex.close()
    score_ids, scores = ctx.scores if ctx.scores is not None else (None, None)
    return Query(ids=ids, candidate_ids=ctx.candidate_ids, scores=scores, score_ids=score_ids, info=ctx.info,
                 labels=answered, select_seconds=time.perf_counter() - t0, kernel_seconds=ctx.kernel_seconds,
                 num_classes=num_classes)


class ActiveLearner:
    """Active-learning bookkeeping for your own training loop.

    Holds the labeled ids and their labels, the round and the strategy; :meth:`query` asks the
    strategy for the next ids (:func:`query`, seeded by (seed, round)), :meth:`add_labels`
    records your annotators' answers, and a round ends when every queried id is labeled. With
    ``out`` every change is saved atomically in ``entk-al run``'s format.

    Args:
        pool: the pool (as :func:`query` takes it).
        strategy: strategy name or spec (as :func:`query`), or a strategy object.
        options: the strategy's options.
        out: run folder (``config.json``, ``rounds.jsonl``, ``checkpoint.pt``, ``summary.json``),
            or None to keep everything in memory.
        seed: run seed.
        subset: random candidates per round.
        labeled_ids: (n,) ids labeled before the first round (the initial set), or None.
        labels: (n,) their labels.
        classes: class names (for ``checkpoint.pt``); default ``"0" .. "O-1"`` once known.
        device: where the model runs (default: the model's device).
        executor: ``"local"``, ``"ray"`` or an :class:`~entk_al.executor.Executor`.
        name: what ``entk-al plot`` calls this run's data (``config.json``'s ``dataset``).
        oracle: an annotation tool the learner talks to
            (:class:`entk_al.run.labelstudio.LabelStudioOracle`, or anything with its ``connect``,
            ``push`` and ``pull_report``), or None (you call :meth:`add_labels`). With one,
            :meth:`query` pushes the round's queries as tasks (best first, with the model's
            class probabilities as pre-annotations and the strategy's scores) and :meth:`pull`
            adds the labels annotators have finished.

    Raises:
        CheckpointError: ``out`` already holds a run (use :meth:`resume`).
        LabelError: bad initial labels.
        ConfigError: an ``oracle`` without ``connect``/``push``/``pull_report``.
    """

    def __init__(self, pool: Any, strategy: Any = "lookahead", *, options: dict | None = None,
                 out: str | Path | None = None, seed: int = 0, subset: int = DEFAULT_SUBSET,
                 labeled_ids: Any = None, labels: Any = None, classes: list[str] | None = None,
                 device: torch.device | str | None = None, executor: Any = "local", name: str = "custom",
                 oracle: Any = None):
        self.pool = as_pool(pool)
        _check_int("seed", seed, 0)
        _check_int("subset", subset, 1)
        self.oracle = _check_oracle(oracle)
        self._connected = False
        self.strategy_spec = (strategy if isinstance(strategy, str)
                              else getattr(strategy, "name", type(strategy).__name__))
        self.options = dict(options or {})
        self.strategy = _strategy(strategy, options)
        self.seed, self.subset, self.device, self.executor, self.name = int(seed), int(subset), device, executor, name
        self.classes = list(classes) if classes is not None else None
        self.out = None if out is None else Path(out)
        self.round = 0
        self.records: list[dict] = []
        self.pending: np.ndarray | None = None
        self._state = PoolState(len(self.pool))
        if self.out is not None and (self.out / CHECKPOINT).exists():
            raise CheckpointError(f"{self.out} already holds a run; continue it with "
                                  f"ActiveLearner.resume({str(self.out)!r}, pool)")
        if labeled_ids is not None or labels is not None:
            self.add_labels(labeled_ids, labels)

    # -- state -------------------------------------------------------------------------
    @property
    def labeled_ids(self) -> np.ndarray:
        """(n,) int64 labeled ids, increasing."""
        return self._state.labeled_ids()

    @property
    def unlabeled_ids(self) -> np.ndarray:
        """(N − n,) int64 unlabeled ids, increasing."""
        return self._state.unlabeled_ids()

    @property
    def labels(self) -> np.ndarray:
        """(n,) int64 labels of :attr:`labeled_ids`."""
        return self._state.labels[self.labeled_ids]

    def add_labels(self, ids: Any, labels: Any) -> None:
        """Record labels for unlabeled ``ids``; the round ends once every pending query is labeled.

        Args:
            ids: (m,) global pool ids.
            labels: (m,) class indices (in [0, O) once the model's O is known).

        Raises:
            LabelError: lengths differ, an id is out of range, repeated or already labeled, or a
                label is negative or out of range.
        """
        ids, labels = self._checked(ids, labels)
        if self._state.labeled_mask[ids].any():
            raise LabelError(f"id {int(ids[self._state.labeled_mask[ids]][0])} is already labeled")
        round_of = self.round if self.pending is not None and np.isin(ids, self.pending).all() else PoolState.INITIAL
        self._state.add(ids, labels, round_of)
        if self.pending is not None and self._state.labeled_mask[self.pending].all():
            self.pending = None
            self.round += 1
        self.save()

    def _checked(self, ids: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
        """``ids`` and ``labels`` checked against the pool and the learner's classes (once known)."""
        num_classes = len(self.classes) if self.classes is not None else None
        return _check_labeled(ids, labels, len(self.pool), num_classes,
                              whose_classes=f"the learner has {num_classes} classes")

    def correct_labels(self, ids: Any, labels: Any) -> None:
        """Replace the labels of already-labeled ``ids`` (an annotator's mistake, a label out of
        range that the first :meth:`query` refused); the round and pending queries are unchanged.

        Args:
            ids: (m,) global pool ids, each labeled already.
            labels: (m,) their new class indices.

        Raises:
            LabelError: lengths differ, an id is out of range, repeated or not labeled yet, or a
                label is negative or out of range.
        """
        ids, labels = self._checked(ids, labels)
        unlabeled = ids[~self._state.labeled_mask[ids]]
        if unlabeled.size:
            raise LabelError(f"id {int(unlabeled[0])} is not labeled yet; add it with add_labels")
        self._state.labels[ids] = labels
        self.save()

    def query(self, model: nn.Module, k: int, *, metrics: dict | None = None, candidates: Any = None,
              oracle: Callable[[np.ndarray], np.ndarray] | None = None) -> Query:
        """Ask the strategy for this round's ``k`` ids (:func:`query`); they stay pending until labeled.

        Asking again before they are labeled asks again for the same round (the same ids for
        the same model). With the learner's ``oracle``, the ids are pushed to it as tasks, in
        the strategy's order, with ``model``'s class probabilities and the strategy's scores
        (:attr:`Query.scores`); collect the answers with :meth:`pull`.

        Args:
            model: your network, trained on :attr:`labeled_ids` / :attr:`labels`.
            k: ids to query.
            metrics: numbers to log for this round, e.g. ``{"test_accuracy": 0.91}`` (what
                ``entk-al plot`` draws).
            candidates: (S,) unlabeled ids to choose from (default: a random subset).
            oracle: ``oracle(ids) -> labels``, for strategies that ask for labels mid-selection.

        Raises:
            as :func:`query`; LabelStudioError: the learner's oracle cannot be reached or refuses.
        """
        q = query(model, self.pool, self.labeled_ids, self.labels, k, self.strategy, seed=self.seed,
                  round=self.round, candidates=candidates, subset=self.subset, device=self.device,
                  oracle=oracle, executor=self.executor)
        if self.classes is None:
            self.classes = [str(c) for c in range(q.num_classes)]
        elif q.num_classes != len(self.classes):  # checked before anything of the round is recorded
            raise ConfigError(f"the model has {q.num_classes} outputs but the learner has {len(self.classes)} "
                              f"classes; one output per class")
        record = {"round": self.round, "n_labeled": int(len(self.labeled_ids)),
                  "test_accuracy": None if metrics is None else metrics.get("test_accuracy"),
                  "queried": q.ids.tolist(), "select_seconds": q.select_seconds,
                  "kernel_seconds": q.kernel_seconds,
                  "score_seconds": max(0.0, q.select_seconds - q.kernel_seconds)}
        record.update({key: v for key, v in (metrics or {}).items() if key != "test_accuracy"})
        if q.info:
            record["strategy_info"] = q.info
        self.records = [r for r in self.records if r["round"] != self.round] + [record]
        self.pending = q.ids
        self._model = model
        if q.labels is not None:  # an oracle answered during selection
            self.add_labels(q.ids, q.labels)
        else:
            self.save()
            if self.oracle is not None:
                score_of = {} if q.score_ids is None else dict(zip(q.score_ids.tolist(), q.scores.tolist()))
                self._push(model, q.ids, [score_of.get(i) for i in q.ids.tolist()])
        return q

    # -- an annotation tool ------------------------------------------------------------
    def _connect(self) -> None:
        if not self._connected:
            from .labelstudio_tasks import data_kind

            if self.classes is None:
                raise ConfigError("the oracle needs the class names: pass classes= to ActiveLearner, or query first")
            self.oracle.connect(self.classes, data_kind(self.pool.input_shape))
            self._connected = True

    def _push(self, model: nn.Module | None, ids: np.ndarray, scores: list | None) -> None:
        from ..nets.models import predict

        self._connect()
        x = self.pool.get(ids)
        probs = None
        if model is not None:
            dev = next(model.parameters()).device
            probs = torch.softmax(predict(model, x, device=dev).double(), dim=1).cpu().numpy()
        files = getattr(self.pool, "files", None)
        sources = None if files is None else [str(files[int(i)]) for i in ids]
        self.oracle.push(ids, round=self.round, inputs=x, probs=probs, scores=scores, sources=sources)

    def pull(self) -> Any:
        """Add the labels annotators have finished for the pending queries (the learner's ``oracle``).

        A partial pull adds what is finished; the round ends (and :meth:`query` may ask for
        the next one) once every pending id is labeled. Pending ids without a task (a push
        that failed, a task deleted in the tool) are pushed again.

        Returns:
            the oracle's report (:class:`entk_al.run.labelstudio.PullReport`: ``labels``,
            ``complete``, ``waiting``, ``skipped``, ``conflicts``, ``missing``, ``summary()``);
            None when nothing is pending.

        Raises:
            ConfigError: the learner has no oracle.
            LabelError: an annotation names no class, or a task is for an id not queried.
            LabelStudioError: the server cannot be reached or refuses.
        """
        if self.oracle is None:
            raise ConfigError("this ActiveLearner has no oracle; pass oracle=LabelStudioOracle(...) or call "
                              "add_labels(ids, labels)")
        if self.pending is None:
            return None
        self._connect()
        asked = self.pending.tolist()  # the whole round: a task for any other id is refused
        report = self.oracle.pull_report(asked, round=self.round)
        unlabeled = [i for i in report.missing if not self._state.labeled_mask[i]]
        if unlabeled:
            self._push(getattr(self, "_model", None), np.asarray(unlabeled, dtype=np.int64), None)
            report = self.oracle.pull_report(asked, round=self.round)
        new = [i for i in asked if i in report.labels and not self._state.labeled_mask[i]]
        if new:
            self.add_labels(new, [report.labels[i] for i in new])
        return report

    # -- persistence -------------------------------------------------------------------
    def config(self) -> dict:
        """What ``config.json`` holds: the settings that make this run reproducible."""
        initial = int((self._state.labeled_round == PoolState.INITIAL).sum())
        query_size = len(self.records[-1]["queried"]) if self.records else None
        cfg = {"strategy": self.strategy_spec, "strategy_options": plain(self.options), "seed": self.seed,
               "subset": self.subset, "dataset": self.name, "pool_size": len(self.pool), "initial": initial,
               "query": query_size, "learner": "ActiveLearner"}
        if self.oracle is not None:  # where the tasks went (never a token)
            cfg["oracle"] = getattr(self.oracle, "name", type(self.oracle).__name__)
            for key, attr in (("ls_url", "url"), ("ls_project", "project_spec")):
                if getattr(self.oracle, attr, None) is not None:
                    cfg[key] = str(getattr(self.oracle, attr))
        return cfg

    def save(self) -> None:
        """Write the run folder (atomically; nothing when ``out`` is None)."""
        if self.out is None:
            return
        state = LoopState(next_round=self.round, model_state=None, pool=self._state, records=self.records,
                          pending=None if self.pending is None else {"round": self.round, "ids": self.pending.tolist()})
        model = getattr(self, "_model", None)
        write_json(self.out / "config.json", self.config())
        write_checkpoint(self.out / CHECKPOINT, state, model, self.config(), self.classes or [])
        write_jsonl(self.out / "rounds.jsonl", self.records)
        measured = [r for r in self.records if r.get("test_accuracy") is not None]
        accs = [r["test_accuracy"] for r in measured]
        # final_n_labeled is where the final accuracy was measured (as in `entk-al run`'s summary);
        # labels added since then are counted in n_labeled, not paired with an older accuracy.
        write_json(self.out / "summary.json", {
            "strategy": self.strategy_spec, "dataset": self.name, "seed": self.seed, "rounds": len(self.records),
            "n_labeled": int(len(self.labeled_ids)),
            "final_n_labeled": int(measured[-1]["n_labeled"]) if measured else None,
            "final_test_accuracy": accs[-1] if accs else None, "aubc": aubc(accs) if accs else None})

    @classmethod
    def resume(cls, out: str | Path, pool: Any, strategy: Any = None, *, device: torch.device | str | None = None,
               executor: Any = "local", oracle: Any = None) -> "ActiveLearner":
        """Continue the learner saved in ``out`` (labeled set, labels, round, log, pending queries).

        Args:
            out: the run folder.
            pool: the same pool (its size is checked).
            strategy: a strategy object to use instead of the saved name (its name must match).
            device: where the model runs.
            executor: as in the constructor.
            oracle: as in the constructor (the same project, so that :meth:`pull` finds the
                pending round's tasks; a ``LabelStudioOracle`` with a ``state_file`` in ``out``
                keeps its task tag there).

        Raises:
            CheckpointError: no learner checkpoint in ``out``, or a pool of another size.
        """
        out = Path(out)
        path = out / CHECKPOINT
        if not path.is_file():
            raise CheckpointError(f"no checkpoint in {out}; nothing to resume")
        ckpt = read_checkpoint(path)
        state, cfg = state_from_checkpoint(ckpt, path)
        pool = as_pool(pool)
        if cfg.get("learner") != "ActiveLearner":
            raise CheckpointError(f"{out} holds an 'entk-al run' folder; resume it with entk-al run --resume {out}")
        if state.pool.size != len(pool):
            raise CheckpointError(f"{out} was made with a pool of {state.pool.size}, this pool has {len(pool)}")
        learner = cls.__new__(cls)
        learner.pool = pool
        learner.oracle, learner._connected = _check_oracle(oracle), False
        learner.strategy_spec, learner.options = cfg["strategy"], dict(cfg.get("strategy_options") or {})
        learner.strategy = _strategy(strategy if strategy is not None else cfg["strategy"],
                                     None if strategy is not None else learner.options)
        learner.seed, learner.subset, learner.name = int(cfg["seed"]), int(cfg["subset"]), cfg.get("dataset", "custom")
        learner.device, learner.executor, learner.out = device, executor, out
        learner.classes = list(ckpt["classes"]) if ckpt.get("classes") else None
        learner.round, learner.records, learner._state = state.next_round, state.records, state.pool
        learner.pending = None if state.pending is None else np.asarray(state.pending["ids"], dtype=np.int64)
        return learner
