"""Derivation of every random stream from (seed, round, component).

No code in entk-al draws from a global RNG: each random choice asks for a generator
keyed by the run seed, the round index and a component name, so that runs are
reproducible and resuming from a checkpoint gives the same draws as an uninterrupted run.

Every component name is a constant of this module, used by name at every call site (a new
stream is a new constant and a new line here). The streams, as constant = component (rounds):
what draws from it. Round -1 is "before round 0".

- ``INITIAL = "initial"`` (-1): the initial labeled set
  (:meth:`entk_al.run.setup.RunSetup.initial_ids`).
- ``INIT = "init"`` (-1 for warm runs, r for ``--retrain scratch``): the network's
  initialization (:meth:`entk_al.run.setup.RunSetup.new_model`).
- ``TORCH_GLOBAL = "torch-global"`` (r): the global torch RNG, re-seeded before the round's
  training (dropout, user code; :meth:`entk_al.run.setup.RunSetup.train_round`).
- ``TRAIN = "train"`` (r): the round's mini-batch order
  (:meth:`entk_al.run.setup.RunSetup.train_generator`; ``entk-al approx`` trains with round 0's).
- ``SUBSET = "subset"`` (r): the round's random candidate subset
  (:func:`entk_al.run.query_step.candidate_subset`).
- ``TORCH_SELECT = "torch-select"`` (r): the global torch RNG, re-seeded before the round's
  selection (:func:`entk_al.run.query_step.select_round`).
- ``STRATEGY = "strategy"`` (r): a strategy's own draws, ``ctx.rng`` and
  ``ctx.torch_generator`` (:class:`entk_al.round.context.RoundContext`); the seeds the look-ahead's
  prefilter hands to faiss, :func:`child_rng` and the pNTK projection are drawn from it.
- ``TIE_BREAK = "tie-break"`` (r): the keys ordering equal scores (:func:`tie_keys`).
- ``BALD_MASKS_TILE = "bald-masks-tile"`` + tile (r): BALD's dropout masks on the penultimate
  features, one stream per tile (:func:`tile_component`; :mod:`entk_al.scans.outputs`).
- ``BALD_DROPOUT_TILE = "bald-dropout-tile"`` + tile (r): the (forked) global torch RNG of
  BALD's passes through a model's own dropout layers, one per tile.
- ``FIDELITY_EVAL = "fidelity-eval"``, ``FIDELITY_CANDIDATES = "fidelity-candidates"`` (0):
  ``entk-al fidelity``'s evaluation set U and its candidates.
- ``APPROX_LABELED = "approx-labeled"``, ``APPROX_TEST = "approx-test"``,
  ``APPROX_EVAL = "approx-eval"``, ``APPROX_RANDOM_LOGIT = "approx-random-logit"`` (-1):
  ``entk-al approx``'s nested labeled sets, kernel-distance subsets, regression test points
  and the logit of the first-logit kernel.
- ``BENCH = "bench"`` (the seed index): ``entk-al bench``'s run seeds from the protocol's base
  seed (:func:`entk_al.report.bench.derive_seed`).
- ``FOLDER_SPLIT = "folder-split"`` (-1, seed :data:`entk_al.data.folder.SPLIT_SEED`): an image
  folder's train/test split where scikit-learn cannot stratify it.
- ``POOL_SUBSAMPLE = "pool-subsample"``, ``POOL_MINORITY = "pool-minority"``,
  ``POOL_IMBALANCE = "pool-imbalance"`` (-1, the transform's ``seed``): a pool transform's
  subsample, minority classes and the minority items kept (:mod:`entk_al.data.pool_transforms`).
- ``STOP_SET = "stop-set"`` (-1): the stop rules' fixed unlabeled stop set
  (:mod:`entk_al.run.stopping`).

Seeds handed on from a stream (faiss k-means seeds, the pNTK projection's seed) are drawn
from it as integers; :func:`child_rng` and :func:`direction_seed` turn them into generators and
per-direction seeds, so no module builds a generator or combines seeds by itself.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

#: Seeds must lie in [0, MAX_SEED): 63 bits, what every consumer (torch, JSON) takes whole.
MAX_SEED = 2**63

# The streams (see the table above).
INITIAL = "initial"
INIT = "init"
TORCH_GLOBAL = "torch-global"
TRAIN = "train"
SUBSET = "subset"
TORCH_SELECT = "torch-select"
STRATEGY = "strategy"
BALD_MASKS_TILE = "bald-masks-tile"
BALD_DROPOUT_TILE = "bald-dropout-tile"
FIDELITY_EVAL = "fidelity-eval"
FIDELITY_CANDIDATES = "fidelity-candidates"
APPROX_LABELED = "approx-labeled"
APPROX_TEST = "approx-test"
APPROX_EVAL = "approx-eval"
APPROX_RANDOM_LOGIT = "approx-random-logit"
BENCH = "bench"
FOLDER_SPLIT = "folder-split"
POOL_SUBSAMPLE = "pool-subsample"
POOL_MINORITY = "pool-minority"
POOL_IMBALANCE = "pool-imbalance"
STOP_SET = "stop-set"


def tile_component(component: str, tile: int) -> str:
    """The per-tile stream name ``component`` + ``tile`` (e.g. ``bald-masks-tile3``), so that a
    tile's draws do not depend on which shard runs it.

    Args:
        component: :data:`BALD_MASKS_TILE` or :data:`BALD_DROPOUT_TILE`.
        tile: tile index (>= 0).
    """
    return f"{component}{int(tile)}"


def child_rng(seed: int) -> np.random.Generator:
    """A NumPy generator for a ``seed`` drawn from a (seed, round, component) stream (e.g.
    ``int(ctx.rng.integers(2**31))``, handed on to a helper that draws more).

    Args:
        seed: non-negative integer seed.
    """
    return np.random.default_rng(seed)


def direction_seed(seed: int, index: int) -> int:
    """Seed of the ``index``-th random direction of a projection seeded with ``seed``
    (``seed · 1000003 + index``): direction t is regenerated alone, with no (dims × P) store
    (:func:`entk_al.lookahead.prefilter.pntk_random_features`).

    Args:
        seed: the projection's seed (drawn from a stream).
        index: direction index (>= 0).
    """
    return int(seed) * 1_000_003 + int(index)


def _entropy(seed: int, round_idx: int, component: str) -> list[int]:
    """SeedSequence entropy for (seed, round, component).

    A seed below 2**32 is one word, as it always was (so results made with such seeds do not
    change); a larger seed is its low word followed by its high word, so every bit counts and
    it never collides with a 32-bit seed (that entropy list is one word longer).
    """
    seed = int(seed)
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    words = [seed & 0xFFFFFFFF] if seed < 2**32 else [seed & 0xFFFFFFFF, seed >> 32]
    # crc32 (not hash()) so the key is stable across processes and Python versions.
    return [*words, int(round_idx) + 1, zlib.crc32(component.encode("utf-8"))]


def numpy_rng(seed: int, round_idx: int, component: str) -> np.random.Generator:
    """A NumPy generator for one (seed, round, component) stream.

    Args:
        seed: run seed (int).
        round_idx: round index; use -1 for things drawn before round 0.
        component: a short name of what draws, e.g. ``"initial"``, ``"subset"``, ``"train"``.
    """
    return np.random.default_rng(np.random.SeedSequence(_entropy(seed, round_idx, component)))


def int_seed(seed: int, round_idx: int, component: str) -> int:
    """A 63-bit integer seed for one (seed, round, component) stream.

    Args:
        seed: run seed.
        round_idx: round index (0-based).
        component: name of the stream, e.g. ``strategy``.
    """
    ss = np.random.SeedSequence(_entropy(seed, round_idx, component))
    return int(ss.generate_state(2, dtype=np.uint32).astype(np.uint64) @ np.array([1 << 31, 1], dtype=np.uint64))


def torch_generator(seed: int, round_idx: int, component: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded for one (seed, round, component) stream.

    Args:
        seed: run seed.
        round_idx: round index (0-based).
        component: name of the stream.
        device: device of the generator.
    """
    g = torch.Generator(device=device)
    g.manual_seed(int_seed(seed, round_idx, component))
    return g


#: The component of the tie-break keys every top-k of a round shares (:func:`tie_keys`).
TIE_BREAK = "tie-break"

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def tie_keys(seed: int, round_idx: int, ids: np.ndarray, component: str = TIE_BREAK) -> np.ndarray:
    """Seeded tie-break keys of global pool ``ids`` for one (seed, round, component) stream.

    Key(id) is SplitMix64 (Steele, Lea & Flood, OOPSLA 2014) of ``int_seed(seed, round,
    component) + (id + 1) · 0x9E3779B97F4A7C15``: a function of the id alone within a round, so
    every tile, shard and executor gives an id the same key, and ordering equal scores by key is
    a seeded random order of the ids that changes from round to round (instead of "lowest id
    first", which on a class-sorted pool picks one class). Keys of distinct ids collide with
    probability about n²/2⁶⁵; rankings fall back to the id then.

    Args:
        seed: run seed.
        round_idx: round index.
        ids: (n,) non-negative integer global pool ids.
        component: stream name (every top-k of a round uses :data:`TIE_BREAK`).

    Returns:
        (n,) uint64 keys.
    """
    x = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    z = (x + np.uint64(1)) * _GOLDEN + np.uint64(int_seed(seed, round_idx, component))
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def rank_descending(scores: np.ndarray, keys: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
    """Positions ordering ``scores`` from highest to lowest; equal scores by increasing tie key
    (:func:`tie_keys`), then by id.

    Args:
        scores: (n,) float scores (NaN sorts last).
        keys: (n,) uint64 tie-break keys.
        ids: (n,) ids for the (improbable) equal keys; default: the positions.

    Returns:
        (n,) int64 positions.
    """
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    ids = np.arange(len(s)) if ids is None else np.asarray(ids)
    return np.lexsort((ids, np.asarray(keys), -s)).astype(np.int64)
