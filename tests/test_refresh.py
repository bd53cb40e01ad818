"""Warm start (`--warm-start`) and refresh windows (`--since`): the periodic re-fine-tuning path."""

import json

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from tfrec_lm.errors import ConfigError
from tfrec_lm.training import train


def catalog_embeddings(model):
    return model.item_tower(tf.range(model.item_tower.num_items), training=False).numpy()


def test_warm_start_continues_from_the_checkpoint_and_exports_the_next_version(
        synthetic, encoder_factory, tmp_path):
    first = tiny_config(tmp_path / "first", epochs=1, dropout=0.0, export=True, index="brute-force")
    cold = train(first, dataset=synthetic, encoder_factory=encoder_factory)
    # A near-zero learning rate: what the refreshed model holds is what it loaded.
    since = int(np.percentile(synthetic.interactions["timestamp"], 80))
    refresh = first.replace(output_dir=str(tmp_path / "refresh"), warm_start=first.output_dir,
                            learning_rate=1e-12, since=since)
    warm = train(refresh, dataset=synthetic, encoder_factory=encoder_factory)
    np.testing.assert_allclose(catalog_embeddings(warm.model), catalog_embeddings(cold.model), atol=1e-5)
    assert [p.name for p in (cold.export_path, warm.export_path)] == ["1", "2"]
    assert warm.export_path.parent == cold.export_path.parent
    # Without the warm start the same settings give a different (fresh) model.
    fresh = train(refresh.replace(warm_start=None, output_dir=str(tmp_path / "fresh"), export=False),
                  dataset=synthetic, encoder_factory=encoder_factory)
    assert not np.allclose(catalog_embeddings(fresh.model), catalog_embeddings(cold.model), atol=1e-3)


def test_since_keeps_only_later_targets(synthetic, encoder_factory, tmp_path):
    since = int(np.percentile(synthetic.interactions["timestamp"], 90))
    config = tiny_config(tmp_path, since=since)
    result = train(config, dataset=synthetic, encoder_factory=encoder_factory)
    kept = json.loads((tmp_path / "run" / "metrics.json").read_text())["train_examples"]
    expected = int(np.sum(result.split.train.target_timestamp >= since))
    assert 0 < kept == expected < len(result.split.train)
    replayed = train(config.replace(output_dir=str(tmp_path / "replay"), replay=1.0, epochs=1),
                     dataset=synthetic, encoder_factory=encoder_factory)
    assert json.loads((tmp_path / "replay" / "metrics.json").read_text())["train_examples"] == 2 * expected
    assert len(replayed.split.train) == len(result.split.train)


def test_warm_start_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(tiny_config(tmp_path, warm_start=str(tmp_path / "nowhere")))
    export = tmp_path / "export"
    export.mkdir()
    (export / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ConfigError, match="SavedModel export"):
        train(tiny_config(tmp_path, warm_start=str(export)))


def test_since_after_every_interaction_is_an_error(synthetic, encoder_factory, tmp_path):
    late = int(synthetic.interactions["timestamp"].max()) + 1
    with pytest.raises(ConfigError, match="no training interaction"):
        train(tiny_config(tmp_path, since=late), dataset=synthetic, encoder_factory=encoder_factory)


def test_a_refresh_validates_on_recent_targets_only(synthetic):
    from tfrec_lm.data.split import build_sequences, build_vocab, leave_one_out
    from tfrec_lm.data.split import refresh_validation

    vocab = build_vocab(synthetic.items)
    validation = leave_one_out(build_sequences(synthetic, vocab), 10).validation
    since = int(np.median(validation.target_timestamp))
    recent = refresh_validation(validation, since)
    assert 0 < len(recent) < len(validation)
    assert (recent.target_timestamp >= since).all()
    assert len(recent.exclude) == len(recent.target)
    assert np.sum(validation.target_timestamp >= since) == len(recent)
    assert refresh_validation(validation, None) is validation
    late = int(validation.target_timestamp.max()) + 1
    assert refresh_validation(validation, late) is validation  # nothing that recent: all users


def test_replay_mixes_a_share_of_older_interactions_into_a_refresh():
    from tfrec_lm.config import TrainConfig
    from tfrec_lm.data.split import refresh_examples

    stamps = np.arange(100)
    only_recent = refresh_examples(stamps, TrainConfig(since=80))
    np.testing.assert_array_equal(only_recent, np.arange(80, 100))
    rows = refresh_examples(stamps, TrainConfig(since=80, replay=1.5, seed=3))
    assert np.all(np.diff(rows) > 0)  # original order, no duplicates
    assert set(range(80, 100)) <= set(rows.tolist())
    older = rows[rows < 80]
    assert len(older) == 30  # 1.5 per new interaction
    np.testing.assert_array_equal(rows, refresh_examples(stamps, TrainConfig(since=80, replay=1.5, seed=3)))
    assert not np.array_equal(rows, refresh_examples(stamps, TrainConfig(since=80, replay=1.5, seed=4)))
    # More replay than there are older rows takes all of them.
    np.testing.assert_array_equal(refresh_examples(stamps, TrainConfig(since=95, replay=100.0)), np.arange(100))


def test_replay_settings_are_checked():
    from tfrec_lm.config import TrainConfig

    with pytest.raises(ConfigError, match="needs --since"):
        TrainConfig(replay=1.0).validate()
    with pytest.raises(ConfigError, match="replay must be >= 0"):
        TrainConfig(since=1, replay=-1.0).validate()
