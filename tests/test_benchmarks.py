"""Tests of the benchmark code: retrieval_scale at a tiny size and the suite runner.

No timing assertions: only that the measurements are made and the answers are right.
"""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import retrieval_scale  # noqa: E402
import run_all  # noqa: E402

from tfrec_lm.index import scann_settings  # noqa: E402


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
        settings = scann_settings(count, 10)
        assert (settings["num_leaves"], settings["num_leaves_to_search"], settings["num_reordering_candidates"]) == (
            leaves, leaves, min(count, 1000))
    assert scann_settings(1682, 300)["num_reordering_candidates"] == 1200
    assert scann_settings(100_000, 10)["num_leaves"] == 316
    assert scann_settings(100_000, 10)["num_leaves_to_search"] == 64  # the 20,000-item floor
    for count, leaves, searched, reordered in ((1_000_000, 1000, 40, 250), (5_000_000, 2236, 90, 500),
                                               (10_000_000, 3162, 127, 1000)):
        settings = scann_settings(count, 10)
        assert (settings["num_leaves"], settings["num_leaves_to_search"],
                settings["num_reordering_candidates"]) == (leaves, searched, reordered)
    assert scann_settings(1_000_000, 100)["num_reordering_candidates"] == 400
    assert scann_settings(1_000_000, 10)["spherical"] and not scann_settings(1_000_000, 10, unit_norm=False)["spherical"]


def fake_proc(directory: Path, load_average: float, busy: int = 1000, own: int = 10) -> Path:
    """A /proc with loadavg, stat (busy ticks of all CPUs) and self/stat (this process's ticks)."""
    (directory / "self").mkdir(parents=True, exist_ok=True)
    (directory / "loadavg").write_text(f"{load_average:.2f} 0.40 0.30 1/100 4242\n")
    (directory / "stat").write_text(f"cpu  {busy} 0 0 99999 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n")
    (directory / "self" / "stat").write_text(f"4242 (py thon) R 1 1 1 0 -1 0 0 0 0 0 {own} 0 0 0\n")
    return directory


def fake_measure(calls: list, on_call=None):
    def measure(count, **_):
        calls.append(count)
        if on_call:
            on_call(len(calls))
        return {"items": count}
    return measure


def test_load_guard_refuses_a_loaded_machine(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(retrieval_scale, "SAMPLE_SECONDS", 0.01)
    monkeypatch.setenv("TFREC_LM_BENCH_RESULTS", str(tmp_path / "results"))
    proc = fake_proc(tmp_path / "proc", load_average=1.7)
    calls = []
    assert retrieval_scale.main(["--sizes", "100", "--output", "x"], proc=proc, measure=fake_measure(calls)) == 2
    assert calls == [] and not (tmp_path / "results").exists()  # nothing measured, nothing written
    error = capsys.readouterr().err
    assert "1-minute load average 1.70 > 0.5" in error and "--allow-load" in error
    # --allow-load measures anyway and marks the result.
    assert retrieval_scale.main(["--sizes", "100", "200", "--output", "x", "--allow-load"], proc=proc,
                                measure=fake_measure(calls)) == 0
    result = json.loads((tmp_path / "results" / "x.json").read_text())
    assert calls == [100, 200] and result["loaded"] is True and result["results"][0]["loaded"] is True
    assert result["load_at_start"]["load_average"] == [1.7, 0.4, 0.3]
    assert result["results"][0]["load"]["before"]["load_average"][0] == 1.7


def test_load_guard_measures_a_quiet_machine_and_watches_other_processes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(retrieval_scale, "SAMPLE_SECONDS", 0.01)
    monkeypatch.setenv("TFREC_LM_BENCH_RESULTS", str(tmp_path / "results"))
    proc = fake_proc(tmp_path / "proc", load_average=0.2)
    calls = []
    assert retrieval_scale.main(["--sizes", "100", "--output", "quiet"], proc=proc, measure=fake_measure(calls)) == 0
    result = json.loads((tmp_path / "results" / "quiet.json").read_text())
    assert result["loaded"] is False and result["results"][0]["loaded"] is False
    assert result["results"][0]["load"]["during"]["other_processes_cpu_cores"] == 0.0
    # Another process takes the CPUs while the size is measured (busy ticks grow, ours do not):
    # without --allow-load the run stops with status 2 and writes nothing.
    (tmp_path / "results" / "quiet.json").unlink()
    busy = fake_measure(calls, on_call=lambda n: fake_proc(proc, 0.2, busy=1000 + 10_000 * n))
    assert retrieval_scale.main(["--sizes", "100", "--output", "quiet"], proc=proc, measure=busy) == 2
    assert "other processes used" in capsys.readouterr().err
    assert not (tmp_path / "results" / "quiet.json").exists()


def test_other_cpu_counts_only_other_processes(tmp_path):
    proc = fake_proc(tmp_path, 0.0, busy=1000, own=10)
    clock = iter([0.0, 2.0])
    meter = retrieval_scale.OtherCpu(proc, clock=lambda: next(clock))
    fake_proc(tmp_path, 0.0, busy=1000 + 300, own=10 + 100)  # 300 ticks in all, 100 of them ours
    assert meter.cores() == pytest.approx(200 / meter.hertz / 2.0)
    assert retrieval_scale.load_problem({"load_average": [0.7, 0, 0], "other_processes_cpu_cores": 0.1}, 0.5)
    assert retrieval_scale.load_problem({"load_average": [0.7, 0, 0], "other_processes_cpu_cores": 0.1}, 0.5,
                                        use_load_average=False) is None
    assert retrieval_scale.load_problem({"load_average": None, "other_processes_cpu_cores": None}, 0.5) is None


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
    # A slice given by its users (quality_candidates' `rare`): users 1 and 2, hit in both seeds by time
    # (NDCG 1 each) and once of four by positions (user 1 in seed 1): 1 against 0.25.
    extra = recency_ablation.paired(runs, "time", "positions", extra_slices={"rare": [1, 2]})
    assert extra["rare"]["users"] == 2 and extra["rare"]["ratio"] == pytest.approx(4.0)
    assert extra["migrating"] == result["migrating"]


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


def test_trending_counts_only_the_window_before_each_query_and_excludes_the_history():
    import new_items

    from tfrec_lm.data.split import build_vocab
    from tfrec_lm.data.synthetic import synthetic_migration

    dataset, _ = synthetic_migration(num_users=8, length=6)
    vocab = build_vocab(dataset.items)
    queries = new_items.queries_of(dataset, vocab.ids, lambda rows: np.arange(len(rows)) >= 3)
    frame = dataset.interactions
    window = int(np.percentile(frame["timestamp"], 60) - frame["timestamp"].min())
    top = new_items.windowed_popular_top10(dataset, vocab.ids, queries, window)
    index = {item: i for i, item in enumerate(vocab.ids)}
    for row, now in enumerate(queries["time"]):
        inside = frame[(frame["timestamp"] < now) & (frame["timestamp"] >= now - window)]
        counts = np.zeros(vocab.size, np.int64)
        for item in inside["item_id"]:
            counts[index[item]] += 1
        order = np.argsort(-counts[1:], kind="stable") + 1
        expected = [i for i in order if i not in set(queries["exclude"][row])][:10]
        assert top[row].tolist() == expected
    assert top.min() >= 1  # never the padding index


def test_most_popular_before_t1_counts_only_items_known_before_t1():
    import new_items

    from tfrec_lm.data.synthetic import synthetic_migration

    dataset, _ = synthetic_migration(num_users=12, length=8)
    setup = new_items.time_setup(dataset, 70.0, 85.0)
    top = new_items.popular_before_t1_top10(setup)
    ids = setup["vocab"].ids
    counts = setup["before_t1"]["item_id"].value_counts()
    assert set(ids[top.ravel()]) <= setup["known"]  # never an item first seen at or after T1
    for row, excluded in enumerate(setup["queries"]["exclude"]):
        chosen = counts.reindex(ids[top[row]]).to_numpy()
        assert (np.diff(chosen) <= 0).all()  # most interacted with first
        assert not set(top[row]) & set(excluded)
        others = [counts[i] for i in setup["known"] if setup["vocab"].index([i])[0] not in set(top[row]) | set(excluded)]
        assert max(others, default=0) <= chosen.min()


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


def _sasrec_toy_split(lengths, max_history):
    """Users with the given sequence lengths: train items count up from 1 per user (offset
    by 100 per user), validation and test items are 900 + user and 950 + user."""
    from tfrec_lm.data.split import UserSequences, leave_one_out

    items = [np.array([100 * u + 1 + i for i in range(n - 2)] + [900 + u, 950 + u], dtype=np.int32)
             for u, n in enumerate(lengths)]
    sequences = UserSequences(user_ids=np.array([f"u{u}" for u in range(len(lengths))], dtype=object),
                              items=items, timestamps=[np.arange(n, dtype=np.int64) for n in lengths],
                              ratings=[np.full(n, np.nan, np.float32) for n in lengths], vocab_size=1000)
    return items, leave_one_out(sequences, max_history)


def test_sasrec_causal_windows_cover_each_training_target_once_and_leak_nothing():
    import sasrec

    lengths, width = [3, 4, 9, 14, 25, 7], 5  # 0, 1, 6, 11, 22 and 4 training targets
    items, split = _sasrec_toy_split(lengths, width)
    windows = sasrec.causal_windows(split.train, width)
    inputs, targets, position, user = windows["inputs"], windows["targets"], windows["position"], windows["user"]
    # ceil(targets / H) windows per user, users in order, none for the user with no target.
    assert user.tolist() == [1, 2, 2, 3, 3, 3, 4, 4, 4, 4, 4, 5]
    real = targets != 0
    assert ((position >= 0) == real).all() and (inputs[~real] == 0).all()
    # Every training target of the prefix objective exactly once, nothing else.
    covered = sorted(zip(np.repeat(user, real.sum(axis=1)).tolist(), position[real].tolist()))
    expected = sorted(zip(split.train.user_index.tolist(), split.train.position.tolist()))
    assert covered == expected and len(set(covered)) == len(covered) == 44
    for w in range(len(user)):
        u, cols = user[w], np.flatnonzero(real[w])
        sequence = items[u]
        # Left-padded, contiguous, newest last; input t is the item before target t.
        assert cols.tolist() == list(range(width - len(cols), width))
        assert targets[w, cols].tolist() == sequence[position[w, cols]].tolist()
        assert inputs[w, cols].tolist() == sequence[position[w, cols] - 1].tolist()
        assert (inputs[w, cols[1:]] == targets[w, cols[:-1]]).all()
        # No validation or test item (the last two of each user) as input or target.
        assert position[w, cols].max() <= len(sequence) - 3
        assert not np.isin(np.concatenate([inputs[w], targets[w]]), np.arange(900, 1000)).any()
    # The newest window of each user ends at its last training target.
    last = {u: w for w, u in enumerate(user)}
    assert all(position[w, -1] == lengths[u] - 3 for u, w in last.items())
    with pytest.raises(ValueError, match="contiguous"):
        sasrec.causal_windows(split.train.take(np.flatnonzero(split.train.position != 3)), width)


def test_sasrec_causal_mask_keeps_position_t_from_seeing_later_items():
    import sasrec

    mask = sasrec.causal_attention_mask(tf_constant([[0.0, 1.0, 1.0, 1.0]])).numpy()[0]
    assert mask.tolist() == [[False, False, False, False], [False, True, False, False],
                             [False, True, True, False], [False, True, True, True]]
    histories = np.array([[0, 3, 4, 5, 6, 7], [0, 3, 4, 5, 9, 7]], dtype=np.int32)  # differ at position 4
    for causal in (True, False):
        model = sasrec.SASRec(12, 6, dim=8, heads=2, dropout=0.0, causal=causal)
        states = model.states(tf_constant(histories)).numpy()
        changed = ~np.isclose(states[0], states[1], atol=1e-6).all(axis=1)  # [H] position's output moved
        if causal:  # positions 1..3 cannot see position 4; 4 and 5 can
            assert changed.tolist() == [False, False, False, False, True, True]
        else:  # the full mask lets every position see it (what the causal mask must prevent)
            assert changed[1:].all()
    # The newest position sees the whole history either way: evaluation is unchanged.
    model = sasrec.SASRec(12, 6, dim=8, heads=2, dropout=0.0, causal=True)
    model(tf_constant(histories))
    prefix = sasrec.SASRec(12, 6, dim=8, heads=2, dropout=0.0)
    prefix(tf_constant(histories))
    prefix.set_weights(model.get_weights())
    np.testing.assert_allclose(model(tf_constant(histories)).numpy(), prefix(tf_constant(histories)).numpy(),
                               rtol=1e-5, atol=1e-4)


def test_sasrec_without_history_negatives_leaves_the_history_out_of_its_softmax():
    """`--no-history-negatives` for the reference: each row's history items (not its target)
    drop out of the softmax, and its training step takes that loss."""
    import sasrec
    import tensorflow as tf

    model = sasrec.SASRec(12, 6, dim=8, heads=2, dropout=0.0, history_negatives=False)
    history = np.array([[0, 0, 3, 4, 5, 6], [0, 0, 0, 0, 7, 2]], dtype=np.int32)
    target = np.array([8, 7], dtype=np.int32)  # the second row's target is in its own history
    logits = model(tf_constant(history)).numpy()
    allowed = np.ones_like(logits, dtype=bool)
    allowed[0, [3, 4, 5, 6]] = False
    allowed[1, [2]] = False  # 7 stays: it is the target
    allowed[:, 0] = False  # the padding column is -1e9 in every logit row
    expected = np.mean([np.logaddexp.reduce(logits[row][allowed[row]]) - logits[row, target[row]] for row in (0, 1)])
    np.testing.assert_allclose(float(model.unseen_loss(tf_constant(history), tf_constant(target))), expected,
                               rtol=1e-5)
    assert float(model.unseen_loss(tf_constant(history), tf_constant(target))) < float(np.mean(
        tf.keras.losses.sparse_categorical_crossentropy(target, logits, from_logits=True)))
    model.compile(optimizer=tf.keras.optimizers.SGD(0.0))
    logs = model.train_step((tf_constant(history), tf_constant(target)))
    np.testing.assert_allclose(float(logs["loss"]), expected, rtol=1e-5)
    assert sasrec.variant_name("prefix", 6, history_negatives=False) == "sasrec-no-history-negatives"
    with pytest.raises(ValueError, match="prefix"):
        sasrec.SASRec(12, 6, causal=True, history_negatives=False)


def test_sasrec_causal_objective_learns_the_synthetic_migration():
    """Every window position a target, padding out of the loss: it learns like the prefix objective."""
    import sasrec

    from tfrec_lm.config import PRESETS, TrainConfig
    from tfrec_lm.data.prepare import prepare_data
    from tfrec_lm.data.synthetic import synthetic_migration

    dataset, _ = synthetic_migration(num_users=120, seed=1)
    data = prepare_data(TrainConfig.from_dict(dict(PRESETS["tiny"])), dataset=dataset)
    width = data.split.train.history.shape[1]
    model, seconds = sasrec.train_sasrec(data.split.train, data.vocab.size, width, seed=0, epochs=4, batch_size=32,
                                         learning_rate=5e-3, dim=16, objective="causal")
    assert model.causal and seconds > 0
    windows = sasrec.causal_windows(data.split.train, width)
    loss = float(model.causal_loss(tf_constant(windows["inputs"][:8]), tf_constant(windows["targets"][:8])))
    assert 0 < loss < np.log(data.vocab.size)  # better than uniform over the catalog
    result = sasrec.evaluate(model, data)
    learned, popular = result["test"]["model"], result["test"]["most_popular"]
    assert learned["all"]["HR@10"] > 0.8
    assert learned["all"]["NDCG@10"] > popular["all"]["NDCG@10"] + 0.15
    assert learned["migrating"]["NDCG@10"] > popular["migrating"]["NDCG@10"] + 0.15
    assert sasrec.run_key(42, "sasrec-causal") == "sasrec-causal"
    assert sasrec.run_key(1, sasrec.variant_name("causal", 6)) == "sasrec-causal@seed1"
    assert sasrec.variant_name("causal", 20) == "sasrec-causal-e20" and sasrec.variant_name("prefix", 20) == "sasrec"


def test_sasrec_causal_compares_with_prefix_runs_by_seed():
    import sasrec

    members = {"all": [0, 1, 2, 3], "migrating": [0, 1], "stable": [2, 3]}

    def run(variant, seed, ranks, seconds, **extra):
        return {"variant": variant, "seed": seed, "config": {"seed": seed}, "test_ranks": ranks,
                "test_slices": members, "train_seconds": seconds, "train_examples": 100, **extra}

    prefix = {sasrec.run_key(s): run("sasrec", s, [0, 0, 0, 50], 60.0, epochs=6) for s in (42, 1, 2)}
    causal = {sasrec.run_key(s, "sasrec-causal"): run("sasrec-causal", s, [0, 50, 0, 50], 10.0, epochs=6,
                                                       train_targets_per_second=60.0) for s in (42, 1)}
    quality, timing = sasrec.compare_with_prefix(causal, prefix)
    result = quality["sasrec-causal:sasrec"]
    assert result["seeds"] == [1, 42]  # seed 2 has no causal run
    assert result["migrating"]["ratio"] == pytest.approx(0.5) and result["stable"]["ratio"] == pytest.approx(1.0)
    assert result["all"]["ratio"] == pytest.approx(2 / 3)
    speed = timing["sasrec-causal:sasrec"]
    assert set(speed) == {"42", "1", "mean"}
    assert speed["mean"]["prefix_over_causal_train_seconds"] == pytest.approx(6.0)
    assert speed["mean"]["prefix_targets_per_second"] == pytest.approx(10.0)
    assert speed["mean"]["causal_seconds_per_epoch"] == pytest.approx(10.0 / 6)


def tf_constant(value):
    import tensorflow as tf

    return tf.constant(value)


def test_quality_by_target_count_groups_ranks_by_the_targets_training_interactions():
    import ml100k
    import quality_candidates

    assert ml100k.count_bucket_names() == ["1-19", "20-49", "50-99", "100-199", "200+"]
    counts = np.array([0, 5, 19, 20, 150, 500])
    ranks = np.array([0, 0, 1, 20, 0, 9])
    table = ml100k.ndcg_by_target_count(ranks, counts)
    assert table["1-19"] == {"NDCG@10": pytest.approx((1.0 + 1 / np.log2(3)) / 2), "count": 2}  # 0 is no bucket
    assert table["20-49"] == {"NDCG@10": 0.0, "count": 1}  # rank 20 is past the top 10
    assert table["100-199"]["NDCG@10"] == 1.0 and table["50-99"] == {"NDCG@10": None, "count": 0}
    assert table["200+"]["NDCG@10"] == pytest.approx(1 / np.log2(11))
    runs = {"a": {"variant": "a", "test_ranks": [0, 0, 0, 0, 0, 0]},
            "a@seed1": {"variant": "a", "test_ranks": [0, 50, 50, 50, 50, 50]},
            "b": {"variant": "b", "test_ranks": ranks.tolist()}}
    summary = quality_candidates.by_target_count(runs, counts)
    assert summary["a"]["seeds"] == 2 and summary["a"]["1-19"] == pytest.approx(0.5)
    assert summary["a"]["200+"] == pytest.approx(0.5) and summary["b"]["20-49"] == 0.0


@pytest.mark.parametrize("num_blocks", [1, 3])
def test_sequence_encoder_newest_query_equals_the_every_position_reference(num_blocks):
    """The shipped encoder computes only the newest position of its last block; the throughput
    benchmark's reference (`every_position_call`, the code before) runs every position and reads
    position 0: the same values (same weights), so the 2.09x ratio compares equal functions."""
    import tensorflow as tf
    from training_throughput import every_position_call

    from tfrec_lm.layers.sequence_encoder import SequenceEncoder

    layer = SequenceEncoder(max_length=6, num_blocks=num_blocks, num_heads=2, dropout=0.1, time_features=True)
    rng = np.random.default_rng(3)
    vectors = tf.constant(rng.standard_normal((4, 6, 8)).astype(np.float32))
    mask = tf.constant(np.array([[1] * 6, [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0] * 6], bool))
    ages = tf.constant(rng.integers(0, 10**7, (4, 6)) * mask.numpy())
    out = layer(vectors, mask, ages=ages).numpy()
    np.testing.assert_allclose(out, every_position_call(layer, vectors, mask, ages).numpy(), atol=1e-5)
    assert np.abs(out[:3]).sum(axis=1).min() > 0 and not out[3].any()  # an empty history gives zeros


def test_paired_hits_resamples_users_and_compares_the_same_queries():
    import new_items

    targets = np.array([1, 2, 3, 4, 5, 6])
    users = np.array(["u", "u", "v", "v", "w", "w"])
    hit_all = np.repeat(targets[:, None], 10, axis=1)
    hit_first = hit_all.copy()
    hit_first[1::2] = 0  # each user's second query misses
    out = new_items.paired_hits(hit_all, hit_first, targets, users)
    assert (out["hr_a"], out["hr_b"], out["ratio"]) == (1.0, 0.5, 2.0)
    assert out["ratio_95ci"] == [2.0, 2.0]  # every user has the same ratio: no resample moves it
    assert (out["queries"], out["users"], out["mean_queries_per_user"]) == (6, 3, 2.0)
    skewed = hit_first.copy()
    skewed[users == "w"] = 0  # w never hits in b: resamples without u and v would divide by zero
    spread = new_items.paired_hits(hit_all, skewed, targets, users)["ratio_95ci"]
    assert spread[0] < spread[1]
    assert new_items.paired_hits(hit_all[:0], hit_first[:0], targets[:0], users[:0]) == {"queries": 0}


def test_exposure_trade_counts_known_hits_lost_to_new_items():
    import new_items

    targets = np.array([1, 2, 3, 9])
    is_new = np.array([False, False, False, True])  # item 9 is new
    before = np.array([[1, 5, 6], [2, 5, 6], [7, 5, 6], [5, 6, 7]])  # known hits on queries 0 and 1
    after = np.array([[9, 1, 5], [9, 5, 6], [3, 9, 5], [9, 5, 6]])  # 9 pushes 2 out, 3 comes in, 9 hits
    out = new_items.exposure_trade(after, before, targets, is_new)
    assert out == {"new_item_hits": 1, "known_item_hits": 2, "known_item_hits_before": 2, "known_hits_lost": 0,
                   "known_hits_lost_per_new_hit": 0.0, "net_hits": 1}
    after[2, 0] = 8  # query 2 loses the known hit it gained
    out = new_items.exposure_trade(after, before, targets, is_new)
    assert (out["known_hits_lost"], out["known_hits_lost_per_new_hit"], out["net_hits"]) == (1, 1.0, 0)
    after[3, 0] = 4  # no new hit left: no ratio
    assert new_items.exposure_trade(after, before, targets, is_new)["known_hits_lost_per_new_hit"] is None


def test_streaming_smoke_runs_every_variant_and_its_counts_add_up(encoder_factory, tmp_path):
    """benchmarks/streaming.py in its smoke mode (synthetic data, tiny BERT, two windows): numbers mean nothing,
    the bookkeeping must be right."""
    import streaming
    from conftest import tiny_config

    dataset = streaming.smoke_dataset()
    stamps = dataset.interactions["timestamp"]
    seconds = int((stamps.max() - np.percentile(stamps, 70)) / 2) + 1
    payload = streaming.run(dataset, tiny_config(tmp_path, index="brute-force", top_k=10), tmp_path / "work", [42],
                            encoder_factory=encoder_factory, window_seconds=seconds, max_windows=2, shrinkage=2.0)
    protocol, seed = payload["protocol"], payload["seeds"]["42"]
    windows = seed["windows"]
    assert protocol["windows"] == 2 and protocol["fold_in_shrinkage"] == 2.0
    assert protocol["new_item_targets"] > 0
    assert sum(w["targets"] for w in windows) == protocol["targets"]
    assert protocol["retrained_windows"] == [0, 1]
    for name in streaming.BASE_VARIANTS:
        total = seed["overall"][name]
        assert total["all"]["targets"] == protocol["targets"]
        assert total["all"]["hits"] == sum(w["variants"][name]["all"]["hits"] for w in windows)
        assert total["known_item"]["targets"] + total["new_item"]["targets"] == protocol["targets"]
        assert sum(total[f"new_item_{s}_in_log"]["targets"] for s in ("0", "1_2", "3plus")) == \
            total["new_item"]["targets"]
        assert total["all"]["HR@10"] == pytest.approx(total["all"]["hits"] / protocol["targets"])
    # The stale export does not know the new items, so it never shows one; the updates do.
    assert seed["overall"]["stale"]["share_of_lists_with_a_new_item"] == 0.0
    assert seed["overall"]["text_only"]["share_of_lists_with_a_new_item"] > 0.0
    # Before the first window the log holds no new item's interaction (it folds in only items that were
    # cold in training: known before T1 from held-out targets alone); by the second window it holds some.
    first = windows[0]
    assert windows[1]["fold_in"]["folded_items"] > first["fold_in"]["folded_items"]
    assert windows[1]["fold_in"]["used_rows"] > first["fold_in"]["used_rows"]
    at_t1 = first["variants"]["stale"]
    assert at_t1["new_item_0_in_log"]["targets"] == at_t1["new_item"]["targets"]  # no new item is in the log at T1
    paired = payload["paired"]
    assert set(paired) == {"text_only_vs_stale", "trending_vs_stale", "fold_in_vs_stale", "fold_in_no_text_vs_stale",
                           "fold_in_no_offset_vs_stale", "fold_in_vs_fold_in_no_text", "fold_in_vs_fold_in_no_offset",
                           "fold_in_vs_trending", "fold_in_vs_retrained", "stale_vs_retrained"}
    # Both windows were retrained before: the reference covers every target, and the fold-in beside it is the same.
    assert seed["overall"]["fold_in_on_retrained_windows"] == seed["overall"]["fold_in"]
    assert paired["fold_in_vs_retrained"]["all"]["queries"] == protocol["targets"]
    assert set(seed["retrain_seconds"]) == {"0", "1"}
    # Each log-reading update chose its popularity scale on its log's newest week, and says so.
    for window in windows:
        offset = window["popularity_offset"]
        assert offset["chosen"] in ("calibrated", "off") and offset["calibration"]["targets"] > 0
        assert offset["scale"] in protocol["popularity_scale_grid"]
    assert paired["fold_in_vs_stale"]["all"]["queries"] == protocol["targets"]
    assert paired["fold_in_vs_stale"]["all"]["ratio"] == pytest.approx(
        seed["overall"]["fold_in"]["all"]["hits"] / seed["overall"]["stale"]["all"]["hits"])
    assert all(s > 0 for s in seed["update_seconds"]["fold_in"]["each"])


def test_streaming_scale_data_and_measures(tmp_path):
    import pandas as pd

    import streaming_scale

    data = streaming_scale.make_data(tmp_path, 600, 40, seed=1)
    paths = data.pop("paths")
    catalog, new = pd.read_parquet(paths["catalog.parquet"]), pd.read_csv(paths["new.csv"], dtype=str)
    train, log = pd.read_parquet(paths["train.parquet"]), pd.read_parquet(paths["log.parquet"])
    assert len(catalog) == 600 and len(new) == 40 and len(log) == 600 == data["log_rows"]
    assert catalog["item_id"].astype(int).max() < new["item_id"].astype(int).min()  # the newest items are the new
    assert (train["timestamp"] < data["t1"]).all() and len(train) == data["train_rows"] < len(log)
    assert not train["item_id"].isin(set(new["item_id"])).any()
    assert new["genres"].str.len().min() > 0  # "Drama|Horror"
    run = streaming_scale.measured([sys.executable, "-c", "x = bytearray(50 * 2 ** 20)"], tmp_path, {},
                                   tmp_path / "child.log")
    assert run["peak_rss_bytes"] > 50 * 2 ** 20 and run["wall_seconds"] > 0
    rows = [{"size": n, "log_rows": n, "cold_x_warm": n * n,
             **{part: {"wall_seconds": n / 10, "peak_rss_bytes": 2 * n} for part in ("train", "update")},
             "update_cold_neighbours_0": None} for n in (100, 300)]
    ratios = streaming_scale.growth(rows)["300"]
    assert ratios["size"] == 3 and ratios["cold_x_warm"] == 9 and ratios["update_wall_seconds"] == pytest.approx(3)
    assert "update_cold_neighbours_0_wall_seconds" not in ratios


def test_rare_bar_counts_the_fewest_added_hits_for_the_ratio_and_for_the_interval():
    import rare_bar

    base = np.zeros(60)
    base[:6] = 1.0 / np.log2(np.arange(6) + 2.0)  # six users hit at ranks 0-5, the rest missed
    needed = rare_bar.extra_hits_needed(base, rank=4, samples=500)
    gain = 1.0 / np.log2(6.0)
    ratio = lambda m: (base.sum() + m * gain) / base.sum()  # noqa: E731
    m = needed["for_ratio_1_25"]
    assert ratio(m) >= rare_bar.BAR > ratio(m - 1)
    lower = needed["for_lower_end_above_1"]
    assert lower >= m and np.isclose(needed["ndcg_at_10_then"], (base.sum() + lower * gain) / len(base))
    # The interval is the users' bootstrap: it brackets the ratio, and a copy of the baseline is exactly 1.
    better = base.copy()
    better[10:10 + lower] = gain
    low, high = rare_bar.interval(better, base, samples=500)
    assert 1.0 < low <= better.mean() / base.mean() <= high
    assert rare_bar.interval(base, base, samples=100) == [1.0, 1.0]
