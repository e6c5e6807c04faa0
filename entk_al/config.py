"""Run configuration: one dataclass, filled from defaults, a TOML file, then CLI flags."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class RunConfig:
    """Everything that determines a run. Saved as ``config.json`` in the run directory.

    Budget: ``initial + query * rounds`` labels. Round r = 0..rounds trains on
    ``initial + r * query`` labels and evaluates on the test split; rounds < ``rounds`` then
    query ``query`` new labels. The field defaults are the CLI's defaults (:func:`default`).

    Attributes:
        strategy: built-in name, plugin name, ``module:Class`` or ``file.py:Class``.
        strategy_options: keyword options of the strategy (``-o key=value``).
        dataset: dataset name, ``numpy:PATH.npz`` or ``folder:PATH``.
        data_dir: folder holding dataset files (None: ``$ENTK_AL_DATA``, then system paths).
        download: allow torchvision downloads.
        model: ``mlp``, ``cnn``, ``resnet18``, ``wide_resnet`` or ``wide_resnet2``.
        width: model width (hidden units / first conv channels); None: the model's default.
        initial: size of the seeded random initial labeled set.
        query: labels queried per round.
        rounds: number of query rounds.
        subset: size of the random candidate subset of the pool drawn each round.
        seed: run seed; every random choice derives from (seed, round, component).
        retrain: ``warm`` (continue from the last round's weights) or ``scratch``.
        loss: ``mse`` (one-hot squared loss) or ``ce``.
        epochs: epochs over the labeled set per round.
        min_steps: minimum optimizer steps per round.
        batch_size: training batch size.
        lr: OneCycle maximum learning rate.
        weight_decay: SGD weight decay.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        threads: CPU threads for training; 0 = automatic.
        oracle: ``simulated`` (ground truth) or ``files`` (a person labels CSV files).
        executor: where pool scans run: ``local`` (this process) or ``ray`` (shard actors;
            ``pip install entk-al[ray]``). Both select the same ids (:mod:`entk_al.executor`).
        address: Ray cluster, ``auto`` or ``HOST:PORT``; None starts a private local cluster.
        workers: Ray shard actors.
        gpus_per_worker: GPUs per Ray actor (0: CPU shards).
        cpus_per_worker: CPUs per Ray actor (its torch threads, at least 1).
        stop: stop rules, ``NAME[:THRESHOLD[:WINDOW]]`` comma-separated (``kappa``,
            ``change``; :mod:`entk_al.stopping`), or None / ``none`` for none.
        stop_set: size of the fixed seeded unlabeled stop set the rules are measured on.
        stop_action: ``stop`` (end the run when a rule fires) or ``log`` (only log the rules).
    """

    strategy: str = "lookahead"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    model: str = "mlp"
    width: int | None = None
    initial: int = 20
    query: int = 10
    rounds: int = 10
    subset: int = 4000
    seed: int = 0
    retrain: str = "warm"
    loss: str = "mse"
    epochs: int = 20
    min_steps: int = 200
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 1e-4
    device: str = "auto"
    threads: int = 0
    oracle: str = "simulated"
    executor: str = "local"
    address: str | None = None
    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    stop: str | None = None
    stop_set: int = 2000
    stop_action: str = "stop"

    def validate(self) -> "RunConfig":
        """Check value ranges (not dataset-dependent ones). Raises ConfigError."""
        positive = {"query": self.query, "subset": self.subset, "epochs": self.epochs,
                    "batch_size": self.batch_size}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.initial < 2:
            raise ConfigError(f"--initial must be >= 2, got {self.initial}")
        for name in ("rounds", "min_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.threads < 0:
            raise ConfigError(f"--threads must be >= 0 (0 = automatic), got {self.threads}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.retrain not in ("warm", "scratch"):
            raise ConfigError(f"--retrain must be 'warm' or 'scratch', got {self.retrain!r}")
        if self.loss not in ("mse", "ce"):
            raise ConfigError(f"--loss must be 'mse' or 'ce', got {self.loss!r}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"--device must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.width is not None and self.width < 1:
            raise ConfigError(f"--width must be >= 1, got {self.width}")
        if self.oracle not in ("simulated", "files"):
            raise ConfigError(f"--oracle must be 'simulated' or 'files', got {self.oracle!r}")
        check_seed(self.seed, "--seed")
        self._validate_executor()
        if self.stop_set < 1:
            raise ConfigError(f"--stop-set must be >= 1, got {self.stop_set}")
        if self.stop_action not in ("stop", "log"):
            raise ConfigError(f"--stop-action must be 'stop' or 'log', got {self.stop_action!r}")
        if self.subset < self.query:
            raise ConfigError(f"--subset ({self.subset}) must be >= --query ({self.query}): the strategy "
                              f"selects the queries from the candidate subset")
        return self

    def _validate_executor(self) -> None:
        if self.executor not in ("local", "ray"):
            raise ConfigError(f"--executor must be 'local' or 'ray', got {self.executor!r}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        check_finite(self.gpus_per_worker, "--gpus-per-worker")
        check_finite(self.cpus_per_worker, "--cpus-per-worker", strict=True)
        if self.address is not None and self.address != "auto":
            host, _, port = self.address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"--address must be 'auto' or HOST:PORT (e.g. 10.0.0.1:6379), got {self.address!r}")

    @property
    def budget(self) -> int:
        return self.initial + self.query * self.rounds

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def differing_options(self, saved: dict[str, Any], ignore: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Names of options whose value in ``saved`` (a stored config) differs from this one.

        A key missing from ``saved`` (written by an older entk-al) counts as its default.
        """
        defaults = RunConfig().to_dict()
        now = self.to_dict()
        return sorted(k for k in now if k not in ignore and saved.get(k, defaults[k]) != now[k])

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "RunConfig":
        """Build from a mapping; unknown keys raise ConfigError naming the source."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}")
        for f in fields(cls):
            if f.name in data:
                data = {**data, f.name: _check_type(f.name, data[f.name], f.type, source)}
        return cls(**data)


#: Python types accepted for each annotation of RunConfig (ints are accepted for floats).
_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "dict[str, Any]": (dict,)}


def _check_type(name: str, value: Any, annotation: str, source: str) -> Any:
    """Check a config value against its annotation; raise ConfigError naming the option."""
    optional = annotation.endswith("| None")
    base = annotation.removesuffix("| None").strip()
    if value is None and optional:
        return None
    allowed = _TYPES.get(base)
    # bool is an int subclass: "rounds = true" must not pass as an int.
    if allowed is None or (isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)):
        return float(value) if base == "float" else value
    raise ConfigError(f"{source}: option {name!r} must be {base}, got {type(value).__name__} {value!r}")


def check_seed(seed: int, name: str = "--seed") -> int:
    """``seed`` if it is an integer in [0, 2**63) (every bit is used; see :mod:`entk_al.seeding`).

    Args:
        seed: the seed to check.
        name: how the option is called in the error message.

    Raises:
        ConfigError: not an integer, negative, or 2**63 or more.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ConfigError(f"{name} must be an integer in [0, 2**63), got {seed!r}")
    return seed


def check_finite(value: float, name: str, *, low: float = 0.0, strict: bool = False) -> float:
    """``value`` if it is a finite number >= ``low`` (> ``low`` when ``strict``).

    Args:
        value: the number to check.
        name: how the option is called in the error message.
        low: smallest allowed value.
        strict: require ``value > low``.

    Raises:
        ConfigError: NaN, infinite or out of range.
    """
    ok = math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        raise ConfigError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value}")
    return value


def load_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """Read the TOML config file at ``path`` (keys as in :class:`RunConfig`, dashes allowed).

    Args:
        path: the TOML file.
        what: how the file is called in error messages (``"config file"``, ``"protocol"``).

    Raises:
        ConfigError: missing file or invalid TOML.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory, not a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not valid TOML: not UTF-8 text") from None
    return {k.replace("-", "_"): v for k, v in data.items()}


#: Run-command keys a TOML config may hold that are not part of RunConfig.
TOML_CLI_ONLY = frozenset({"out", "quiet", "overwrite"})


def default(name: str) -> Any:
    """The default value of the :class:`RunConfig` field ``name`` (help texts and commands read it here).

    Raises:
        KeyError: ``name`` is not a RunConfig field.
    """
    f = RunConfig.__dataclass_fields__[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def resolve_config(config_file: Path | None, flags: dict[str, Any],
                   resume_dir: Path | None = None) -> tuple[RunConfig, dict[str, Any]]:
    """Layer the run configuration: defaults < saved config of a resumed run < TOML < CLI flags.

    The TOML file is read once; its keys that belong to the command, not to the run
    (:data:`TOML_CLI_ONLY`: ``out``, ``quiet``, ``overwrite``), come back separately.

    Args:
        config_file: TOML file (``--config``), or None.
        flags: option name -> value as given on the command line; None means "not given".
            ``strategy_options`` given here override single keys of the file's table.
        resume_dir: run directory whose ``config.json`` is the base (``--resume``), or None.

    Returns:
        (the validated :class:`RunConfig`, the TOML's command-only keys).

    Raises:
        ConfigError: missing or corrupted ``config.json``, unreadable TOML, unknown or
            mistyped options, values out of range.
    """
    data: dict[str, Any] = {}
    if resume_dir is not None:
        saved = resume_dir / "config.json"
        if not resume_dir.exists():
            raise ConfigError(f"--resume {resume_dir} does not exist")
        if not resume_dir.is_dir():
            raise ConfigError(f"--resume {resume_dir} is a file, not a run directory")
        if not saved.is_file():
            raise ConfigError(f"--resume {resume_dir}: no config.json there; is it a run directory?")
        try:
            data.update(json.loads(saved.read_text()))
        except json.JSONDecodeError:
            raise ConfigError(f"{saved} is corrupted (not JSON)") from None
    command_only: dict[str, Any] = {}
    if config_file is not None:
        toml = load_toml(config_file)
        command_only = {k: v for k, v in toml.items() if k in TOML_CLI_ONLY}
        data.update({k: v for k, v in toml.items() if k not in TOML_CLI_ONLY})
    given = {k: v for k, v in flags.items() if v is not None}
    # -o key=value overrides single strategy options; it does not replace the whole table.
    if isinstance(data.get("strategy_options"), dict) and "strategy_options" in given:
        given["strategy_options"] = {**data["strategy_options"], **given["strategy_options"]}
    data.update(given)
    cfg = RunConfig.from_dict(data, source=str(config_file or "options")).validate()
    return cfg, command_only


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """Parse ``pairs`` of ``key=value`` strategy options; values are Python literals when they parse.

    Raises:
        ConfigError: an item without ``=``.
    """
    out: dict[str, Any] = {}
    for item in pairs:
        if "=" not in item:
            raise ConfigError(f"strategy option {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        try:
            value: Any = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out[key.strip().replace("-", "_")] = value
    return out
