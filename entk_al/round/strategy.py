"""The protocol every query strategy implements, built-in or user-written."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from .context import RoundContext


@runtime_checkable
class QueryStrategy(Protocol):
    """The protocol every query strategy implements, built-in or user-written.

    ``select`` returns exactly ``k`` distinct global pool ids, all currently unlabeled; the
    loop checks this and raises :class:`~entk_al.errors.StrategyError` otherwise.
    """

    name: str

    def select(self, ctx: "RoundContext", k: int) -> np.ndarray: ...
