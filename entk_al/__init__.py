"""entk-al: look-ahead active learning with empirical neural tangent kernels (pNTK).

The public surface, importable from here (loaded on first use, so ``import entk_al`` is cheap):

- :func:`query`, :class:`Query`, :class:`ActiveLearner`: entk-al from your own training loop
  (:mod:`entk_al.run.api`);
- :class:`Pool`, :class:`TensorPool`, :class:`DatasetPool`, :class:`MemmapPool`,
  :class:`FolderPool`, :func:`as_pool`: pools read by id (:mod:`entk_al.data.pool`);
- :func:`pntk`, :func:`entk`, :func:`kernel`, :class:`FeatureKernel`, :data:`PNTK`: kernels
  (:mod:`entk_al.ntk`);
- :func:`fit_lookahead`, :func:`lookahead_outputs`, :func:`mlmoc_scores`: the look-ahead's
  closed form on kernels you computed (:mod:`entk_al.lookahead`); :func:`fit_gp`,
  :class:`GPPosterior`: the linearized network's GP posterior;
- :class:`RoundContext`, :class:`QueryStrategy`: what a strategy receives and implements
  (:mod:`entk_al.round.context`);
- the error classes of :mod:`entk_al.errors`.

Data flows one way: data and pools -> models and training -> kernels -> look-ahead and
posterior -> per-tile scans -> strategies -> the run -> reports -> CLI; README "Where things
live" has the map.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "query": "run.api", "Query": "run.api", "ActiveLearner": "run.api",
    "Pool": "data.pool", "TensorPool": "data.pool", "DatasetPool": "data.pool", "MemmapPool": "data.pool",
    "FolderPool": "data.pool", "as_pool": "data.pool",
    "pntk": "ntk", "entk": "ntk", "kernel": "ntk", "FeatureKernel": "ntk", "PNTK": "ntk",
    "RoundContext": "round.context", "QueryStrategy": "round.context",
    "fit_lookahead": "lookahead", "lookahead_outputs": "lookahead", "mlmoc_scores": "lookahead",
    "GPPosterior": "lookahead", "fit_gp": "lookahead",
    "EntkAlError": "errors", "ConfigError": "errors", "DataNotFoundError": "errors", "DataFormatError": "errors",
    "StrategyError": "errors", "CheckpointError": "errors", "LabelError": "errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'entk_al' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
