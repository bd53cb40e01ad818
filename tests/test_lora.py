"""`--finetune lora`: low-rank adapters on the item encoder's top attention projections."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_training, tiny_config
from tfrec_lm.config import TrainConfig, shape_conflicts
from tfrec_lm.errors import ConfigError
from tfrec_lm.layers.bert_text_encoder import BertTextEncoder
from tfrec_lm.layers.lora_dense import LoraDense
from tfrec_lm.text import tokenize_items


def _dense(units=5, fan_in=7, seed=0):
    tf.keras.utils.set_random_seed(seed)
    base = tf.keras.layers.Dense(units)
    base.build([None, fan_in])
    return base


def test_lora_dense_starts_as_its_base_and_trains_only_the_adapter():
    base = _dense()
    x = tf.random.normal([3, 4, 7])
    expected = base(x).numpy()
    layer = LoraDense(base, rank=2)
    np.testing.assert_array_equal(layer(x).numpy(), expected)  # B = 0: exactly the base
    assert not layer.lora_b.numpy().any() and layer.lora_a.numpy().std() > 0
    assert sorted(v.name.split("/")[-1] for v in layer.trainable_variables) == ["lora_a:0", "lora_b:0"]
    assert {v.name.split("/")[-1] for v in layer.non_trainable_variables} == {"kernel:0", "bias:0"}


def test_lora_dense_adds_the_scaled_low_rank_update_and_merge_keeps_it():
    base = _dense()
    layer = LoraDense(base, rank=2, alpha=6.0)
    x = tf.random.normal([4, 7])
    layer(x)
    kernel = base.kernel.numpy().copy()
    layer.lora_b.assign(tf.random.normal(layer.lora_b.shape))
    a, b = layer.lora_a.numpy(), layer.lora_b.numpy()
    expected = x.numpy() @ (kernel + 3.0 * a @ b) + base.bias.numpy()
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-5, atol=1e-5)
    layer.merge()
    assert not layer.lora_b.numpy().any()
    np.testing.assert_allclose(base.kernel.numpy(), kernel + 3.0 * a @ b, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_lora_dense_config_round_trip():
    layer = LoraDense(_dense(), rank=3, alpha=1.5, name="lora_query")
    config = layer.get_config()
    rebuilt = LoraDense.from_config(config)
    assert rebuilt.get_config() == config
    assert (rebuilt.rank, rebuilt.alpha, rebuilt.units, rebuilt.use_bias) == (3, 1.5, 5, True)
    assert rebuilt.scale == 0.5
    rebuilt(tf.zeros([1, 7]))
    assert rebuilt.lora_a.shape == (7, 3) and rebuilt.lora_b.shape == (3, 5)
    assert LoraDense(_dense(), rank=4).alpha == 4.0  # default alpha: the rank, scale 1
    with pytest.raises(ValueError, match="rank"):
        LoraDense(_dense(), rank=0)


def _encoders(synthetic, encoder_factory, **lora):
    frozen = BertTextEncoder(encoder_factory()[0], finetune="frozen")
    bert, tokenizer = encoder_factory()
    adapted = BertTextEncoder(bert, finetune="lora", **lora)
    rows = tokenize_items(synthetic.items["text"].tolist(), tokenizer, 12).with_special_tokens()
    return frozen, adapted, rows


def test_lora_encoder_starts_as_the_frozen_one_and_only_adapters_train(synthetic, encoder_factory):
    frozen, adapted, rows = _encoders(synthetic, encoder_factory, trainable_layers=1, lora_rank=4)
    np.testing.assert_array_equal(adapted.encode_table(rows), frozen.encode_table(rows))
    adapters = adapted.adapters()
    assert len(adapters) == 4 and all(isinstance(a, LoraDense) for a in adapters)  # q, k, v, output of one layer
    top = adapted.bert.bert.encoder.layer[-1].attention
    assert adapters == [top.self_attention.query, top.self_attention.key, top.self_attention.value,
                        top.dense_output.dense]
    trainable = {id(v) for v in adapted.trainable_variables}
    assert trainable == {id(v) for a in adapters for v in (a.lora_a, a.lora_b)}
    assert len(adapted.bert.weights) == len(frozen.bert.weights) + 8


def test_merging_gives_the_unmerged_adapters_outputs(synthetic, encoder_factory):
    _, adapted, rows = _encoders(synthetic, encoder_factory, trainable_layers=2, lora_rank=2, lora_alpha=4.0)
    for adapter in adapted.adapters():
        adapter.lora_b.assign(tf.random.normal(adapter.lora_b.shape, stddev=0.5))
    unmerged = adapted.encode_table(rows)
    adapted.merge_adapters()
    assert not any(a.lora_b.numpy().any() for a in adapted.adapters())
    np.testing.assert_allclose(adapted.encode_table(rows), unmerged, rtol=1e-3, atol=1e-4)


def test_lora_encoder_config_round_trip(synthetic, encoder_factory):
    _, adapted, _ = _encoders(synthetic, encoder_factory, trainable_layers=1, lora_rank=3, lora_alpha=6.0)
    config = adapted.get_config()
    rebuilt = BertTextEncoder.from_config(config)
    assert rebuilt.get_config() == config
    assert (rebuilt.finetune, rebuilt.trainable_layers, rebuilt.lora_rank, rebuilt.lora_alpha) == ("lora", 1, 3, 6.0)
    assert [a.rank for a in rebuilt.adapters()] == [3] * 4 and rebuilt.adapters()[0].scale == 2.0


def test_train_config_round_trip_and_shape_conflicts():
    config = TrainConfig(finetune="lora", trainable_layers=1, lora_rank=4, lora_alpha=8.0,
                         lora_refresh_steps=7).validate()
    again = TrainConfig.from_dict(config.to_dict())
    assert again == config and (again.lora_rank, again.lora_alpha, again.lora_refresh_steps) == (4, 8.0, 7)
    assert TrainConfig().lora_rank == 8 and TrainConfig().lora_alpha is None
    conflicts = shape_conflicts(config, {**config.to_dict(), "lora_rank": 8})
    assert conflicts == ["--lora-rank 4 (the run: 8)"]
    assert shape_conflicts(TrainConfig(), {**TrainConfig().to_dict(), "finetune": "lora"})


def test_the_command_line_sets_the_lora_options():
    from tfrec_lm.train import build_parser, config_from_args

    args = build_parser().parse_args(["--finetune", "lora", "--trainable-layers", "1", "--lora-rank", "4",
                                      "--lora-alpha", "8", "--lora-refresh-steps", "20"])
    config = config_from_args(args)
    assert (config.finetune, config.trainable_layers, config.lora_rank, config.lora_alpha,
            config.lora_refresh_steps) == ("lora", 1, 4, 8.0, 20)


@pytest.mark.parametrize("changes, message", [
    ({"negatives": "in-batch"}, "--negatives catalog"),
    ({"user_tower": "history-text"}, "--user-tower item-sequence"),
    ({"item_text": False}, "the item text"),
    ({"strategy": "mirrored"}, "--strategy default"),
    ({"mixed_precision": "mixed_bfloat16"}, "--mixed-precision float32"),
    ({"jit_compile": True}, "no --jit-compile"),
    ({"lora_rank": 0}, "lora_rank must be >= 1"),
    ({"lora_refresh_steps": 0}, "lora_refresh_steps must be >= 1"),
    ({"lora_negative_samples": -1}, "lora_negative_samples must be >= 0"),
    ({"lora_alpha": 0.0}, "lora_alpha must be"),
    ({"text_tuning_steps": 10}, "--text-tuning-steps"),
    ({"text_whitening": "center"}, "--finetune frozen"),
])
def test_incompatible_lora_options_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{"finetune": "lora", **changes}).validate()


def _tiny_lora_model(synthetic, encoder_factory, tmp_path, **changes):
    from tfrec_lm.data.prepare import examples_to_features, prepare_data
    from tfrec_lm.distribute import make_strategy
    from tfrec_lm.fitting import warm_start_and_compile
    from tfrec_lm.models.factory import build_for_training

    config = tiny_config(tmp_path, finetune="lora", trainable_layers=1, lora_rank=2, dropout=0.0,
                         learning_rate=1e-2, **changes)
    data = prepare_data(config, synthetic)
    model = build_for_training(config, data, encoder_factory, make_strategy("default"))
    warm_start_and_compile(model, config, total_steps=10)
    features = examples_to_features(data.train_examples.take(np.arange(64)))
    return model, features


def test_training_steps_move_the_adapters_and_not_the_base(synthetic, encoder_factory, tmp_path):
    model, features = _tiny_lora_model(synthetic, encoder_factory, tmp_path)
    encoder = model.item_tower.encoder
    adapter_ids = {id(v) for a in encoder.adapters() for v in (a.lora_a, a.lora_b)}
    base = [(v, v.numpy().copy()) for v in encoder.bert.weights if id(v) not in adapter_ids]
    adapters = [(v, v.numpy().copy()) for a in encoder.adapters() for v in (a.lora_a, a.lora_b)]
    assert adapter_ids <= {id(v) for v in model.trainable_variables}
    assert not adapter_ids ^ {id(v) for v in model.trainable_variables if id(v) in {id(w) for w in encoder.weights}}
    for _ in range(3):
        model.train_step(features)
    assert all(np.array_equal(v.numpy(), value) for v, value in base)
    moved = [not np.array_equal(v.numpy(), value) for v, value in adapters]
    assert all(moved), moved  # every A and B got a gradient through the batch's positives


def test_a_step_recomputes_its_positives_through_the_adapters(synthetic, encoder_factory, tmp_path):
    model, features = _tiny_lora_model(synthetic, encoder_factory, tmp_path, lora_negative_samples=0)
    tower = model.item_tower
    assert tower.lora_negative_samples == 0
    for adapter in tower.encoder.adapters():
        adapter.lora_b.assign(tf.random.normal(adapter.lora_b.shape, stddev=0.5))
    stale = tower.text_cache.numpy().copy()  # the table of B = 0
    adapted = tower.encoder.encode_table(tower.token_rows)
    items = tf.constant([3, 5, 3, 9])
    table = tower.adapted_table(items).numpy()
    np.testing.assert_allclose(table[[3, 5, 9]], adapted[[3, 5, 9]], rtol=1e-4, atol=1e-5)
    others = np.setdiff1d(np.arange(tower.num_items), [3, 5, 9])
    np.testing.assert_array_equal(table[others], stale[others])
    assert np.abs(adapted[1:] - stale[1:]).max() > 1e-3
    one = tower.adapted_table(tf.constant([4])).numpy()  # one item: an empty half of the length split
    np.testing.assert_allclose(one[4], adapted[4], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.delete(one, 4, axis=0), np.delete(stale, 4, axis=0))
    tower.refresh_adapted_table()
    np.testing.assert_allclose(tower.text_cache.numpy()[1:], adapted[1:], rtol=1e-4, atol=1e-5)


def test_sampled_negatives_are_fresh_and_their_gradient_is_scaled_to_the_catalog(synthetic, encoder_factory,
                                                                                 tmp_path):
    model, _ = _tiny_lora_model(synthetic, encoder_factory, tmp_path, lora_negative_samples=6)
    tower = model.item_tower
    for adapter in tower.encoder.adapters():
        adapter.lora_b.assign(tf.random.normal(adapter.lora_b.shape, stddev=0.5))
    stale = tower.text_cache.numpy().copy()
    adapted = tower.encoder.encode_table(tower.token_rows)
    tf.random.set_seed(3)
    positives = tf.constant([3, 5])
    table = tower.adapted_table(positives).numpy()
    fresh = np.flatnonzero(np.abs(table - stale).max(axis=1) > 0)
    sampled = np.setdiff1d(fresh, [3, 5])
    assert {3, 5} <= set(fresh) and 1 <= len(sampled) <= 6
    np.testing.assert_allclose(table[fresh], adapted[fresh], rtol=1e-4, atol=1e-5)
    others = np.setdiff1d(np.arange(tower.num_items), fresh)
    np.testing.assert_array_equal(table[others], stale[others])
    # a positive's row carries its own gradient; a sampled one (C - P) / |S| times its own
    variable = tower.encoder.adapters()[-1].lora_b
    weights = tf.constant(np.random.default_rng(0).normal(size=table.shape[1]), tf.float32)

    def gradients(item):
        with tf.GradientTape(persistent=True) as tape:
            tf.random.set_seed(3)  # the same draw
            through = tf.reduce_sum(tower.adapted_table(positives)[item] * weights)
            direct = tf.reduce_sum(tower.lora_top()(tf.gather(tower._lora.states, [item]),
                                                    tf.gather(tower._lora.mask, [item]))[0] * weights)
        return tape.gradient(through, variable).numpy(), tape.gradient(direct, variable).numpy()

    through, direct = gradients(int(sampled[0]))
    assert np.abs(direct).max() > 0
    np.testing.assert_allclose(through, (tower.num_items - 1 - 2) / len(sampled) * direct, rtol=1e-3, atol=1e-6)
    through, direct = gradients(3)
    np.testing.assert_allclose(through, direct, rtol=1e-3, atol=1e-6)


@pytest.fixture(scope="module")
def lora_run(synthetic, encoder_factory, tmp_path_factory):
    """An item-sequence run with lora on the top layer, catalog negatives, exported (brute force)."""
    directory = tmp_path_factory.mktemp("lora")
    config = tiny_config(directory, finetune="lora", trainable_layers=1, lora_rank=2, lora_refresh_steps=2,
                         epochs=2, dropout=0.0, learning_rate=1e-2, export=True, index="brute-force")
    return run_training(config, synthetic, encoder_factory)


def test_trained_lora_ends_with_the_merged_adapted_encoder_everywhere(lora_run, synthetic, encoder_factory):
    """After training the adapters are merged (B = 0), the item table is the adapted encoder's, and a
    model rebuilt from the checkpoint (a catalog update, a warm start) reads texts the same way."""
    from tfrec_lm.data.prepare import examples_to_features
    from tfrec_lm.models.factory import build_model, create_variables
    from tfrec_lm.registry.runs import checkpoint_prefix

    tower = lora_run.model.item_tower
    encoder = tower.encoder
    assert all(not a.lora_b.numpy().any() for a in encoder.adapters())
    adapted = encoder.encode_table(tower.token_rows)
    np.testing.assert_allclose(tower.text_cache.numpy()[1:], adapted[1:], rtol=1e-4, atol=1e-5)
    frozen = BertTextEncoder(encoder_factory()[0], finetune="frozen").encode_table(tower.token_rows)
    assert np.abs(adapted[1:] - frozen[1:]).max() > 1e-3
    # the adapted layer's projections moved (merged), the layers below and the feed-forward did not
    top, below = encoder.bert.bert.encoder.layer[-1], encoder.bert.bert.encoder.layer[0]
    before = {id(v): value for v, value in lora_run.initial}
    assert not np.array_equal(top.attention.self_attention.query.base.kernel.numpy(),
                              before[id(top.attention.self_attention.query.base.kernel)])
    for variable in below.weights + top.intermediate.weights:
        np.testing.assert_array_equal(variable.numpy(), before[id(variable)])
    config = lora_run.config
    rebuilt = build_model(config, synthetic.items["text"].tolist(), encoder_factory, encode_texts=False)
    create_variables(rebuilt, examples_to_features(lora_run.result.split.train.take(np.arange(2))))
    rebuilt.load_towers(checkpoint_prefix(config.output_dir))
    np.testing.assert_allclose(rebuilt.item_tower.encoder.encode_table(tower.token_rows)[1:], adapted[1:],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rebuilt.item_tower.text_cache.numpy(), tower.text_cache.numpy(), rtol=1e-4,
                               atol=1e-5)


def test_exported_lora_model_reloads_with_the_in_memory_scores(lora_run):
    from tfrec_lm.serving_module import ServingModule

    result = lora_run.result
    assert result.export_path is not None
    loaded = tf.saved_model.load(str(result.export_path))
    module = ServingModule(lora_run.model, result.vocab.ids, result.counts, top_k=10, index="brute-force")
    history = tf.constant([[str(i) for i in result.vocab.ids[1:6]], [str(i) for i in result.vocab.ids[7:12]]])
    timestamps = tf.constant([[1, 2, 3, 4, 5]] * 2, tf.int64)
    served = loaded.signatures["serving_default"](history_item_ids=history, history_timestamps=timestamps)
    expected = module.retrieve(history, timestamps)
    assert served["item_ids"].numpy().tolist() == expected["item_ids"].numpy().tolist()
    np.testing.assert_allclose(served["scores"].numpy(), expected["scores"].numpy(), rtol=1e-5, atol=1e-6)
    # and those are the model's own scores over the adapted item table
    tower = lora_run.model.item_tower
    items = tower.finalize(tower.representation(tf.range(tower.num_items)), tf.range(tower.num_items)).numpy()
    rows = np.array([[1, 2, 3, 4, 5], [7, 8, 9, 10, 11]], np.int32)
    users = lora_run.model.embed_users(tf.constant(rows), timestamps).numpy()
    index = {str(v): i for i, v in enumerate(result.vocab.ids)}
    for u in range(2):
        picked = [index[v.decode()] for v in served["item_ids"].numpy()[u]]
        np.testing.assert_allclose(served["scores"].numpy()[u], users[u] @ items[picked].T, rtol=1e-4, atol=1e-5)


def test_a_catalog_update_reads_new_texts_with_the_adapted_encoder(lora_run, encoder_factory, tokenizer, tmp_path):
    import pandas as pd

    from tfrec_lm.catalog.table import read_catalog
    from tfrec_lm.catalog.update import update_catalog
    from tfrec_lm.registry.layout import EXPORT_CATALOG_FILE

    items = tmp_path / "items.csv"
    pd.DataFrame([("new-a", "red sneakers 40", "sneakers")], columns=["item_id", "title", "genres"]).to_csv(
        items, index=False)
    update = update_catalog(lora_run.config.output_dir, items_path=items, export_base=str(tmp_path / "exports"),
                            encoder_factory=encoder_factory, cold_neighbours=0, publish="always")
    assert update.encoded == 1
    catalog = read_catalog(update.export_path / "assets.extra" / EXPORT_CATALOG_FILE)
    text = catalog.set_index("item_id").loc["new-a", "text"]
    embeddings = tf.saved_model.load(str(update.export_path)).item_embeddings.numpy()
    row = 1 + catalog["item_id"].tolist().index("new-a")
    tower = lora_run.model.item_tower
    token_row = tokenize_items([text], tokenizer, lora_run.config.max_item_tokens).with_special_tokens()[1:]

    def served(encoder):  # a cold item's export row: its projected text plus the no-ID vector, normalised
        vector = tower.projection(tf.constant(encoder.encode_table(token_row))) + tower.no_id_embedding
        return tf.math.l2_normalize(vector, axis=-1).numpy()[0]

    np.testing.assert_allclose(embeddings[row], served(tower.encoder), rtol=1e-4, atol=1e-5)
    unadapted = BertTextEncoder(encoder_factory()[0], finetune="frozen")
    assert np.abs(embeddings[row] - served(unadapted)).max() > 1e-4
