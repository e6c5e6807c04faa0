"""When to stop labeling: stop rules evaluated once per round on a fixed unlabeled stop set.

Two rules, each a small object with ``update(predictions=..., effect=...)`` and ``should_stop``
(usable in your own loop), and :class:`StopMonitor`, which runs them inside
:class:`entk_al.run.loop.ActiveLearningLoop` (``entk-al run --stop ...``):

- ``kappa`` — stabilizing predictions (Bloodgood & Vijay-Shanker, "A Method for Stopping
  Active Learning Based on Stabilizing Predictions and the Need for User-Adjustable Stopping",
  CoNLL 2009): Cohen's κ between the predicted classes of consecutive rounds' models on a
  fixed stop set of unlabeled points; stop once the mean κ of the last ``window`` rounds is
  ≥ ``threshold`` (their defaults: window 3, threshold 0.99).
- ``change`` — ours, from the linearized network's posterior (Mohamadi, Bae & Sutherland,
  NeurIPS 2022, Eq. 11–12, with exact batch conditioning): the fraction of the stop set whose
  predicted class would change if the batch the strategy just chose were labeled as the network
  predicts it (MLMOC's pseudo-labels, their Eq. 13). With base = f(U) + A(K+λI)⁻¹R and the
  posterior covariance M of the look-ahead on U = stop set ∪ batch Q,

      f_{L+Q}(U) = base + M_UQ (M_QQ + λI)⁻¹ (Y_Q − base_Q),   Y_Q = one-hot argmax f(Q),

  the value is mean_{u ∈ stop set} [argmax f_{L+Q}(u) ≠ argmax base_u]; the mean output change
  mean_u ‖f_{L+Q}(u) − base_u‖₂ is logged next to it. Stop once it is below ``threshold`` in
  ``window`` consecutive rounds; the batch that triggered the stop is not labeled.

Rule specs (``--stop``, TOML ``stop``): comma-separated ``NAME[:THRESHOLD[:WINDOW]]``, e.g.
``kappa``, ``kappa:0.99:3``, ``change:0.005``, ``kappa,change:0.01``; ``none`` for no rule. With
several rules the run stops at the first that fires.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..lookahead.system import cholesky_with_jitter
from ..seeding import STOP_SET, numpy_rng

#: The stop set's default size: Bloodgood & Vijay-Shanker's stop sets were a few thousand
#: unlabeled examples; it need not be labeled, and larger sets give steadier κ estimates.
DEFAULT_STOP_SET = 2000
STOP_ACTIONS = ("stop", "log")


def cohen_kappa(a: np.ndarray, b: np.ndarray, num_classes: int) -> float:
    """Cohen's κ = (p_o − p_e)/(1 − p_e) between two label vectors.

    Source: Cohen, "A Coefficient of Agreement for Nominal Scales", 1960. p_o is the fraction
    of agreeing positions, p_e = Σ_c p_a(c) p_b(c) from the two vectors' class frequencies.
    When p_e = 1 (both vectors one and the same single class) κ is 1.

    Args:
        a: (S,) int class indices in [0, num_classes).
        b: (S,) int class indices, same length.
        num_classes: O.

    Raises:
        ValueError: lengths differ or are 0.
    """
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"kappa needs two non-empty label vectors of one length, got {a.shape} and {b.shape}")
    p_o = float(np.mean(a == b))
    p_e = float(np.dot(np.bincount(a, minlength=num_classes), np.bincount(b, minlength=num_classes))) / a.size**2
    if p_e >= 1.0:
        return 1.0 if p_o >= 1.0 else 0.0
    return (p_o - p_e) / (1.0 - p_e)


class StabilizingPredictions:
    """Stop when consecutive models agree on the stop set (κ), Bloodgood & Vijay-Shanker 2009.

    Args:
        threshold: stop once the mean of the last ``window`` κ values is ≥ this (their 0.99).
        window: how many consecutive κ values are averaged (their 3).

    Raises:
        ConfigError: threshold not in (−1, 1] or window < 1.
    """

    name = "kappa"
    #: the rule needs the predicted effect of the chosen batch (the loop computes it only then).
    needs_effect = False

    def __init__(self, threshold: float = 0.99, window: int = 3):
        if not (math.isfinite(threshold) and -1.0 < threshold <= 1.0):
            raise ConfigError(f"stop rule kappa: threshold must be in (-1, 1], got {threshold}")
        if window < 1:
            raise ConfigError(f"stop rule kappa: window must be >= 1, got {window}")
        self.threshold, self.window = float(threshold), int(window)
        self.history: list[float] = []
        self.previous: np.ndarray | None = None
        self.num_classes = 0
        self.should_stop = False

    def update(self, predictions: np.ndarray | None = None, effect: float | None = None,
               num_classes: int | None = None) -> dict[str, Any]:
        """Take this round's predicted classes on the stop set; return the round's log entry.

        Args:
            predictions: (S,) int predicted classes of this round's model on the fixed stop set.
            effect: ignored (see :class:`PredictedChange`).
            num_classes: O (default: 1 + the largest class seen).

        Returns:
            {"value": κ with the previous round (None in the first round), "mean": mean of the
            last ``window`` κ (None until there are ``window``), "threshold", "window", "stop"}.

        Raises:
            ValueError: no predictions, or a stop set of another size than last round's.
        """
        if predictions is None:
            raise ValueError("stop rule kappa needs this round's predictions on the stop set")
        pred = np.asarray(predictions, dtype=np.int64)
        self.num_classes = max(self.num_classes, num_classes or 0, int(pred.max(initial=-1)) + 1)
        value = None
        if self.previous is not None:
            if self.previous.shape != pred.shape:
                raise ValueError(f"stop set changed size: {self.previous.size} then {pred.size} predictions")
            value = cohen_kappa(self.previous, pred, self.num_classes)
            self.history.append(value)
        self.previous = pred
        mean = float(np.mean(self.history[-self.window:])) if len(self.history) >= self.window else None
        self.should_stop = mean is not None and mean >= self.threshold
        return {"value": value, "mean": mean, "threshold": self.threshold, "window": self.window,
                "stop": self.should_stop}

    def reason(self, entry: dict[str, Any]) -> str:
        """One sentence saying why ``entry`` (from :meth:`update`) stopped the run."""
        return (f"kappa: the predictions of consecutive rounds on the stop set agreed with mean Cohen's "
                f"kappa {entry['mean']:.4f} over the last {self.window} rounds (>= {self.threshold:g})")

    def state_dict(self) -> dict[str, Any]:
        """Plain-type state for the run checkpoint."""
        return {"history": list(self.history), "num_classes": self.num_classes,
                "previous": None if self.previous is None else self.previous.tolist(), "stop": self.should_stop}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.history = [float(v) for v in state["history"]]
        self.num_classes = int(state["num_classes"])
        self.previous = None if state["previous"] is None else np.asarray(state["previous"], dtype=np.int64)
        self.should_stop = bool(state["stop"])


class PredictedChange:
    """Stop when the posterior predicts the next batch would change almost no prediction.

    The effect (:func:`predicted_change`): the fraction of the stop set whose predicted class
    the chosen batch would change under the linearized retraining (see the module docstring).

    Args:
        threshold: stop once the effect is < this, as a fraction of the stop set.
        window: in this many consecutive rounds.

    Raises:
        ConfigError: threshold not in (0, 1] or window < 1.
    """

    name = "change"
    needs_effect = True

    def __init__(self, threshold: float = 0.005, window: int = 2):
        if not (math.isfinite(threshold) and 0.0 < threshold <= 1.0):
            raise ConfigError(f"stop rule change: threshold must be in (0, 1], got {threshold}")
        if window < 1:
            raise ConfigError(f"stop rule change: window must be >= 1, got {window}")
        self.threshold, self.window = float(threshold), int(window)
        self.history: list[float | None] = []
        self.should_stop = False

    def update(self, predictions: np.ndarray | None = None, effect: float | None = None,
               num_classes: int | None = None) -> dict[str, Any]:
        """Take the predicted effect of the batch chosen this round; return the round's log entry.

        Args:
            predictions: ignored (see :class:`StabilizingPredictions`).
            effect: the predicted fraction of the stop set that changes (None: not measurable
                this round, e.g. an empty stop set; it never counts as below the threshold).
            num_classes: ignored.

        Returns:
            {"value", "threshold", "window", "stop"}.
        """
        value = None if effect is None or not math.isfinite(effect) else float(effect)
        self.history.append(value)
        last = self.history[-self.window:]
        self.should_stop = len(last) == self.window and all(v is not None and v < self.threshold for v in last)
        return {"value": value, "threshold": self.threshold, "window": self.window, "stop": self.should_stop}

    def reason(self, entry: dict[str, Any]) -> str:
        """One sentence saying why ``entry`` (from :meth:`update`) stopped the run."""
        rounds = "this round" if self.window == 1 else f"each of the last {self.window} rounds"
        return (f"change: the batch chosen in {rounds} was predicted to change fewer than {self.threshold:g} "
                f"of the stop set's predictions (last: {entry['value']:.4f})")

    def state_dict(self) -> dict[str, Any]:
        """Plain-type state for the run checkpoint."""
        return {"history": list(self.history), "stop": self.should_stop}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.history = [None if v is None else float(v) for v in state["history"]]
        self.should_stop = bool(state["stop"])


#: rule name -> class.
STOP_RULES = {cls.name: cls for cls in (StabilizingPredictions, PredictedChange)}


def parse_stop_rules(spec: str | None) -> list[StabilizingPredictions | PredictedChange]:
    """Rules from a spec ``NAME[:THRESHOLD[:WINDOW]][,...]`` (``none`` or empty: no rules).

    Raises:
        ConfigError: unknown rule, a repeated rule, or a malformed threshold / window.
    """
    if spec is None or spec.strip().lower() in ("", "none"):
        return []
    rules: list[Any] = []
    for part in spec.split(","):
        name, *args = [p.strip() for p in part.strip().split(":")]
        name = name.lower()
        if name not in STOP_RULES:
            raise ConfigError(f"--stop {spec}: unknown rule {name!r}; choose from {', '.join(STOP_RULES)} "
                              f"(NAME[:THRESHOLD[:WINDOW]], comma-separated)")
        if any(r.name == name for r in rules):
            raise ConfigError(f"--stop {spec}: rule {name!r} given twice")
        if len(args) > 2:
            raise ConfigError(f"--stop {spec}: {part.strip()!r} has more than THRESHOLD and WINDOW")
        kwargs: dict[str, Any] = {}
        try:
            if args and args[0]:
                kwargs["threshold"] = float(args[0])
            if len(args) == 2 and args[1]:
                kwargs["window"] = int(args[1])
        except ValueError:
            raise ConfigError(f"--stop {spec}: {part.strip()!r}: THRESHOLD must be a number and WINDOW an "
                              f"integer") from None
        rules.append(STOP_RULES[name](**kwargs))
    return rules


def draw_stop_set(pool_size: int, exclude: np.ndarray, size: int, seed: int) -> np.ndarray:
    """The fixed stop set: ``size`` pool ids not in ``exclude``, drawn once from (seed, -1, "stop-set").

    Args:
        pool_size: N.
        exclude: ids that may not be in it (the initial labeled set).
        size: how many (fewer when the pool has fewer).
        seed: the run seed.

    Returns:
        (min(size, N − len(exclude)),) int64 sorted ids.
    """
    rest = np.setdiff1d(np.arange(pool_size, dtype=np.int64), np.asarray(exclude, dtype=np.int64))
    take = min(int(size), len(rest))
    return np.sort(numpy_rng(seed, -1, STOP_SET).choice(rest, take, replace=False))


@torch.no_grad()
def predicted_change(ctx: Any, stop_ids: np.ndarray, batch_ids: np.ndarray, ridge_rel: float = 1e-3
                     ) -> dict[str, float | None]:
    """The predicted effect of labeling ``batch_ids`` on the stop set (see the module docstring).

    Uses the round's public posterior (:meth:`entk_al.round.context.RoundContext.posterior`, reference
    ``base``) on U = the stop set's unlabeled ids ∪ the batch, with the batch as candidates, and
    conditions on the whole batch at once: f_{L+Q}(U) = base + M_UQ (M_QQ + λI)⁻¹ (Y_Q − base_Q).

    Args:
        ctx: the round's :class:`~entk_al.round.context.RoundContext` (the strategy's, after selection).
        stop_ids: (S,) int64 the fixed stop set (labeled ones are left out here).
        batch_ids: (q,) int64 the ids the strategy chose this round.
        ridge_rel: λ relative to the kernel scale, as in the look-ahead.

    Returns:
        {"change": fraction of the stop set's unlabeled ids whose predicted class changes,
        "output_change": mean ‖f_{L+Q}(u) − base_u‖₂ over them, "size": how many were used};
        values None when none are usable.
    """
    stop = np.asarray(stop_ids, dtype=np.int64)
    batch = np.asarray(batch_ids, dtype=np.int64)
    stop = stop[~np.isin(stop, ctx.labeled_ids)]
    extra = batch[~np.isin(batch, stop)]
    post, u, cand = ctx.posterior(np.concatenate([stop, extra]), batch, ridge_rel=ridge_rel, reference="base")
    pos_of = {int(i): p for p, i in enumerate(u.tolist())}
    q_pos = torch.tensor([pos_of[int(i)] for i in cand.tolist()], dtype=torch.long)
    is_stop = torch.from_numpy(np.isin(u, stop))
    if not bool(is_stop.any()):
        return {"change": None, "output_change": None, "size": 0}
    base = post.base
    if len(cand):
        m_uq = torch.stack([post.column(int(p)) for p in q_pos.tolist()], dim=1)  # (m, q)
        chol, _ = cholesky_with_jitter(m_uq[q_pos], post.ridge_eff)
        f_q = ctx.logits(cand).to(torch.float64).cpu()
        y_q = torch.nn.functional.one_hot(f_q.argmax(dim=1), base.shape[1]).to(torch.float64)
        delta = m_uq @ torch.cholesky_solve(y_q - base[q_pos], chol)
    else:
        delta = torch.zeros_like(base)
    new = base + delta
    flips = (new.argmax(dim=1) != base.argmax(dim=1))[is_stop]
    return {"change": float(flips.to(torch.float64).mean()),
            "output_change": float(delta[is_stop].norm(dim=1).mean()), "size": int(is_stop.sum())}


class StopMonitor:
    """The stop rules of one run inside the loop: the stop set, the per-round log, the decision.

    Each round the loop calls :meth:`after_training` (predictions on the stop set: ``kappa``),
    and, when a rule needs it, the selection step calls :meth:`observe_selection` with the
    round context and the chosen batch and the loop then calls :meth:`after_selection`
    (``change``). Entries go to the round's record as ``record["stop"][rule]``. With action
    ``log`` the rules are only logged (and :meth:`summary` says when each would have stopped).

    Args:
        rules: rule objects (:func:`parse_stop_rules`).
        stop_ids: (S,) int64 the fixed stop set (:func:`draw_stop_set`).
        num_classes: O.
        action: ``stop`` (end the run when a rule fires) | ``log``.
    """

    def __init__(self, rules: list[Any], stop_ids: np.ndarray, num_classes: int, action: str = "stop"):
        if action not in STOP_ACTIONS:
            raise ConfigError(f"--stop-action must be one of {', '.join(STOP_ACTIONS)}, got {action!r}")
        self.rules, self.stop_ids, self.num_classes, self.action = rules, stop_ids, num_classes, action
        #: set when a rule ended the run: {"round", "n_labeled", "rule", "reason"}.
        self.stopped: dict[str, Any] | None = None
        #: rule name -> first round it said stop (with action ``log`` the run goes on).
        self.first_stop: dict[str, int] = {}
        self._effect: dict[str, Any] | None = None
        #: seconds :meth:`observe_selection` took in the last round (not the strategy's time).
        self.last_seconds = 0.0

    @classmethod
    def from_config(cls, cfg: Any, pool_size: int, initial_ids: np.ndarray, num_classes: int) -> "StopMonitor | None":
        """The run's monitor from ``cfg.stop``, ``cfg.stop_set`` and ``cfg.stop_action``; None without rules.

        Raises:
            ConfigError: a malformed rule spec or action.
        """
        rules = parse_stop_rules(getattr(cfg, "stop", None))
        if not rules:
            return None
        stop_ids = draw_stop_set(pool_size, initial_ids, cfg.stop_set, cfg.seed)
        return cls(rules, stop_ids, num_classes, cfg.stop_action)

    @property
    def needs_effect(self) -> bool:
        return any(r.needs_effect for r in self.rules) and self.stopped is None

    def _log(self, record: dict, rule: Any, entry: dict) -> bool:
        record.setdefault("stop", {})[rule.name] = entry
        if not entry["stop"]:
            return False
        self.first_stop.setdefault(rule.name, int(record["round"]))
        if self.action == "stop" and self.stopped is None:
            self.stopped = {"round": int(record["round"]), "n_labeled": int(record["n_labeled"]), "rule": rule.name,
                            "reason": rule.reason(entry)}
        return self.action == "stop"

    def after_training(self, record: dict, model: torch.nn.Module, x_pool: torch.Tensor,
                       device: torch.device | None = None) -> bool:
        """Update the prediction rules with this round's model; True if the run stops now."""
        from ..nets.models import predict

        stop = False
        if self.stopped is None and any(not r.needs_effect for r in self.rules) and len(self.stop_ids):
            pred = predict(model, x_pool[torch.from_numpy(self.stop_ids)], device=device).argmax(dim=1).cpu().numpy()
            for rule in (r for r in self.rules if not r.needs_effect):
                stop = self._log(record, rule, rule.update(predictions=pred, num_classes=self.num_classes)) or stop
        return stop

    def observe_selection(self, ctx: Any, queried: np.ndarray) -> None:
        """Compute the predicted effect of the chosen batch with the round's context (before labeling)."""
        import time

        t0 = time.perf_counter()
        self._effect = predicted_change(ctx, self.stop_ids, queried) if self.needs_effect else None
        self.last_seconds = time.perf_counter() - t0

    def after_selection(self, record: dict) -> bool:
        """Update the effect rules with the batch chosen this round; True if the run stops (unlabeled)."""
        if self._effect is None:
            return False
        effect, self._effect = self._effect, None
        stop = False
        for rule in (r for r in self.rules if r.needs_effect):
            entry = rule.update(effect=effect["change"])
            entry["output_change"], entry["stop_set"] = effect["output_change"], effect["size"]
            stop = self._log(record, rule, entry) or stop
        record["stop_seconds"] = self.last_seconds
        return stop

    def summary(self) -> dict[str, Any]:
        """For summary.json: {"stopped": ... or None, "would_stop": {rule: first round or None}, "stop_set": S}."""
        return {"stopped": self.stopped, "stop_set": int(len(self.stop_ids)),
                "would_stop": {r.name: self.first_stop.get(r.name) for r in self.rules}}

    def state_dict(self) -> dict[str, Any]:
        """Plain-type state for the run checkpoint."""
        return {"rules": {r.name: r.state_dict() for r in self.rules}, "stopped": self.stopped,
                "first_stop": dict(self.first_stop)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (rules missing from it start fresh)."""
        for rule in self.rules:
            if rule.name in state["rules"]:
                rule.load_state_dict(state["rules"][rule.name])
        self.stopped = state["stopped"]
        self.first_stop = {k: int(v) for k, v in state["first_stop"].items()}
