"""`--logit-adjustment TAU` (issue 30 item 1): the training softmax's logits get + TAU * log p_j.

Logit adjustment (Menon et al. 2021; Yi et al. 2019's popularity correction for sampled
softmaxes): in the training loss only, every candidate item j's logit, after the temperature
(and beside in-batch log-Q), gains TAU * log p_j, p_j item j's smoothed share of training
targets. Served and evaluated scores are the model's as before. The losses are recomputed
here in numpy from the model's own user and item embeddings.
"""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import json

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from tfrec_lm.config import TrainConfig
from tfrec_lm.data.prepare import examples_to_features
from tfrec_lm.errors import ConfigError
from tfrec_lm.models.two_tower import TwoTowerModel, logit_offsets

ROWS = 24  # training rows of the fixed batch


@pytest.fixture(scope="module")
def prepared(synthetic, tmp_path_factory):
    """The data stage of the tiny config (catalog negatives) and its fixed batch of training rows."""
    from tfrec_lm.data.prepare import prepare_data

    config = tiny_config(tmp_path_factory.mktemp("logit_adjustment"), dropout=0.0, ranking_weight=0.0)
    data = prepare_data(config, synthetic)
    features = {k: tf.constant(v) for k, v in examples_to_features(data.train_examples.take(np.arange(ROWS))).items()}
    return config, data, features


def build(prepared, encoder_factory, source=None, **changes):
    """The model of the tiny config with `changes`, its variables `source`'s values when given."""
    from tfrec_lm.distribute import make_strategy
    from tfrec_lm.models.factory import build_for_training

    config, data, _ = prepared
    config = config.replace(**changes)
    tf.keras.utils.set_random_seed(config.seed)
    model = build_for_training(config, data, encoder_factory, make_strategy(config.strategy), tune_text=False)
    if source is not None:
        assert len(model.variables) == len(source.variables)
        for mine, theirs in zip(model.variables, source.variables):
            mine.assign(theirs)
    return model


@pytest.fixture(scope="module")
def catalog_pair(prepared, encoder_factory):
    """(TAU 0.5, TAU 0) catalog-softmax models with the same weights."""
    adjusted = build(prepared, encoder_factory, logit_adjustment=0.5)
    return adjusted, build(prepared, encoder_factory, source=adjusted)


def smoothed_log_shares(target_counts):
    """numpy log p_j = log((n_j + n_min) / (S + C * n_min)) over items 1..C (row 0: 0)."""
    counts = np.asarray(target_counts, np.float64)[1:]
    smallest = counts[counts > 0].min()
    return np.append(0.0, np.log((counts + smallest) / (counts.sum() + len(counts) * smallest)))


def cross_entropy(logits, allowed, positive_column):
    """Mean over rows of logsumexp(allowed logits) - the positive's logit (the positive allowed)."""
    losses = []
    for row in range(len(logits)):
        mask = allowed[row].copy()
        mask[positive_column[row]] = True
        losses.append(np.logaddexp.reduce(logits[row][mask]) - logits[row, positive_column[row]])
    return float(np.mean(losses))


def catalog_loss_by_hand(model, features, tau, log_p):
    """The exact catalog softmax of `compute_loss(training=True)`, from the model's own embeddings."""
    tower = model.item_tower
    table = tower.representation(tf.range(tower.num_items), training=True)
    users = model.user_tower(features["history"], features["history_timestamps"], training=True,
                             item_table=table).numpy().astype(np.float64)
    items = tower.finalize(table, tf.range(tower.num_items)).numpy().astype(np.float64)
    logits = users @ items.T / model.temperature + tau * log_p[None, :]
    history, target = features["history"].numpy(), features["target"].numpy()
    allowed = np.broadcast_to(np.append(False, tower.negative_mask().numpy()), logits.shape).copy()
    for row in range(len(target)):
        allowed[row, history[row]] = False  # the row's own history (--no-history-negatives, the default)
    return cross_entropy(logits, allowed, target)


def in_batch_loss_by_hand(model, features, tau, log_p):
    """The in-batch softmax of `compute_loss(training=True)`: log-Q, accidental hits and history masked."""
    users = model.user_tower(features["history"], features["history_timestamps"],
                             training=True).numpy().astype(np.float64)
    positives = model.item_tower(features["target"], training=True).numpy().astype(np.float64)
    target, history = features["target"].numpy(), features["history"].numpy()
    q = model.item_probability.numpy().astype(np.float64)[target]
    logits = users @ positives.T / model.temperature - np.log(q)[None, :] + tau * log_p[target][None, :]
    allowed = np.ones(logits.shape, bool)
    for row in range(len(target)):
        allowed[row] = (target != target[row]) & ~np.isin(target, history[row])
    return cross_entropy(logits, allowed, np.arange(len(target)))


def train_loss(model, features):
    return float(model.compute_loss(features, training=True))


def test_the_offsets_are_tau_times_the_add_one_smoothed_log_shares():
    counts = np.array([0, 1, 3, 0, 6], np.float64)  # row 0 padding; item 3 never a target
    offsets = logit_offsets(counts / counts.sum())
    np.testing.assert_allclose(offsets, [0.0, *np.log((counts[1:] + 1) / (counts.sum() + 4))], rtol=1e-12)
    assert np.isfinite(offsets).all()
    # From the shares alone the pseudo-count is the rarest trained item's count (here 2).
    counts = np.array([0, 2, 3, 0, 6], np.float64)
    np.testing.assert_allclose(logit_offsets(counts / counts.sum()),
                               [0.0, *np.log((counts[1:] + 2) / (counts.sum() + 4 * 2))], rtol=1e-12)
    assert not logit_offsets(np.zeros(5)).any()


def test_the_catalog_loss_is_the_softmax_over_logits_plus_tau_log_p(prepared, catalog_pair):
    config, data, features = prepared
    adjusted, plain = catalog_pair
    assert adjusted.negatives == "catalog" and adjusted.logit_adjustment == 0.5 and plain.logit_adjustment == 0.0
    log_p = smoothed_log_shares(data.target_counts)
    np.testing.assert_allclose(adjusted.logit_offsets.numpy(), 0.5 * log_p, rtol=1e-5, atol=1e-6)
    with_tau = train_loss(adjusted, features)
    without = train_loss(plain, features)
    np.testing.assert_allclose(with_tau, catalog_loss_by_hand(adjusted, features, 0.5, log_p), rtol=1e-5)
    np.testing.assert_allclose(without, catalog_loss_by_hand(plain, features, 0.0, log_p), rtol=1e-5)
    assert abs(with_tau - without) > 1e-2, (with_tau, without)
    # TAU acts after the temperature: dividing it by the temperature instead would be another loss.
    wrong = catalog_loss_by_hand(adjusted, features, 0.5 / adjusted.temperature, log_p)
    assert abs(with_tau - wrong) > 1e-2


def test_the_in_batch_loss_adds_tau_log_p_beside_log_q(prepared, encoder_factory):
    config, data, features = prepared
    adjusted = build(prepared, encoder_factory, negatives="in-batch", logit_adjustment=1.0)
    plain = build(prepared, encoder_factory, source=adjusted, negatives="in-batch")
    log_p = smoothed_log_shares(data.target_counts)
    with_tau = train_loss(adjusted, features)
    without = train_loss(plain, features)
    np.testing.assert_allclose(with_tau, in_batch_loss_by_hand(adjusted, features, 1.0, log_p), rtol=1e-5)
    np.testing.assert_allclose(without, in_batch_loss_by_hand(plain, features, 0.0, log_p), rtol=1e-5)
    assert abs(with_tau - without) > 1e-2, (with_tau, without)


def test_served_and_evaluated_scores_and_the_validation_loss_ignore_it(prepared, catalog_pair):
    from tfrec_lm.evaluation.scoring import score_catalog
    from tfrec_lm.serving_module import ServingModule

    config, data, features = prepared
    adjusted, plain = catalog_pair
    examples = data.split.test
    np.testing.assert_array_equal(score_catalog(adjusted, examples, 0, 16), score_catalog(plain, examples, 0, 16))
    # The validation loss (test_step: training=False) is the unadjusted softmax.
    assert float(adjusted.compute_loss(features, training=False)) == float(plain.compute_loss(features, training=False))
    # The export's serving_default: the same items and scores.
    test = examples_to_features(examples.take(np.arange(8)))
    ids = data.vocab.ids
    request = (tf.constant(np.where(test["history"] > 0, ids[test["history"]], ""), tf.string),
               tf.constant(test["history_timestamps"], tf.int64))
    modules = [ServingModule(model, ids, data.counts, top_k=5, index="brute-force") for model in (adjusted, plain)]
    answers = [module.retrieve(*request) for module in modules]
    np.testing.assert_array_equal(answers[0]["item_ids"].numpy(), answers[1]["item_ids"].numpy())
    np.testing.assert_array_equal(answers[0]["scores"].numpy(), answers[1]["scores"].numpy())


@pytest.mark.parametrize("value", [-1.0, -1e-9, float("nan"), float("inf")])
def test_a_negative_or_non_finite_tau_is_a_config_error(value):
    with pytest.raises(ConfigError, match=r"^logit_adjustment must be a finite number >= 0 \(0 is off\), got "):
        TrainConfig(logit_adjustment=value).validate()
    with pytest.raises(ConfigError, match="logit_adjustment must be"):
        TrainConfig.from_dict({"logit_adjustment": value})
    assert TrainConfig(logit_adjustment=0.0).validate().logit_adjustment == 0.0


def test_a_negative_tau_is_refused_by_the_model_too(catalog_pair):
    model = catalog_pair[1]
    with pytest.raises(ValueError, match="logit_adjustment must be a finite number >= 0"):
        TwoTowerModel(model.user_tower, model.item_tower, logit_adjustment=-1.0)


def test_the_option_round_trips_through_files_the_cli_the_hash_and_the_tuner():
    import keras_tuner as kt

    from tfrec_lm.registry.runs import options_hash
    from tfrec_lm.train import build_parser, config_from_args
    from tuning import RecommenderHyperModel

    assert TrainConfig().logit_adjustment == 0.0
    run = TrainConfig(logit_adjustment=0.5)
    assert TrainConfig.from_dict(json.loads(json.dumps(run.to_dict()))).logit_adjustment == 0.5
    assert TrainConfig.from_dict({"logit_adjustment": 1}).logit_adjustment == 1
    assert config_from_args(build_parser().parse_args(["--logit-adjustment", "0.5"])).logit_adjustment == 0.5
    with pytest.raises(ConfigError, match="logit_adjustment must be"):
        config_from_args(build_parser().parse_args(["--logit-adjustment", "-1"]))
    assert "--logit-adjustment" in build_parser().format_help()
    assert options_hash(run.options()) != options_hash(TrainConfig().options())  # another run
    # A tuner knob in every search: 0, 0.5 or 1.
    hypermodel = RecommenderHyperModel(TrainConfig(), tune=["logit_adjustment"])
    assert hypermodel.space["logit_adjustment"] == [0.0, 0.5, 1.0]
    hp = kt.HyperParameters()
    hp.Fixed("logit_adjustment", 1.0)
    assert hypermodel.build(hp).logit_adjustment == 1.0
    assert "logit_adjustment" in RecommenderHyperModel(TrainConfig(item_text=False, item_ids=True)).space
