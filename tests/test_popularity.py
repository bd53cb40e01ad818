"""The log's popularity offset (`tfrec_lm.catalog.popularity`, issue 29), on hand-computed numbers."""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import numpy as np
import pandas as pd
import pytest

from tfrec_lm.catalog.fold_in import sorted_log
from tfrec_lm.catalog.popularity import DAY, calibration_rows, hits_per_scale, offsets_of, recent_mass
from tfrec_lm.registry.validation import ValidationRequests

NOW = 1_000_000_000.0


def test_recent_mass_halves_per_half_life_and_ignores_padding_and_the_future():
    items = np.array([1, 1, 2, 0, 2])
    stamps = np.array([NOW - 7 * DAY, NOW - 1, NOW - 14 * DAY, NOW - 1, NOW + 5])
    mass = recent_mass(items, stamps, NOW, half_life_days=7.0, num_items=4)
    np.testing.assert_allclose(mass, [0.0, 0.5 + 0.5 ** (1 / (7 * DAY)), 0.25, 0.0])
    np.testing.assert_allclose(offsets_of(mass, 0.1), 0.1 * np.log1p(mass), rtol=1e-6)
    assert offsets_of(mass, 0.1)[0] == 0.0
    with pytest.raises(ValueError, match="half_life_days"):
        recent_mass(items, stamps, NOW, 0.0, 4)


def test_hits_per_scale_counts_hits_exactly_with_the_history_excluded():
    # One user q = [1, 0]; item 1 scores 0.9, item 2 (the target) 0.5, item 3 0.1; item 2 is popular.
    embeddings = np.array([[0, 0], [0.9, 0], [0.5, 0], [0.1, 0]], np.float32)
    offsets = np.array([0, 0, 1.0, 0], np.float32)
    queries = np.array([[1.0, 0.0]], np.float32)
    scales = (0.0, 0.3, 0.5)
    # k = 1: item 1 is above the target until beta * 1 > 0.4.
    assert hits_per_scale(queries, embeddings, offsets, np.array([2]), [np.array([], int)], scales, k=1).tolist() == \
        [0, 0, 1]
    # Item 1 in the history: the target is first at every beta.
    assert hits_per_scale(queries, embeddings, offsets, np.array([2]), [np.array([1])], scales, k=1).tolist() == \
        [1, 1, 1]
    # The target itself in the history can never be shown; neither can an item that is not servable.
    assert hits_per_scale(queries, embeddings, offsets, np.array([2]), [np.array([2])], scales, k=3).tolist() == \
        [0, 0, 0]
    servable = np.array([False, False, True, True])
    assert hits_per_scale(queries, embeddings, offsets, np.array([2]), [np.array([], int)], scales, k=1,
                          servable=servable).tolist() == [1, 1, 1]


def test_calibration_rows_are_the_newest_rows_with_an_earlier_catalog_row():
    log = pd.DataFrame({"user_id": ["b", "a", "a", "a", "b", "c"],
                        "item_id": ["x", "x", "y", "gone", "y", "x"],
                        "timestamp": [100, 10, 150, 160, 200, 300]})
    frame, rows = sorted_log(log, {"x": 1, "y": 2})
    assert frame["user_id"].tolist() == ["a", "a", "a", "b", "b", "c"]
    assert rows.tolist() == [1, 2, 0, 1, 2, 1]
    stamps = frame["timestamp"].to_numpy()
    users = frame["user_id"].to_numpy(dtype=object)
    # From t = 120: a's y (after x), not a's row outside the catalog; b's y (after x); c has no earlier row.
    assert calibration_rows(users, stamps, rows, 120).tolist() == [1, 4]
    assert calibration_rows(users, stamps, rows, 0).tolist() == [1, 4]  # first rows of a user never count
    assert len(calibration_rows(users, stamps, rows, 0, max_targets=1)) == 1
    requests = ValidationRequests.from_log(frame, np.array([1, 4]), window="week")
    assert requests.targets.tolist() == ["y", "y"] and requests.lengths.tolist() == [1, 1]
    assert requests.items.tolist() == ["x", "x"] and requests.timestamps.tolist() == [10, 100]
    assert requests.window == "week"


def test_weekly_hits_scores_each_week_with_the_rows_before_it():
    """Week 0's target (item 2) is popular only in week 1's offset, week 1's target (item 1) only in its own:
    the replay must use the counts before each target's week, not one count for all."""
    from tfrec_lm.catalog.popularity import weekly_hits

    week = 7 * DAY
    start = NOW
    # log rows: item 1 taken twice before week 0; item 2 taken three times in week 0; two targets.
    rows = np.array([1, 1, 2, 2, 2, 2, 1])
    stamps = np.array([NOW - 10, NOW - 5, NOW + 1, NOW + 2, NOW + 3, NOW + 4, NOW + week + 1], np.int64)
    embeddings = np.array([[0, 0], [0.5, 0], [0.5, 0]], np.float32)  # ties broken by the offset alone
    queries = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    targets = np.array([5, 6])  # item 2 in week 0, item 1 in week 1
    empty = [np.array([], int), np.array([], int)]
    hits, weeks = weekly_hits(queries, embeddings, rows, stamps, targets, empty, start, 7.0, (0.0, 1.0), k=1)
    assert weeks == 2
    week0 = np.log1p(recent_mass(rows, stamps, start, 7.0, 3))
    week1 = np.log1p(recent_mass(rows, stamps, start + week, 7.0, 3))
    assert week0[1] > week0[2] and week1[2] > week1[1]
    # beta = 0: the items tie and nothing is above either target; beta = 1: in each week the other item is
    # the popular one, so both miss. Counting every target with week 0's counts would hit week 1's target.
    assert hits.tolist() == [2, 0]
    assert hits_per_scale(queries[1:], embeddings, week0, np.array([1]), empty[:1], (1.0,), k=1).tolist() == [1]


def test_weekly_hits_searches_the_new_item_offset_with_beta_held():
    """Item 2 (new) scores above the target item 1 (known) unless gamma pushes it below: gamma -0.2 wins
    at k = 1, and beta's offset is added to both the same way in every gamma."""
    from tfrec_lm.catalog.popularity import weekly_hits

    rows = np.array([1, 2, 1])
    stamps = np.array([NOW - 10, NOW - 9, NOW + 1], np.int64)
    embeddings = np.array([[0, 0], [0.5, 0], [0.6, 0]], np.float32)
    queries = np.array([[1.0, 0.0]], np.float32)
    new = np.array([False, False, True])
    hits, _ = weekly_hits(queries, embeddings, rows, stamps, np.array([2]), [np.array([], int)], NOW, 7.0,
                          (0.0, -0.05, -0.2), k=1, new_items=new, beta=1.0)
    assert hits.tolist() == [0, 0, 1]  # both items have one row before the week: beta moves them alike


def test_hits_per_scale_matches_a_query_by_query_reference_in_any_batching(monkeypatch):
    """Every scale of a batch scored at once equals scoring each query and scale alone, whatever the batch."""
    from tfrec_lm.catalog import popularity

    rng = np.random.default_rng(3)
    queries, embeddings = rng.normal(size=(23, 4)).astype(np.float32), rng.normal(size=(12, 4)).astype(np.float32)
    offsets, base = rng.random(12).astype(np.float32), rng.normal(size=12).astype(np.float32)
    targets = rng.integers(1, 12, 23)
    exclude = [rng.choice(np.arange(1, 12), rng.integers(0, 4), replace=False) for _ in range(23)]
    servable = np.ones(12, bool)
    servable[5] = False
    scales = (0.0, 0.5, 2.0)
    expected = np.zeros(3, np.int64)
    for q, t, ex in zip(queries, targets, exclude):
        for s, scale in enumerate(scales):
            scores = embeddings @ q + base + np.float32(scale) * offsets
            eligible = servable.copy()
            eligible[0] = False
            eligible[ex] = False
            expected[s] += bool(eligible[t] and (eligible & (scores > scores[t])).sum() < 3)
    assert expected.min() > 0 and expected.max() < 23  # the reference tells scales apart
    for batch, budget in ((256, popularity.MAX_SCORE_ELEMENTS), (5, popularity.MAX_SCORE_ELEMENTS), (256, 40)):
        monkeypatch.setattr(popularity, "MAX_SCORE_ELEMENTS", budget)  # 40: one query per batch
        got = hits_per_scale(queries, embeddings, offsets, targets, exclude, scales, k=3, servable=servable,
                             batch_size=batch, base=base)
        assert got.tolist() == expected.tolist(), (batch, budget)
