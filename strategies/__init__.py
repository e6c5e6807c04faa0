"""Built-in query strategies, written against the same protocol as a user's own.

A strategy is any object with a ``name`` and ``select(ctx, k) -> np.ndarray`` of global pool
ids (see :class:`entk_al.round.context.QueryStrategy`). :data:`REGISTRY` maps names to classes; the
same names are registered as entry points of the group ``entk_al.strategies`` in
``pyproject.toml`` (``tests/test_strategy_registry.py`` keeps the two equal), so entk-al finds
built-ins and plugins the same way. entk-al imports this package only when it looks a
strategy up (:func:`entk_al.run.plugins.builtin_package`).
"""

from __future__ import annotations

from .badge import BadgeSampling
from .bald import BALDSampling
from .coreset import CoresetSampling
from .epig import NTKEPIG
from .herding import MaxHerdingSampling, UncertaintyHerdingSampling
from .lookahead import LookaheadSampling
from .ntk_uncertainty import NTKBALD, NTKEntropy, NTKMargin, NTKVariance, NTKZMargin
from .random_sampling import RandomSampling
from .scoring import ScoreStrategy, top_k
from .uncertainty import EntropySampling, LeastConfidence, MarginSampling

#: Marks this package as entk-al's own (a user's ``strategies.py`` shadowing it lacks this).
ENTK_AL_BUILTINS = True

#: strategy name -> class; constructing with keyword options gives a strategy object.
REGISTRY: dict[str, type] = {
    cls.name: cls
    for cls in (RandomSampling, EntropySampling, MarginSampling, LeastConfidence, LookaheadSampling,
                BALDSampling, BadgeSampling, CoresetSampling, NTKVariance, NTKBALD, NTKEntropy, NTKMargin,
                NTKZMargin, NTKEPIG, MaxHerdingSampling,
                UncertaintyHerdingSampling)
}

__all__ = ["REGISTRY", "ScoreStrategy", "top_k", "RandomSampling", "EntropySampling", "MarginSampling",
           "LeastConfidence", "LookaheadSampling", "BALDSampling", "BadgeSampling", "CoresetSampling",
           "NTKVariance", "NTKBALD", "NTKEntropy", "NTKMargin", "NTKZMargin", "NTKEPIG",
           "MaxHerdingSampling", "UncertaintyHerdingSampling"]
