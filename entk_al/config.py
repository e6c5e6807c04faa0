"""Run configuration: one dataclass, filled from defaults, a TOML file, then CLI flags."""

from __future__ import annotations

import ast
import dataclasses
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
    query ``query`` new labels.
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

    def validate(self) -> "RunConfig":
        """Check value ranges (not dataset-dependent ones). Raises ConfigError."""
        positive = {"query": self.query, "subset": self.subset, "epochs": self.epochs,
                    "batch_size": self.batch_size}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.initial < 2:
            raise ConfigError(f"--initial must be >= 2, got {self.initial}")
        if self.rounds < 0 or self.min_steps < 0:
            raise ConfigError("--rounds and --min-steps must be >= 0")
        if self.threads < 0:
            raise ConfigError(f"--threads must be >= 0 (0 = automatic), got {self.threads}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
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
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"--seed must be in [0, 2**63), got {self.seed}")
        if self.subset < self.query:
            raise ConfigError(f"--subset ({self.subset}) must be >= --query ({self.query}): the strategy "
                              f"selects the queries from the candidate subset")
        return self

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


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file (keys as in :class:`RunConfig`, dashes allowed).

    Raises:
        ConfigError: missing file or invalid TOML.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory, not a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return {k.replace("-", "_"): v for k, v in data.items()}


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strategy options; values are Python literals when they parse.

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
