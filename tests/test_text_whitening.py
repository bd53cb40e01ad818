"""`--text-whitening` (issue 30 item 2): the frozen text vectors centred or whitened before the projection.

BERT-whitening (Su et al. 2021): with mu the mean and U diag(s) U^T the covariance of the
warm (training) items' cached vectors, the item tower projects (v - mu) @ W,
W = U diag(1 / sqrt(s + eps)) (`whiten`), or v - mu (`center`). mu and W are non-trainable
weights computed when the cache is filled; checkpoints, loads and catalog updates keep them.
"""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import json

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config, tiny_two_tower
from test_evidence_fusion import VOCAB  # the tiny BERT's vocabulary of the evidence tests
from tfrec_lm.bert import tiny_bert
from tfrec_lm.config import TrainConfig, shape_conflicts
from tfrec_lm.errors import ConfigError
from tfrec_lm.layers.bert_text_encoder import BertTextEncoder
from tfrec_lm.models.item_tower import WHITENING_EPS, ItemTower, mean_pairwise_cosine

CLS, SEP = 2, 3
HIDDEN = 32  # tiny_bert's
ITEMS = 121  # row 0 padding and 120 items: more warm items than hidden dimensions
WARM = np.random.default_rng(5).random(ITEMS) < 0.75
WARM[0] = False


def catalog_rows(num_items=ITEMS):
    """[num_items, 5] `[CLS] a b [SEP]` token rows within the tiny vocabulary, row 0 padding."""
    table = np.zeros([num_items, 5], np.int32)
    for item in range(1, num_items):
        table[item, :4] = [CLS, 4 + (7 * item) % 60, 4 + (13 * item) % 59, SEP]
    return table


def crowded_vectors(seed=0, num_items=ITEMS, warm=WARM):
    """[num_items, HIDDEN] text vectors that crowd together (a shared offset, anisotropic spread); the cold
    rows sit far off, so statistics that read them would be far from the warm items'."""
    rng = np.random.default_rng(seed)
    spread = np.linalg.qr(rng.standard_normal([HIDDEN, HIDDEN]))[0] * np.logspace(0, -1, HIDDEN)[None, :]
    vectors = 3.0 + rng.standard_normal([num_items, HIDDEN]) @ spread
    vectors[~warm] -= 50.0
    vectors[0] = 0.0
    return vectors.astype(np.float32)


def tower(text_whitening="whiten", warm_items=WARM, num_items=ITEMS, vectors=None, **kwargs):
    """A built item tower with frozen text and IDs, its cache filled with `vectors` (default `crowded_vectors`)."""
    item_tower = ItemTower(BertTextEncoder(tiny_bert(VOCAB, seed=4), finetune="frozen"), catalog_rows(num_items),
                           embedding_dim=8, dropout=0.0, warm_items=warm_items, text_whitening=text_whitening,
                           **kwargs)
    item_tower(tf.constant([1]))
    item_tower.refresh_cache(vectors=crowded_vectors() if vectors is None else vectors)
    return item_tower


def by_hand(vectors):
    """numpy BERT-whitening of rows: mu and W W^T (W's columns are eigenvectors: signs are free)."""
    mean = vectors.astype(np.float64).mean(axis=0)
    covariance = np.cov(vectors.astype(np.float64), rowvar=False, bias=True)
    values, basis = np.linalg.eigh(covariance)
    inverse = basis @ np.diag(1.0 / (values + WHITENING_EPS * values.max())) @ basis.T
    return mean, inverse


def test_the_statistics_are_the_warm_items_and_whiten_them():
    item_tower = tower()
    vectors = crowded_vectors()
    mean, inverse = by_hand(vectors[WARM])
    np.testing.assert_allclose(item_tower.text_mean.numpy(), mean, rtol=1e-5, atol=1e-5)
    whitener = item_tower.text_whitener.numpy()
    np.testing.assert_allclose(whitener @ whitener.T, inverse, rtol=1e-3, atol=1e-3 * np.abs(inverse).max())
    # The whitened warm vectors have zero mean and identity covariance; the cold rows are not in it.
    items = tf.constant(np.flatnonzero(WARM), tf.int32)
    whitened = item_tower.whiten_text(item_tower.text_vectors(items)).numpy().astype(np.float64)
    np.testing.assert_allclose(whitened.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(whitened, rowvar=False, bias=True), np.eye(HIDDEN), atol=1e-3)
    # The projection reads them: text_part is the projection of (v - mu) @ W, for any shape of items.
    expected = item_tower.projection(tf.constant((vectors[1:] - mean.astype(np.float32)) @ whitener)).numpy()
    np.testing.assert_allclose(item_tower.text_part(tf.range(1, ITEMS)).numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(item_tower.text_part(tf.constant([[3, 1], [7, 0]])).numpy()[0, 1], expected[0],
                               atol=1e-4)
    # Statistics, not weights: nothing trains them.
    trainable = {id(w) for w in item_tower.trainable_weights}
    assert id(item_tower.text_mean) not in trainable and id(item_tower.text_whitener) not in trainable
    # The cold-neighbour table keeps the raw vectors' cosine: item 2's nearest warm item by raw cosine.
    raw = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
    warm_rows = np.flatnonzero(WARM)
    nearest = item_tower._nearest_warm(np.array([2]), 1, exclude_self=True).numpy()[0, 0]
    similarity = raw[warm_rows] @ raw[2]
    similarity[warm_rows == 2] = -np.inf
    assert warm_rows[nearest] == warm_rows[np.argmax(similarity)]
    # Without warm_items (--cold-items id) the items with training interactions count.
    counts = np.where(WARM, 3, 0)
    by_counts = tower(warm_items=None, item_counts=counts)
    np.testing.assert_allclose(by_counts.text_mean.numpy(), mean, rtol=1e-5, atol=1e-5)


def test_center_subtracts_the_mean_and_none_is_the_tower_as_before():
    vectors = crowded_vectors()
    centred = tower("center")
    assert centred.text_whitener is None
    np.testing.assert_allclose(centred.text_mean.numpy(), vectors[WARM].mean(axis=0), rtol=1e-5, atol=1e-5)
    items = tf.range(ITEMS)
    np.testing.assert_allclose(centred.text_part(items).numpy(),
                               centred.projection(tf.constant(vectors - centred.text_mean.numpy())).numpy(),
                               atol=1e-5)
    plain = tower("none")
    assert plain.text_mean is None and plain.text_whitener is None
    assert not [w.name for w in plain.weights if "text_mean" in w.name or "text_whitener" in w.name]
    # Bit for bit the tower's text part before the option: the projection of the cached vector.
    np.testing.assert_array_equal(plain.text_part(items).numpy(), plain.projection(plain.text_vectors(items)).numpy())
    assert plain.text_cosines()[0] == plain.text_cosines()[1]


def test_the_config_round_trip_keeps_the_option_and_the_weights():
    item_tower = tower()
    config = item_tower.get_config()
    assert config["text_whitening"] == "whiten"
    clone = ItemTower.from_config(json.loads(json.dumps(config)))
    assert clone.text_whitening == "whiten"
    assert tuple(clone.text_mean.shape) == (HIDDEN,) and tuple(clone.text_whitener.shape) == (HIDDEN, HIDDEN)
    assert ItemTower.from_config(tower("center").get_config()).text_whitener is None
    assert ItemTower.from_config(tower("none").get_config()).text_mean is None
    # The run's option: a config file / to_dict round trip and the CLI flag.
    run = TrainConfig(text_whitening="center")
    assert TrainConfig.from_dict(json.loads(json.dumps(run.to_dict()))).text_whitening == "center"
    from tfrec_lm.train import build_parser, config_from_args

    assert config_from_args(build_parser().parse_args(["--text-whitening", "whiten"])).text_whitening == "whiten"
    assert TrainConfig().text_whitening == "none"


def test_a_checkpoint_load_keeps_the_trained_statistics(tmp_path):
    saved = tiny_two_tower(tower())
    prefix = tf.train.Checkpoint(user_tower=saved.user_tower, item_tower=saved.item_tower,
                                 ranking_head=saved.ranking_head).write(str(tmp_path / "ckpt"))
    # A warm start's model: other warm items, its cache filled (and its statistics computed) from other vectors.
    other_warm = WARM.copy()
    other_warm[1:40] = ~other_warm[1:40]
    loading = tiny_two_tower(tower(warm_items=other_warm, vectors=crowded_vectors(seed=9, warm=other_warm)))
    assert not np.allclose(loading.item_tower.text_mean.numpy(), saved.item_tower.text_mean.numpy())
    loading.load_towers(prefix)
    for name in ("text_mean", "text_whitener", "text_cache"):
        np.testing.assert_array_equal(getattr(loading.item_tower, name).numpy(),
                                      getattr(saved.item_tower, name).numpy())
    np.testing.assert_allclose(loading.item_tower.text_part(tf.range(ITEMS)).numpy(),
                               saved.item_tower.text_part(tf.range(ITEMS)).numpy(), atol=1e-6)


def test_a_catalog_update_whitens_new_items_with_the_trained_statistics():
    item_tower = tower()
    grown = ItemTower(BertTextEncoder(tiny_bert(VOCAB, seed=4), finetune="frozen"), catalog_rows(ITEMS + 3),
                      embedding_dim=8, dropout=0.0, warm_items=np.concatenate([WARM, [True] * 3]),
                      text_whitening="whiten")  # new items warm here: statistics computed anew would read them
    grown(tf.constant([1]))
    assert item_tower.grow_into(grown, encode_rows=[ITEMS, ITEMS + 1, ITEMS + 2]) == 3
    mean, whitener = item_tower.text_mean.numpy(), item_tower.text_whitener.numpy()
    np.testing.assert_array_equal(grown.text_mean.numpy(), mean)
    np.testing.assert_array_equal(grown.text_whitener.numpy(), whitener)
    new = grown.text_cache.numpy()[ITEMS:]
    np.testing.assert_allclose(new, grown.encoder.encode_table(catalog_rows(ITEMS + 3))[ITEMS:], atol=1e-6)
    expected = grown.projection(tf.constant((new - mean) @ whitener)).numpy()
    np.testing.assert_allclose(grown.text_part(tf.range(ITEMS, ITEMS + 3)).numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(grown.text_part(tf.range(ITEMS)).numpy(), item_tower.text_part(tf.range(ITEMS)).numpy(),
                               atol=1e-6)


def test_mean_pairwise_cosine_is_the_brute_force_mean():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal([9, 5]) + 2.0
    vectors[4] = 0.0  # a zero row: cosine 0 with every other
    units = np.array([v / np.linalg.norm(v) if np.linalg.norm(v) else v for v in vectors])
    brute = np.mean([units[i] @ units[j] for i in range(9) for j in range(9) if i != j])
    assert mean_pairwise_cosine(vectors) == pytest.approx(brute, rel=1e-12)
    assert mean_pairwise_cosine(np.ones([3, 4])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2"):
        mean_pairwise_cosine(np.ones([1, 4]))
    # The tower's before and after, over its warm items: whitening spreads the crowded vectors.
    item_tower = tower()
    before, after = item_tower.text_cosines()
    raw = crowded_vectors()[WARM]
    assert before == pytest.approx(mean_pairwise_cosine(raw), rel=1e-6) and before > 0.8
    whitened = (raw - item_tower.text_mean.numpy()) @ item_tower.text_whitener.numpy()
    assert after == pytest.approx(mean_pairwise_cosine(whitened), abs=1e-5) and abs(after) < 0.05


def test_config_and_tower_refuse_what_whitening_cannot_run():
    for value in ("center", "whiten"):
        assert TrainConfig(text_whitening=value).validate().text_whitening == value
        for changes, flag in (({"finetune": "full", "negatives": "in-batch"}, "--finetune frozen"),
                              ({"finetune": "top-k", "negatives": "in-batch"}, "--finetune frozen"),
                              ({"item_text": False}, "--item-text")):
            with pytest.raises(ConfigError) as error:
                TrainConfig(text_whitening=value, **changes).validate()
            message = str(error.value)
            assert message.startswith(f"--text-whitening {value} transforms") and message.endswith(flag), message
            assert "\n" not in message and message.count(". ") == 0  # one sentence
    with pytest.raises(ConfigError, match="text_whitening='pca' is not one of none, center, whiten"):
        TrainConfig.from_dict({"text_whitening": "pca"})
    # It shapes the checkpoint (mu, W): a warm start must keep the run's.
    assert shape_conflicts(TrainConfig(text_whitening="whiten"), TrainConfig().to_dict()) == [
        "--text-whitening 'whiten' (the run: 'none')"]
    assert shape_conflicts(TrainConfig(), {k: v for k, v in TrainConfig().to_dict().items()
                                           if k != "text_whitening"}) == []  # a run from before the option
    with pytest.raises(ValueError, match="text_whitening must be one of"):
        tower("pca")
    for kwargs in ({"finetune": "full"}, {"use_text": False}):
        finetune = kwargs.pop("finetune", "frozen")
        with pytest.raises(ValueError, match="text_whitening 'whiten' .* needs the item text and a frozen encoder"):
            ItemTower(BertTextEncoder(tiny_bert(VOCAB, seed=4), finetune=finetune), catalog_rows(4),
                      embedding_dim=8, text_whitening="whiten", **kwargs)
    with pytest.raises(ValueError, match="needs a warm item"):
        tower(warm_items=np.zeros(ITEMS, bool))


def test_the_tuner_offers_whitening_only_with_a_frozen_text_part():
    import keras_tuner as kt

    from tuning import RecommenderHyperModel

    assert RecommenderHyperModel(TrainConfig()).space["text_whitening"] == ["none", "center", "whiten"]
    assert "text_whitening" not in RecommenderHyperModel(TrainConfig(item_text=False, item_ids=True)).space
    assert "text_whitening" not in RecommenderHyperModel(TrainConfig(), fixed={"finetune": "full",
                                                                                "negatives": "in-batch"}).space
    # Tuned beside finetune: a fine-tuned trial has no value for it and runs `none`.
    hypermodel = RecommenderHyperModel(TrainConfig(), tune=["finetune", "negatives", "text_whitening"])
    hp = kt.HyperParameters()
    hp.Fixed("finetune", "full")
    config = hypermodel.build(hp)
    assert config.text_whitening == "none" and "text_whitening" not in hp.values
    hp = kt.HyperParameters()
    hp.Fixed("finetune", "frozen")
    hypermodel.build(hp)
    assert hp.values["text_whitening"] in ("none", "center", "whiten")


def test_training_with_whitening_records_the_cosines(synthetic, encoder_factory, tmp_path):
    from tfrec_lm.training import train

    config = tiny_config(tmp_path, text_whitening="whiten")
    result = train(config, dataset=synthetic, encoder_factory=encoder_factory)
    item_tower = result.model.item_tower
    cache = item_tower.text_cache.numpy()
    mean, _ = by_hand(cache[item_tower.warm_items])
    np.testing.assert_allclose(item_tower.text_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert recorded["config"]["text_whitening"] == "whiten"
    assert (recorded["text_cosine_before"], recorded["text_cosine_after"]) == pytest.approx(item_tower.text_cosines())
    assert recorded["text_cosine_after"] < recorded["text_cosine_before"]
    assert result.metrics["model"]["all"]["NDCG@10"] >= 0
