"""faiss prefilter: only unlabeled ids, exact neighbours on small pools, pNTK projections."""

import faiss
import numpy as np
import pytest
import torch

from entk_al.ntk import pntk
from entk_al.prefilter import build_index, diverse_subset, knn, pntk_random_features, prefilter_knn


def test_flat_index_matches_exact_neighbours():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((300, 8)).astype(np.float32)
    q = rng.standard_normal((20, 8)).astype(np.float32)
    d2, rows = knn(build_index(emb), q, 5)
    exact = ((q[:, None, :].astype(np.float64) - emb[None].astype(np.float64)) ** 2).sum(-1)
    want = np.argsort(exact, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(rows, want)
    np.testing.assert_allclose(d2, np.take_along_axis(exact, want, 1), rtol=1e-4)


def test_ivf_index_recall_on_clustered_data():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((20, 16)) * 10
    emb = (centres[rng.integers(0, 20, 3000)] + rng.standard_normal((3000, 16))).astype(np.float32)
    ivf = build_index(emb, exact_max=1000, nlist=20, nprobe=4)
    assert ivf.__class__.__name__ == "IndexIVFFlat"
    _, got = knn(ivf, emb[:50], 5)
    _, want = knn(build_index(emb), emb[:50], 5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(got, want)])
    assert recall > 0.9


def test_prefilter_returns_only_unlabeled_ids():
    rng = np.random.default_rng(2)
    pool = 2000
    labeled = rng.choice(pool, 300, replace=False)
    unl = np.setdiff1d(np.arange(pool), labeled)
    emb = rng.standard_normal((len(unl), 6)).astype(np.float32)
    scores = rng.random(len(unl))
    cand, ev = prefilter_knn(emb, unl, scores, num_candidates=40, eval_size=200, neighbours=5, seed=0)
    assert len(cand) == 40 and len(set(cand)) == 40
    assert len(ev) == 200 and len(set(ev)) == 200
    assert np.isin(cand, unl).all() and np.isin(ev, unl).all()
    assert not np.isin(ev, labeled).any()
    np.testing.assert_array_equal(ev[:40], cand)
    # Candidates come from the top-4×40 cheap-score shortlist.
    short = unl[np.argsort(-scores, kind="stable")[:160]]
    assert np.isin(cand, short).all()
    # Every eval point beyond the candidates is among some candidate's 6 nearest unlabeled points.
    _, nbr = knn(build_index(emb), emb[np.searchsorted(unl, cand)], 6)
    assert np.isin(ev[40:], unl[nbr.ravel()]).all()
    # Reproducible.
    cand2, ev2 = prefilter_knn(emb, unl, scores, num_candidates=40, eval_size=200, neighbours=5, seed=0)
    np.testing.assert_array_equal(cand, cand2)
    np.testing.assert_array_equal(ev, ev2)


def test_diverse_subset_covers_clusters():
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((5, 4)) * 50
    labels = np.repeat(np.arange(5), 40)
    emb = (centres[labels] + rng.standard_normal((200, 4))).astype(np.float32)
    rows = diverse_subset(emb, 5, seed=0)
    assert len(set(rows.tolist())) == 5
    assert sorted(labels[rows].tolist()) == [0, 1, 2, 3, 4]


def test_pntk_random_features_are_unbiased():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    k = pntk(model, x).double()
    z = torch.stack([pntk_random_features(model, x, 64, seed=s).double() for s in range(20)])  # (20, 6, 64)
    est = torch.einsum("sid,sjd->ij", z, z) / 20
    rel = (est - k).norm() / k.norm()
    assert rel < 0.1
    torch.testing.assert_close(pntk_random_features(model, x, 8, seed=1), pntk_random_features(model, x, 8, seed=1))


def test_faiss_build_names_the_faiss_in_use_and_warns_about_two(monkeypatch):
    """Issue 19, item 8: faiss-gpu beside faiss-cpu share one faiss/ folder."""
    import warnings
    from importlib import metadata

    import entk_al.prefilter as prefilter

    build = prefilter.faiss_build()
    assert build.startswith(f"faiss {faiss.__version__}, ") and "faiss-cpu" in build
    assert ("GPU build" in build) == hasattr(faiss, "StandardGpuResources")
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "1.15.1" if name == "faiss-gpu" else real(name))
    monkeypatch.setattr(prefilter, "_warned_conflict", False)
    with pytest.warns(RuntimeWarning, match=r"faiss-cpu .* and faiss-gpu 1.15.1 are installed.*pip uninstall -y "
                                            r"faiss-cpu faiss-gpu"):
        prefilter.faiss_build()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prefilter.faiss_build()  # once per process


def test_the_gpu_extra_no_longer_installs_a_second_faiss():
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("faiss-cpu") for d in project["dependencies"])  # `pip install -e .` gets faiss
    extras = project["optional-dependencies"]
    assert not [d for deps in extras.values() for d in deps if d.startswith("faiss")], extras


def test_knn_prefilter_reports_its_faiss():
    from entk_al.plugins import load_strategy

    from fakes import digits_round

    ctx = digits_round().context()
    load_strategy("lookahead", {"prefilter": "knn", "num_candidates": 20, "eval_size": 60}).select(ctx, 5)
    assert ctx.info["faiss"].startswith(f"faiss {faiss.__version__}") and "on the CPU" in ctx.info["faiss"]
