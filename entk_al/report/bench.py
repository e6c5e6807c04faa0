"""Benchmark grids: strategies × seeds × query sizes from one TOML protocol, resumable.

A protocol file (see ``protocols/*.toml``)::

    name = "digits-quick"            # default output folder: runs/<name>
    description = "..."
    strategies = ["random", "entropy", "lookahead"]
    seeds = 3                        # seed indices 0..seeds-1
    base_seed = 0                    # run seeds derive from (base_seed, seed index)
    queries = [10, 20]               # optional; default: run.query
    [run]                            # any RunConfig option except strategy and seed
    dataset = "digits"
    initial = 20
    rounds = 10
    [strategy_options.bald]          # optional per-strategy options
    samples = 20
    [variants.lookahead-flip]        # optional: a named base strategy + options, listed in
    strategy = "lookahead"           # ``strategies`` like any other name
    acquisition = "flip"

Each run gets its own directory ``<out>/<name>-q<query>-seed<index>`` (``name`` with
characters other than letters, digits, ``_`` and ``.`` replaced by ``_``) holding the same
files as ``entk-al run`` plus ``bench.json`` (``label``: the strategy or variant name the
plots group by, ``seed_index``). A variant's options are those of
``[strategy_options.<base>]`` updated by its own table, and it gets the same seeds as every
other name in the grid. On a rerun, finished runs (``summary.json`` present) are skipped,
and a run with only a checkpoint resumes from its last completed round; because every RNG is
keyed by (seed, round, component), it ends with the same results as an uninterrupted run.
The grid runs seed index by seed index, so a grid stopped early still compares the
strategies on the same seeds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..data import ALDataset, load_dataset
from ..errors import ConfigError, StrategyError
from ..fileio import write_json
from ..progress import NullProgress
from ..run.checkpoint import CHECKPOINT, RESUMABLE_CHANGES
from ..run.config import RunConfig, check_seed, load_toml
from ..run.loop import ActiveLearningLoop
from ..run.plugins import available_strategies, load_strategy
from ..runlock import run_folder_lock
from ..seeding import BENCH, int_seed
from .curve import plot_curve

PROTOCOL_KEYS = {"name", "description", "strategies", "seeds", "base_seed", "queries", "run", "strategy_options",
                 "variants"}
#: Per-run file the runner writes next to config.json; read by :mod:`entk_al.report.plot`.
BENCH_INFO = "bench.json"


def derive_seed(base_seed: int, index: int) -> int:
    """Run seed for seed index ``index``: a 31-bit int from the (base_seed, index, "bench") stream.

    Every strategy gets the same seed at the same index, so runs are paired: the same initial
    labeled set, model initialization and candidate draws before the first query.
    """
    return int_seed(base_seed, index, BENCH) & 0x7FFFFFFF


@dataclass
class Protocol:
    """A parsed benchmark protocol; see the module docstring for the file format.

    Attributes:
        name: protocol name (default output folder ``runs/<name>``).
        strategies: strategy or variant names of the grid.
        seeds: number of seed indices, 0..seeds-1.
        run: RunConfig options shared by every run (not strategy or seed).
        base_seed: run seeds derive from (base_seed, seed index).
        queries: query sizes of the grid, or None for ``run["query"]``.
        strategy_options: strategy name -> its options.
        description: free text.
        variants: variant name -> {"strategy": base strategy spec, **options}.
    """

    name: str
    strategies: list[str]
    seeds: int
    run: dict[str, Any]
    base_seed: int = 0
    queries: list[int] | None = None
    strategy_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    #: variant name -> {"strategy": base strategy spec, **options}
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | Path) -> "Protocol":
        """Read and validate a protocol TOML file.

        Raises:
            ConfigError: missing file, invalid TOML, unknown keys or invalid values.
        """
        path = Path(path)
        data = load_toml(path, "protocol")
        unknown = sorted(set(data) - PROTOCOL_KEYS)
        if unknown:
            raise ConfigError(f"protocol {path}: unknown key(s) {', '.join(unknown)}; "
                              f"allowed: {', '.join(sorted(PROTOCOL_KEYS))}")
        for key in ("strategies", "seeds", "run"):
            if key not in data:
                raise ConfigError(f"protocol {path}: missing required key {key!r}")
        run = {k.replace("-", "_"): v for k, v in dict(data["run"]).items()}
        opts = {k: dict(v) for k, v in dict(data.get("strategy_options", {})).items()}
        variants = data.get("variants", {})
        if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
            raise ConfigError(f"protocol {path}: [variants.NAME] must be tables (strategy = ..., options)")
        proto = cls(name=str(data.get("name", path.stem)), strategies=list(data["strategies"]),
                    seeds=data["seeds"], run=run, base_seed=data.get("base_seed", 0),
                    queries=data.get("queries"), strategy_options=opts,
                    description=str(data.get("description", "")),
                    variants={k: dict(v) for k, v in variants.items()})
        return proto.validate(str(path))

    def validate(self, source: str = "protocol") -> "Protocol":
        """Check the grid's shape and every run's options. Raises ConfigError."""
        if not self.strategies or not all(isinstance(s, str) for s in self.strategies):
            raise ConfigError(f"{source}: 'strategies' must be a non-empty list of names")
        if len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"{source}: 'strategies' lists a name twice")
        if not isinstance(self.seeds, int) or self.seeds < 1:
            raise ConfigError(f"{source}: 'seeds' must be an integer >= 1, got {self.seeds!r}")
        check_seed(self.base_seed, f"{source}: 'base_seed'")
        for key in ("strategy", "seed", "strategy_options"):
            if key in self.run:
                raise ConfigError(f"{source}: [run] must not set {key!r}; the grid sets it")
        if self.queries is not None:
            if "query" in self.run:
                raise ConfigError(f"{source}: give either 'queries' or [run] query, not both")
            if not self.queries or not all(isinstance(q, int) and q >= 1 for q in self.queries):
                raise ConfigError(f"{source}: 'queries' must be a non-empty list of integers >= 1")
        self._validate_variants(source)
        bases = {v["strategy"] for v in self.variants.values()}
        stray = sorted(set(self.strategy_options) - set(self.strategies) - bases)
        if stray:
            raise ConfigError(f"{source}: [strategy_options] for strategies not in the grid: {', '.join(stray)}")
        dirs: dict[str, str] = {}
        for name in self.strategies:
            other = dirs.setdefault(_safe(name), name)
            if other != name:
                raise ConfigError(f"{source}: strategies {other!r} and {name!r} would share run folders "
                                  f"({_safe(name)}-q...); rename one")
        for cfg in (spec.config for spec in self.grid()):
            RunConfig.from_dict(cfg.to_dict(), source=source).validate()
        from ..run.stopping import parse_stop_rules

        if parse_stop_rules(self.run.get("stop")) and self.run.get("stop_action", "stop") != "log":
            raise ConfigError(f"{source}: [run] stop rules would end runs early, and a grid compares strategies "
                              f"over one budget; add stop_action = \"log\" to only log them")
        return self

    def _validate_variants(self, source: str) -> None:
        """Each variant: listed in ``strategies``, a real base strategy, options it accepts.

        Raises:
            ConfigError: malformed or unused variant, name clash, variant of a variant.
            StrategyError: unknown base strategy or an option it refuses (from load_strategy).
        """
        unused = sorted(set(self.variants) - set(self.strategies))
        if unused:
            raise ConfigError(f"{source}: [variants] not listed in 'strategies': {', '.join(unused)}")
        builtin = set(available_strategies())
        for name, table in self.variants.items():
            base = table.get("strategy")
            if not isinstance(base, str) or not base:
                raise ConfigError(f"{source}: [variants.{name}] needs strategy = \"<base strategy>\"")
            if name in builtin:
                raise ConfigError(f"{source}: variant name {name!r} is already a strategy's name; pick another")
            if base in self.variants:
                raise ConfigError(f"{source}: [variants.{name}] is based on variant {base!r}; "
                                  f"name a strategy instead")
            if name in self.strategy_options:
                raise ConfigError(f"{source}: give variant {name!r}'s options in [variants.{name}], "
                                  f"not [strategy_options.{name}]")
            # Fail here, before any run: unknown base or options it refuses raise StrategyError.
            try:
                load_strategy(base, self.options_for(name))
            except StrategyError as exc:
                raise StrategyError(f"{source}: [variants.{name}]: {exc}") from None

    def base_strategy(self, name: str) -> str:
        """The strategy spec run for grid name ``name`` (itself unless it is a variant)."""
        return self.variants[name]["strategy"] if name in self.variants else name

    def options_for(self, name: str) -> dict[str, Any]:
        """Strategy options of grid name ``name``: a variant's table over its base's options."""
        if name not in self.variants:
            return dict(self.strategy_options.get(name, {}))
        own = {k: v for k, v in self.variants[name].items() if k != "strategy"}
        return dict(self.strategy_options.get(self.base_strategy(name), {}), **own)

    def grid(self) -> list["RunSpec"]:
        """All runs, seed index outermost (then query size, then strategy)."""
        queries = self.queries or [int(self.run.get("query", RunConfig.query))]
        specs = []
        for index in range(self.seeds):
            for q in queries:
                for label in self.strategies:
                    # The seed depends on the seed index only, never on the name's position, so
                    # adding a strategy or variant leaves every other run (and its folder) unchanged.
                    data = dict(self.run, strategy=self.base_strategy(label), seed=derive_seed(self.base_seed, index),
                                query=q, strategy_options=self.options_for(label))
                    cfg = RunConfig.from_dict(data, source=f"protocol {self.name}")
                    specs.append(RunSpec(f"{_safe(label)}-q{q}-seed{index}", index, cfg, label))
        return specs


@dataclass
class RunSpec:
    """One cell of the grid.

    Attributes:
        name: its directory name under the grid folder.
        seed_index: the seed index (0..seeds-1).
        config: the full run configuration.
        label: the strategy or variant name the plots group by (default: the strategy).
    """

    name: str
    seed_index: int
    config: RunConfig
    #: strategy or variant name the plots group by
    label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or self.config.strategy


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_." else "_" for c in Path(text).stem if c != ":") or "strategy"


def run_state(run_dir: Path, cfg: RunConfig) -> str:
    """State of the run in ``run_dir`` made with ``cfg``: ``"done"``, ``"partial"`` (a checkpoint
    to resume) or ``"new"``.

    Raises:
        ConfigError: the directory holds a run made with different options.
    """
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        return "new"
    try:
        saved = json.loads(saved_path.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"{saved_path} is corrupted (not JSON); delete {run_dir} to rerun it") from None
    diff = cfg.differing_options(saved, RESUMABLE_CHANGES)
    if diff:
        raise ConfigError(f"{run_dir} holds a run with different options ({', '.join(diff)}); "
                          f"use another output folder or delete it")
    if (run_dir / "summary.json").is_file() and saved.get("rounds") == cfg.rounds:
        return "done"
    return "partial" if (run_dir / CHECKPOINT).is_file() else "new"


class BenchRunner:
    """Runs a protocol's grid into ``out_dir``, skipping finished runs and resuming partial ones.

    Args:
        protocol: the parsed protocol.
        out_dir: the grid folder (created).
        overrides: RunConfig options applied to every run (e.g. ``{"device": "cpu"}``).

    Raises (from :meth:`prepare`):
        ConfigError / StrategyError / DataNotFoundError: before any run starts.
    """

    def __init__(self, protocol: Protocol, out_dir: str | Path, overrides: dict[str, Any] | None = None):
        self.protocol = protocol
        self.out_dir = Path(out_dir)
        self.specs = protocol.grid()
        if overrides:
            self.specs = [RunSpec(s.name, s.seed_index,
                                  RunConfig.from_dict(dict(s.config.to_dict(), **overrides), "options").validate(),
                                  s.label)
                          for s in self.specs]
        self._datasets: dict[tuple, ALDataset] = {}

    def prepare(self) -> dict[str, str]:
        """Fail fast: load every strategy and dataset and check every run directory.

        Returns:
            run name -> state (``"done"``, ``"partial"``, ``"new"``).

        Raises:
            ConfigError: also for a dataset without a test split (a grid compares strategies
                by test accuracy).
        """
        for spec in self.specs:
            load_strategy(spec.config.strategy, spec.config.strategy_options)
            data = self.dataset_for(spec.config)
            if not data.has_test_split:
                raise ConfigError(f"protocol {self.protocol.name}: dataset {spec.config.dataset} has no test split, "
                                  f"and a grid compares strategies by test accuracy; add a test split, or run "
                                  f"single runs with entk-al run")
        return {s.name: run_state(self.out_dir / s.name, s.config) for s in self.specs}

    def dataset_for(self, cfg: RunConfig) -> ALDataset:
        key = (cfg.dataset, cfg.data_dir, cfg.download)
        if key not in self._datasets:
            self._datasets[key] = load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
        return self._datasets[key]

    def run(self, *, on_start: Callable[[RunSpec, str], None] | None = None,
            on_round: Callable[[RunSpec, dict], None] | None = None,
            progress: NullProgress | None = None) -> dict[str, str]:
        """Run every unfinished cell of the grid in order.

        ``on_start(spec, state)`` is called for every cell (also skipped ones, state
        ``"done"``); ``on_round(spec, record)`` after each completed round; ``progress`` (a
        reporter of :mod:`entk_al.progress`) shows each run's rounds, training and kernels.

        Returns:
            run name -> state it had before this call.
        """
        states = self.prepare()
        for spec in self.specs:
            run_dir = self.out_dir / spec.name
            # Each cell is locked while it runs (entk_al.runlock): a second bench on this grid, or
            # an `entk-al run --resume` of the cell, stops in one line instead of overwriting it.
            with run_folder_lock(run_dir):
                state = run_state(run_dir, spec.config)  # again, under the lock
                if on_start:
                    on_start(spec, state)
                info = {"label": spec.label, "seed_index": spec.seed_index, "protocol": self.protocol.name}
                if state != "done" or not (run_dir / BENCH_INFO).is_file():
                    write_json(run_dir / BENCH_INFO, info)
                if state == "done":
                    continue
                loop = ActiveLearningLoop(spec.config, run_dir, dataset=self.dataset_for(spec.config),
                                          curve_writer=plot_curve, progress=progress)
                loop.run(resume=state == "partial",
                         on_round=(lambda rec, spec=spec: on_round(spec, rec)) if on_round else None)
        return states
