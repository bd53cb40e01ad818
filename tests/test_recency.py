"""Recency features: item ages, the long/short-term gate, and their path to the export."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_training, tiny_config

from tfrec_lm.errors import ConfigError
from tfrec_lm.registry.model_versions import ModelVersions
from tfrec_lm.serving_module import ServingModule
from tfrec_lm.layers.history_ops import compact_with_ages
from tfrec_lm.layers.interest_composer import InterestComposer
from tfrec_lm.layers.sequence_encoder import AGE_BUCKET_EDGES, age_buckets


def test_compact_with_ages_drops_unknown_items_with_their_times():
    history = tf.constant([[0, 5, 0, 7, 9], [3, 0, 0, 0, 0]], tf.int32)
    times = tf.constant([[999, 100, 50, 160, 400], [70, 0, 0, 0, 0]], tf.int64)
    items, ages = compact_with_ages(history, times, 3)
    np.testing.assert_array_equal(items.numpy(), [[9, 7, 5], [3, 0, 0]])
    np.testing.assert_array_equal(ages.numpy(), [[0, 240, 300], [0, 0, 0]])


def test_ages_are_never_negative():
    # Out-of-order client timestamps (an older "newest" item) clamp to age 0.
    items, ages = compact_with_ages(tf.constant([[1, 2]]), tf.constant([[500, 100]], tf.int64), 2)
    np.testing.assert_array_equal(items.numpy(), [[2, 1]])
    np.testing.assert_array_equal(ages.numpy(), [[0, 0]])


def test_age_buckets_are_log_spaced():
    day, year = 86_400, 31_536_000
    ages = tf.constant([[0, 1, 59, 60, 3_599, 3_600, day, 10 * year]], tf.int64)
    np.testing.assert_array_equal(age_buckets(ages).numpy(), [[0, 1, 1, 2, 3, 4, 6, len(AGE_BUCKET_EDGES)]])


def _vectors(batch=2, length=6, width=8, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.normal(size=(batch, length, width)), tf.float32)


def test_time_features_change_the_user_only_through_ages():
    composer = InterestComposer(8, max_history=6, num_heads=2, dropout=0.0, time_features=True)
    vectors, mask = _vectors(), tf.ones([2, 6], tf.bool)
    recent = tf.zeros([2, 6], tf.int64)
    old = tf.constant([[0, 60, 600, 3_600, 86_400, 31_536_000]] * 2, tf.int64)
    a, b = composer(vectors, mask, ages=recent), composer(vectors, mask, ages=old)
    assert not np.allclose(a.numpy(), b.numpy())
    np.testing.assert_allclose(composer(vectors, mask, ages=recent).numpy(), a.numpy())
    with pytest.raises(ValueError, match="ages"):
        composer(vectors, mask)


def test_bag_is_order_free_and_newest_is_not():
    vectors, mask = _vectors(), tf.ones([2, 6], tf.bool)
    shuffled = tf.gather(vectors, [3, 0, 5, 1, 4, 2], axis=1)
    bag = InterestComposer(8, max_history=6, pooling="bag")
    np.testing.assert_allclose(bag(vectors, mask).numpy(), bag(shuffled, mask).numpy(), atol=1e-6)
    assert not bag.trainable_weights or all("sequence_encoder" not in w.name for w in bag.trainable_weights)
    newest = InterestComposer(8, max_history=6, dropout=0.0)
    assert not np.allclose(newest(vectors, mask).numpy(), newest(shuffled, mask).numpy(), atol=1e-4)


def test_long_short_reads_old_items_only_through_the_long_view():
    composer = InterestComposer(8, max_history=6, dropout=0.0, long_short=True, short_window=2)
    vectors, mask = _vectors(), tf.ones([2, 6], tf.bool)
    changed_old = tf.concat([vectors[:, :2], vectors[:, 2:] + 1.0], axis=1)
    base = composer(vectors, mask)
    assert not np.allclose(base.numpy(), composer(changed_old, mask).numpy())
    # With the gate fully open to the short view, items beyond the window no longer matter.
    gate_bias = composer.gate.bias
    gate_bias.assign(tf.fill(gate_bias.shape, 1e4))
    np.testing.assert_allclose(composer(vectors, mask).numpy(), composer(changed_old, mask).numpy(), atol=1e-5)
    names = {w.name.split("/")[-2] for w in composer.trainable_weights}
    assert {"interest_gate", "long_term_projection", "user_projection"} <= names


def test_composer_config_round_trip():
    composer = InterestComposer(16, max_history=20, time_features=True, long_short=True, short_window=5)
    clone = InterestComposer.from_config(composer.get_config())
    assert clone.get_config() == composer.get_config()
    assert clone.window == 5 and clone.sequence_encoder.max_length == 5


@pytest.mark.parametrize("changes, message", [
    ({"long_short": True, "sequence_pooling": "mean"}, "needs --user-tower item-sequence"),
    ({"long_short": True, "user_tower": "history-text"}, "needs --user-tower item-sequence"),
    ({"long_short": True, "short_window": 80}, "short_window"),
])
def test_config_rejects_recency_options_that_cannot_apply(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path, **changes)


def test_item_ages_are_read_only_where_the_tower_reads_order(tmp_path):
    # Item ages are on by default and apply to the order-aware item-sequence tower only.
    assert tiny_config(tmp_path).reads_item_ages
    for changes in ({"sequence_pooling": "mean"}, {"sequence_pooling": "bag"}, {"user_tower": "history-text"},
                    {"time_features": False}):
        assert not tiny_config(tmp_path, **changes).reads_item_ages, changes


@pytest.fixture(scope="module")
def recency_run(synthetic, encoder_factory, tmp_path_factory):
    config = tiny_config(tmp_path_factory.mktemp("recency"), epochs=2, patience=2, dropout=0.0,
                         time_features=True, long_short=True, short_window=4)
    return run_training(config, synthetic, encoder_factory)


def test_recency_run_trains_the_age_embedding_and_the_gate(recency_run):
    variables = {v.name: v for v in recency_run.model.user_tower.trainable_variables}
    for part in ("age_embedding", "interest_gate", "long_term_projection"):
        trained = [v for name, v in variables.items() if part in name]
        assert trained and all(recency_run.changed(v) for v in trained), part


def test_export_with_recency_reads_timestamps_like_the_model(recency_run, tmp_path):
    result = recency_run.result
    module = ServingModule(result.model, result.vocab.ids, result.counts, top_k=5, index="brute-force")
    path = ModelVersions(tmp_path, "recency").save(module, {"name": "recency"})
    serve = tf.saved_model.load(str(path)).signatures["rank"]
    test = result.split.test
    rows = slice(0, 4)
    ids = result.vocab.ids[test.history[rows]].astype(str)
    candidates = np.tile(result.vocab.ids[1:9].astype(str), (4, 1))
    users = result.model.embed_users(tf.constant(test.history[rows]),
                                     tf.constant(test.history_timestamps[rows])).numpy()
    items = result.model.item_tower(tf.range(1, 9), training=False).numpy()
    answer = serve(history_item_ids=tf.constant(ids), history_timestamps=tf.constant(test.history_timestamps[rows]),
                   candidate_item_ids=tf.constant(candidates))
    np.testing.assert_allclose(answer["scores"].numpy(), users @ items.T, rtol=1e-4, atol=1e-5)
    # The same items a year apart are a different user.
    spread = test.history_timestamps[rows] * 0 + np.arange(ids.shape[1])[None, ::-1] * 3_000_000
    moved = serve(history_item_ids=tf.constant(ids), history_timestamps=tf.constant(spread.astype(np.int64)),
                  candidate_item_ids=tf.constant(candidates))
    assert not np.allclose(moved["scores"].numpy(), answer["scores"].numpy(), atol=1e-4)
