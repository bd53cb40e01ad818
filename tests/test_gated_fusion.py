"""`--item-fusion gated` (issue 30): the text part scaled by a learned gate on the item's evidence.

An item i with n_i training interactions and a trained ID embedding is `g_i * text_i + id_i`,
text_i and id_i the parts of `sum`, `g_i = sigmoid(a * log(1 + n_i) + b)`, a and b trainable
scalars (from 0 and 4). An item without a trained ID embedding (cold, n = 0, a catalog
update's new item, a warm item dropped by `id_dropout` in training) keeps g = 1, as under `sum`.
"""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import json

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config, tiny_two_tower
from tfrec_lm.bert import tiny_bert
from tfrec_lm.config import TrainConfig
from tfrec_lm.errors import ConfigError
from tfrec_lm.layers.bert_text_encoder import BertTextEncoder
from tfrec_lm.models.item_tower import GATE_INITIAL_A, GATE_INITIAL_B, ItemTower

CLS, SEP, VOCAB = 2, 3, 64
WARM = np.array([False, True, True, True, False, True])  # item 4 is cold (row 0 is padding)
COUNTS = np.array([0, 1, 6, 40, 0, 300])
A, B = -0.7, 1.3  # set by hand: g falls from 0.70 at n = 1 to 0.03 at n = 300


def rows(num_items=len(WARM)):
    table = np.zeros([num_items, 5], np.int32)
    for item in range(1, num_items):
        table[item, :4] = [CLS, 10 + item, 20 + item, SEP]
    return table


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def tower(warm_items=WARM, counts=COUNTS, num_items=len(WARM), finetune="frozen", fusion="gated", gate=(A, B),
          **kwargs):
    """A tower on the tiny BERT, its ID embeddings and no-ID vector random, the gate's a and b set to `gate`."""
    options = dict(cold_neighbours=2, cold_popularity=1.0)
    options.update(kwargs)
    item_tower = ItemTower(BertTextEncoder(tiny_bert(VOCAB, seed=4), finetune=finetune), rows(num_items),
                           embedding_dim=8, dropout=0.0, warm_items=warm_items, item_counts=counts, fusion=fusion,
                           **options)
    if finetune == "frozen":
        item_tower.refresh_cache()
    item_tower(tf.constant([1]))
    item_tower.id_embedding.embeddings.assign(tf.random.stateless_normal([num_items, 8], seed=[1, 2]))
    item_tower.no_id_embedding.assign(tf.random.stateless_normal([8], seed=[5, 6]))
    if fusion == "gated" and gate is not None:
        item_tower.fusion_gate_a.assign(gate[0])
        item_tower.fusion_gate_b.assign(gate[1])
    return item_tower


def expected_gate(counts=COUNTS, warm=WARM, a=A, b=B):
    """[C+1] g by hand: sigmoid(a log(1 + n) + b) for warm items with n > 0, 1 for the others."""
    gate = sigmoid(a * np.log1p(counts) + b)
    has_gate = warm & (counts > 0)
    has_gate[0] = False
    return np.where(has_gate, gate, 1.0)


@pytest.mark.parametrize("finetune", ["frozen", "full"])
def test_a_warm_items_text_part_is_scaled_by_its_gate_and_a_cold_item_keeps_g_1(finetune):
    item_tower = tower(finetune=finetune)
    items = tf.range(len(WARM))
    text, ids = item_tower.text_part(items).numpy(), item_tower.id_part(items).numpy()
    gate = expected_gate()
    assert gate[0] == gate[4] == 1.0 and np.ptp(gate[[1, 2, 3, 5]]) > 0.5
    np.testing.assert_allclose(item_tower.text_gate(items).numpy(), gate, rtol=1e-6)
    expected = gate[:, None] * text + ids
    # No ID dropout; in training cold items take the no-ID vector, as under sum (the fine-tuned BERT
    # drops out in training, so it is compared outside training only).
    modes = (False, True) if finetune == "frozen" else (False,)
    for training in modes:
        parts = gate[:, None] * text + item_tower.id_part(items, training=training).numpy()
        np.testing.assert_allclose(item_tower.representation(items, training=training).numpy(), parts, atol=1e-6)
    assert item_tower.text_gate(tf.constant([4, 0])).numpy().tolist() == [1.0, 1.0]  # exactly 1
    # Histories [B, H] and a traced call read the same vectors.
    np.testing.assert_allclose(item_tower.representation(tf.constant([[4, 1], [0, 5]])).numpy(),
                               expected[[[4, 1], [0, 5]]], atol=1e-6)
    graph = tf.function(lambda x: item_tower.representation(x, training=modes[-1]))(items).numpy()
    np.testing.assert_allclose(graph, parts, atol=1e-6)  # the last mode's
    if finetune == "frozen":
        # The cold item is exactly as under `sum`: its text plus its text neighbours' mix of IDs.
        np.testing.assert_allclose(ids[4], item_tower.cold_id_table().numpy()[4], atol=1e-6)
        plain = tower(fusion="sum")
        for mine, theirs in ((plain.projection.kernel, item_tower.projection.kernel),
                             (plain.projection.bias, item_tower.projection.bias)):
            mine.assign(theirs)
        np.testing.assert_allclose(item_tower.representation(tf.constant([4, 0])).numpy(),
                                   plain.representation(tf.constant([4, 0])).numpy(), atol=1e-6)
        np.testing.assert_allclose(item_tower.representation(tf.constant([5])).numpy()[0],
                                   plain.text_part(tf.constant([5])).numpy()[0] * gate[5]
                                   + plain.id_part(tf.constant([5])).numpy()[0], atol=1e-6)


def test_an_item_without_interactions_and_an_id_dropped_item_keep_g_1():
    # --cold-items id: every item is warm; one with no interactions (item 4) has no gate.
    all_warm = ItemTower(BertTextEncoder(tiny_bert(VOCAB, seed=4), finetune="frozen"), rows(), embedding_dim=8,
                         dropout=0.0, item_counts=COUNTS, fusion="gated")
    all_warm(tf.constant([1]))
    all_warm.fusion_gate_a.assign(A)
    all_warm.fusion_gate_b.assign(B)
    np.testing.assert_allclose(all_warm.text_gate(tf.range(6)).numpy(),
                               expected_gate(warm=np.ones(6, bool)), rtol=1e-6)
    assert all_warm.text_gate(tf.constant([4])).numpy()[0] == 1.0
    # ID dropout: one draw decides both parts, a dropped item is its text plus the no-ID vector.
    dropping = tower(id_dropout=0.5)
    items = tf.constant([1, 2, 3, 5])
    text, ids = dropping.text_part(items).numpy(), dropping.id_part(items).numpy()
    no_id = dropping.no_id_embedding.numpy()
    gate = expected_gate()[[1, 2, 3, 5]]
    kept = text * gate[:, None] + ids
    dropped = text + no_id
    seen = set()
    tf.keras.utils.set_random_seed(3)
    for _ in range(20):
        got = dropping.representation(items, training=True).numpy()
        for row in range(4):
            if np.allclose(got[row], kept[row], atol=1e-6):
                seen.add("kept")
            else:
                np.testing.assert_allclose(got[row], dropped[row], atol=1e-6)
                seen.add("dropped")
    assert seen == {"kept", "dropped"}


def test_a_and_b_get_the_gradient_of_the_gate_and_learn_in_training(synthetic, encoder_factory, tmp_path):
    from tfrec_lm.fitting import make_optimizer
    from tfrec_lm.training import train

    item_tower = tower()
    trainable = {id(w) for w in item_tower.trainable_weights}
    assert id(item_tower.fusion_gate_a) in trainable and id(item_tower.fusion_gate_b) in trainable
    assert id(item_tower.gate_log_counts) not in trainable
    direction = tf.random.stateless_normal([8], seed=[3, 4])
    items = tf.constant([1, 2, 5, 4])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(item_tower.representation(items, training=True) * direction)
    grad_a, grad_b = tape.gradient(loss, [item_tower.fusion_gate_a, item_tower.fusion_gate_b])
    # By hand: d/db = sum_i g_i (1 - g_i) text_i . v, d/da the same with log(1 + n_i); cold item 4 adds nothing.
    text = item_tower.text_part(items).numpy() @ direction.numpy()
    gate = expected_gate()[[1, 2, 5, 4]]
    slope = gate * (1 - gate) * text
    np.testing.assert_allclose(float(grad_b), slope.sum(), rtol=1e-4)
    np.testing.assert_allclose(float(grad_a), (slope * np.log1p(COUNTS[[1, 2, 5, 4]])).sum(), rtol=1e-4)
    assert abs(float(grad_a)) > 1e-4 and abs(float(grad_b)) > 1e-4 and slope[3] == 0.0
    # No weight decay pulls the gate toward 1/2.
    optimizer = make_optimizer(TrainConfig(), total_steps=10)
    assert not optimizer._use_weight_decay(item_tower.fusion_gate_a)
    assert not optimizer._use_weight_decay(item_tower.fusion_gate_b)
    assert optimizer._use_weight_decay(item_tower.projection.kernel)

    # A training run moves a and b from their start and records them.
    config = tiny_config(tmp_path, item_fusion="gated")
    result = train(config, dataset=synthetic, encoder_factory=encoder_factory)
    trained = result.model.item_tower
    a, b = float(trained.fusion_gate_a.numpy()), float(trained.fusion_gate_b.numpy())
    assert a != GATE_INITIAL_A and b != GATE_INITIAL_B
    counts = np.asarray(result.counts, np.float64)
    np.testing.assert_allclose(trained.gate_log_counts.numpy(),
                               np.where(trained.warm_items & (counts > 0), np.log1p(counts), 0.0), rtol=1e-6)
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())["fusion_gate"]
    assert recorded == pytest.approx({"a": a, "b": b, **{f"g_at_{n}": sigmoid(a * np.log1p(n) + b)
                                                         for n in (1, 10, 100)}}, rel=1e-5)


def test_a_grown_tower_keeps_a_and_b_and_gives_appended_items_g_1():
    source = tower()
    # The longer catalog's own data would give item 7 a gate: the grown table's new rows are 0 all the same.
    target = tower(warm_items=np.concatenate([WARM, [False, False]]), counts=np.concatenate([COUNTS, [0, 9]]),
                   num_items=8, gate=None)
    assert float(target.fusion_gate_a.numpy()) == GATE_INITIAL_A and float(target.fusion_gate_b.numpy()) == 4.0
    assert source.grow_into(target, encode_rows=[6, 7]) == 2
    assert (float(target.fusion_gate_a.numpy()), float(target.fusion_gate_b.numpy())) == pytest.approx((A, B))
    np.testing.assert_array_equal(target.gate_log_counts.numpy()[:6], source.gate_log_counts.numpy())
    assert target.gate_log_counts.numpy()[6:].tolist() == [0.0, 0.0]
    assert target.text_gate(tf.constant([6, 7])).numpy().tolist() == [1.0, 1.0]
    old = tf.range(6)
    np.testing.assert_allclose(target.representation(old).numpy(), source.representation(old).numpy(), atol=1e-6)
    new = tf.constant([6, 7])
    np.testing.assert_allclose(target.representation(new).numpy(),
                               target.text_part(new).numpy() + target.cold_id_table().numpy()[6:], atol=1e-6)


def test_the_config_and_the_tower_refuse_gated_without_text_or_ids():
    assert TrainConfig(item_fusion="gated").validate().item_fusion == "gated"
    TrainConfig(item_fusion="gated", finetune="full", negatives="in-batch").validate()  # any encoder
    TrainConfig(item_fusion="gated", cold_items="id", cold_neighbours=0).validate()
    for changes, flag in (({"item_text": False}, "--item-text"), ({"item_ids": False}, "--item-ids")):
        with pytest.raises(ConfigError) as error:
            TrainConfig(item_fusion="gated", **changes).validate()
        message = str(error.value)
        assert message.startswith("--item-fusion gated scales") and message.endswith(flag), message
        assert "\n" not in message and message.count(". ") == 0  # one sentence
    with pytest.raises(ConfigError, match="is not one of sum, balanced, evidence, gated"):
        TrainConfig.from_dict({"item_fusion": "blend"})
    from tfrec_lm.train import build_parser, config_from_args

    assert config_from_args(build_parser().parse_args(["--item-fusion", "gated"])).item_fusion == "gated"
    for kwargs, missing in (({"use_text": False}, "the item text"), ({"use_item_ids": False}, "item IDs"),
                            ({"item_counts": None}, "item_counts")):
        options = dict(fusion="gated", warm_items=WARM, item_counts=COUNTS)
        options.update(kwargs)
        with pytest.raises(ValueError, match=f"fusion 'gated' .* needs {missing}"):
            ItemTower(BertTextEncoder(tiny_bert(VOCAB, seed=4), finetune="frozen"), rows(), embedding_dim=8,
                      **options)


def test_a_checkpoint_carries_a_and_b_and_the_config_round_trips(tmp_path):
    saved = tiny_two_tower(tower())
    prefix = tf.train.Checkpoint(user_tower=saved.user_tower, item_tower=saved.item_tower,
                                 ranking_head=saved.ranking_head).write(str(tmp_path / "ckpt"))
    # A warm start's data: item 3 cold now, item 4 warm with 7 interactions.
    warm, counts = np.array([False, True, True, False, True, True]), np.array([0, 2, 6, 0, 7, 300])
    loading = tiny_two_tower(tower(warm_items=warm, counts=counts, gate=None))
    assert float(loading.item_tower.fusion_gate_b.numpy()) == GATE_INITIAL_B
    loading.load_towers(prefix)
    item_tower = loading.item_tower
    assert (float(item_tower.fusion_gate_a.numpy()), float(item_tower.fusion_gate_b.numpy())) == pytest.approx((A, B))
    # Its own counts, not the checkpoint's.
    np.testing.assert_allclose(item_tower.text_gate(tf.range(6)).numpy(), expected_gate(counts, warm), rtol=1e-6)
    # get_config / from_config: the fusion and the counts come back (the weights are the checkpoint's business).
    config = saved.item_tower.get_config()
    assert config["fusion"] == "gated"
    rebuilt = ItemTower.from_config(config)
    rebuilt(tf.constant([1]))
    assert rebuilt.fusion == "gated"
    np.testing.assert_array_equal(rebuilt.gate_log_counts.numpy(), saved.item_tower.gate_log_counts.numpy())
    assert (float(rebuilt.fusion_gate_a.numpy()), float(rebuilt.fusion_gate_b.numpy())) == (0.0, 4.0)
    assert rebuilt.fusion_gate() == pytest.approx({"a": 0.0, "b": 4.0, "g_at_1": sigmoid(4.0),
                                                   "g_at_10": sigmoid(4.0), "g_at_100": sigmoid(4.0)})


def test_a_gated_run_exports_and_a_catalog_update_serves_it_with_a_new_item(synthetic, encoder_factory,
                                                                                  tmp_path):
    """Through the export: the trained gate scales the served warm vectors, and an update appends a new
    item (its g = 1 is `test_a_grown_tower_keeps_a_and_b_and_gives_appended_items_g_1`'s), reloaded and
    asked through `serving_default`."""
    import pandas as pd

    from tfrec_lm.catalog.update import update_catalog
    from tfrec_lm.scann_ops import load_scann_ops
    from tfrec_lm.training import train

    config = tiny_config(tmp_path, item_fusion="gated", export=True, index="brute-force", top_k=5)
    result = train(config, dataset=synthetic, encoder_factory=encoder_factory)
    trained = result.model.item_tower
    new = pd.DataFrame([("new-a", "red sneakers 40", "sneakers")], columns=["item_id", "title", "genres"])
    new.to_csv(tmp_path / "new.csv", index=False)
    update = update_catalog(tmp_path / "run", items_path=tmp_path / "new.csv",
                            export_base=str(tmp_path / "updated"), encoder_factory=encoder_factory)
    load_scann_ops()
    exported = tf.saved_model.load(str(update.export_path))
    served = exported.item_embeddings.numpy()
    rows = len(synthetic.items) + 1
    assert served.shape[0] == rows + 1
    # Known items are served as trained: the checkpoint's gate, a and b included.
    everything = tf.range(trained.num_items)
    np.testing.assert_allclose(served[1:rows], trained(everything, training=False).numpy()[1:], atol=1e-5)
    gate = trained.text_gate(everything).numpy()
    warm = trained.warm_items & (np.asarray(result.counts) > 0)
    assert (gate[1:][warm[1:]] < 1.0).all() and np.allclose(gate[~warm], 1.0)
    answer = exported.signatures["serving_default"](
        history_item_ids=tf.constant([result.vocab.ids[1:4].astype(str).tolist()]),
        history_timestamps=tf.constant([[1, 2, 3]], tf.int64))
    assert answer["item_ids"].shape == (1, 5)
    assert np.isfinite(served[rows]).all() and np.linalg.norm(served[rows]) > 0
