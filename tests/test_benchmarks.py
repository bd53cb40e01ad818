"""Tests of the benchmark code: retrieval_scale at a tiny size and the suite runner.

No timing assertions: only that the measurements are made and the answers are right.
"""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import retrieval_scale  # noqa: E402
import run_all  # noqa: E402

from tfrec_lm.export import scann_settings  # noqa: E402


def test_clustered_embeddings_are_unit_rows_from_shared_clusters():
    items, queries = retrieval_scale.clustered_embeddings(500, 40, 8, clusters=5, spread=0.05, seed=3)
    assert items.shape == (500, 8) and queries.shape == (40, 8)
    assert items.dtype == np.float32 and queries.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    # Clustered, not uniform: every query's best item is much closer than a random one.
    scores = queries @ items.T
    assert scores.max(axis=1).min() > 0.9 and abs(scores.mean()) < 0.5
    again, _ = retrieval_scale.clustered_embeddings(500, 40, 8, clusters=5, spread=0.05, seed=3)
    np.testing.assert_array_equal(items, again)


def test_exact_top_k_and_recall():
    rng = np.random.default_rng(0)
    items = rng.standard_normal((300, 6)).astype(np.float32)
    queries = rng.standard_normal((70, 6)).astype(np.float32)
    top = retrieval_scale.exact_top_k(items, queries, k=10, chunk=16)
    expected = np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(top, expected)
    assert retrieval_scale.recall_at_k(top, expected) == 1.0
    assert retrieval_scale.recall_at_k(top[:, ::-1], expected) == 1.0  # order does not matter
    half = np.concatenate([top[:, :5], np.full((70, 5), -1)], axis=1)
    assert retrieval_scale.recall_at_k(half, expected) == pytest.approx(0.5)


def test_retrieval_scale_tiny_catalog_through_saved_models(tmp_path):
    entry = retrieval_scale.run_size(3000, dim=16, queries=40, clusters=30, spread=0.1, batch_rounds=2, warmup=2,
                                     workdir=tmp_path, log=lambda *_: None)
    assert entry["brute-force"]["recall_at_10"] == 1.0
    assert entry["brute-force"]["recall_at_10_batched"] == 1.0
    # A small catalog: every leaf searched, 1000 candidates rescored exactly.
    assert entry["scann"]["recall_at_10"] >= 0.9
    assert entry["scann"]["recall_at_10_batched"] >= 0.9
    assert entry["scann_settings"] == scann_settings(3000, 10)
    for kind in retrieval_scale.KINDS:
        measured = entry[kind]
        assert measured["saved_model_bytes"] > 3000 * 16 * 4
        assert measured["build_seconds"] >= 0 and measured["load_seconds"] > 0
        assert measured["single_query"]["calls"] == 40 and measured["single_query"]["batch"] == 1
        assert measured["batch"]["calls"] == 2 and measured["batch"]["batch"] == 64
        assert measured["single_query"]["qps"] > 0 and measured["batch"]["qps"] > 0
    assert entry["single_query_qps_ratio_scann_over_brute_force"] > 0
    assert not list(tmp_path.iterdir())  # the SavedModels are removed afterwards
    assert set(retrieval_scale.check_targets(entry)) == {
        "recall_at_10_ge_0.95", "single_query_qps_ratio_ge_20", "build_seconds_lt_120"}


def test_scann_settings_keep_small_catalogs_and_scale():
    for count in (10, 1682, 20_000):  # the settings export used before: sqrt(C) leaves, all searched
        leaves = int(np.sqrt(count))
        assert scann_settings(count, 10) == {"num_leaves": leaves, "num_leaves_to_search": leaves,
                                             "num_reordering_candidates": min(count, 1000)}
    assert scann_settings(1682, 300)["num_reordering_candidates"] == 1200
    assert scann_settings(100_000, 10)["num_leaves"] == 316
    assert scann_settings(100_000, 10)["num_leaves_to_search"] == 64
    assert scann_settings(1_000_000, 10) == {"num_leaves": 1000, "num_leaves_to_search": 100,
                                             "num_reordering_candidates": 1000}


def test_suite_discovers_every_benchmark_script():
    found = run_all.discover()
    assert {"ml100k", "retrieval_scale", "serving_latency", "tuning_ml100k", "user_towers"} <= set(found)
    assert "_common" not in found and "run_all" not in found
    assert found == sorted(found)
    # Every script on disk is either in the table or run with no arguments.
    for name in found:
        full, results = run_all.plan(name, quick=False)
        assert isinstance(full, list) and results


def test_suite_only_and_quick_parsing(capsys):
    args = run_all.build_parser().parse_args(["--only", "retrieval_scale", "user_towers", "--quick"])
    assert args.only == ["retrieval_scale", "user_towers"] and args.quick
    available = run_all.discover()
    assert run_all.select(available, ["user_towers", "retrieval_scale"]) == ["retrieval_scale", "user_towers"]
    assert run_all.select(available, None) == available
    with pytest.raises(ValueError, match="nope"):
        run_all.select(available, ["nope"])
    with pytest.raises(SystemExit) as exit_info:
        run_all.main(["--only", "nope"])
    assert exit_info.value.code == 2
    assert run_all.plan("retrieval_scale", quick=True) == (["--quick"], ["retrieval_scale"])
    assert run_all.plan("ml100k", quick=True)[0] is None  # no small setting: skipped by --quick
    assert run_all.plan("not_listed", quick=False) == ([], ["not_listed"])


def test_summary_table_lists_status_and_paths():
    table = run_all.summary_table([
        {"name": "retrieval_scale", "status": "ok", "seconds": 12.3,
         "results": [str(run_all.RESULTS / "quick" / "retrieval_scale.json")]},
        {"name": "ml100k", "status": "skipped (no quick setting)", "seconds": None, "results": []}])
    lines = table.splitlines()
    assert lines[0].split() == ["benchmark", "status", "seconds", "result"]
    assert "benchmarks/results/quick/retrieval_scale.json" in lines[1] and " 12 " in lines[1]
    assert lines[2].startswith("ml100k") and "skipped" in lines[2]


def test_recency_ablation_pairs_runs_by_seed_and_user():
    import recency_ablation

    members = {"all": list(range(6)), "migrating": [0, 1, 2], "stable": [3, 4, 5]}

    def run(variant, seed, ranks):
        return {"variant": variant, "config": {"seed": seed}, "test_ranks": ranks, "test_slices": members}

    runs = {
        recency_ablation.run_key("time", 42): run("time", 42, [0, 0, 0, 0, 50, 50]),
        recency_ablation.run_key("time", 1): run("time", 1, [0, 0, 0, 0, 50, 50]),
        recency_ablation.run_key("positions", 42): run("positions", 42, [0, 50, 50, 0, 50, 50]),
        recency_ablation.run_key("positions", 1): run("positions", 1, [0, 0, 50, 0, 50, 50]),
    }
    assert recency_ablation.run_key("time", 1) == "time@seed1" and recency_ablation.run_key("time", 42) == "time"
    result = recency_ablation.paired(runs, "time", "positions")
    assert result["seeds"] == [1, 42]
    # Migrating: time hits all 3 in both seeds; positions 1 of 3 and 2 of 3 (mean 1.5 of 3).
    assert result["migrating"]["ratio"] == pytest.approx(2.0)
    assert result["migrating"]["ratio_per_seed"] == pytest.approx([1.5, 3.0])
    low, high = result["migrating"]["ratio_95ci"]
    assert 1.0 <= low <= 2.0 <= high
    assert result["stable"]["ratio"] == pytest.approx(1.0)
    assert recency_ablation.paired(runs, "time", "no-recency") == {}  # nothing to pair with


def test_new_item_queries_carry_the_full_prior_history_and_popularity_excludes_it():
    import new_items

    from tfrec_lm.data.split import build_vocab
    from tfrec_lm.data.synthetic import synthetic_migration

    dataset, _ = synthetic_migration(num_users=5, length=6)
    vocab = build_vocab(dataset.items)
    queries = new_items.queries_of(dataset, vocab.ids, lambda rows: np.arange(len(rows)) >= 4)
    assert len(queries["target"]) == 5 * 2
    frame = dataset.interactions.sort_values(["user_id", "timestamp"], kind="stable")
    first = frame[frame["user_id"] == queries["user"][0]]
    assert list(queries["histories"][0]) == first["item_id"].tolist()[:4]
    assert list(queries["stamps"][1]) == first["timestamp"].tolist()[:5]
    assert vocab.ids[queries["target"][1]] == first["item_id"].tolist()[5]
    assert sorted(queries["exclude"][0]) == sorted(vocab.index(first["item_id"].tolist()[:4]))
    popularity = np.arange(vocab.size, dtype=np.float32)  # the last item is the most popular
    top = new_items.popular_top10(popularity, queries)
    for row, excluded in enumerate(queries["exclude"]):
        expected = [i for i in range(vocab.size - 1, 0, -1) if i not in set(excluded)][:10]
        assert top[row].tolist() == expected


def test_sasrec_baseline_learns_the_synthetic_migration():
    """The SASRec reference trains on the package's split and beats popularity on migrating users."""
    import sasrec

    from tfrec_lm.config import PRESETS, TrainConfig
    from tfrec_lm.data.prepare import prepare_data
    from tfrec_lm.data.synthetic import synthetic_migration

    history = np.array([[4, 5, 6, 0], [7, 0, 0, 0], [1, 2, 3, 4]])
    assert sasrec.left_pad(history).tolist() == [[0, 4, 5, 6], [0, 0, 0, 7], [1, 2, 3, 4]]

    dataset, _ = synthetic_migration(num_users=120, seed=1)
    data = prepare_data(TrainConfig.from_dict(dict(PRESETS["tiny"])), dataset=dataset)
    model, seconds = sasrec.train_sasrec(data.split.train, data.vocab.size, data.split.train.history.shape[1],
                                         seed=0, epochs=4, batch_size=32, learning_rate=5e-3, dim=16)
    assert seconds > 0
    result = sasrec.evaluate(model, data)
    assert len(result["test_ranks"]) == len(data.split.test) == 120
    assert set(result["test_slices"]) == {"all", "migrating", "stable"}
    # Every test target is in the user's recent (post-switch) category: about 7 candidates of 48.
    learned, popular = result["test"]["model"], result["test"]["most_popular"]
    assert learned["all"]["HR@10"] > 0.8
    assert learned["all"]["NDCG@10"] > popular["all"]["NDCG@10"] + 0.15
    assert learned["migrating"]["NDCG@10"] > popular["migrating"]["NDCG@10"] + 0.15
