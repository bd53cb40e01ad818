"""Tests of tfrec_lm.layers: history composition, the BERT encoder's fine-tuning
strategies and pooling, the sequence encoder, the catalog top-k layer, config round trips."""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf

from tfrec_lm.bert import tiny_bert
from tfrec_lm.layers.bert_text_encoder import BertTextEncoder
from tfrec_lm.layers.catalog_top_k import CatalogTopK
from tfrec_lm.layers.history_ops import compact_newest_first, in_history, newest_first
from tfrec_lm.layers.history_text_composer import HistoryTextComposer
from tfrec_lm.layers.pooling import masked_mean
from tfrec_lm.layers.sequence_encoder import SequenceEncoder
from tfrec_lm.models.item_tower import ItemTower

CLS, SEP = 2, 3
# Item word pieces without special tokens; row 0 is the padding item. Item 4 has
# garbage after its length, which must never be used.
TOKEN_IDS = np.array([[0, 0, 0], [10, 11, 0], [20, 0, 0], [30, 31, 32], [40, 77, 77]], np.int32)
LENGTHS = np.array([0, 2, 1, 3, 1], np.int32)
VOCAB = 64


def composer(max_tokens=16):
    return HistoryTextComposer(TOKEN_IDS, LENGTHS, cls_id=CLS, sep_id=SEP, max_tokens=max_tokens)


def compose(history, max_tokens=16):
    ids, mask = composer(max_tokens)(tf.constant(history, tf.int32))
    return ids.numpy(), mask.numpy()


def padded(values, width):
    return list(values) + [0] * (width - len(values))


# ---------------------------------------------------------------- HistoryTextComposer


def test_composer_builds_cls_newest_sep_older_sep():
    ids, mask = compose([[1, 2, 3, 0, 0]])
    expected = [CLS, 30, 31, 32, SEP, 20, SEP, 10, 11, SEP]
    assert ids.tolist() == [padded(expected, 16)]
    assert mask.tolist() == [padded([1] * len(expected), 16)]
    assert ids.dtype == np.int32 and mask.dtype == np.int32


def test_composer_uses_only_each_items_length():
    ids, mask = compose([[4, 1]])
    assert ids[0].tolist() == padded([CLS, 10, 11, SEP, 40, SEP], 16)
    assert 77 not in ids
    assert mask[0].sum() == 6


def test_composer_skips_padding_and_unknown_anywhere():
    reference, reference_mask = compose([[1, 2, 3]])
    for history in ([[0, 1, 0, 2, 0, 3]], [[1, 0, 0, 2, 3, 0, 0, 0]], [[0, 0, 0, 1, 2, 3]]):
        ids, mask = compose(history)
        np.testing.assert_array_equal(ids, reference)
        np.testing.assert_array_equal(mask, reference_mask)


def test_composer_empty_history_is_cls_only():
    ids, mask = compose([[0, 0, 0], [2, 0, 0]])
    assert ids[0].tolist() == padded([CLS], 16)
    assert mask[0].tolist() == padded([1], 16)
    assert ids[1].tolist() == padded([CLS, 20, SEP], 16)


def test_composer_truncates_to_budget():
    ids, mask = compose([[1, 2, 3]], max_tokens=6)
    assert ids.tolist() == [[CLS, 30, 31, 32, SEP, 20]]
    assert mask.tolist() == [[1] * 6]
    ids, mask = compose([[1, 2, 3]], max_tokens=2)
    assert ids.tolist() == [[CLS, 30]] and mask.tolist() == [[1, 1]]


def test_composer_rows_of_a_batch_are_independent():
    ids, mask = compose([[1, 0, 0], [3, 3, 0], [0, 0, 4]], max_tokens=12)
    assert ids.tolist() == [
        padded([CLS, 10, 11, SEP], 12),
        padded([CLS, 30, 31, 32, SEP, 30, 31, 32, SEP], 12),
        padded([CLS, 40, SEP], 12),
    ]
    assert mask.sum(axis=1).tolist() == [4, 9, 3]
    assert (ids[mask == 0] == 0).all()


def test_composer_static_width_and_in_tf_function():
    layer = composer(16)
    fn = tf.function(layer, input_signature=[tf.TensorSpec([None, None], tf.int32)])
    ids, mask = fn(tf.constant([[1, 2]], tf.int32))
    assert ids.shape.as_list() == [1, 16]
    concrete = fn.get_concrete_function()
    assert concrete.structured_outputs[0].shape.as_list() == [None, 16]
    assert ids.numpy()[0].tolist() == padded([CLS, 20, SEP, 10, 11, SEP], 16)


def test_composer_rejects_tiny_budget():
    with pytest.raises(ValueError):
        composer(max_tokens=1)


def test_composer_config_round_trip():
    layer = composer(12)
    config = layer.get_config()
    assert config["cls_id"] == CLS and config["sep_id"] == SEP and config["max_tokens"] == 12
    assert config["token_ids"] == TOKEN_IDS.tolist() and config["lengths"] == LENGTHS.tolist()
    clone = HistoryTextComposer.from_config(config)
    history = tf.constant([[1, 0, 3, 2], [0, 0, 0, 0]], tf.int32)
    for a, b in zip(layer(history), clone(history)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# ---------------------------------------------------------------- history_ops


def test_newest_first_drops_zeros_and_reverses():
    items = newest_first(tf.constant([[1, 0, 2, 3, 0], [0, 0, 0, 0, 0], [5, 0, 0, 0, 4]]))
    assert items.to_list() == [[3, 2, 1], [], [4, 5]]


def test_compact_newest_first():
    history = tf.constant([[1, 0, 2, 3, 0], [0, 0, 0, 0, 0], [5, 6, 7, 8, 9]])
    assert compact_newest_first(history, 2).numpy().tolist() == [[3, 2], [0, 0], [9, 8]]
    out = compact_newest_first(history, 6)
    assert out.numpy().tolist() == [[3, 2, 1, 0, 0, 0], [0] * 6, [9, 8, 7, 6, 5, 0]]
    assert out.dtype == tf.int32 and out.shape.as_list() == [3, 6]


def test_in_history_is_row_wise_membership():
    history = tf.constant([[7, 0, 3, 3], [0, 0, 0, 0], [1, 2, 4, 9]], tf.int64)
    items = tf.constant([1, 3, 7, 9])
    assert in_history(history, items).numpy().tolist() == [
        [False, True, True, False], [False, False, False, False], [True, False, False, True]]
    # A zero-width history holds nothing.
    assert not in_history(tf.zeros([2, 0], tf.int32), items).numpy().any()


# ---------------------------------------------------------------- BertTextEncoder


def weight_names(weights):
    return sorted(w.name for w in weights)


def test_frozen_encoder_has_no_trainable_weights():
    bert = tiny_bert(VOCAB)
    encoder = BertTextEncoder(bert, finetune="frozen")
    assert encoder.trainable_weights == []
    assert encoder.is_frozen
    assert weight_names(encoder.non_trainable_weights) == weight_names(bert.weights)


def test_top_k_one_trains_only_the_last_layer():
    bert = tiny_bert(VOCAB, num_layers=2)
    encoder = BertTextEncoder(bert, finetune="top-k", trainable_layers=1)
    trainable = weight_names(encoder.trainable_weights)
    expected = weight_names(w for w in bert.weights if "/encoder/layer_._1/" in w.name)
    assert trainable == expected and len(expected) == 16
    assert not any("embeddings" in n or "pooler" in n or "layer_._0/" in n for n in trainable)


def test_top_k_all_layers_keeps_embeddings_and_pooler_frozen():
    bert = tiny_bert(VOCAB, num_layers=2)
    encoder = BertTextEncoder(bert, finetune="top-k", trainable_layers=2)
    expected = weight_names(w for w in bert.weights if "/encoder/layer_." in w.name)
    assert weight_names(encoder.trainable_weights) == expected


def test_full_trains_everything_but_the_pooler():
    bert = tiny_bert(VOCAB)
    encoder = BertTextEncoder(bert, finetune="full")
    expected = weight_names(w for w in bert.weights if "/pooler/" not in w.name)
    assert weight_names(encoder.trainable_weights) == expected
    assert weight_names(encoder.non_trainable_weights) == weight_names(
        w for w in bert.weights if "/pooler/" in w.name)


def test_gradients_reach_exactly_the_trainable_weights():
    bert = tiny_bert(VOCAB)
    encoder = BertTextEncoder(bert, finetune="top-k", trainable_layers=1)
    ids = tf.constant([[CLS, 10, 11, SEP, 0]], tf.int32)
    mask = tf.constant([[1, 1, 1, 1, 0]], tf.int32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(encoder(ids, mask, training=True) ** 2)
    grads = tape.gradient(loss, encoder.trainable_weights)
    assert grads and all(g is not None for g in grads)


@pytest.mark.parametrize("kwargs", [
    {"finetune": "partial"},
    {"finetune": "top-k", "trainable_layers": 0},
    {"finetune": "top-k", "trainable_layers": 3},
])
def test_invalid_strategy_raises(kwargs):
    with pytest.raises(ValueError):
        BertTextEncoder(tiny_bert(VOCAB, num_layers=2), **kwargs)


def test_frozen_encoder_ignores_training_flag():
    # Frozen means BERT's dropout is off too: a cached vector equals a training-time one.
    encoder = BertTextEncoder(tiny_bert(VOCAB), finetune="frozen")
    ids = tf.constant([[CLS, 10, 11, 12, SEP]], tf.int32)
    mask = tf.ones_like(ids)
    np.testing.assert_allclose(encoder(ids, mask, training=True).numpy(),
                               encoder(ids, mask, training=False).numpy(), rtol=0, atol=0)


def test_masked_mean_ignores_masked_positions():
    hidden = tf.constant([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]], [[5.0, 5.0], [7.0, 7.0], [9.0, 9.0]]])
    mask = tf.constant([[1, 1, 0], [0, 0, 0]])
    np.testing.assert_allclose(masked_mean(hidden, mask).numpy(), [[2.0, 3.0], [0.0, 0.0]])


def test_encoder_output_unchanged_when_padding_is_appended():
    encoder = BertTextEncoder(tiny_bert(VOCAB, seed=3), finetune="frozen")
    rng = np.random.default_rng(0)
    ids = rng.integers(5, VOCAB, size=(3, 6)).astype(np.int32)
    ids[:, 0] = CLS
    mask = np.ones_like(ids)
    mask[1, 4:] = 0  # a shorter row
    ids[1, 4:] = 0
    short = encoder(tf.constant(ids), tf.constant(mask)).numpy()
    long_ids = np.pad(ids, [[0, 0], [0, 7]])
    long_mask = np.pad(mask, [[0, 0], [0, 7]])
    long = encoder(tf.constant(long_ids), tf.constant(long_mask)).numpy()
    assert short.shape == (3, encoder.hidden_size)
    np.testing.assert_allclose(short, long, atol=1e-5)
    # ... and differs when a real token changes (the check above is not vacuous).
    changed = ids.copy()
    changed[0, 2] = (changed[0, 2] - 4) % (VOCAB - 5) + 5 if changed[0, 2] != 5 else 6
    other = encoder(tf.constant(changed), tf.constant(mask)).numpy()
    assert not np.allclose(other[0], short[0], atol=1e-4)


def test_encode_table_matches_call():
    encoder = BertTextEncoder(tiny_bert(VOCAB, seed=1), finetune="frozen")
    rows = np.array([[CLS, 10, SEP, 0, 0, 0], [CLS, 11, 12, 13, 14, SEP], [CLS, SEP, 0, 0, 0, 0]], np.int32)
    table = encoder.encode_table(rows, batch_size=2)
    assert table.shape == (3, encoder.hidden_size) and table.dtype == np.float32
    direct = encoder(tf.constant(rows), tf.constant((rows != 0).astype(np.int32))).numpy()
    np.testing.assert_allclose(table, direct, atol=1e-5)


@pytest.mark.parametrize("finetune,layers", [("frozen", 2), ("top-k", 1), ("full", 2)])
def test_encoder_config_round_trip(finetune, layers):
    encoder = BertTextEncoder(tiny_bert(VOCAB, hidden_size=16, num_heads=2), finetune=finetune,
                              trainable_layers=layers, name="enc")
    config = encoder.get_config()
    assert config["finetune"] == finetune and config["trainable_layers"] == layers
    assert config["bert_config"]["hidden_size"] == 16 and config["bert_config"]["vocab_size"] == VOCAB
    clone = BertTextEncoder.from_config(config)
    assert (clone.name, clone.finetune, clone.trainable_layers, clone.hidden_size) == ("enc", finetune, layers, 16)
    ids = tf.constant([[CLS, 10, SEP]], tf.int32)
    clone(ids, tf.ones_like(ids))  # build
    assert len(clone.trainable_weights) == len(encoder.trainable_weights)
    assert len(clone.weights) == len(encoder.weights)


# ---------------------------------------------------------------- SequenceEncoder


def test_sequence_encoder_ignores_masked_positions():
    layer = SequenceEncoder(max_length=5, num_blocks=2, num_heads=2, dropout=0.1)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2, 5, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)
    out = layer(tf.constant(vectors), tf.constant(mask)).numpy()
    assert out.shape == (2, 8)
    noisy = vectors.copy()
    noisy[~mask] = rng.standard_normal((int((~mask).sum()), 8)) * 10
    np.testing.assert_allclose(layer(tf.constant(noisy), tf.constant(mask)).numpy(), out, atol=1e-5)
    touched = vectors.copy()
    touched[0, 2] = rng.standard_normal(8)  # a real (older) item: the newest position attends to it
    assert not np.allclose(layer(tf.constant(touched), tf.constant(mask)).numpy()[0], out[0], atol=1e-5)


def test_sequence_encoder_rejects_indivisible_width():
    with pytest.raises(ValueError):
        SequenceEncoder(max_length=3, num_heads=3)(tf.zeros([1, 3, 8]), tf.ones([1, 3], tf.bool))


def test_sequence_encoder_config_round_trip():
    layer = SequenceEncoder(max_length=7, num_blocks=3, num_heads=4, dropout=0.25, name="seq")
    config = layer.get_config()
    assert {k: config[k] for k in ("max_length", "num_blocks", "num_heads", "dropout", "name")} == {
        "max_length": 7, "num_blocks": 3, "num_heads": 4, "dropout": 0.25, "name": "seq"}
    clone = SequenceEncoder.from_config(config)
    assert (clone.max_length, clone.num_blocks, clone.num_heads, clone.dropout) == (7, 3, 4, 0.25)


# ---------------------------------------------------------------- CatalogTopK (and a small ItemTower)


@pytest.fixture(scope="module")
def small_item_tower():
    rows = np.zeros([7, 5], np.int32)
    rows[:, 0] = CLS
    for item in range(7):
        rows[item, 1:3] = [10 + item, 20 + item] if item else [SEP, 0]
        if item:
            rows[item, 3] = SEP
    encoder = BertTextEncoder(tiny_bert(VOCAB, seed=2), finetune="frozen")
    tower = ItemTower(encoder, rows, embedding_dim=8, use_item_ids=True, dropout=0.0)
    tower.refresh_cache()
    return tower


def test_catalog_top_k_matches_numpy(small_item_tower):
    layer = CatalogTopK(small_item_tower, k=3)
    queries = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    scores, items = layer(tf.constant(queries))
    catalog = small_item_tower(tf.range(1, 7)).numpy()
    expected = queries @ catalog.T
    order = np.argsort(-expected, axis=1)[:, :3]
    np.testing.assert_array_equal(items.numpy(), order + 1)  # indices are 1-based: 0 is padding
    np.testing.assert_allclose(scores.numpy(), np.take_along_axis(expected, order, 1), atol=1e-5)
    _, five = layer(tf.constant(queries), k=5)
    assert five.shape == (4, 5) and (five.numpy() >= 1).all()
    assert layer.get_config()["k"] == 3 and layer.is_exact()
    with pytest.raises(NotImplementedError):
        layer.index(tf.zeros([2, 8]))


def test_item_tower_cache_and_config(small_item_tower):
    tower = small_item_tower
    cache = tower.text_cache.numpy()
    assert not tower.text_cache.trainable
    np.testing.assert_array_equal(cache[0], 0.0)
    np.testing.assert_allclose(cache[1:], tower.encoder.encode_table(tower.token_rows)[1:], atol=1e-6)
    config = tower.get_config()
    assert (config["embedding_dim"], config["use_item_ids"], config["dropout"], config["normalize"]) == (
        8, True, 0.0, True)
    assert config["token_rows"] == tower.token_rows.tolist()
    assert config["encoder"]["config"]["finetune"] == "frozen"
    out = tower(tf.constant([[1, 2], [3, 4]])).numpy()
    assert out.shape == (2, 2, 8)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)


def test_item_tower_without_frozen_encoder_has_no_cache():
    rows = np.array([[CLS, SEP, 0], [CLS, 10, SEP]], np.int32)
    tower = ItemTower(BertTextEncoder(tiny_bert(VOCAB), finetune="full"), rows, embedding_dim=4)
    assert tower.text_cache is None
    with pytest.raises(ValueError):
        tower.refresh_cache()
    assert tower.text_vectors(tf.constant([1, 0])).shape == (2, 32)


def test_a_trainable_encoder_runs_once_per_distinct_item_with_the_same_values_and_gradients():
    rows = np.array([[0, 0, 0, 0], [CLS, 10, SEP, 0], [CLS, 11, 12, SEP], [CLS, 13, SEP, 0]], np.int32)
    tower = ItemTower(BertTextEncoder(tiny_bert(VOCAB), finetune="full"), rows, embedding_dim=4, dropout=0.0)
    items = tf.constant([[1, 2, 1, 0], [2, 2, 3, 0]])  # repeats and padding, as in a batch of histories
    calls = []
    original = tower.encoder.call

    def counting(ids, mask, training=False):
        calls.append(int(ids.shape[0]))
        return original(ids, mask, training=training)

    tower.encoder.call = counting

    def run(unique_items):
        tower.unique_items = unique_items
        with tf.GradientTape() as tape:
            out = tower(items, training=False)  # no BERT dropout: both paths are deterministic
            loss = tf.reduce_sum(out * tf.range(1.0, 5.0))
        return out.numpy(), tape.gradient(loss, tower.trainable_variables)

    unique_out, unique_grads = run(True)
    per_position_out, per_position_grads = run(False)
    assert calls == [4, 8]  # {0, 1, 2, 3} once each, against all 8 positions
    np.testing.assert_allclose(unique_out, per_position_out, atol=1e-5)
    for a, b in zip(unique_grads, per_position_grads):
        if a is not None:
            np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy(), atol=1e-4)


def test_text_vectors_persist_between_runs_keyed_by_tokens_and_weights(small_item_tower, tmp_path):
    rows = small_item_tower.token_rows

    def tower(seed):
        return ItemTower(BertTextEncoder(tiny_bert(VOCAB, seed=seed), finetune="frozen"), rows, embedding_dim=8)

    first = tower(2)
    assert first.refresh_cache(cache_dir=tmp_path) is False
    assert len(list(tmp_path.glob("*.npy"))) == 1
    again = tower(2)
    assert again.refresh_cache(cache_dir=tmp_path) is True
    np.testing.assert_array_equal(again.text_cache.numpy(), first.text_cache.numpy())
    # Other encoder weights (or other tokens) are another key: encoded afresh, never served stale.
    other = tower(5)
    assert other.refresh_cache(cache_dir=tmp_path) is False
    assert not np.allclose(other.text_cache.numpy()[1:], first.text_cache.numpy()[1:])
    assert len(list(tmp_path.glob("*.npy"))) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_text_vectors_cached_under_one_precision_are_never_served_to_another(small_item_tower, tmp_path):
    from tfrec_lm.models.precision import dtype_policy

    rows = small_item_tower.token_rows

    def tower():  # the same seed, so the same weights; only the compute precision differs
        return ItemTower(BertTextEncoder(tiny_bert(VOCAB, seed=2), finetune="frozen"), rows, embedding_dim=8)

    with dtype_policy("mixed_bfloat16"):
        bfloat16 = tower()
    assert bfloat16.encoder.bert.compute_dtype == "bfloat16"
    assert bfloat16.refresh_cache(cache_dir=tmp_path) is False
    float32 = tower()
    assert float32.refresh_cache(cache_dir=tmp_path) is False  # not loaded: encoded afresh in float32
    fresh = float32.encoder.encode_table(rows)
    fresh[0] = 0.0
    np.testing.assert_allclose(float32.text_cache.numpy(), fresh, atol=1e-6)
    assert not np.allclose(float32.text_cache.numpy()[1:], bfloat16.text_cache.numpy()[1:], atol=1e-5)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    # Each precision finds its own vectors again.
    with dtype_policy("mixed_bfloat16"):
        assert tower().refresh_cache(cache_dir=tmp_path) is True
    assert tower().refresh_cache(cache_dir=tmp_path) is True
