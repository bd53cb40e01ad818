"""`--item-fusion evidence` (issue 30): each item's ID part shrunk toward its text neighbours' IDs.

The ID part of item i with n_i training interactions is `a_i * id_i + (1 - a_i) * mix_i`,
`a_i = n_i / (n_i + k)` (0 for a cold item), mix_i the count-weighted mix of the ID
embeddings of its `cold_neighbours` nearest warm items by frozen-text cosine, itself left
out; in training and outside it alike. The neighbour table is computed once from the text
cache (`ItemTower.refresh_evidence`).
"""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config, tiny_two_tower
from tfrec_lm.bert import tiny_bert
from tfrec_lm.config import TrainConfig, shape_conflicts
from tfrec_lm.errors import ConfigError
from tfrec_lm.layers.bert_text_encoder import BertTextEncoder
from tfrec_lm.models.item_tower import ItemTower

CLS, SEP, VOCAB = 2, 3, 64
WARM = np.array([False, True, True, True, False, True])  # item 4 is cold (row 0 is padding)
COUNTS = np.array([0, 1, 6, 2, 0, 4])
K = 3.0  # evidence_shrinkage
# Text vectors in two of the hidden coordinates: 1 and 2 read alike, 3 and 5 read alike, 4 (cold) like 1 and 2.
TEXT = {1: (1.0, 0.0), 2: (1.0, 0.1), 3: (0.0, 1.0), 4: (0.9, 0.3), 5: (0.1, 1.0)}
# By hand, with cold_neighbours 2 and cold_popularity 1: each item's two nearest warm items
# (cosine; itself left out) and their count weights, normalised; a_i = n_i / (n_i + 3).
#   1: cos(1,2) .995, cos(1,5) .0995, cos(1,3) 0     -> 2 and 5, counts 6 and 4
#   2: cos(2,1) .995, cos(2,5) .198, cos(2,3) .0995  -> 1 and 5, counts 1 and 4
#   3: cos(3,5) .995, cos(3,2) .0995, cos(3,1) 0     -> 5 and 2, counts 4 and 6
#   4: cos(4,2) .975, cos(4,1) .949, cos(4,5) .409   -> 2 and 1, counts 6 and 1 (cold: a = 0)
#   5: cos(5,3) .995, cos(5,2) .198, cos(5,1) .0995  -> 3 and 2, counts 2 and 6
MIX = {1: {2: 0.6, 5: 0.4}, 2: {1: 0.2, 5: 0.8}, 3: {5: 0.4, 2: 0.6}, 4: {2: 6 / 7, 1: 1 / 7}, 5: {3: 0.25, 2: 0.75}}
ALPHA = {1: 1 / 4, 2: 6 / 9, 3: 2 / 5, 4: 0.0, 5: 4 / 7}


def rows(num_items=len(WARM)):
    table = np.zeros([num_items, 5], np.int32)
    for item in range(1, num_items):
        table[item, :4] = [CLS, 10 + item, 20 + item, SEP]
    return table


def text_table(hidden):
    table = np.zeros([len(WARM), hidden], np.float32)
    for item, (x, y) in TEXT.items():
        table[item, :2] = x, y
    return table


def tower(warm_items=WARM, counts=COUNTS, id_lr_multiplier=1.0, **kwargs):
    """The evidence tower of the hand-computed example, its ID embeddings random, its table refreshed."""
    options = dict(fusion="evidence", cold_neighbours=2, cold_popularity=1.0, evidence_shrinkage=K)
    options.update(kwargs)
    item_tower = ItemTower(BertTextEncoder(tiny_bert(VOCAB, seed=4), finetune="frozen"), rows(len(warm_items)),
                           embedding_dim=8, dropout=0.0, warm_items=warm_items, item_counts=counts,
                           id_lr_multiplier=id_lr_multiplier, **options)
    item_tower.refresh_cache()
    item_tower(tf.constant([1]))
    item_tower.text_cache.assign(text_table(item_tower.encoder.hidden_size))
    item_tower.refresh_evidence()
    item_tower.id_embedding.embeddings.assign(tf.random.stateless_normal([len(warm_items), 8], seed=[1, 2]))
    return item_tower


def expected_id_part(item_tower, multiplier=1.0):
    """[C+1, 8] a_i id_i + (1 - a_i) mix_i from the hand-computed tables."""
    ids = item_tower.id_embedding.embeddings.numpy() * multiplier
    out = np.zeros_like(ids)
    for item in TEXT:
        mix = sum(weight * ids[neighbour] for neighbour, weight in MIX[item].items())
        out[item] = ALPHA[item] * ids[item] + (1 - ALPHA[item]) * mix
    return out


@pytest.mark.parametrize("multiplier", [1.0, 3.0])
def test_the_id_part_is_shrunk_toward_the_text_neighbours_by_the_evidence(multiplier):
    item_tower = tower(id_lr_multiplier=multiplier)
    table = item_tower.evidence_neighbours.numpy()
    for item, mix in MIX.items():
        assert table[item].tolist() == list(mix), item  # nearest first
        np.testing.assert_allclose(item_tower.evidence_weights.numpy()[item], list(mix.values()), rtol=1e-6)
    items = tf.range(len(WARM))
    expected = expected_id_part(item_tower, multiplier)
    for training in (False, True):
        got = item_tower.id_part(items, training=training).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-6)
    # A cold item's ID part is exactly today's cold path: its `cold_id_table` row (the mix alone).
    np.testing.assert_allclose(expected[4], item_tower.cold_id_table().numpy()[4], atol=1e-6)
    # Representations add the text part; histories [B, H] and a traced call read the same vectors.
    text = item_tower.text_part(items).numpy()
    np.testing.assert_allclose(item_tower.representation(items, training=True).numpy(), text + expected, atol=1e-6)
    np.testing.assert_allclose(item_tower.representation(tf.constant([[4, 1], [0, 5]])).numpy(),
                               (text + expected)[[[4, 1], [0, 5]]], atol=1e-6)
    graph = tf.function(lambda x: item_tower.id_part(x, training=True))(items).numpy()
    np.testing.assert_allclose(graph, expected, atol=1e-6)
    # Item ID dropout represents a dropped warm item as a cold one: the mix alone.
    dropping = tower(id_dropout=0.5)
    tf.keras.utils.set_random_seed(3)
    got = dropping.id_part(items, training=True).numpy()
    uses = dropping.uses_id(items, training=False).numpy()
    ids = dropping.id_embedding.embeddings.numpy()
    mixes = {item: sum(w * ids[j] for j, w in MIX[item].items()) for item in TEXT}
    for item in TEXT:
        assert (np.allclose(got[item], mixes[item], atol=1e-6)
                or np.allclose(got[item], expected_id_part(dropping)[item], atol=1e-6)), item
    assert uses.tolist() == WARM.tolist()
    np.testing.assert_allclose(dropping.id_part(items).numpy(), expected_id_part(dropping), atol=1e-6)


def test_gradients_reach_the_own_id_scaled_by_a_and_the_neighbours_ids():
    item_tower = tower()
    direction = tf.random.stateless_normal([8], seed=[3, 4])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(item_tower.id_part(tf.constant([1]), training=True) * direction)
    gradient = tf.convert_to_tensor(tape.gradient(loss, item_tower.id_embedding.embeddings)).numpy()
    v = direction.numpy()
    np.testing.assert_allclose(gradient[1], ALPHA[1] * v, atol=1e-6)  # the rare item's own ID: a = 1/4 of it
    for neighbour, weight in MIX[1].items():  # its neighbours 2 and 5 take the rest
        np.testing.assert_allclose(gradient[neighbour], (1 - ALPHA[1]) * weight * v, atol=1e-6)
    assert not gradient[[0, 3, 4]].any()
    # The tables and the no-ID vector (which evidence never reads) do not train.
    trainable = {id(w) for w in item_tower.trainable_weights}
    for weight in (item_tower.evidence_neighbours, item_tower.evidence_weights, item_tower.no_id_embedding):
        assert id(weight) not in trainable
    # The same step under `sum`: the whole gradient on the item's own ID.
    plain = ItemTower(BertTextEncoder(tiny_bert(VOCAB, seed=4), finetune="frozen"), rows(), embedding_dim=8,
                      dropout=0.0, warm_items=WARM, item_counts=COUNTS, cold_neighbours=2)
    plain(tf.constant([1]))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(plain.id_part(tf.constant([1]), training=True) * direction)
    np.testing.assert_allclose(tf.convert_to_tensor(tape.gradient(loss, plain.id_embedding.embeddings)).numpy()[1],
                               v, atol=1e-6)


def test_the_neighbour_table_is_computed_in_chunks_and_a_lone_warm_item_keeps_its_id():
    item_tower = tower()
    whole = item_tower.evidence_neighbours.numpy(), item_tower.evidence_weights.numpy()
    for chunk in (1, 2, 4):
        item_tower.refresh_evidence(chunk_rows=chunk)
        np.testing.assert_array_equal(item_tower.evidence_neighbours.numpy(), whole[0])
        np.testing.assert_array_equal(item_tower.evidence_weights.numpy(), whole[1])
    # One warm item: its only neighbour would be itself; its mix is its own ID (a lone item keeps it).
    lone = tower(warm_items=np.array([False, True, False, False, False, False]), counts=np.array([0, 2, 0, 0, 0, 0]))
    ids = lone.id_embedding.embeddings.numpy()
    got = lone.id_part(tf.range(6), training=True).numpy()
    np.testing.assert_allclose(got[1], ids[1], atol=1e-6)
    np.testing.assert_allclose(got[2:], np.tile(ids[1], (4, 1)), atol=1e-6)  # cold items: the lone warm item


def test_a_grown_tower_and_a_loaded_checkpoint_get_their_own_table(tmp_path):
    """A catalog update's new rows get neighbours (never copied from the old table); a checkpoint
    of another run's warm items and counts is loaded with the table of this model's."""
    item_tower = tower()
    grown = ItemTower(BertTextEncoder(tiny_bert(VOCAB, seed=4), finetune="frozen"), rows(8), embedding_dim=8,
                      dropout=0.0, warm_items=np.concatenate([WARM, [False, False]]),
                      item_counts=np.concatenate([COUNTS, [0, 0]]), fusion="evidence", cold_neighbours=2,
                      cold_popularity=1.0, evidence_shrinkage=K)
    grown(tf.constant([1]))
    assert item_tower.grow_into(grown, encode_rows=[6, 7]) == 2
    np.testing.assert_array_equal(grown.evidence_neighbours.numpy()[:6], item_tower.evidence_neighbours.numpy())
    assert set(grown.evidence_neighbours.numpy()[6:].ravel()) <= {1, 2, 3, 5}  # new (cold) items: warm neighbours
    np.testing.assert_allclose(grown.evidence_weights.numpy()[6:].sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(grown.id_part(tf.range(6)).numpy(), item_tower.id_part(tf.range(6)).numpy(), atol=1e-6)
    np.testing.assert_allclose(grown.id_part(tf.constant([6]), training=True).numpy()[0],
                               grown.cold_id_table().numpy()[6], atol=1e-6)

    saved = tiny_two_tower(item_tower)
    prefix = tf.train.Checkpoint(user_tower=saved.user_tower, item_tower=saved.item_tower,
                                 ranking_head=saved.ranking_head).write(str(tmp_path / "ckpt"))
    # The refresh's data: item 3 is cold now, item 4 warm (counts 5).
    other = tower(warm_items=np.array([False, True, True, False, True, True]), counts=np.array([0, 1, 6, 0, 5, 4]))
    own = other.evidence_neighbours.numpy().copy()
    assert not np.array_equal(own, item_tower.evidence_neighbours.numpy())
    other.text_cache.assign(np.zeros_like(other.text_cache.numpy()))  # the checkpoint brings the cache back
    loading = tiny_two_tower(other)
    loading.load_towers(prefix)
    np.testing.assert_array_equal(other.text_cache.numpy(), item_tower.text_cache.numpy())
    np.testing.assert_array_equal(other.evidence_neighbours.numpy(), own)


def test_the_tower_refuses_what_evidence_cannot_run():
    def build(**kwargs):
        options = dict(fusion="evidence", warm_items=WARM, item_counts=COUNTS, cold_neighbours=2)
        options.update(kwargs)
        finetune = options.pop("finetune", "frozen")
        return ItemTower(BertTextEncoder(tiny_bert(VOCAB, seed=4), finetune=finetune), rows(), embedding_dim=8,
                         **options)

    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="evidence_shrinkage must be > 0"):
            build(evidence_shrinkage=bad)
    for kwargs, missing in (({"finetune": "full"}, "a frozen encoder"), ({"use_text": False}, "the item text"),
                            ({"use_item_ids": False}, "item IDs"), ({"warm_items": None}, "warm_items"),
                            ({"item_counts": None}, "item_counts"), ({"cold_neighbours": 0}, "cold_neighbours >= 1"),
                            ({"warm_items": np.zeros(6, bool)}, "a warm item")):
        with pytest.raises(ValueError, match=f"fusion 'evidence' .* needs .*{missing}"):
            build(**kwargs)


def test_config_validation_refuses_a_bad_k_and_what_evidence_cannot_run():
    assert TrainConfig(item_fusion="evidence").validate().evidence_shrinkage == 10.0
    for bad in (0.0, -2.0):
        with pytest.raises(ConfigError, match=r"^evidence_shrinkage must be > 0, got"):
            TrainConfig(evidence_shrinkage=bad).validate()
    cases = [({"finetune": "full", "negatives": "in-batch"}, "--finetune frozen"),
             ({"item_text": False}, "--item-text"), ({"item_ids": False}, "--item-ids"),
             ({"cold_items": "id"}, "--cold-items text"), ({"cold_neighbours": 0}, "--cold-neighbours >= 1")]
    for changes, flag in cases:
        with pytest.raises(ConfigError) as error:
            TrainConfig(item_fusion="evidence", **changes).validate()
        message = str(error.value)
        assert message.startswith("--item-fusion evidence shrinks") and message.endswith(flag), message
        assert "\n" not in message and message.count(". ") == 0  # one sentence
    with pytest.raises(ConfigError, match="item_fusion='blend' is not one of sum, balanced, evidence"):
        TrainConfig.from_dict({"item_fusion": "blend"})
    # Under evidence --cold-neighbours sets the width of a checkpoint's table: a refresh must keep it.
    run = TrainConfig(item_fusion="evidence").to_dict()
    assert shape_conflicts(TrainConfig(item_fusion="evidence", cold_neighbours=3), run) == [
        "--cold-neighbours 3 (the run: 5)"]
    assert shape_conflicts(TrainConfig(cold_neighbours=3), TrainConfig().to_dict()) == []


def test_the_train_cli_takes_the_fusion_and_its_k(tmp_path):
    from tfrec_lm.train import build_parser, config_from_args

    args = build_parser().parse_args(["--item-fusion", "evidence", "--evidence-shrinkage", "4.5",
                                      "--output-dir", str(tmp_path / "run")])
    config = config_from_args(args)
    assert (config.item_fusion, config.evidence_shrinkage) == ("evidence", 4.5)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--item-fusion", "blend"])


def test_training_with_evidence_fusion_exports_a_working_model(synthetic, encoder_factory, tmp_path):
    from tfrec_lm.scann_ops import load_scann_ops
    from tfrec_lm.training import train

    config = tiny_config(tmp_path, item_fusion="evidence", evidence_shrinkage=5.0, export=True)
    result = train(config, dataset=synthetic, encoder_factory=encoder_factory)
    tower = result.model.item_tower
    assert tower.fusion == "evidence" and tower.evidence_shrinkage == 5.0
    np.testing.assert_array_equal(tower.item_counts, result.counts)
    neighbours = tower.evidence_neighbours.numpy()[1:]
    assert tower.warm_items[neighbours].all() and (neighbours != np.arange(1, tower.num_items)[:, None]).all()
    np.testing.assert_allclose(tower.evidence_weights.numpy()[1:].sum(axis=1), 1.0, rtol=1e-5)
    assert result.metrics["model"]["all"]["NDCG@10"] >= 0 and result.export_path is not None
    load_scann_ops()
    serve = tf.saved_model.load(str(result.export_path)).signatures["serving_default"]
    history = result.vocab.ids[1:4].astype(str)
    answer = serve(history_item_ids=tf.constant([history.tolist()]),
                   history_timestamps=tf.constant([[1, 2, 3]], tf.int64))
    assert answer["item_ids"].shape == (1, config.top_k)
    served = {item.decode() for item in answer["item_ids"].numpy()[0]}
    assert served <= set(result.vocab.ids[1:].astype(str)) and not served & set(history)


def test_a_catalog_update_gives_new_items_neighbours_and_may_change_their_number(synthetic, encoder_factory,
                                                                                 tmp_path):
    """The update grows the trained tower (its table recomputed, not copied); `--cold-neighbours`
    may differ from the run's, although it sets the width of the run's checkpointed table."""
    import pandas as pd

    from tfrec_lm.catalog.update import update_catalog
    from tfrec_lm.training import train

    config = tiny_config(tmp_path, item_fusion="evidence", export=True, index="brute-force", top_k=5)
    train(config, dataset=synthetic, encoder_factory=encoder_factory)
    new = pd.DataFrame([("new-a", "red sneakers 40", "sneakers"), ("new-b", "blue novels 41", "novels")],
                       columns=["item_id", "title", "genres"])
    new.to_csv(tmp_path / "new.csv", index=False)
    embeddings = {}
    for neighbours in (None, 3):
        update = update_catalog(tmp_path / "run", items_path=tmp_path / "new.csv",
                                export_base=str(tmp_path / f"exports-{neighbours}"), encoder_factory=encoder_factory,
                                cold_neighbours=neighbours)
        assert update.encoded == 2 and update.num_items == len(synthetic.items) + 2
        embeddings[neighbours] = tf.saved_model.load(str(update.export_path)).item_embeddings.numpy()
    assert np.isfinite(embeddings[3]).all()
    rows = len(synthetic.items) + 1
    assert np.abs(embeddings[None][rows:] - embeddings[3][rows:]).max() > 1e-4  # five (the run's) vs three neighbours
