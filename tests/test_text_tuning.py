"""Text tuning (`--text-tuning-steps`): the item encoder's top layers tuned on co-consumed item pairs."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_training, tiny_config
from tfrec_lm.config import TrainConfig
from tfrec_lm.errors import ConfigError
from tfrec_lm.layers.bert_text_encoder import BertTextEncoder
from tfrec_lm.models.text_tuning import accidental_hits, consecutive_pairs, tune_text_encoder
from tfrec_lm.text import tokenize_items


def test_consecutive_pairs_are_each_targets_previous_item():
    history = np.array([[3, 5, 0], [0, 0, 0], [7, 0, 0], [2, 4, 9]])
    target = np.array([8, 1, 7, 6])
    # the empty history has no pair; (7, 7) is one item, not a pair
    np.testing.assert_array_equal(consecutive_pairs(history, target), [[5, 8], [9, 6]])


def test_accidental_hits_mask_the_same_item_off_the_diagonal():
    anchors, partners = np.array([1, 2, 3]), np.array([5, 5, 1])
    hits = accidental_hits(anchors, partners)
    # rows are anchors, columns partners: 1 and 2 share partner 5; partner 1 is anchor 1 itself
    np.testing.assert_array_equal(hits, [[False, True, True], [True, False, False], [False, False, False]])


def _encoder_and_rows(synthetic, encoder_factory):
    bert, tokenizer = encoder_factory()
    encoder = BertTextEncoder(bert, finetune="frozen")
    rows = tokenize_items(synthetic.items["text"].tolist(), tokenizer, 12).with_special_tokens()
    return encoder, rows


def _category_pairs(synthetic, rows, count=400, seed=0):
    """Pairs of items of the same category (what co-consumption looks like in the synthetic data)."""
    categories = np.concatenate([[-1], synthetic.items["text"].str.split().str[0].astype("category").cat.codes])
    rng = np.random.default_rng(seed)
    a = rng.integers(1, len(rows), size=count * 4)
    b = rng.integers(1, len(rows), size=count * 4)
    same = (categories[a] == categories[b]) & (a != b)
    return np.stack([a[same], b[same]], axis=1)[:count], categories


def test_untuned_top_layers_reproduce_the_encoder(synthetic, encoder_factory):
    encoder, rows = _encoder_and_rows(synthetic, encoder_factory)
    result = tune_text_encoder(encoder, rows, np.array([[1, 2]]), steps=0, layers=2)
    expected = encoder.encode_table(rows)
    np.testing.assert_allclose(result.vectors[1:], expected[1:], atol=1e-5)
    assert not result.vectors[0].any() and result.losses == []


def test_tuning_moves_only_the_top_layer_and_pulls_pairs_together(synthetic, encoder_factory):
    encoder, rows = _encoder_and_rows(synthetic, encoder_factory)
    pairs, categories = _category_pairs(synthetic, rows)
    layers = encoder.bert.bert.encoder.layer
    before = [[w.numpy().copy() for w in layer.weights] for layer in layers]
    embeddings = encoder.bert.bert.embeddings.weights[0].numpy().copy()

    def same_category_margin(vectors):
        unit = vectors[1:] / np.linalg.norm(vectors[1:], axis=1, keepdims=True)
        cosine = unit @ unit.T
        same = categories[1:, None] == categories[None, 1:]
        np.fill_diagonal(same, False)
        other = categories[1:, None] != categories[None, 1:]
        return cosine[same].mean() - cosine[other].mean()

    start = same_category_margin(encoder.encode_table(rows))
    tf.keras.utils.set_random_seed(0)  # dropout inside the tuned layer
    result = tune_text_encoder(encoder, rows, pairs, steps=30, layers=1, batch_size=16, learning_rate=3e-3)
    assert len(result.losses) == 30 and np.mean(result.losses[-5:]) < np.mean(result.losses[:5])
    for index, (layer, old) in enumerate(zip(layers, before)):
        moved = any(not np.array_equal(w.numpy(), value) for w, value in zip(layer.weights, old))
        assert moved == (index == len(layers) - 1), index
    np.testing.assert_array_equal(encoder.bert.bert.embeddings.weights[0].numpy(), embeddings)
    # the returned vectors are the tuned encoder's, and same-category items moved closer
    np.testing.assert_allclose(result.vectors[1:], encoder.encode_table(rows)[1:], atol=1e-5)
    margin = same_category_margin(result.vectors)
    assert margin > start + 0.05, (start, margin)


def test_bad_tuning_input_is_refused(synthetic, encoder_factory):
    encoder, rows = _encoder_and_rows(synthetic, encoder_factory)
    with pytest.raises(ValueError, match="at least one pair"):
        tune_text_encoder(encoder, rows, np.array([[3, 3], [0, 2]]), steps=1)
    with pytest.raises(ValueError, match="layers must be in"):
        tune_text_encoder(encoder, rows, np.array([[1, 2]]), steps=1, layers=99)
    with pytest.raises(ConfigError, match="--finetune frozen"):
        TrainConfig(text_tuning_steps=5, finetune="full", negatives="in-batch").validate()
    with pytest.raises(ConfigError, match="--strategy default"):
        TrainConfig(text_tuning_steps=5, strategy="mirrored").validate()
    with pytest.raises(ConfigError, match="text_tuning_steps must be >= 0"):
        TrainConfig(text_tuning_steps=-1).validate()


def test_training_caches_the_tuned_encoder_and_its_checkpoint_carries_it(synthetic, encoder_factory, tmp_path):
    """A run with text tuning trains on the tuned encoder's vectors; the checkpoint a catalog
    update restores holds the tuned weights, so new items are read by the same encoder."""
    from tfrec_lm.registry.runs import checkpoint_prefix
    from tfrec_lm.models.factory import build_model, create_variables
    from tfrec_lm.data.prepare import examples_to_features

    config = tiny_config(tmp_path, text_tuning_steps=5, text_tuning_batch_size=8, epochs=1)
    run = run_training(config, synthetic, encoder_factory)
    tower = run.model.item_tower
    untuned = BertTextEncoder(encoder_factory()[0], finetune="frozen").encode_table(tower.token_rows)
    tuned = tower.encoder.encode_table(tower.token_rows)
    np.testing.assert_allclose(tower.text_cache.numpy()[1:], tuned[1:], atol=1e-5)
    assert np.abs(tuned[1:] - untuned[1:]).max() > 1e-3
    rebuilt = build_model(config, synthetic.items["text"].tolist(), encoder_factory, encode_texts=False)
    create_variables(rebuilt, examples_to_features(run.result.split.train.take(np.arange(2))))
    rebuilt.load_towers(checkpoint_prefix(config.output_dir))
    np.testing.assert_allclose(rebuilt.item_tower.encoder.encode_table(tower.token_rows)[1:], tuned[1:], atol=1e-5)
    np.testing.assert_allclose(rebuilt.item_tower.text_cache.numpy(), tower.text_cache.numpy())
    assert tf.reduce_all(tf.math.is_finite(rebuilt.item_tower.representation(tf.range(tower.num_items))))
