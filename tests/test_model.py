"""Tests of tfrec_lm.models and tfrec_lm.training: `train()` with each user tower,
negatives and fine-tuning strategy on tiny BERTs, the frozen-encoder cache, and a
learning check against the most-popular baseline on the synthetic migration data."""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_training, tiny_config

from tfrec_lm.errors import ConfigError
from tfrec_lm.evaluation.metrics import full_catalog_ranks
from tfrec_lm.models.history_text_user_tower import HistoryTextUserTower
from tfrec_lm.models.item_sequence_user_tower import ItemSequenceUserTower
from tfrec_lm.data.prepare import examples_to_features
from tfrec_lm.evaluation.scoring import score_catalog

RUNS = ["item_sequence_run", "history_text_run", "in_batch_top_k_run", "history_text_full_run"]


@pytest.fixture(params=RUNS)
def run(request):
    return request.getfixturevalue(request.param)


def bert_variables(run):
    """(encoder, its BERT's variables) for every BERT in the model."""
    encoders = [run.model.item_tower.encoder]
    if isinstance(run.model.user_tower, HistoryTextUserTower):
        encoders.append(run.model.user_tower.encoder)
    return [(encoder, encoder.bert.variables) for encoder in encoders]


def strategy_trains(encoder, variable) -> bool:
    """Whether `encoder`'s fine-tuning strategy says this BERT variable trains."""
    if encoder.finetune == "frozen":
        return False
    if "/pooler/" in variable.name:
        return False
    if encoder.finetune == "full":
        return True
    last = encoder.bert.config.num_hidden_layers - 1
    layers = range(last - encoder.trainable_layers + 1, last + 1)
    return any(f"/encoder/layer_._{i}/" in variable.name for i in layers)


def test_training_loss_and_metrics_are_finite(run):
    losses = run.model.history.history["loss"]
    assert 1 <= len(losses) <= run.config.epochs
    assert np.all(np.isfinite(losses))
    features = examples_to_features(run.result.split.train.take(np.arange(32)))
    loss = run.model.compute_loss({k: tf.constant(v) for k, v in features.items()}, training=False)
    assert np.isfinite(float(loss))
    assert np.all(np.isfinite(run.result.validation_ndcg))
    for name in ("model", "most_popular"):
        values = run.result.metrics[name]["all"]
        assert values["count"] == len(run.result.split.test)
        assert all(np.isfinite(v) for v in values.values())


def test_configured_towers_were_built(run):
    model, config = run.model, run.config
    tower = {"item-sequence": ItemSequenceUserTower, "history-text": HistoryTextUserTower}[config.user_tower]
    assert isinstance(model.user_tower, tower)
    assert model.negatives == config.negatives
    for encoder, _ in bert_variables(run):
        assert encoder.finetune == config.finetune
    assert (model.item_tower.text_cache is not None) == (config.finetune == "frozen")
    users, items = model({"history": np.array([[1, 2, 0]], np.int32), "target": np.array([3], np.int32),
                          "history_timestamps": np.array([[10, 20, 0]], np.int64)})
    assert users.shape == (1, config.embedding_dim) == items.shape


def test_bert_weights_train_exactly_as_the_strategy_says(run):
    trainable = {v.ref() for v in run.model.trainable_variables}
    checked = 0
    for encoder, variables in bert_variables(run):
        for variable in variables:
            should = strategy_trains(encoder, variable)
            assert (variable.ref() in trainable) == should, variable.name
            assert run.changed(variable) == should, variable.name
            checked += 1
    assert checked >= 39


def test_every_trainable_weight_changed_and_no_frozen_one(run):
    trainable = {v.ref() for v in run.model.trainable_variables}
    assert trainable
    unchanged = [v.name for v in run.model.trainable_variables if not run.changed(v)]
    assert unchanged == []
    tower_frozen = [v for v in run.model.item_tower.variables + run.model.user_tower.variables
                    if v.ref() not in trainable]
    changed = [v.name for v in tower_frozen if run.changed(v)]
    assert changed == []
    # The non-BERT parts always train.
    names = {v.name for v in run.model.trainable_variables}
    assert any("text_projection" in n for n in names)
    assert run.model.ranking_head.trainable_variables
    assert {v.ref() for v in run.model.ranking_head.trainable_variables} <= trainable
    assert any(("sequence_encoder" in n or "history_projection" in n) for n in names)


def test_frozen_cache_equals_fresh_encoding(item_sequence_run, history_text_run):
    for run in (item_sequence_run, history_text_run):
        tower = run.model.item_tower
        assert tower.text_cache is not None and not tower.text_cache.trainable
        fresh = tower.encoder.encode_table(tower.token_rows)
        fresh[0] = 0.0
        cache = tower.text_cache.numpy()
        np.testing.assert_allclose(cache, fresh, atol=1e-5)
        assert not run.changed(tower.text_cache)
        # A real cache: one distinct vector per item text.
        assert len(np.unique(np.round(cache[1:], 5), axis=0)) == tower.num_items - 1
        # The tower reads the cache: the text path equals a gather from it.
        items = tf.constant([[1, 5], [7, 0]])
        np.testing.assert_allclose(tower.text_vectors(items).numpy(), cache[items.numpy()], atol=0)


def test_non_frozen_item_tower_encodes_on_the_fly(in_batch_top_k_run):
    tower = in_batch_top_k_run.model.item_tower
    assert tower.text_cache is None
    items = np.array([3, 9, 1], np.int32)
    rows = tower.token_rows[items]
    mask = (rows != 0).astype(np.int32)
    direct = tower.encoder(tf.constant(rows), tf.constant(mask)).numpy()
    np.testing.assert_allclose(tower.text_vectors(tf.constant(items)).numpy(), direct, atol=1e-5)


def test_reported_metrics_match_the_towers(item_sequence_run):
    """result.metrics['model'] is the SPEC protocol computed from the trained towers."""
    result = item_sequence_run.result
    model, test = result.model, result.split.test
    users = model.user_tower(tf.constant(test.history), tf.constant(test.history_timestamps), training=False).numpy()
    items = model.item_tower(tf.range(model.item_tower.num_items), training=False).numpy()
    scores = users @ items.T
    scores[:, 0] = -np.inf
    for row, (exclude, target) in enumerate(zip(test.exclude, test.target)):
        scores[row, [i for i in exclude if i != target]] = -np.inf
    target_scores = scores[np.arange(len(scores)), test.target]
    ranks = (scores >= target_scores[:, None]).sum(axis=1) - 1
    np.testing.assert_allclose(result.metrics["model"]["all"]["HR@10"], np.mean(ranks < 10))
    np.testing.assert_array_equal(full_catalog_ranks(score_catalog(model, test), test.target, test.exclude), ranks)


def test_best_validation_weights_are_kept(item_sequence_run):
    result = item_sequence_run.result
    assert len(result.validation_ndcg) == item_sequence_run.config.epochs
    validation = result.split.validation
    ranks = full_catalog_ranks(score_catalog(result.model, validation), validation.target, validation.exclude)
    ndcg = float(np.mean(np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0)))
    assert ndcg == pytest.approx(max(result.validation_ndcg), abs=1e-6)


def test_training_writes_its_outputs(item_sequence_run):
    output = Path(item_sequence_run.config.output_dir)
    summary = json.loads((output / "metrics.json").read_text())
    assert summary["config"]["user_tower"] == "item-sequence"
    assert summary["test"]["model"]["all"]["HR@10"] == pytest.approx(
        item_sequence_run.result.metrics["model"]["all"]["HR@10"])
    assert summary["export_path"] is None and item_sequence_run.result.export_path is None
    assert list((output / "checkpoints").glob("best.weights*"))
    # each stage's wall seconds and the process's peak memory so far (benchmarks/scale.py reads them)
    stages = summary["stages"]
    assert list(stages) == ["data", "model", "fit", "evaluation", "export"]
    peaks = [stage["peak_rss_bytes"] for stage in stages.values()]
    assert all(stage["seconds"] >= 0 for stage in stages.values()) and peaks == sorted(peaks) and peaks[0] > 10 ** 7
    assert 0 < summary["validation_scoring_seconds"] < stages["fit"]["seconds"]


def test_item_sequence_model_beats_most_popular(item_sequence_run):
    """Learning check: users switch category halfway, so a model that learned to follow
    their recent items ranks the new category's items first; popularity cannot."""
    metrics = item_sequence_run.result.metrics
    model_hr = metrics["model"]["all"]["HR@10"]
    popular_hr = metrics["most_popular"]["all"]["HR@10"]
    assert model_hr >= popular_hr + 0.2, (model_hr, popular_hr)
    assert metrics["model"]["all"]["NDCG@10"] > metrics["most_popular"]["all"]["NDCG@10"]
    assert max(item_sequence_run.result.validation_ndcg) > item_sequence_run.result.validation_ndcg[0]


# ---------------------------------------------------------------- tower configs


def test_tower_configs_carry_their_fields(item_sequence_run, history_text_run):
    config = item_sequence_run.config
    item = item_sequence_run.model.item_tower.get_config()
    assert (item["embedding_dim"], item["use_item_ids"], item["dropout"], item["normalize"]) == (
        config.embedding_dim, config.item_ids, config.dropout, True)
    assert item["encoder"]["config"]["finetune"] == "frozen"
    assert item["token_rows"] == item_sequence_run.model.item_tower.token_rows.tolist()
    user = item_sequence_run.model.user_tower.get_config()
    assert (user["max_history"], user["num_blocks"], user["num_heads"], user["dropout"], user["normalize"]) == (
        config.max_history, config.num_blocks, config.num_heads, config.dropout, True)
    text = history_text_run.model.user_tower.get_config()
    assert (text["embedding_dim"], text["dropout"], text["normalize"]) == (
        history_text_run.config.embedding_dim, history_text_run.config.dropout, True)
    assert text["composer"]["config"]["max_tokens"] == history_text_run.config.history_tokens
    assert text["encoder"]["config"]["finetune"] == history_text_run.config.finetune


def test_item_tower_from_config_round_trip(item_sequence_run):
    tower = item_sequence_run.model.item_tower
    clone = type(tower).from_config(tower.get_config())
    assert clone.embedding_dim == tower.embedding_dim and clone.num_items == tower.num_items
    assert clone.encoder.finetune == tower.encoder.finetune


def test_history_text_tower_from_config_round_trip(history_text_run):
    tower = history_text_run.model.user_tower
    clone = type(tower).from_config(tower.get_config())
    assert clone.embedding_dim == tower.embedding_dim
    assert clone.composer.max_tokens == tower.composer.max_tokens


def test_steps_per_epoch_validates_every_n_steps(synthetic, encoder_factory, tmp_path):
    from tfrec_lm.training import train

    config = tiny_config(tmp_path, epochs=3, patience=3, steps_per_epoch=2, batch_size=16)
    result = train(config, dataset=synthetic, encoder_factory=encoder_factory)
    assert len(result.validation_ndcg) == len(result.validation_seconds) == 3
    assert int(result.model.optimizer.iterations.numpy()) == 6  # 2 steps per epoch, not a pass over the data
    assert np.all(np.diff(result.validation_seconds) > 0)
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        tiny_config(tmp_path, steps_per_epoch=0)


def test_keep_weights_last_trains_every_epoch_and_keeps_the_last(synthetic, encoder_factory, tmp_path, monkeypatch):
    """Validation NDCG@10 falls after the first epoch: `best` stops after --patience and keeps
    epoch 1; `last` trains every epoch and keeps (and checkpoints) the last one."""
    from tfrec_lm.evaluation import scoring
    from tfrec_lm.training import train

    real, calls = scoring.ranking_metrics, []

    def falling(ranks, ks=(10,), **kwargs):  # the validation callback's calls; the test stage's are real
        if len(calls) < 3:
            calls.append(None)
            return {"NDCG@10": 0.5 - 0.1 * len(calls)}
        return real(ranks, ks=ks, **kwargs)

    monkeypatch.setattr(scoring, "ranking_metrics", falling)
    kept = {}
    for keep in ("best", "last"):
        calls.clear()
        config = tiny_config(tmp_path / keep, epochs=3, patience=1, steps_per_epoch=2, batch_size=16,
                             keep_weights=keep)
        result = train(config, dataset=synthetic, encoder_factory=encoder_factory)
        kept[keep] = [w.copy() for w in result.model.get_weights()]
        assert int(result.model.optimizer.iterations.numpy()) == {"best": 4, "last": 6}[keep]
        result.model.load_weights(str(tmp_path / keep / "run" / "checkpoints" / "best.weights")).expect_partial()
        assert all(np.array_equal(a, b) for a, b in zip(kept[keep], result.model.get_weights()))
    assert not all(np.array_equal(a, b) for a, b in zip(kept["best"], kept["last"]))
    with pytest.raises(ConfigError, match="keep_weights"):
        tiny_config(tmp_path, keep_weights="first")


def history_request(vocab_ids, features) -> tuple:
    """`serving_default`'s inputs for example features: (history item ids string [B, N], timestamps int64 [B, N])."""
    ids = vocab_ids[features["history"]]
    return (tf.constant(np.where(features["history"] > 0, ids, ""), tf.string),
            tf.constant(features["history_timestamps"], tf.int64))


def numpy_top_k(users, items, history, k) -> tuple:
    """The exact top k by dot product with padding and each row's history excluded.

    Returns:
        (np.ndarray int [B, k] item indices, np.ndarray [B, C+1] the masked scores).
    """
    scores = users @ items.T
    scores[:, 0] = -np.inf
    for row, seen in enumerate(history):
        scores[row, seen[seen > 0]] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k], scores


def test_dot_similarity_trains_unnormalised_towers_and_exports_their_top_k(synthetic, encoder_factory, tmp_path):
    """`--similarity dot`: neither tower normalises, the model still learns the migration
    signal, and the ScaNN export (non-spherical tree for rows that are not unit length)
    returns the towers' exact dot-product top k."""
    from tfrec_lm.serving_module import ServingModule
    from tfrec_lm.training import train

    config = tiny_config(tmp_path, similarity="dot", temperature=1.0, epochs=8, patience=8, dropout=0.0)
    result = train(config, dataset=synthetic, encoder_factory=encoder_factory)
    model = result.model
    assert not model.item_tower.get_config()["normalize"] and not model.user_tower.get_config()["normalize"]
    items = model.item_tower(tf.range(model.item_tower.num_items), training=False).numpy()
    features = examples_to_features(result.split.test.take(np.arange(16)))
    users = model.user_tower(tf.constant(features["history"]), tf.constant(features["history_timestamps"]),
                             training=False).numpy()
    item_norms, user_norms = np.linalg.norm(items[1:], axis=1), np.linalg.norm(users, axis=1)
    assert np.ptp(item_norms) > 0.05 and not np.allclose(user_norms, 1.0, atol=1e-2), (item_norms, user_norms)
    metrics = result.metrics
    assert metrics["model"]["all"]["HR@10"] >= metrics["most_popular"]["all"]["HR@10"] + 0.2, metrics

    module = ServingModule(model, result.vocab.ids, result.counts, top_k=5, index="scann")
    answer = module.retrieve(*history_request(result.vocab.ids, features))
    expected, scores = numpy_top_k(users, items, features["history"], 5)
    np.testing.assert_array_equal(answer["item_ids"].numpy().astype(str), result.vocab.ids[expected].astype(str))
    np.testing.assert_allclose(answer["scores"].numpy(), np.take_along_axis(scores, expected, 1), rtol=1e-4, atol=1e-4)


def test_balanced_fusion_norms_text_and_ids_apart(synthetic, encoder_factory, tmp_path):
    """`--item-fusion balanced`: the text and ID parts each have LayerNorm scale before the
    sum (so the projected text vector cannot drown the IDs), the towers' configs carry it and
    round-trip, and the model still learns the migration signal."""
    from tfrec_lm.training import train

    config = tiny_config(tmp_path, item_fusion="balanced", epochs=8, patience=8, dropout=0.0)
    result = train(config, dataset=synthetic, encoder_factory=encoder_factory)
    tower = result.model.item_tower
    assert tower.get_config()["fusion"] == "balanced"
    assert type(tower).from_config(tower.get_config()).fusion == "balanced"
    items = tf.range(1, tower.num_items)
    text = tower.text_norm(tower.projection(tower.text_vectors(items))).numpy()
    ids = tower.id_norm(tower.id_embedding(items)).numpy()
    np.testing.assert_allclose(tower.representation(items).numpy(), text + ids, rtol=1e-5, atol=1e-5)
    # A history [B, N] gets the same vectors as the items alone.
    grid = tf.reshape(items[:6], [2, 3])
    np.testing.assert_allclose(tower.representation(grid).numpy().reshape(6, -1), (text + ids)[:6],
                               rtol=1e-5, atol=1e-5)
    # Each part has the norm's scale: per item, mean 0 and unit variance before the learned gains.
    raw_ids = tower.id_embedding(items).numpy()
    standardised = (raw_ids - raw_ids.mean(-1, keepdims=True)) / np.sqrt(raw_ids.var(-1, keepdims=True) + 1e-3)
    gamma, beta = (w.numpy() for w in tower.id_norm.weights)
    np.testing.assert_allclose(ids, standardised * gamma + beta, rtol=1e-4, atol=1e-4)
    metrics = result.metrics
    assert metrics["model"]["all"]["HR@10"] >= metrics["most_popular"]["all"]["HR@10"] + 0.2, metrics
    with pytest.raises(ConfigError, match="item_fusion"):
        tiny_config(tmp_path, item_fusion="concat")


def test_id_lr_multiplier_makes_ids_learn_faster(synthetic, encoder_factory, tmp_path):
    """`--id-lr-multiplier m`: the ID table is stored divided by m (same initial item vectors)
    and multiplied back, so under Adam the item vectors' ID parts move about m times further
    per step than with plain embeddings; the tower's config carries m."""
    moved = {}
    for multiplier in (1.0, 10.0):
        config = tiny_config(tmp_path / str(multiplier), id_lr_multiplier=multiplier, id_dropout=0.0, epochs=1)
        run = run_training(config, synthetic, encoder_factory)
        tower = run.model.item_tower
        assert tower.get_config()["id_lr_multiplier"] == multiplier
        items = tf.range(1, tower.num_items)
        stored = tower.id_embedding(items).numpy()
        text = tower.projection(tower.text_vectors(items)).numpy()
        np.testing.assert_allclose(tower.representation(items).numpy(), text + multiplier * stored,
                                   rtol=1e-5, atol=1e-5)
        initial = next(value for variable, value in run.initial if variable is tower.id_embedding.embeddings)
        assert 0.012 / multiplier < initial[1:].std() < 0.025 / multiplier
        moved[multiplier] = np.abs(multiplier * (stored - initial[1:])).mean()
    assert moved[10.0] > 4 * moved[1.0], moved
    with pytest.raises(ConfigError, match="id_lr_multiplier"):
        tiny_config(tmp_path, id_lr_multiplier=0.0)


def test_item_bias_adds_a_learned_prior_to_every_score(synthetic, encoder_factory, tmp_path):
    """`--item-bias`: items carry `temperature * b` as one more column and users a 1, so the
    logit of every score gains b; b starts at the centred log prior of training targets,
    cold items share the no-ID bias, and the export's top k is the towers' exact top k."""
    from tfrec_lm.serving_module import ServingModule
    from tfrec_lm.models.factory import log_prior_bias

    config = tiny_config(tmp_path, item_bias=True, epochs=3, patience=3, dropout=0.0)
    run = run_training(config, synthetic, encoder_factory)
    model, tower = run.model, run.model.item_tower
    counts = np.bincount(run.result.split.train.target, minlength=tower.num_items)
    initial = next(value for variable, value in run.initial if variable is tower.item_bias)
    np.testing.assert_allclose(initial, log_prior_bias(counts), rtol=1e-6, atol=1e-6)
    warm = counts[1:] > 0
    assert np.argmax(initial[1:]) == np.argmax(counts[1:]) and abs(initial[1:][warm].mean()) < 1e-5
    items = tf.range(tower.num_items)
    embeddings = tower(items).numpy()
    assert embeddings.shape == (tower.num_items, config.embedding_dim + 1)
    np.testing.assert_allclose(embeddings[:, -1], config.temperature * tower.bias_of(items).numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(embeddings[:, :-1], axis=1)[1:], 1.0, rtol=1e-4)
    assert not np.allclose(tower.item_bias.numpy(), initial)  # trained
    features = examples_to_features(run.result.split.test.take(np.arange(16)))
    users = model.user_tower(tf.constant(features["history"]), tf.constant(features["history_timestamps"]),
                             training=False).numpy()
    np.testing.assert_allclose(users[:, -1], 1.0)
    # Scores are cosine + temperature * b: the logits (/ temperature) gain exactly b.
    cosine = users[:, :-1] @ embeddings[:, :-1].T
    np.testing.assert_allclose(users @ embeddings.T, cosine + config.temperature * tower.bias_of(items).numpy(),
                               rtol=1e-5, atol=1e-5)
    module = ServingModule(model, run.result.vocab.ids, run.result.counts, top_k=5, index="brute-force")
    request = history_request(run.result.vocab.ids, features)
    answer = module.retrieve(*request)
    expected, _ = numpy_top_k(users, embeddings, features["history"], 5)
    np.testing.assert_array_equal(answer["item_ids"].numpy().astype(str), run.result.vocab.ids[expected].astype(str))
    # `explain` compares items by their embeddings without the bias column.
    explained = module.explain(*request)
    unit = embeddings[:, :-1] / np.maximum(np.linalg.norm(embeddings[:, :-1], axis=1, keepdims=True), 1e-12)
    because = run.result.vocab.index(explained["because_item_ids"].numpy().astype(str).astype(object))
    np.testing.assert_allclose(explained["because_similarity"].numpy(),
                               np.sum(unit[expected] * unit[because], axis=-1), rtol=1e-4, atol=1e-4)


def retrieval_loss(model, features, history_negatives):
    """`compute_loss` with the rating loss off and `history_negatives` set as given."""
    saved = model.ranking_weight, model.history_negatives
    model.ranking_weight, model.history_negatives = 0.0, history_negatives
    try:
        return float(model.compute_loss(features, training=False))
    finally:
        model.ranking_weight, model.history_negatives = saved


@pytest.mark.parametrize("name", ["item_sequence_run", "in_batch_top_k_run"])
def test_no_history_negatives_leaves_the_history_out_of_the_softmax(name, request):
    """`--no-history-negatives`: a query's own history items are no negatives of its softmax
    (catalog and in-batch negatives alike); its positive stays, even when it is in the history."""
    run = request.getfixturevalue(name)
    model = run.model
    features = {k: tf.constant(v) for k, v in
                examples_to_features(run.result.split.train.take(np.arange(32))).items()}
    with_history = retrieval_loss(model, features, True)
    without = retrieval_loss(model, features, False)
    assert without < with_history - 1e-4, (without, with_history)
    history, target = features["history"].numpy(), features["target"].numpy()
    if model.negatives == "catalog":
        # The exact softmax over the positive and the catalog minus the target, the
        # cold items and the row's own history.
        table = model.item_tower.representation(tf.range(model.item_tower.num_items))
        users = model.user_tower(features["history"], features.get("history_timestamps"), item_table=table).numpy()
        embeddings = model.item_tower.finalize(table, tf.range(model.item_tower.num_items)).numpy()
        logits = users @ embeddings.T / model.retrieval_task._temperature
        allowed = np.broadcast_to(np.append(False, model.item_tower.negative_mask().numpy()), logits.shape).copy()
        for row in range(len(target)):
            allowed[row, history[row]] = False
            allowed[row, target[row]] = False
        positive = logits[np.arange(len(target)), target]
        expected = np.mean([np.logaddexp(positive[row], np.logaddexp.reduce(logits[row][allowed[row]]))
                            - positive[row] for row in range(len(target))])
        np.testing.assert_allclose(without, expected, rtol=1e-4)
    # A positive inside its own history (repeat consumption) is still the positive.
    history[:, 0] = target
    features["history"] = tf.constant(history)
    assert np.isfinite(retrieval_loss(model, features, False))
    assert not run.config.history_negatives and not model.history_negatives  # the default leaves them out
