"""Vocabulary, per-user sequences, leave-one-out and refresh splits on hand-made data."""

import numpy as np
import pandas as pd
import pytest

from tfrec_lm.data.schema import Dataset, items_from_interactions
from tfrec_lm.data.split import (
    ItemVocab,
    UserSequences,
    build_sequences,
    build_vocab,
    leave_one_out,
    refresh_split,
    train_interaction_counts,
)

# file order; u1's b and d share timestamp 30 (b comes first in the file)
ROWS = [
    ("u1", "a", 10, 5.0),
    ("u2", "f", 5, np.nan),
    ("u1", "b", 30, 4.0),
    ("u3", "a", 1, 3.0),
    ("u1", "c", 20, 2.0),
    ("u1", "d", 30, 1.0),
    ("u3", "b", 2, 2.0),
    ("u1", "e", 40, 3.0),
]
A, B, C, D, E, F = 1, 2, 3, 4, 5, 6


def make_dataset():
    interactions = pd.DataFrame(ROWS, columns=["user_id", "item_id", "timestamp", "rating"])
    items = items_from_interactions(interactions.iloc[np.argsort(interactions["item_id"].to_numpy())])
    return Dataset("toy", interactions, items, [])


def make_sequences():
    ds = make_dataset()
    return build_sequences(ds, build_vocab(ds.items))


def test_vocab():
    vocab = build_vocab(make_dataset().items)
    assert vocab.ids.tolist() == ["", "a", "b", "c", "d", "e", "f"]
    assert vocab.size == 7
    index = vocab.index(["b", "zz", "", "f"])
    assert index.dtype == np.int32 and index.tolist() == [B, 0, 0, F]
    assert vocab.index(np.array([["a"], ["e"]], dtype=object)).tolist() == [[A], [E]]
    with pytest.raises(ValueError):
        ItemVocab(np.array(["", "a", "a"], dtype=object))


def test_sequences_stable_sort_and_user_order():
    seq = make_sequences()
    assert seq.user_ids.tolist() == ["u1", "u2", "u3"]
    assert seq.items[0].tolist() == [A, C, B, D, E]  # b before d: tie keeps file order
    assert seq.timestamps[0].tolist() == [10, 20, 30, 30, 40]
    assert seq.ratings[0].tolist() == [5.0, 2.0, 4.0, 1.0, 3.0]
    assert seq.items[0].dtype == np.int32 and seq.timestamps[0].dtype == np.int64
    assert seq.ratings[0].dtype == np.float32 and np.isnan(seq.ratings[1][0])
    assert seq.items[2].tolist() == [A, B]


def test_build_sequences_rejects_items_outside_vocab():
    ds = make_dataset()
    with pytest.raises(ValueError, match="missing from the vocabulary"):
        build_sequences(ds, ItemVocab(np.array(["", "a"], dtype=object)))


def test_leave_one_out_targets_padding_truncation_exclusion():
    split = leave_one_out(make_sequences(), max_history=2)
    test, val, train = split.test, split.validation, split.train
    # test: last interaction per user, history truncated to the 2 most recent, right padded
    assert test.user_index.tolist() == [0, 1, 2]
    assert test.target.tolist() == [E, F, B]
    assert test.history.tolist() == [[B, D], [0, 0], [A, 0]]
    assert test.history_timestamps.tolist() == [[30, 30], [0, 0], [1, 0]]
    assert test.target_timestamp.tolist() == [40, 5, 2]
    # exclusion is the full, untruncated history, and includes the validation item
    assert [e.tolist() for e in test.exclude] == [[A, C, B, D], [], [A]]
    # validation: second last; the 2-interaction user has an empty history
    assert val.user_index.tolist() == [0, 2]
    assert val.target.tolist() == [D, A]
    assert val.history.tolist() == [[C, B], [0, 0]]
    assert [e.tolist() for e in val.exclude] == [[A, C, B], []]
    # train: positions 1..n-3 of u1 only
    assert train.target.tolist() == [C, B]
    assert train.history.tolist() == [[A, 0], [A, C]]
    assert train.rating.tolist() == [2.0, 4.0]
    assert train.exclude is None
    assert train.history.dtype == np.int32 and train.history_timestamps.dtype == np.int64
    counts = train_interaction_counts(split)
    assert counts.tolist() == [0, 1, 1, 1, 0, 0, 0]  # positions 0..n-3 of u1: a, c, b


def test_leave_one_out_long_history_is_not_truncated():
    split = leave_one_out(make_sequences(), max_history=6)
    assert split.test.history[0].tolist() == [A, C, B, D, 0, 0]
    assert split.max_history == 6 and split.vocab_size == 7


def test_examples_take():
    test = leave_one_out(make_sequences(), max_history=2).test
    sub = test.take(np.array([False, True, True]))
    assert len(sub) == 2 and sub.target.tolist() == [F, B]
    assert [e.tolist() for e in sub.exclude] == [[], [A]]
    assert test.take([2, 0]).user_index.tolist() == [2, 0]


def refresh_sequences():
    return UserSequences(
        user_ids=np.array(["ua", "ub", "uc"], dtype=object),
        items=[np.array([1, 2, 3, 4], np.int32), np.array([5, 6], np.int32), np.array([7], np.int32)],
        timestamps=[np.array([1, 2, 3, 4]), np.array([5, 6]), np.array([10])],
        ratings=[np.full(4, np.nan, np.float32), np.full(2, np.nan, np.float32), np.full(1, np.nan, np.float32)],
        vocab_size=8,
    )


def test_refresh_split_by_time():
    split = refresh_split(refresh_sequences(), max_history=2, q1=50, q2=75)
    assert split.t1 == 4.0 and split.t2 == 5.5  # np.percentile of [1,2,3,4,5,6,10]
    assert split.stale_train.target.tolist() == [2, 3]
    assert split.stale_train.history.tolist() == [[1, 0], [1, 2]]
    # ub's first interaction (t=5) is in [t1, t2) but has no history: no example
    assert split.refresh_train.target.tolist() == [4]
    assert split.refresh_train.history.tolist() == [[2, 3]]  # truncated to H=2
    assert split.retrain_train.target.tolist() == [2, 3, 4]
    ev = split.evaluation
    assert ev.target.tolist() == [6, 7] and ev.user_index.tolist() == [1, 2]
    assert ev.history.tolist() == [[5, 0], [0, 0]]
    assert [e.tolist() for e in ev.exclude] == [[5], []]
    assert train_interaction_counts(split, "stale").tolist() == [0, 1, 1, 1, 0, 0, 0, 0]
    assert train_interaction_counts(split, "refresh").tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
    assert train_interaction_counts(split).tolist() == [0, 1, 1, 1, 1, 1, 0, 0]


def test_refresh_split_explicit_cutoffs_match_the_percentiles_they_equal():
    by_percentile = refresh_split(refresh_sequences(), max_history=2, q1=50, q2=75)
    explicit = refresh_split(refresh_sequences(), max_history=2, cutoffs=(4.0, 5.5))
    assert (explicit.t1, explicit.t2) == (4.0, 5.5)
    assert explicit.refresh_train.target.tolist() == by_percentile.refresh_train.target.tolist()
    assert explicit.evaluation.target.tolist() == by_percentile.evaluation.target.tolist()
    with pytest.raises(ValueError, match="t1 < t2"):
        refresh_split(refresh_sequences(), max_history=2, cutoffs=(5.5, 4.0))


def test_refresh_split_default_percentiles_and_full_history():
    seq = refresh_sequences()
    split = refresh_split(seq, max_history=1)
    all_ts = np.concatenate(seq.timestamps)
    assert split.t1 == np.percentile(all_ts, 70) and split.t2 == np.percentile(all_ts, 85)
    # evaluation exclusion keeps the whole history even though H = 1
    late = refresh_split(seq, max_history=1, q1=10, q2=40)
    row = late.evaluation.target.tolist().index(4)
    assert late.evaluation.history[row].tolist() == [3]
    assert late.evaluation.exclude[row].tolist() == [1, 2, 3]


def test_examples_point_into_one_table_and_hold_no_history_windows():
    sequences = make_sequences()
    split = leave_one_out(sequences, max_history=50)
    table = sequences.table()
    for examples in (split.train, split.validation, split.test):
        assert examples.table is table
        # 4 + 4 bytes an example (user, target position), whatever H is
        assert examples.user_index.nbytes + examples.position.nbytes == 8 * len(examples)
        assert examples.history.shape == (len(examples), 50)
    assert np.shares_memory(sequences.items[0], table.items)  # the per-user lists are views of the table


def test_window_blocks_equal_the_whole_history():
    test = leave_one_out(make_sequences(), max_history=2).test
    history, stamps = test.window()
    for start, stop in ((0, 1), (1, 3), (2, None)):
        block, block_stamps = test.window(start, stop)
        np.testing.assert_array_equal(block, history[start:stop])
        np.testing.assert_array_equal(block_stamps, stamps[start:stop])
    assert [e.tolist() for e in test.exclude[1:]] == [[], [A]]  # a slice is lazy and the same
    assert len(test.exclude[1:]) == 2


def test_tf_features_equal_examples_to_features():
    import tensorflow as tf

    from tfrec_lm.data.prepare import examples_to_features

    sequences = refresh_sequences()
    examples = refresh_split(sequences, max_history=2, q1=50, q2=75).retrain_train
    rows = np.array([2, 0, 1, 2])
    cut = {k: v.numpy() for k, v in examples.tf_features()(tf.constant(rows, tf.int64)).items()}
    whole = examples_to_features(examples.take(rows))
    assert sorted(cut) == sorted(whole)
    for name in whole:
        assert cut[name].dtype == whole[name].dtype, name
        np.testing.assert_array_equal(cut[name], whole[name], err_msg=name)
