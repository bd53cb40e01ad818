"""Ranking metrics by hand, the popularity baseline, and the ML-100K integration check."""

import math
import os
from pathlib import Path

import numpy as np
import pytest

from tfrec_lm.evaluation.metrics import (
    MISSING_RANK,
    format_table,
    full_catalog_ranks,
    ranking_metrics,
    ranks_from_topk,
    sliced_metrics,
)
from tfrec_lm.evaluation.popularity import most_popular, popularity_scores

ML100K_DEFAULT = "/tmp/assets/rb/recbole/dataset_example/ml-100k"


def test_full_catalog_ranks_by_hand():
    nan = np.nan
    scores = np.array(
        [
            [100, 0.5, 0.9, 0.5, 0.2, 0.7],  # padding column never competes; tie counts against
            [100, 0.5, 0.9, 0.5, 0.2, 0.7],  # same, with the target itself in exclude
            [0, 1, 2, 3, 4, 5],
            [0, nan, 1, 2, 3, 4],  # NaN target: behind every candidate
            [0, 1, nan, 0.5, 0.5, 0.5],  # NaN candidate never beats the target
        ]
    )
    targets = np.array([1, 1, 5, 1, 1])
    exclude = [np.array([], int), np.array([2, 1]), np.array([], int), np.array([4]), np.array([], int)]
    ranks = full_catalog_ranks(scores, targets, exclude)
    assert ranks.dtype == np.int64
    assert ranks.tolist() == [3, 2, 0, 3, 0]
    assert full_catalog_ranks(scores, targets, None).tolist() == [3, 3, 0, 4, 0]


def test_full_catalog_ranks_chunks_match_brute_force():
    rng = np.random.default_rng(0)
    n, width = 53, 40
    scores = np.round(rng.normal(size=(n, width)), 1)  # many ties
    targets = rng.integers(1, width, size=n)
    exclude = [rng.choice(np.arange(1, width), size=rng.integers(0, 10), replace=False) for _ in range(n)]
    expected = []
    for row, target, excl in zip(scores, targets, exclude):
        others = [j for j in range(1, width) if j != target and j not in set(excl.tolist())]
        expected.append(sum(row[j] >= row[target] for j in others))
    assert full_catalog_ranks(scores, targets, exclude, chunk_size=7).tolist() == expected
    assert full_catalog_ranks(scores, targets, exclude).tolist() == expected


def test_ranks_from_topk():
    topk = np.array([[5, 3, 9], [1, 2, 3], [4, 4, 8]])
    ranks = ranks_from_topk(topk, np.array([3, 7, 4]))
    assert ranks.tolist() == [1, MISSING_RANK, 0]
    as_bytes = np.array([[b"x", b"y"], [b"z", b"w"]], dtype=object)
    assert ranks_from_topk(as_bytes, np.array(["y", "q"])).tolist() == [1, MISSING_RANK]
    assert ranks_from_topk(np.array([["a", "b"]]), np.array(["b"])).tolist() == [1]
    assert ranking_metrics(ranks, ks=(1,))["HR@1"] == pytest.approx(1 / 3)


def test_ranking_metrics_by_hand():
    ranks = np.array([0, 1, 9, 10, 25, MISSING_RANK])
    m = ranking_metrics(ranks)
    assert list(m) == ["HR@10", "NDCG@10", "MRR@10", "HR@20", "NDCG@20", "MRR@20"]
    assert m["HR@10"] == pytest.approx(3 / 6)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 6)
    assert m["MRR@10"] == pytest.approx((1 + 1 / 2 + 1 / 10) / 6)
    assert m["HR@20"] == pytest.approx(4 / 6)
    assert m["NDCG@20"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11) + 1 / math.log2(12)) / 6)
    assert m["MRR@20"] == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11) / 6)
    assert math.isnan(ranking_metrics(np.array([], dtype=np.int64))["HR@10"])


def test_sliced_metrics_and_table():
    ranks = np.array([0, 50, 0, 50])
    slices = {"all": np.ones(4, bool), "migrating": np.array([True, True, False, False]), "stable": np.array([1, 0, 1, 0], bool)}
    result = sliced_metrics(ranks, slices)
    assert result["all"]["count"] == 4 and result["migrating"]["count"] == 2
    assert result["all"]["HR@10"] == 0.5 and result["stable"]["NDCG@10"] == 1.0
    table = format_table({"pop": result, "seq": {"all": {"HR@10": 0.25, "count": 4}}})
    lines = table.splitlines()
    assert lines[0].split() == ["model", "slice", "count", "HR@10", "NDCG@10", "MRR@10", "NDCG@20"]
    assert lines[2].split() == ["pop", "all", "4", "0.5000", "0.5000", "0.5000", "0.5000"]
    assert lines[5].split() == ["seq", "all", "4", "0.2500", "-", "-", "-"]
    assert len({len(line) for line in lines[:5]}) == 1  # aligned columns


def test_popularity():
    counts = np.array([0, 5, 9, 5, 0, 7])
    scores = popularity_scores(counts)
    assert scores[0] == -np.inf and scores[1:].tolist() == [5, 9, 5, 0, 7]
    assert most_popular(counts, 3).tolist() == [2, 5, 1]  # ties: lower index first
    assert most_popular(counts, 3, exclude=np.array([2])).tolist() == [5, 1, 3]
    assert most_popular(counts, 10).tolist() == [2, 5, 1, 3, 4]  # never the padding id


@pytest.mark.integration
def test_ml100k_most_popular_baseline():
    from tfrec_lm.data.movielens import load_movielens_100k
    from tfrec_lm.data.split import build_sequences, build_vocab, leave_one_out, train_interaction_counts

    directory = Path(os.environ.get("TFREC_LM_ML100K_DIR", ML100K_DEFAULT))
    if not (directory / "ml-100k.inter").is_file():
        pytest.skip(f"MovieLens-100K RecBole files not found in {directory} (set TFREC_LM_ML100K_DIR)")
    ds = load_movielens_100k(directory, strict=True)
    assert len(ds.interactions) == 100_000
    assert ds.interactions["user_id"].nunique() == 943
    assert len(ds.items) == 1_682
    assert sum(r.n_bad for r in ds.reports) == 0
    vocab = build_vocab(ds.items)
    split = leave_one_out(build_sequences(ds, vocab), max_history=50)
    assert len(split.test) == 943 and len(split.validation) == 943
    assert len(split.train) == 100_000 - 3 * 943
    counts = train_interaction_counts(split)
    assert counts.sum() == 100_000 - 2 * 943
    scores = np.broadcast_to(popularity_scores(counts), (len(split.test), vocab.size))
    metrics = ranking_metrics(full_catalog_ranks(scores, split.test.target, split.test.exclude))
    ndcg, hr = metrics["NDCG@10"], metrics["HR@10"]
    assert 0.02 < ndcg < 0.07, f"most-popular test NDCG@10={ndcg:.4f} HR@10={hr:.4f}"
