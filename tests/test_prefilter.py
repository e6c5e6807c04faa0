"""faiss prefilter: only unlabeled ids and their neighbourhoods, diverse subsets, pNTK projections."""

import faiss
import numpy as np
import pytest
import torch

from entk_al.lookahead.prefilter import diverse_subset, pntk_random_features
from entk_al.ntk import pntk


def test_knn_prefilter_keeps_unlabeled_ids_and_their_neighbourhoods():
    """The look-ahead's knn prefilter (the path a run takes): candidates and U are unlabeled ids,
    U starts with the candidates and holds only their nearest unlabeled neighbours; reproducible."""
    from entk_al.run.plugins import load_strategy
    from entk_al.scans.knn import embeddings, knn_on_shards

    from fakes import digits_round

    opts = {"prefilter": "knn", "num_candidates": 20, "shortlist": 60, "eval_size": 80, "neighbours": 4}
    ctx = digits_round().context()
    cand, u = load_strategy("lookahead", opts).candidates(ctx)
    unl = ctx.unlabeled_ids
    assert len(cand) == 20 and len(set(cand.tolist())) == 20 and np.isin(cand, unl).all()
    assert len(u) == len(set(u.tolist())) and 20 < len(u) <= 80 and np.isin(u, unl).all()
    np.testing.assert_array_equal(u[:20], cand)
    pen = {"kind": "penultimate"}
    emb = embeddings(ctx.executor, cand, pen).numpy()
    _, nbr, _ = knn_on_shards(ctx.executor, unl, emb, 5, pen)  # each candidate's 5 nearest, itself first
    assert np.isin(u[20:], nbr).all()
    again = load_strategy("lookahead", opts).candidates(digits_round().context())
    assert all(np.array_equal(a, b) for a, b in zip((cand, u), again))


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

    import entk_al.lookahead.prefilter as prefilter

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
    from entk_al.run.plugins import load_strategy

    from fakes import digits_round

    ctx = digits_round().context()
    load_strategy("lookahead", {"prefilter": "knn", "num_candidates": 20, "eval_size": 60}).select(ctx, 5)
    assert ctx.info["faiss"].startswith(f"faiss {faiss.__version__}") and "on the CPU" in ctx.info["faiss"]
