"""Interest-migration scores (JS divergence, base 2) and the user slices."""

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from tfrec_lm.evaluation.migration import js_divergence, js_migration_scores, migration_slices

# vocab index -> genres; 0 is padding
GENRES = [(), ("A",), ("B",), ("A", "B"), (), ("C",)]
A, B, AB, NONE, C = 1, 2, 3, 4, 5


def test_identical_and_disjoint_distributions():
    # early = first half, recent = last 10: with 20 items they do not overlap
    histories = [np.array([A] * 4), np.array([A] * 10 + [B] * 10), np.array([AB] * 10 + [C] * 10)]
    scores = js_migration_scores(histories, GENRES)
    assert scores.tolist() == pytest.approx([0.0, 1.0, 1.0])


def test_split_weights_match_scipy():
    # early = [AB] -> (.5, .5); recent = [AB, A] -> (.75, .25)
    score = js_migration_scores([np.array([AB, A])], GENRES)[0]
    p, q = np.array([0.5, 0.5]), np.array([0.75, 0.25])  # genres A, B
    assert score == pytest.approx(jensenshannon(p, q, base=2) ** 2)
    kl_p = 0.5 * np.log2(0.5 / 0.625) + 0.5 * np.log2(0.5 / 0.375)
    kl_q = 0.75 * np.log2(0.75 / 0.625) + 0.25 * np.log2(0.25 / 0.375)
    assert score == pytest.approx(0.5 * kl_p + 0.5 * kl_q)


def test_early_is_first_half_and_recent_is_last_ten():
    # 24 items: 12 A, then B, B, then 10 A. early = first 12 (all A), recent = last 10 (all A).
    history = np.array([A] * 12 + [B, B] + [A] * 10)
    assert js_migration_scores([history], GENRES)[0] == pytest.approx(0.0)
    # moving the two B into the last ten changes the score
    moved = np.array([A] * 14 + [B, B] + [A] * 8)
    p, q = np.array([1.0, 0.0]), np.array([0.8, 0.2])
    assert js_migration_scores([moved], GENRES)[0] == pytest.approx(jensenshannon(p, q, base=2) ** 2)


def test_empty_sides_and_padding():
    histories = [
        np.array([], dtype=np.int32),  # nothing
        np.array([A]),  # early is empty
        np.array([NONE, NONE, A, A]),  # early has items but no genres
        np.array([A, B, 0, 0, 0, 0]),  # right padding is ignored: early [A], recent [A, B]
    ]
    scores = js_migration_scores(histories, GENRES)
    expected_last = jensenshannon([1.0, 0.0], [0.5, 0.5], base=2) ** 2
    assert scores.tolist() == pytest.approx([0.0, 0.0, 0.0, expected_last])


def test_js_divergence_bounds():
    rng = np.random.default_rng(1)
    p, q = rng.random((20, 4)), rng.random((20, 4))
    js = js_divergence(p, q)
    assert np.all((js >= 0) & (js <= 1))
    assert js == pytest.approx([jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, q)])


def test_migration_slices_sizes_and_ties():
    scores = np.array([0.9, 0.1, 0.5, 0.5, 0.0, 0.7, 0.5, 0.2, 0.3, 0.5])
    slices = migration_slices(scores)
    assert set(slices) == {"all", "migrating", "stable"}
    assert slices["all"].all() and slices["all"].dtype == bool
    assert np.flatnonzero(slices["migrating"]).tolist() == [0, 2, 5]  # ties at 0.5: lowest index first
    assert np.flatnonzero(slices["stable"]).tolist() == [1, 4, 7]
    assert not (slices["migrating"] & slices["stable"]).any()
    small = migration_slices(np.array([0.3, 0.1]))
    assert small["migrating"].sum() == 0 and small["stable"].sum() == 0


def test_migration_slices_never_overlap_when_all_scores_tie():
    slices = migration_slices(np.full(40, 0.49))
    assert slices["migrating"].sum() == slices["stable"].sum() == 13
    assert not (slices["migrating"] & slices["stable"]).any()
