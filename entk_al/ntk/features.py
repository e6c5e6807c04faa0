"""Kernels as inner products of per-sample features, for callers that reuse features.

:func:`~entk_al.ntk.kernel` computes one kernel matrix; callers that need several blocks over
overlapping sets of inputs (the round context's kernel rows, the look-ahead's A = k(U, L) and
B = k(U, cand) computed tile by tile on the executor's shards) would recompute the same
per-sample features in every call. A :class:`FeatureKernel` splits the work: :meth:`prepare`
fixes the layer plan for a model once, :meth:`PreparedKernel.features` computes the features of
a batch of inputs, and :meth:`PreparedKernel.block` turns two feature sets into a kernel block.

Example::

    kern = FeatureKernel("pntk")
    prep = kern.prepare(model, x[:4])
    fa, fb = prep.features(x[:100]), prep.features(x[100:300])
    k_ab = prep.block(fa, fb)            # (100, 200) == pntk(model, x[:100], x[100:300]) up to round-off

Exactness: each feature set is exactly the per-sample gradients of the directions V·f
(materialized, or in the factored form of :mod:`.layers`), so a block is the same kernel as
:func:`~entk_al.ntk.kernel` computes; values can differ from it at round-off level only, since
the batches and tile shapes differ. A feature set depends only on the prepared kernel and the
inputs of its batch (in order), so the same batch gives the same bits wherever it is computed.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from . import common, gram, jacobian

#: Samples per tile the layer forms are chosen for (the executor's tile size): a fixed
#: number, so that every worker chooses the same forms and computes the same bits.
FORM_TILE = 512


@dataclass(frozen=True)
class FeatureKernel:
    """An empirical-NTK-type kernel of kind ``kind`` that can hand out per-sample features.

    Calling it is :func:`entk_al.ntk.kernel` (``kernel_fn(model, x1, x2=None)``), so it serves
    wherever a kernel function is expected; callers that know it (the round context, the
    executor's kernel tasks) use :meth:`prepare` to compute each input's features once.

    Args:
        kind: ``pntk`` (default; sum-of-logits pNTK, Mohamadi, Bae & Sutherland, arXiv
            2206.12543, eq. 3) or ``first_logit`` (the kinds with one (N1, N2) matrix).
        method: ``auto`` | ``gram`` | ``jacobian`` (see :func:`entk_al.ntk.kernel`).
        params: the parameters differentiated (:func:`~entk_al.ntk.common.select_params`):
            ``"trainable"`` (default), ``"all"``, ``"last:N"`` or a tuple of name prefixes.

    Raises:
        ValueError: a kind that is not an (N1, N2) kernel, an unknown method, or a malformed
            ``params`` spec.
    """

    kind: str = "pntk"
    method: str = "auto"
    params: Any = "trainable"

    def __post_init__(self) -> None:
        common.check_kind_method(self.kind, self.method)
        if self.kind not in ("pntk", "first_logit"):
            raise ValueError(f"FeatureKernel kind must be pntk or first_logit, got {self.kind!r}")
        if isinstance(self.params, list):  # hashable: the kernel keys feature stores
            object.__setattr__(self, "params", tuple(self.params))
        common.check_params_spec(self.params)

    def __call__(self, model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
        """``kernel(model, x1, x2, kind=..., method=..., params=...)``: (N1, N2) in the model dtype."""
        from . import kernel

        return kernel(model, x1, x2, kind=self.kind, method=self.method, params=self.params)

    def prepare(self, model: nn.Module, x_probe: torch.Tensor, tile: int = FORM_TILE) -> "PreparedKernel":
        """Fix the layer plan for ``model`` (traced on ``x_probe``, forms chosen for ``tile``).

        Args:
            model: the network; it must not change while the prepared kernel is used.
            x_probe: (n, *F) a few inputs (the first 4 are used to trace and verify the layers).
            tile: samples per block the layer forms are chosen for.

        Raises:
            ValueError: as :func:`entk_al.ntk.kernel` (empty input, no trainable parameter,
                a model that does not return a tensor).
        """
        return PreparedKernel(model, x_probe, self.kind, self.method, tile, self.params)


class PreparedKernel:
    """A :class:`FeatureKernel` fixed to one model: features of batches, blocks of feature pairs.

    Built by :meth:`FeatureKernel.prepare`. Features are computed in eval mode with gradients
    enabled (also inside ``torch.no_grad()``); results are detached.

    Args:
        model: the network.
        x_probe: (n, *F) inputs; the first 4 trace and verify the layer plan.
        kind: ``pntk`` or ``first_logit``.
        method: ``auto`` | ``gram`` | ``jacobian``.
        tile: samples per block the layer forms are chosen for.
        params: the parameters differentiated (:func:`~entk_al.ntk.common.select_params`).

    Attributes:
        model: the network.
        device: the model's device; features live there.
        dtype: the model's floating dtype.
        bytes_per_sample: feature bytes one sample takes (an upper estimate).
        max_batch: largest batch :meth:`features` computes at once within the engine's
            per-tile feature budget; callers that must get identical bits everywhere split
            their batches by it themselves.
    """

    def __init__(self, model: nn.Module, x_probe: torch.Tensor, kind: str, method: str, tile: int,
                 params: Any = "trainable"):
        self.model, self.kind = model, kind
        with torch.inference_mode(False):
            x_probe, _ = common.prepare_inputs(model, x_probe[:gram.PROBE_SAMPLES], None)
        self.device, self.dtype = common.model_device_dtype(model)
        self._params = common.select_params(model, params)
        with self._differentiating(), common.eval_mode(model):
            from . import _n_outputs

            n_out = _n_outputs(model, x_probe)
            self._V, self._full = common.directions(kind, n_out, self.device, self.dtype)
            self._jacobian = method == "jacobian" or gram._needs_batch_stats(model)
            if self._jacobian:
                self._plan = None
                n_params = sum(p.numel() for p in self._params.values())
                self.bytes_per_sample = n_params * self._V.element_size()
                self.max_batch = jacobian.default_tile(n_params, 1, self._V.element_size())
            else:
                self._plan = gram.build_plan(model, self._params, x_probe, self._V, tile, self._full, tile)
                self.bytes_per_sample = max(1, self._plan.bytes_per_sample(1, self._V.element_size()))
                self.max_batch = int(max(gram.MIN_TILE, min(gram.DEFAULT_TILE,
                                                            gram.FEATURE_TILE_BYTES // self.bytes_per_sample)))

    def features(self, x: torch.Tensor) -> "gram.GramFeatures":
        """Per-sample features of the inputs ``x`` (n, *F), computed as one batch.

        Returns:
            opaque features of n samples on :attr:`device` (see :meth:`rows`, :meth:`cat`).
        """
        with torch.inference_mode(False):
            x, _ = common.prepare_inputs(self.model, x, None)
        with self._differentiating(), common.eval_mode(self.model):
            if self._jacobian:
                g = jacobian.per_sample_grads(self.model, self._params, x, self._V, None)
                return gram.GramFeatures(g.detach(), [])
            return gram.tile_features(self._plan, self.model, x, self._V, None).detach()

    @contextlib.contextmanager
    def _differentiating(self) -> Iterator[None]:
        with torch.inference_mode(False), torch.enable_grad(), common.differentiating(self.model, self._params):
            yield

    def block(self, fa: "gram.GramFeatures", fb: "gram.GramFeatures") -> torch.Tensor:
        """Kernel block between two feature sets: (len(fa), len(fb)) in the model dtype, detached."""
        with torch.inference_mode(False), torch.no_grad():
            return common.finish(gram.pair(fa, fb, self._full), self.kind)

    @staticmethod
    def rows(f: "gram.GramFeatures", index: Any) -> "gram.GramFeatures":
        """The features of samples ``index`` (a slice, or an int64 index tensor) of ``f``."""
        return f.rows(index)

    @staticmethod
    def cat(fs: list) -> "gram.GramFeatures":
        """Features of the samples of ``fs`` one after another (one set is returned as is)."""
        return fs[0] if len(fs) == 1 else gram.GramFeatures.cat(fs)
