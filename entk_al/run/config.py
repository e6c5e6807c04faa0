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

from ..errors import ConfigError
from ..executor.factory import RAY_DEFAULTS
from ..nets.train import DEFAULT_LR, TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


#: Per-model defaults of options the user did not set. With the MLP's 0.05 and the squared
#: loss, the BatchNorm ResNets diverge or stall on small labeled sets; at 0.01 they train.
#: Measured on digits (200 steps, seed 0, test accuracy after round-0 training): resnet18 with
#: 20 labels NaN loss at 0.05, 50% at 0.01; with 100 labels 15% at 0.05, 80% at 0.01;
#: wide_resnet2 (width 640) with 20 labels 14% at 0.05, 65% at 0.01.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "resnet18": {"lr": 0.01},
    "wide_resnet": {"lr": 0.01},
    "wide_resnet2": {"lr": 0.01},
}


def model_default(name: str, model: str) -> Any:
    """The default of option ``name`` for ``model``: its :data:`MODEL_DEFAULTS` entry, else
    the :class:`RunConfig` field's default (``lr``: :data:`DEFAULT_LR`).

    Args:
        name: a RunConfig field, e.g. ``"lr"``.
        model: a model name (``mlp``, ``resnet18``, ...).

    Raises:
        KeyError: ``name`` is not a RunConfig field.
    """
    if name in MODEL_DEFAULTS.get(model, {}):
        return MODEL_DEFAULTS[model][name]
    value = default(name)
    return DEFAULT_LR if name == "lr" and value is None else value


def lr_default_text() -> str:
    """The ``--lr`` default for help texts and the README: ``0.05; 0.01 for resnet18, ...``."""
    by_lr: dict[float, list[str]] = {}
    for model, opts in MODEL_DEFAULTS.items():
        if "lr" in opts:
            by_lr.setdefault(opts["lr"], []).append(model)
    return "; ".join([f"{DEFAULT_LR:g}"] + [f"{lr:g} for {', '.join(models)}" for lr, models in by_lr.items()])


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
        model: ``mlp``, ``cnn``, ``resnet18``, ``wide_resnet`` or ``wide_resnet2``, or a user's
            class ``module:Class`` / ``path/file.py:Class``, built as ``Class(input_shape,
            num_classes)`` (plus ``width=`` when ``width`` is set; :func:`entk_al.nets.models.build_model`).
        width: model width (hidden units / first conv channels); None: the model's default.
        initial: size of the seeded random initial labeled set.
        query: labels queried per round.
        rounds: number of query rounds.
        subset: size of the random candidate subset of the pool drawn each round.
        seed: run seed; every random choice derives from (seed, round, component).
        retrain: ``warm`` (continue from the last round's weights) or ``scratch``.
        loss: ``mse`` (one-hot squared loss) or ``ce``.
        train: a user's training function ``module:function`` / ``path/file.py:function`` that
            replaces the built-in recipe (:func:`entk_al.run.setup.call_train_fn` documents its
            signature), or None.
        epochs: epochs over the labeled set per round.
        min_steps: minimum optimizer steps per round.
        batch_size: training batch size.
        lr: OneCycle maximum learning rate; None (not set): the model's default,
            :func:`model_default` (0.05 for mlp and cnn, 0.01 for the BatchNorm ResNets).
        weight_decay: SGD weight decay.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        threads: CPU threads for training; 0 = automatic.
        oracle: ``simulated`` (ground truth), ``files`` (a person labels CSV files) or
            ``label-studio`` (annotators label tasks in a Label Studio project; the
            ``labelstudio`` extra). See :data:`ORACLES`.
        ls_url: the Label Studio server, ``http[s]://HOST[:PORT]`` (``--oracle label-studio``).
            The access token is never part of the configuration: it is read from the
            environment (:func:`entk_al.run.labelstudio.token_from_env`).
        ls_project: the Label Studio project, its numeric ID or its title (a title not found
            creates the project).
        executor: where pool scans run: ``local`` (this process) or ``ray`` (shard actors;
            ``pip install entk-al[ray]``). Both select the same ids (:mod:`entk_al.executor`).
        address: Ray cluster, ``auto`` or ``HOST:PORT``; None starts a private local cluster.
        workers: Ray shard actors.
        gpus_per_worker: GPUs per Ray actor (0: CPU shards).
        cpus_per_worker: CPUs per worker: per Ray actor (also its torch threads, at least 1);
            under ``local``, when given, the torch threads of its tile tasks, as an actor's.
        stop: stop rules, ``NAME[:THRESHOLD[:WINDOW]]`` comma-separated (``kappa``,
            ``change``; :mod:`entk_al.run.stopping`), or None / ``none`` for none.
        stop_set: size of the fixed seeded unlabeled stop set the rules are measured on.
        stop_action: ``stop`` (end the run when a rule fires) or ``log`` (only log the rules).

    ``address``, ``workers`` and ``gpus_per_worker`` are None under ``executor="local"``, which
    does not use them (so config.json does not record workers that never ran), and so is
    ``cpus_per_worker`` unless given (the local executor then keeps the process's threads);
    under ``ray`` the unset ones take :data:`RAY_DEFAULTS`.
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
    loss: str = TrainConfig.loss
    train: str | None = None
    epochs: int = TrainConfig.epochs
    min_steps: int = TrainConfig.min_steps
    batch_size: int = TrainConfig.batch_size
    lr: float | None = None
    weight_decay: float = TrainConfig.weight_decay
    device: str = "auto"
    threads: int = TrainConfig.threads
    oracle: str = "simulated"
    ls_url: str | None = None
    ls_project: str | None = None
    executor: str = "local"
    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float | None = None
    stop: str | None = None
    stop_set: int = 2000
    stop_action: str = "stop"

    def __post_init__(self) -> None:
        # Options left unset take the model's default, resolved here so that config.json,
        # checkpoints and bench grids always hold the value that was used.
        for name, value in MODEL_DEFAULTS.get(self.model, {}).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.lr is None:
            self.lr = DEFAULT_LR
        for name, value in RAY_DEFAULTS.items():
            if self.executor == "ray" and getattr(self, name) is None:
                setattr(self, name, value)
            elif self.executor == "local" and name != "cpus_per_worker":
                setattr(self, name, None)
        if self.executor == "local":
            self.address = None

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
        self._validate_oracle()
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

    def _validate_oracle(self) -> None:
        if self.oracle not in ORACLES:
            raise ConfigError(f"--oracle must be one of {', '.join(ORACLES)}, got {self.oracle!r}")
        if self.oracle != "label-studio":
            if self.ls_url is not None or self.ls_project is not None:
                raise ConfigError(f"--ls-url and --ls-project are for --oracle label-studio, not --oracle "
                                  f"{self.oracle}; to send a files run's queries to Label Studio use "
                                  f"'entk-al label-studio push RUN --ls-url URL --ls-project ID'")
            return
        if not self.ls_url or not self.ls_project:
            raise ConfigError("--oracle label-studio needs --ls-url URL (e.g. http://localhost:8080) and "
                              "--ls-project ID (or a project title)")
        check_url(self.ls_url, "--ls-url")
        if not str(self.ls_project).strip():
            raise ConfigError("--ls-project must be a project ID or title, got an empty string")

    def _validate_executor(self) -> None:
        if self.executor not in ("local", "ray"):
            raise ConfigError(f"--executor must be 'local' or 'ray', got {self.executor!r}")
        if self.cpus_per_worker is not None:
            check_finite(self.cpus_per_worker, "--cpus-per-worker", strict=True)
        if self.executor == "local":
            return
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        check_finite(self.gpus_per_worker, "--gpus-per-worker")
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
        if isinstance(data.get("ls_project"), int) and not isinstance(data["ls_project"], bool):
            data = {**data, "ls_project": str(data["ls_project"])}  # `ls-project = 3` in TOML
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}")
        for f in fields(cls):
            if f.name in data:
                data = {**data, f.name: _check_type(f.name, data[f.name], f.type, source)}
        ray_only = [name for name in RAY_ONLY if data.get(name) is not None]
        if ray_only and data.get("executor", "local") != "ray":
            # The local executor has no actors or cluster: these would be dropped without a word.
            flags = ", ".join(f"--{name.replace('_', '-')}" for name in ray_only)
            verb, them = ("applies", "it") if len(ray_only) == 1 else ("apply", "them")
            where = "" if source == "options" else f"{source}: "
            raise ConfigError(f"{where}{flags} only {verb} to --executor ray (executor is "
                              f"{data.get('executor', 'local')!r}); add --executor ray or leave {them} out")
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


#: options that only the Ray executor reads (``cpus_per_worker`` also sets the local scans' threads).
RAY_ONLY = ("address", "workers", "gpus_per_worker")

#: the oracles ``--oracle`` accepts: who answers the queries (:mod:`entk_al.run.oracle`).
ORACLES = ("simulated", "files", "label-studio")


def check_url(url: str, name: str = "--ls-url") -> str:
    """``url`` if it looks like ``http[s]://HOST[:PORT][/PATH]``.

    Args:
        url: the URL to check.
        name: how the option is called in the error message.

    Raises:
        ConfigError: another scheme, no host, or a port that is not a number in [1, 65535].
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = None, -1
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or port == 0 or port == -1:
        raise ConfigError(f"{name} must look like http://HOST:PORT (e.g. http://localhost:8080), got {url!r}")
    return url


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


def learner_folder_message(folder: Path) -> str:
    """What to say when a command-line run is pointed at a folder an ``ActiveLearner`` wrote."""
    return (f"{folder} holds a run of entk_al.ActiveLearner (your own training loop), which "
            f"entk-al run cannot continue; continue it from Python with "
            f"ActiveLearner.resume({str(folder)!r}, pool), or give entk-al run another --out")


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
            loaded = json.loads(saved.read_text())
        except json.JSONDecodeError:
            raise ConfigError(f"{saved} is corrupted (not JSON)") from None
        if isinstance(loaded, dict) and "learner" in loaded:
            raise ConfigError(learner_folder_message(resume_dir))
        data.update(loaded)
    command_only: dict[str, Any] = {}
    if config_file is not None:
        toml = load_toml(config_file)
        command_only = {k: v for k, v in toml.items() if k in TOML_CLI_ONLY}
        data.update({k: v for k, v in toml.items() if k not in TOML_CLI_ONLY})
    given = {k: v for k, v in flags.items() if v is not None}
    if given.get("executor", "ray") != "ray":
        # --executor local overrides: Ray options of a resumed Ray run or of the TOML file no longer apply.
        data = {k: v for k, v in data.items() if k not in RAY_ONLY}
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
