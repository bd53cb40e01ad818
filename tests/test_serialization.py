"""Keras contracts of every tfrec_lm layer, as keras-hub's `run_layer_test` checks them.

For each layer: it is registered under the `tfrec_lm` package (so `tf.keras.layers.deserialize`
finds it by name), `from_config(get_config())` gives a layer with the same config, and
after copying the weights the clone computes the same outputs.
"""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf

from tfrec_lm.bert import tiny_bert
from tfrec_lm.layers.bert_text_encoder import BertTextEncoder
from tfrec_lm.layers.catalog_top_k import CatalogTopK
from tfrec_lm.layers.history_text_composer import HistoryTextComposer
from tfrec_lm.layers.interest_composer import InterestComposer
from tfrec_lm.layers.sequence_encoder import SequenceEncoder
from tfrec_lm.models.history_text_user_tower import HistoryTextUserTower
from tfrec_lm.models.item_sequence_user_tower import ItemSequenceUserTower, ItemTableUserTower
from tfrec_lm.models.item_tower import ItemTower

CLS, SEP, VOCAB = 2, 3, 64
NUM_ITEMS = 6  # items 1..5 and the padding row 0


def token_rows():
    """np.ndarray int32. [NUM_ITEMS, 5] `[CLS] a b [SEP]` rows, row 0 padding."""
    rows = np.zeros([NUM_ITEMS, 5], np.int32)
    for item in range(1, NUM_ITEMS):
        rows[item, :4] = [CLS, 10 + item, 20 + item, SEP]
    return rows


def item_tower(finetune="frozen", **kwargs):
    tower = ItemTower(BertTextEncoder(tiny_bert(VOCAB, seed=1), finetune=finetune), token_rows(),
                      embedding_dim=8, dropout=0.0, name="item_tower", **kwargs)
    if tower.text_cache is not None:
        tower.refresh_cache()
    return tower


def built(tower):
    """tower: ItemTower. Returns it with its BERT built (a frozen tower reads its cache and never
    calls BERT, so a clone's BERT has no weights until something calls it)."""
    tower.encoder.bert(tower.encoder.bert.dummy_inputs)
    return tower


HISTORY = tf.constant([[0, 1, 2, 3], [4, 0, 5, 5]], tf.int32)
TIMES = tf.constant([[0, 100, 200, 400], [50, 0, 60, 3_600]], tf.int64)


def assert_round_trip(layer, call):
    """Checks registration, config equality and equal outputs after copying weights.

    layer: tf.keras.layers.Layer. a built layer (called at least once).
    call: callable. `layer -> tf.Tensor or tuple of tf.Tensor`, the outputs to compare.
    """
    name = tf.keras.utils.get_registered_name(type(layer))
    assert name == f"tfrec_lm>{type(layer).__name__}"
    assert tf.keras.utils.get_registered_object(name) is type(layer)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    revived = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
    assert type(revived) is type(layer) and revived.get_config() == config
    expected = call(layer)
    call(clone)  # builds every weight
    assert [w.shape for w in clone.weights] == [w.shape for w in layer.weights]
    clone.set_weights(layer.get_weights())
    for a, b in zip(tf.nest.flatten(expected), tf.nest.flatten(call(clone))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("finetune", ["frozen", "top-k", "full"])
def test_bert_text_encoder(finetune):
    layer = BertTextEncoder(tiny_bert(VOCAB, seed=3), finetune=finetune, trainable_layers=1, name="encoder")
    ids = tf.constant(token_rows()[1:])
    assert_round_trip(layer, lambda enc: enc(ids, tf.cast(ids != 0, tf.int32)))


def test_history_text_composer():
    layer = HistoryTextComposer(token_rows()[:, 1:3], np.array([0, 2, 2, 2, 2, 2]), cls_id=CLS, sep_id=SEP,
                                max_tokens=9, name="composer")
    assert_round_trip(layer, lambda composer: composer(HISTORY))


@pytest.mark.parametrize("pooling,time_features", [("newest", True), ("mean", False)])
def test_sequence_encoder(pooling, time_features):
    layer = SequenceEncoder(4, num_blocks=2, num_heads=2, dropout=0.0, pooling=pooling,
                            time_features=time_features, name="sequence_encoder")
    vectors = tf.random.stateless_normal([2, 4, 8], seed=[1, 2])
    mask = tf.constant([[True, True, False, False], [True, True, True, True]])
    ages = tf.constant([[0, 60, 0, 0], [0, 10, 100_000, 9_000_000]], tf.int64)
    assert_round_trip(layer, lambda encoder: encoder(vectors, mask, ages=ages))


@pytest.mark.parametrize("changes", [{"pooling": "newest", "time_features": True, "long_short": True},
                                     {"pooling": "bag"}])
def test_interest_composer(changes):
    layer = InterestComposer(8, max_history=4, num_heads=2, dropout=0.0, short_window=2, name="composer",
                             **changes)
    vectors = tf.random.stateless_normal([2, 4, 8], seed=[3, 4])
    mask = tf.constant([[True, True, True, False], [True, False, False, False]])
    ages = tf.constant([[0, 5, 70, 0], [0, 0, 0, 0]], tf.int64)
    assert_round_trip(layer, lambda composer: composer(vectors, mask, ages=ages))


@pytest.mark.parametrize("finetune,use_item_ids", [("frozen", True), ("full", False)])
def test_item_tower(finetune, use_item_ids):
    layer = item_tower(finetune, use_item_ids=use_item_ids, unique_items=False, trim_padding=False)
    assert not layer.get_config()["unique_items"] and not layer.get_config()["trim_padding"]
    assert_round_trip(layer, lambda tower: built(tower)(tf.constant([[1, 2], [5, 0]])))


def test_catalog_top_k():
    layer = CatalogTopK(item_tower(), k=3, name="top_k")
    queries = tf.random.stateless_normal([2, 8], seed=[5, 6])
    assert_round_trip(layer, lambda top_k: (built(top_k.item_tower), top_k(queries))[1])


def test_item_sequence_user_tower_carries_its_item_tower():
    layer = ItemSequenceUserTower(item_tower(), max_history=3, num_heads=2, dropout=0.0, time_features=True,
                                  name="user_tower")
    assert layer.get_config()["item_tower"]["config"]["embedding_dim"] == 8
    assert_round_trip(layer, lambda tower: (built(tower.item_tower), tower(HISTORY, TIMES))[1])


def test_history_text_user_tower():
    composer = HistoryTextComposer(token_rows()[:, 1:3], np.array([0, 2, 2, 2, 2, 2]), cls_id=CLS, sep_id=SEP,
                                   max_tokens=9, name="history_text_composer")
    layer = HistoryTextUserTower(BertTextEncoder(tiny_bert(VOCAB, seed=4), finetune="frozen"), composer,
                                 embedding_dim=8, dropout=0.0, name="user_tower")
    assert_round_trip(layer, lambda tower: tower(HISTORY, TIMES))


def test_user_towers_share_one_call_signature_and_export_form():
    """Both towers take `item_table`; `for_export()` is what a SavedModel holds, with the same outputs."""
    items = item_tower()
    table = items.representation(tf.range(NUM_ITEMS), training=False)
    sequence = ItemSequenceUserTower(items, max_history=3, num_heads=2, dropout=0.0, time_features=True)
    live = sequence(HISTORY, TIMES)
    np.testing.assert_allclose(sequence(HISTORY, TIMES, item_table=table).numpy(), live.numpy(), atol=1e-6)
    exported = sequence.for_export()
    assert isinstance(exported, ItemTableUserTower)
    assert not any("bert" in v.name for v in exported.variables)  # no item encoder in the export
    np.testing.assert_allclose(exported(HISTORY, TIMES).numpy(), live.numpy(), atol=1e-6)

    composer = HistoryTextComposer(token_rows()[:, 1:3], np.array([0, 2, 2, 2, 2, 2]), cls_id=CLS, sep_id=SEP,
                                   max_tokens=9)
    text = HistoryTextUserTower(BertTextEncoder(tiny_bert(VOCAB, seed=4)), composer, embedding_dim=8, dropout=0.0)
    np.testing.assert_allclose(text(HISTORY, TIMES, item_table=table).numpy(), text(HISTORY, TIMES).numpy())
    assert text.for_export() is text


def test_item_tower_with_cold_items():
    warm = np.array([False, True, True, False, True, True])
    layer = item_tower(warm_items=warm, id_dropout=0.25)
    assert layer.get_config()["warm_items"] == warm.tolist() and layer.get_config()["id_dropout"] == 0.25
    layer.no_id_embedding.assign(np.arange(8, dtype=np.float32))  # a trained value must survive the copy
    assert_round_trip(layer, lambda tower: built(tower)(tf.constant([[1, 3], [5, 0]])))


def test_item_tower_with_cold_items_from_text_neighbours():
    warm = np.array([False, True, True, False, True, True])
    layer = item_tower(warm_items=warm, cold_neighbours=2, cold_popularity=1.5, item_counts=[0, 4, 1, 0, 2, 9])
    config = layer.get_config()
    assert (config["cold_neighbours"], config["cold_popularity"]) == (2, 1.5)
    assert config["item_counts"] == [0, 4, 1, 0, 2, 9]
    assert_round_trip(layer, lambda tower: built(tower)(tf.constant([[1, 3], [5, 0]])))


def test_item_tower_with_evidence_fusion():
    warm = np.array([False, True, True, False, True, True])
    layer = item_tower(warm_items=warm, cold_neighbours=2, cold_popularity=1.5, item_counts=[0, 4, 1, 0, 2, 9],
                       fusion="evidence", evidence_shrinkage=7.5)
    config = layer.get_config()
    assert (config["fusion"], config["evidence_shrinkage"]) == ("evidence", 7.5)
    assert layer.evidence_weights.numpy()[1:].sum(axis=1) == pytest.approx(np.ones(5))  # the table is filled
    # The clone's table is a weight: it comes with the copied weights, like the text cache.
    assert_round_trip(layer, lambda tower: built(tower)(tf.constant([[1, 3], [5, 0]]), training=True))
