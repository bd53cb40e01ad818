"""Items without training positives (issue 12): represented by their text, never buried.

A cold item's vector is its text projection plus, in training, a learned "no ID yet" vector
(never its untrained ID embedding) and, outside training, the mix of its text neighbours'
trained ID embeddings (`cold_neighbours`); with `id_dropout` warm items take the no-ID path
in training too; and the exact catalog softmax leaves cold items out of the negatives.
"""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from tfrec_lm.bert import tiny_bert
from tfrec_lm.config import TrainConfig
from tfrec_lm.errors import ConfigError
from tfrec_lm.layers.bert_text_encoder import BertTextEncoder
from tfrec_lm.models.item_sequence_user_tower import ItemSequenceUserTower
from tfrec_lm.models.item_tower import ItemTower
from tfrec_lm.models.two_tower import TwoTowerModel

CLS, SEP, VOCAB = 2, 3, 64
WARM = np.array([False, True, True, True, False, True])  # item 4 is cold (row 0 is padding)


def rows():
    table = np.zeros([len(WARM), 5], np.int32)
    for item in range(1, len(WARM)):
        table[item, :4] = [CLS, 10 + item, 20 + item, SEP]
    return table


def tower(warm_items=WARM, id_dropout=0.0, **kwargs):
    item_tower = ItemTower(BertTextEncoder(tiny_bert(VOCAB, seed=4), finetune="frozen"), rows(), embedding_dim=8,
                           dropout=0.0, warm_items=warm_items, id_dropout=id_dropout, **kwargs)
    item_tower.refresh_cache()
    item_tower(tf.constant([1]))
    item_tower.id_embedding.embeddings.assign(tf.random.stateless_normal([len(WARM), 8], seed=[1, 2]))
    if item_tower.no_id_embedding is not None:
        item_tower.no_id_embedding.assign(tf.fill([8], 0.5))
    return item_tower


def test_cold_items_are_their_text_and_the_no_id_vector():
    item_tower = tower()
    items = tf.range(len(WARM))
    text = item_tower.projection(item_tower.text_vectors(items)).numpy()
    ids = item_tower.id_embedding(items).numpy()
    got = item_tower.representation(items).numpy()
    np.testing.assert_allclose(got[WARM], (text + ids)[WARM], atol=1e-6)
    np.testing.assert_allclose(got[4], text[4] + 0.5, atol=1e-6)
    # Inference never drops an ID; training drops about id_dropout of the warm items.
    dropping = tower(id_dropout=0.5)
    tf.keras.utils.set_random_seed(3)
    uses = np.stack([dropping.uses_id(tf.range(len(WARM)), training=True).numpy() for _ in range(200)])
    assert not uses[:, 4].any() and not uses[:, 0].any()
    assert 0.4 < uses[:, WARM].mean() < 0.6
    assert dropping.uses_id(tf.range(len(WARM)), training=False).numpy().tolist() == WARM.tolist()


COUNTS = np.array([0, 1, 6, 2, 0, 4])


def expected_cold_id(item_tower, item, k, power):
    """The mix of the ID embeddings of `item`'s k nearest warm items (encoder-text cosine), in numpy."""
    text = item_tower.text_cache.numpy()
    text = text / np.linalg.norm(text, axis=1, keepdims=True).clip(1e-12)
    warm_rows = np.flatnonzero(WARM)
    nearest = warm_rows[np.argsort(-(text[warm_rows] @ text[item]), kind="stable")[:k]]
    weights = COUNTS[nearest] ** power
    return (weights[:, None] * item_tower.id_embedding.embeddings.numpy()[nearest]).sum(0) / weights.sum()


@pytest.mark.parametrize("k, power", [(2, 1.0), (3, 0.0), (10, 2.0)])
def test_cold_items_take_the_ids_of_their_text_neighbours_outside_training(k, power):
    item_tower = tower(cold_neighbours=k, cold_popularity=power, item_counts=COUNTS)
    assert item_tower.imputes_cold_ids
    items = tf.range(len(WARM))
    text = item_tower.projection(item_tower.text_vectors(items)).numpy()
    ids = item_tower.id_embedding(items).numpy()
    got = item_tower.representation(items).numpy()
    np.testing.assert_allclose(got[WARM], (text + ids)[WARM], atol=1e-6)  # warm items are untouched
    mix = expected_cold_id(item_tower, 4, k, power)
    np.testing.assert_allclose(got[4], text[4] + mix, atol=1e-5)
    assert not np.allclose(mix, 0.5)
    # Training still represents a cold (or ID-dropped) item by the no-ID vector.
    np.testing.assert_allclose(item_tower.representation(items, training=True).numpy()[4], text[4] + 0.5, atol=1e-6)
    # The history path reads the same vectors.
    np.testing.assert_allclose(item_tower.representation(tf.constant([[4, 1]])).numpy()[0], got[[4, 1]], atol=1e-6)


def test_a_high_popularity_power_takes_after_the_most_consumed_neighbour():
    item_tower = tower(cold_neighbours=4, cold_popularity=30.0, item_counts=COUNTS)
    got = item_tower.id_part(tf.constant([4])).numpy()[0]
    np.testing.assert_allclose(got, item_tower.id_embedding.embeddings.numpy()[2], atol=1e-4)  # count 6 of 1/6/2/4


def test_a_huge_popularity_power_neither_overflows_nor_divides_by_zero():
    counts = np.array([0, 1, 10**6, 2, 0, 4])
    item_tower = tower(cold_neighbours=3, cold_popularity=40.0, item_counts=counts)
    got = item_tower.id_part(tf.constant([4])).numpy()[0]
    assert np.isfinite(got).all()
    text = item_tower.text_cache.numpy()
    text = text / np.linalg.norm(text, axis=1, keepdims=True).clip(1e-12)  # row 0: padding
    warm_rows = np.array([1, 2, 3, 5])
    nearest = warm_rows[np.argsort(-(text[warm_rows] @ text[4]), kind="stable")[:3]]
    top = nearest[np.argmax(counts[nearest])]  # the most consumed neighbour takes the whole mix
    np.testing.assert_allclose(got, item_tower.id_embedding.embeddings.numpy()[top], atol=1e-5)


def test_no_neighbours_keeps_the_no_id_vector():
    item_tower = tower(cold_neighbours=0, item_counts=COUNTS)
    assert not item_tower.imputes_cold_ids
    np.testing.assert_allclose(item_tower.id_part(tf.constant([4])).numpy()[0], np.full(8, 0.5))
    with pytest.raises(ValueError, match="cold_neighbours"):
        tower(cold_neighbours=-1)
    with pytest.raises(ValueError, match="item_counts"):
        tower(cold_neighbours=2, item_counts=COUNTS[:3])


def test_without_warm_items_every_item_uses_its_id():
    item_tower = ItemTower(BertTextEncoder(tiny_bert(VOCAB, seed=4), finetune="frozen"), rows(), embedding_dim=8)
    assert item_tower.no_id_embedding is None
    assert item_tower.negative_mask().numpy().all()


def model(warm_items):
    item_tower = tower(warm_items=warm_items)
    user_tower = ItemSequenceUserTower(item_tower, max_history=3, num_heads=2, dropout=0.0, time_features=False)
    return TwoTowerModel(user_tower, item_tower, negatives="catalog", ranking_weight=0.0)


FEATURES = {"history": tf.constant([[1, 2, 0], [3, 5, 1]], tf.int32),
            "history_timestamps": tf.zeros([2, 3], tf.int64),
            "target": tf.constant([3, 2], tf.int32), "rating": tf.constant([np.nan, np.nan], tf.float32)}


@pytest.mark.parametrize("cold_is_negative", [False, True])
def test_cold_items_are_not_catalog_negatives(cold_is_negative):
    net = model(None if cold_is_negative else WARM)
    before = float(net.compute_loss(FEATURES))
    # Move the cold item's text far away: only a negative's score feeds the loss.
    cache = net.item_tower.text_cache
    cache.assign(tf.tensor_scatter_nd_update(cache, [[4]], 5.0 * tf.ones([1, cache.shape[1]])))
    after = float(net.compute_loss(FEATURES))
    if cold_is_negative:
        assert after != pytest.approx(before, abs=1e-6)
    else:
        assert after == pytest.approx(before, abs=1e-7)


def test_training_marks_items_without_training_positives_cold(synthetic, encoder_factory, tmp_path):
    from tfrec_lm.data.prepare import prepare_data
    from tfrec_lm.models.factory import build_for_training

    # Drop every interaction of two items: they stay in the catalog with their texts.
    cold_ids = synthetic.items["item_id"].iloc[:2].tolist()
    kept = synthetic.interactions[~synthetic.interactions["item_id"].isin(cold_ids)].reset_index(drop=True)
    data = dataclasses.replace(synthetic, name="cold", interactions=kept)
    config = tiny_config(tmp_path)
    prepared = prepare_data(config, data)
    net = build_for_training(config, prepared, encoder_factory, tf.distribute.get_strategy())
    warm = net.item_tower.warm_items
    cold = prepared.vocab.index(np.array(cold_ids))
    assert not warm[cold].any() and not warm[0]
    targets = np.unique(prepared.split.train.target)
    assert warm[targets].all() and warm.sum() == len(targets)
    assert net.item_tower.no_id_embedding.trainable
    # Cold items take their ID part from text neighbours, weighed by the training counts.
    assert net.item_tower.imputes_cold_ids and net.item_tower.cold_neighbours == config.cold_neighbours
    np.testing.assert_array_equal(net.item_tower.item_counts, prepared.counts)
    # `--cold-items id` is the tower before cold items.
    legacy = build_for_training(config.replace(cold_items="id"), prepared, encoder_factory,
                                tf.distribute.get_strategy())
    assert legacy.item_tower.warm_items is None and legacy.item_tower.no_id_embedding is None


def test_id_dropout_must_be_a_probability():
    with pytest.raises(ConfigError, match="id_dropout"):
        TrainConfig(id_dropout=1.0).validate()
    with pytest.raises(ConfigError, match="cold_neighbours"):
        TrainConfig(cold_neighbours=-1).validate()
    with pytest.raises(ConfigError, match="cold_popularity"):
        TrainConfig(cold_popularity=-0.5).validate()
    with pytest.raises(ConfigError, match="cold_items"):
        TrainConfig.from_dict({"cold_items": "maybe"})


def test_the_cold_table_is_built_in_chunks_with_the_neighbours_of_the_whole_matrix(monkeypatch):
    """21 cold of 40 items, 4 cold rows per chunk (6 chunks, the last one padded): the
    table equals a dense numpy reference, eagerly and inside a tf.function."""
    from tfrec_lm.models import item_tower as module

    rng = np.random.default_rng(7)
    warm = rng.random(40) < 0.35
    warm[0], warm[1], warm[2] = False, True, True
    counts = np.where(warm, rng.integers(1, 50, 40), 0)
    table = np.zeros([40, 5], np.int32)
    table[1:, :4] = [[CLS, 10 + i % 50, 60 + i % 4, SEP] for i in range(1, 40)]
    item_tower = ItemTower(BertTextEncoder(tiny_bert(VOCAB + 50, seed=4), finetune="frozen"), table,
                           embedding_dim=8, dropout=0.0, warm_items=warm, cold_neighbours=3, cold_popularity=2.0,
                           item_counts=counts)
    item_tower.refresh_cache()
    item_tower(tf.constant([1]))
    text = rng.normal(size=[40, item_tower.encoder.hidden_size]).astype(np.float32)  # well-separated cosines
    item_tower.text_cache.assign(text)
    ids = rng.normal(size=[40, 8]).astype(np.float32)
    item_tower.id_embedding.embeddings.assign(ids)
    cold_rows, warm_rows = np.flatnonzero(~warm[1:]) + 1, np.flatnonzero(warm)
    assert len(cold_rows) > 4 * 2 and len(cold_rows) % 4  # several chunks, the last one short

    unit = text / np.linalg.norm(text, axis=1, keepdims=True)
    expected = np.zeros([40, 8])
    for c in cold_rows:
        nearest = warm_rows[np.argsort(-(unit[warm_rows] @ unit[c]), kind="stable")[:3]]
        weights = counts[nearest].astype(np.float64) ** 2.0
        expected[c] = (weights / weights.sum()) @ ids[nearest]

    chunked = item_tower.cold_id_table(chunk_rows=4).numpy()
    np.testing.assert_allclose(chunked, expected, atol=1e-5)
    np.testing.assert_array_equal(chunked, item_tower.cold_id_table(chunk_rows=len(cold_rows)).numpy())  # one chunk
    np.testing.assert_array_equal(chunked, item_tower.cold_id_table(chunk_rows=1).numpy())
    # The inference path (id_part) takes the chunk size from the module, in eager and graph mode.
    monkeypatch.setattr(module, "COLD_CHUNK_ROWS", 5)
    assert module.cold_chunk_rows(len(warm_rows)) == 5
    items = tf.range(40)
    eager = item_tower.id_part(items).numpy()
    graph = tf.function(lambda x: item_tower.id_part(x))(items).numpy()
    np.testing.assert_allclose(eager[cold_rows], expected[cold_rows], atol=1e-5)
    np.testing.assert_allclose(graph, eager, atol=1e-6)
    np.testing.assert_allclose(eager[warm], ids[warm], atol=1e-6)  # warm items keep their own IDs
    monkeypatch.setattr(module, "COLD_CHUNK_FLOATS", 2 * len(warm_rows))
    assert module.cold_chunk_rows(len(warm_rows)) == 2  # the float budget caps the chunk too
    # A frozen table (a catalog update) is the same table, computed once: later ID changes do not reach it.
    item_tower.freeze_cold_ids()
    np.testing.assert_allclose(item_tower.id_part(items).numpy(), eager, atol=1e-6)
    item_tower.id_embedding.embeddings.assign(ids + 1.0)
    np.testing.assert_allclose(item_tower.id_part(items).numpy()[cold_rows], eager[cold_rows], atol=1e-6)
