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

Each run gets its own directory ``<out>/<strategy>-q<query>-seed<index>`` holding the same
files as ``entk-al run``. On a rerun, finished runs (``summary.json`` present) are skipped,
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

from .config import RunConfig, load_toml
from .data import ALDataset, load_dataset
from .errors import ConfigError
from .loop import CHECKPOINT, RESUMABLE_CHANGES, ActiveLearningLoop
from .plugins import load_strategy
from .seeding import int_seed

PROTOCOL_KEYS = {"name", "description", "strategies", "seeds", "base_seed", "queries", "run", "strategy_options"}


def derive_seed(base_seed: int, index: int) -> int:
    """Run seed for seed index ``index``: a 31-bit int from the (base_seed, index, "bench") stream.

    Every strategy gets the same seed at the same index, so runs are paired: the same initial
    labeled set, model initialization and candidate draws before the first query.
    """
    return int_seed(base_seed, index, "bench") & 0x7FFFFFFF


@dataclass
class Protocol:
    """A parsed benchmark protocol; see the module docstring for the file format."""

    name: str
    strategies: list[str]
    seeds: int
    run: dict[str, Any]
    base_seed: int = 0
    queries: list[int] | None = None
    strategy_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""

    @classmethod
    def from_file(cls, path: str | Path) -> "Protocol":
        """Read and validate a protocol TOML file.

        Raises:
            ConfigError: missing file, invalid TOML, unknown keys or invalid values.
        """
        path = Path(path)
        data = load_toml(path)
        unknown = sorted(set(data) - PROTOCOL_KEYS)
        if unknown:
            raise ConfigError(f"protocol {path}: unknown key(s) {', '.join(unknown)}; "
                              f"allowed: {', '.join(sorted(PROTOCOL_KEYS))}")
        for key in ("strategies", "seeds", "run"):
            if key not in data:
                raise ConfigError(f"protocol {path}: missing required key {key!r}")
        run = {k.replace("-", "_"): v for k, v in dict(data["run"]).items()}
        opts = {k: dict(v) for k, v in dict(data.get("strategy_options", {})).items()}
        proto = cls(name=str(data.get("name", path.stem)), strategies=list(data["strategies"]),
                    seeds=data["seeds"], run=run, base_seed=data.get("base_seed", 0),
                    queries=data.get("queries"), strategy_options=opts,
                    description=str(data.get("description", "")))
        return proto.validate(str(path))

    def validate(self, source: str = "protocol") -> "Protocol":
        """Check the grid's shape and every run's options. Raises ConfigError."""
        if not self.strategies or not all(isinstance(s, str) for s in self.strategies):
            raise ConfigError(f"{source}: 'strategies' must be a non-empty list of names")
        if len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"{source}: 'strategies' lists a name twice")
        if not isinstance(self.seeds, int) or self.seeds < 1:
            raise ConfigError(f"{source}: 'seeds' must be an integer >= 1, got {self.seeds!r}")
        if not isinstance(self.base_seed, int):
            raise ConfigError(f"{source}: 'base_seed' must be an integer")
        for key in ("strategy", "seed", "strategy_options"):
            if key in self.run:
                raise ConfigError(f"{source}: [run] must not set {key!r}; the grid sets it")
        if self.queries is not None:
            if "query" in self.run:
                raise ConfigError(f"{source}: give either 'queries' or [run] query, not both")
            if not self.queries or not all(isinstance(q, int) and q >= 1 for q in self.queries):
                raise ConfigError(f"{source}: 'queries' must be a non-empty list of integers >= 1")
        stray = sorted(set(self.strategy_options) - set(self.strategies))
        if stray:
            raise ConfigError(f"{source}: [strategy_options] for strategies not in the grid: {', '.join(stray)}")
        for cfg in (spec.config for spec in self.grid()):
            RunConfig.from_dict(cfg.to_dict(), source=source).validate()
        return self

    def grid(self) -> list["RunSpec"]:
        """All runs, seed index outermost (then query size, then strategy)."""
        queries = self.queries or [int(self.run.get("query", RunConfig.query))]
        specs = []
        for index in range(self.seeds):
            for q in queries:
                for strategy in self.strategies:
                    data = dict(self.run, strategy=strategy, seed=derive_seed(self.base_seed, index), query=q,
                                strategy_options=dict(self.strategy_options.get(strategy, {})))
                    cfg = RunConfig.from_dict(data, source=f"protocol {self.name}")
                    specs.append(RunSpec(f"{_safe(strategy)}-q{q}-seed{index}", index, cfg))
        return specs


@dataclass
class RunSpec:
    """One cell of the grid: its directory name, seed index and full configuration."""

    name: str
    seed_index: int
    config: RunConfig


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_." else "_" for c in Path(text).stem if c != ":") or "strategy"


def run_state(run_dir: Path, cfg: RunConfig) -> str:
    """``"done"``, ``"partial"`` (a checkpoint to resume) or ``"new"``.

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
    now = cfg.to_dict()
    diff = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
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
                                  RunConfig.from_dict(dict(s.config.to_dict(), **overrides), "options").validate())
                          for s in self.specs]
        self._datasets: dict[tuple, ALDataset] = {}

    def prepare(self) -> dict[str, str]:
        """Fail fast: load every strategy and dataset and check every run directory.

        Returns:
            run name -> state (``"done"``, ``"partial"``, ``"new"``).
        """
        for spec in self.specs:
            load_strategy(spec.config.strategy, spec.config.strategy_options)
            self.dataset_for(spec.config)
        return {s.name: run_state(self.out_dir / s.name, s.config) for s in self.specs}

    def dataset_for(self, cfg: RunConfig) -> ALDataset:
        key = (cfg.dataset, cfg.data_dir, cfg.download)
        if key not in self._datasets:
            self._datasets[key] = load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
        return self._datasets[key]

    def run(self, *, on_start: Callable[[RunSpec, str], None] | None = None,
            on_round: Callable[[RunSpec, dict], None] | None = None) -> dict[str, str]:
        """Run every unfinished cell of the grid in order.

        ``on_start(spec, state)`` is called for every cell (also skipped ones, state
        ``"done"``); ``on_round(spec, record)`` after each completed round.

        Returns:
            run name -> state it had before this call.
        """
        states = self.prepare()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for spec in self.specs:
            state = states[spec.name]
            if on_start:
                on_start(spec, state)
            if state == "done":
                continue
            loop = ActiveLearningLoop(spec.config, self.out_dir / spec.name, dataset=self.dataset_for(spec.config))
            loop.run(resume=state == "partial",
                     on_round=(lambda rec, spec=spec: on_round(spec, rec)) if on_round else None)
        return states
