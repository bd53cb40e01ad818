"""The closed-form fold-in (`tfrec_lm.catalog.fold_in`, issue 29) on hand-computed vectors.

The model-level checks (queries through the frozen user tower, the export serving the
folded vectors, no training step) are in tests/test_catalog.py beside the other updates.
"""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import numpy as np
import pandas as pd
import pytest

from tfrec_lm.catalog import fold_in as fold_in_module
from tfrec_lm.catalog.fold_in import (fit_audience_map, fold_in_vectors, history_rows, map_audience,
                                     map_fit_rows, vocabulary_rows)

S = 1 / np.sqrt(2)


def tiny_catalog():
    """Three items in 2-D: representations (norms 3, 2, 1) and unit priors."""
    representations = np.array([[0, 0], [3, 0], [0, 2], [1, 0]], np.float32)
    priors = np.array([[0, 0], [1, 0], [0, 1], [1, 0]], np.float32)
    return representations, priors


def test_two_interactions_with_shrinkage_two_land_halfway_and_keep_the_norm():
    representations, priors = tiny_catalog()
    queries = np.array([[0, 1], [0, 1]], np.float32)
    out, rows = fold_in_vectors(representations, priors, queries, np.array([1, 1]), np.ones(2), shrinkage=2.0)
    # a = 2 / (2 + 2) = 0.5: halfway between the audience (0, 1) and the prior (1, 0), at norm 3.
    np.testing.assert_allclose(out[1], [3 * S, 3 * S], atol=1e-6)
    assert rows.tolist() == [1]
    np.testing.assert_array_equal(out[[0, 2, 3]], representations[[0, 2, 3]])  # nothing else moves


def test_weights_count_as_interactions_and_the_audience_is_their_weighted_mean():
    representations, priors = tiny_catalog()
    queries = np.array([[1, 0], [0, 1]], np.float32)
    out, _ = fold_in_vectors(representations, priors, queries, np.array([2, 2]), np.array([3.0, 1.0]),
                             shrinkage=4.0)
    audience = np.array([3, 1]) / np.sqrt(10)  # weighted sum (3, 1), normalised
    mixed = 0.5 * audience + 0.5 * np.array([0, 1])  # mass 4, k 4: a = 0.5
    np.testing.assert_allclose(out[2], 2 * mixed / np.linalg.norm(mixed), atol=1e-6)


def test_no_shrinkage_or_no_prior_gives_the_audience_alone():
    representations, priors = tiny_catalog()
    queries = np.array([[0, 1], [1, 1]], np.float32)
    items = np.array([3, 1])
    out, rows = fold_in_vectors(representations, priors, queries, items, np.ones(2), shrinkage=0.0)
    np.testing.assert_allclose(out[3], [0, 1], atol=1e-6)
    np.testing.assert_allclose(out[1], [3 * S, 3 * S], atol=1e-6)
    assert rows.tolist() == [1, 3]
    # The text prior off: a zero prior row leaves only the audience, whatever k.
    out, _ = fold_in_vectors(representations, np.zeros_like(priors), queries, items, np.ones(2), shrinkage=10.0)
    np.testing.assert_allclose(out[3], [0, 1], atol=1e-6)
    # Many interactions move an item nearly all the way; one barely with a large k.
    many = np.tile([[0, 1]], (1000, 1)).astype(np.float32)
    out, _ = fold_in_vectors(representations, priors, many, np.full(1000, 1), np.ones(1000), shrinkage=3.0)
    assert out[1, 1] / 3 > 0.99
    out, _ = fold_in_vectors(representations, priors, many[:1], np.array([1]), np.ones(1), shrinkage=1000.0)
    assert out[1, 0] / 3 > 0.99
    with pytest.raises(ValueError, match="shrinkage"):
        fold_in_vectors(representations, priors, many[:1], np.array([1]), np.ones(1), shrinkage=-1.0)


def test_history_rows_are_each_users_earlier_known_items_in_time_order():
    log = pd.DataFrame({"user_id": ["a", "a", "a", "b", "b"],
                        "item_id": ["x", "gone", "y", "y", "z"],
                        "timestamp": [10, 20, 30, 5, 6]})
    index = {"x": 1, "y": 2, "z": 3}
    history, times = history_rows(log, index, max_history=2, select=np.array([True, False, True, False, True]))
    assert history.tolist() == [[0, 0], [1, 0], [2, 0]]  # a's first row: nothing; "gone" is not in the catalog
    assert times.tolist() == [[0, 0], [10, 0], [5, 0]]
    history, _ = history_rows(log.iloc[:3], {"x": 1, "gone": 4, "y": 2}, max_history=1,
                              select=np.array([False, False, True]))
    assert history.tolist() == [[4]]  # the newest max_history known items


def test_history_rows_match_a_row_by_row_reference_on_random_logs():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n, max_history = int(rng.integers(1, 400)), int(rng.integers(1, 9))
        log = pd.DataFrame({"user_id": rng.integers(0, 6, n).astype(str),  # long histories per user
                            "item_id": rng.integers(0, 40, n).astype(str), "timestamp": rng.integers(0, 60, n)})
        log = log.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
        index = {str(i): i for i in range(1, 30)}  # ids 0 and 30-39 are outside the catalog
        select = rng.random(n) < 0.4
        history, times = history_rows(log, index, max_history, select)
        items = [index.get(i, 0) for i in log["item_id"]]
        users, stamps = log["user_id"].tolist(), log["timestamp"].tolist()
        for out, row in enumerate(np.flatnonzero(select)):
            earlier = [r for r in range(row) if users[r] == users[row] and items[r] > 0][-max_history:]
            pad = [0] * (max_history - len(earlier))
            assert history[out].tolist() == [items[r] for r in earlier] + pad
            assert times[out].tolist() == [stamps[r] for r in earlier] + pad
    assert vocabulary_rows(np.array(["b", "zz", "a"], object), {"a": 1, "b": 2}).tolist() == [2, 0, 1]
    assert vocabulary_rows(np.array([], object), {"a": 1}).tolist() == []


def test_the_map_takes_the_newest_rows_of_the_most_logged_items_up_to_the_cap(monkeypatch):
    #            item: 5  5  5  2  2  2  7  7  9  3  3  3
    rows = np.array([5, 5, 5, 2, 2, 2, 7, 7, 9, 3, 3, 3])
    stamps = np.array([3, 1, 2, 5, 6, 4, 1, 2, 1, 9, 8, 7])
    candidates = np.ones(len(rows), bool)
    candidates[11] = False  # item 3 has two candidate rows, as many as item 7
    assert np.flatnonzero(map_fit_rows(rows, stamps, candidates, max_items=10, per_item=20)).tolist() == \
        np.flatnonzero(candidates).tolist()  # under the cap: every candidate row, as before the cap
    # Three rows each for items 2 and 5, two for 3 and 7 (the tie goes to the lower index, 3), one for 9.
    chosen = map_fit_rows(rows, stamps, candidates, max_items=3, per_item=2)
    assert np.flatnonzero(chosen).tolist() == [0, 2, 3, 4, 9, 10]  # the two newest of 5, 2 and 3
    monkeypatch.setattr(fold_in_module, "MAP_MAX_ITEMS", 1)
    assert np.flatnonzero(map_fit_rows(rows, stamps, candidates, per_item=2)).tolist() == [3, 4]  # item 2: lower index
    assert not map_fit_rows(rows, stamps, np.zeros(len(rows), bool)).any()


def test_the_audience_map_recovers_a_linear_relation_and_applies_before_the_shrinkage():
    rng = np.random.default_rng(0)
    centroids = rng.standard_normal((50, 2))
    true = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, -0.5]])  # swap the axes, then add an intercept
    vectors = np.hstack([centroids, np.ones((50, 1))]) @ true
    np.testing.assert_allclose(fit_audience_map(centroids, vectors, ridge=0.0), true, atol=1e-9)
    mapping = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # a pure swap
    np.testing.assert_allclose(map_audience(np.array([[0.6, 0.8]]), mapping), [[0.8, 0.6]], atol=1e-12)
    representations, priors = tiny_catalog()
    out, _ = fold_in_vectors(representations, priors, np.array([[0, 1.0]]), np.array([1]), np.ones(1),
                             shrinkage=0.0, mapping=mapping)
    np.testing.assert_allclose(out[1], [3, 0], atol=1e-6)  # the audience (0, 1) mapped to (1, 0), at norm 3


def test_user_queries_in_padded_batches_match_the_tower_row_by_row(item_sequence_run):
    """One trace over fixed-size batches (the last padded) gives each history its own query."""
    import tensorflow as tf

    from tfrec_lm.catalog.fold_in import user_queries

    users = item_sequence_run.model.user_tower.for_export()
    width = item_sequence_run.model.user_tower.max_history
    rng = np.random.default_rng(0)
    history = rng.integers(0, 6, (7, width)).astype(np.int32)
    history[3] = 0  # an empty history among them
    times = np.sort(rng.integers(1, 10_000, (7, width)), axis=1).astype(np.int64)
    got = user_queries(users, history, times, batch_size=3)  # batches of 3, 3 and 1 (padded to 3)
    expected = np.concatenate([users(tf.constant(history[i:i + 1]), tf.constant(times[i:i + 1]),
                                     training=False).numpy() for i in range(7)])
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)
    none = user_queries(users, history[:0], times[:0])
    assert none.shape == (0, expected.shape[1])


def test_user_queries_trace_a_tower_once_and_read_its_table_when_they_run(item_sequence_run):
    """The fold-in and the calibration share one tower: the second call reuses the trace and sees a new table."""
    from tfrec_lm.catalog.fold_in import _TRACED, user_queries

    users = item_sequence_run.model.user_tower.for_export()
    width = item_sequence_run.model.user_tower.max_history
    history = np.zeros((4, width), np.int32)
    history[:, -1] = [1, 2, 3, 4]
    times = np.ones((4, width), np.int64)
    first = user_queries(users, history, times, batch_size=4)
    table = users.item_representations.numpy()
    users.item_representations.assign(table[::-1].copy())  # another table, as the calibration assigns
    second = user_queries(users, history, times, batch_size=4)
    assert _TRACED[users].experimental_get_tracing_count() == 1
    assert not np.allclose(first, second)
    users.item_representations.assign(table)
    np.testing.assert_allclose(user_queries(users, history, times, batch_size=4), first, atol=1e-6)
