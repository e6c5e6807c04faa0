"""The acquisition math: the look-ahead's kernel system (Eq. 11-12 of arXiv 2206.12569), its
acquisition scores, the GP posterior, batch rules, the faiss prefilter, uncertainty and herding
scores.

Public here (the rest by module): :func:`fit_lookahead`, :func:`lookahead_outputs`,
:func:`mlmoc_scores`, :class:`LookaheadSystem`, :func:`relative_ridge`,
:func:`cholesky_with_jitter` (:mod:`.system`); :func:`select_lookahead` (:mod:`.posterior`);
:class:`GPPosterior`, :func:`fit_gp` (:mod:`.gp`).
"""

from .gp import GPPosterior, fit_gp
from .posterior import select_lookahead
from .system import (
    LookaheadSystem,
    cholesky_with_jitter,
    fit_lookahead,
    lookahead_outputs,
    mlmoc_scores,
    relative_ridge,
)

__all__ = ["fit_lookahead", "lookahead_outputs", "mlmoc_scores", "LookaheadSystem", "relative_ridge",
           "cholesky_with_jitter", "select_lookahead", "GPPosterior", "fit_gp"]
