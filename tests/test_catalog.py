"""Catalog updates without retraining (`tfrec_lm.catalog`, issue 12).

A tiny model is trained (two catalog items get no interactions: cold at training) and
exported; then updates add items by their text, change a text, retire items, and each
writes the next export version. Checked: what is encoded (only new or changed texts), that
trained rows are carried over unchanged, that new ids work in a request's history and as
`rank` candidates, that retired items never come back, that a fresh process loads the
version and that a running server hot-swaps to it, that updates chain, that no training
step runs, and that bad input stops with a clear error (exit code 2 from the CLI).
"""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import dataclasses
import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import requests
import tensorflow as tf

from conftest import tiny_config
from tfrec_lm.catalog.__main__ import main as catalog_main
from tfrec_lm.catalog.table import read_catalog
from tfrec_lm.registry.layout import CATALOG_FILE, EXPORT_CATALOG_FILE
from tfrec_lm.catalog.update import STAGES, update_catalog
from tfrec_lm.errors import ConfigError, DataError
from tfrec_lm.serving_module import LOWEST_SCORE
from tfrec_lm.training import train

COLD = ("sne0", "nov0")  # no training interactions; in the catalog with their texts


@pytest.fixture(scope="module")
def trained(synthetic, encoder_factory, tmp_path_factory):
    """A tiny run with cold items, exported as version 1 (brute force, K = 5)."""
    root = tmp_path_factory.mktemp("catalog_run")
    kept = synthetic.interactions[~synthetic.interactions["item_id"].isin(COLD)].reset_index(drop=True)
    data = dataclasses.replace(synthetic, interactions=kept)
    assert set(COLD) <= set(data.items["item_id"])
    config = tiny_config(root, export=True, index="brute-force", top_k=5, epochs=2, dropout=0.0)
    result = train(config, dataset=data, encoder_factory=encoder_factory)
    return {"config": config, "result": result, "run": root / "run", "base": root / "exports"}


def items_file(path, rows):
    pd.DataFrame(rows, columns=["item_id", "title", "genres"]).to_csv(path, index=False)
    return path


def signature(version_dir, name="serving_default"):
    return tf.saved_model.load(str(version_dir)).signatures[name]


def test_training_keeps_its_catalog_beside_the_checkpoint(trained):
    catalog = read_catalog(trained["run"] / CATALOG_FILE)
    vocab = trained["result"].vocab
    assert catalog["item_id"].tolist() == vocab.ids[1:].tolist()
    assert not catalog.set_index("item_id").loc[list(COLD), "warm"].any()
    assert catalog["warm"].sum() == len(catalog) - len(COLD)
    assert (catalog["count"].to_numpy() == trained["result"].counts[1:]).all()
    assert (trained["result"].export_path / "assets.extra" / EXPORT_CATALOG_FILE).is_file()


def test_the_update_encodes_with_the_checkpoints_encoder_weights(trained, tokenizer, encoder_factory, tmp_path):
    """The update builds its encoder from random weights: the run's checkpoint must fill every one."""
    from tfrec_lm.bert import tiny_bert

    path = items_file(tmp_path / "items.csv", [("new-a", "red sneakers 40", "sneakers"),
                                               ("new-b", "blue novels 41", "novels")])
    calls = []

    def other_weights():  # the same architecture as training's encoder, other random weights
        calls.append(None)
        return tiny_bert(tokenizer.vocab_size, seed=7), tokenizer

    reference = update_catalog(trained["run"], items_path=path, export_base=str(tmp_path / "a"),
                               encoder_factory=encoder_factory)
    update = update_catalog(trained["run"], items_path=path, export_base=str(tmp_path / "b"),
                            encoder_factory=other_weights)
    assert len(calls) == 1  # the trained model's encoder is built once and the grown model shares it
    assert not np.allclose(tiny_bert(tokenizer.vocab_size, seed=7).get_weights()[0],
                           encoder_factory()[0].get_weights()[0])
    expected = tf.saved_model.load(str(reference.export_path)).item_embeddings.numpy()
    got = tf.saved_model.load(str(update.export_path)).item_embeddings.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)  # the new items' text vectors included


def test_add_change_retire_writes_the_next_version(trained, encoder_factory, tmp_path, monkeypatch):
    base = tmp_path / "exports"
    catalog = read_catalog(trained["run"] / CATALOG_FILE)
    changed_id, retired_id = catalog["item_id"].iloc[5], catalog["item_id"].iloc[9]
    path = items_file(tmp_path / "items.csv", [
        ("new-a", "red sneakers 40", "sneakers"),
        ("new-b", "blue novels 41", "novels"),
        (changed_id, "green cameras 99", "cameras"),
        (catalog["item_id"].iloc[1], catalog["title"].iloc[1], "|".join(catalog["genres"].iloc[1])),  # unchanged
    ])

    def no_training(*args, **kwargs):
        raise AssertionError("a catalog update must not train")

    monkeypatch.setattr(tf.keras.Model, "fit", no_training)
    monkeypatch.setattr(tf.keras.Model, "train_step", no_training)
    update = update_catalog(trained["run"], items_path=path, retire=[retired_id], export_base=str(base),
                            encoder_factory=encoder_factory)
    assert update.changes.added == ["new-a", "new-b"] and update.changes.changed == [changed_id]
    assert update.changes.retired == [retired_id] and len(update.changes.unchanged) == 1
    assert update.encoded == 3  # two new texts and one changed text: nothing else runs through BERT
    assert update.export_path == base / trained["config"].model_name / "1"
    assert update.num_items == len(catalog) + 2 and update.num_servable == len(catalog) + 1

    old = tf.saved_model.load(str(trained["result"].export_path))
    new = tf.saved_model.load(str(update.export_path))
    old_vectors, new_vectors = old.item_embeddings.numpy(), new.item_embeddings.numpy()
    rows = len(old_vectors)
    same = np.concatenate([[True], catalog["warm"].to_numpy(bool)])  # cold rows follow their text neighbours
    same[[5 + 1]] = False  # the changed item (vocabulary index = catalog row + 1)
    np.testing.assert_allclose(new_vectors[:rows][same], old_vectors[same], atol=1e-6)
    assert not np.allclose(new_vectors[6], old_vectors[6])
    assert np.linalg.norm(new_vectors[rows:], axis=1).min() > 0.5  # the new items have real vectors
    assert not np.allclose(new_vectors[rows], new_vectors[rows + 1])

    # A new id in a request's history is known; as a candidate it scores like any item.
    history = tf.constant([["", "new-a", catalog["item_id"].iloc[2]]])
    stamps = tf.constant([[0, 1_600_000_000, 1_600_000_100]], tf.int64)
    old_users = old.signatures["rank"](history_item_ids=history, history_timestamps=stamps,
                                       candidate_item_ids=tf.constant([["new-b", retired_id, "nope"]]))["scores"]
    new_users = new.signatures["rank"](history_item_ids=history, history_timestamps=stamps,
                                       candidate_item_ids=tf.constant([["new-b", retired_id, "nope"]]))["scores"]
    assert old_users.numpy()[0, 0] == LOWEST_SCORE  # unknown before the update
    scores = new_users.numpy()[0]
    assert np.isfinite(scores[0]) and scores[0] > LOWEST_SCORE and scores[1:].tolist() == [LOWEST_SCORE] * 2
    # The retired item never comes back, whatever the history.
    ids = catalog["item_id"].to_numpy()
    histories = tf.constant([["", ids[i], ids[(i + 7) % len(ids)]] for i in range(len(ids))])
    top = new.signatures["serving_default"](history_item_ids=histories,
                                            history_timestamps=tf.zeros(histories.shape, tf.int64))["item_ids"]
    top = top.numpy().astype(str)
    assert retired_id not in top and "new-a" not in top[:1]
    assert (top != "").all()


def test_updates_chain_and_a_fresh_process_serves_them(trained, encoder_factory, tmp_path):
    base = tmp_path / "exports"
    first = update_catalog(trained["run"], items_path=items_file(tmp_path / "a.csv", [("new-a", "red sneakers 40", "sneakers")]),
                           export_base=str(base), encoder_factory=encoder_factory)
    second = update_catalog(trained["run"], retire=["new-a", COLD[0]], export_base=str(base),
                            encoder_factory=encoder_factory)
    assert first.base == "run" and second.base == "version 1"
    assert second.export_path.name == "2" and second.changes.retired == ["new-a", COLD[0]]
    assert second.encoded == 0 and second.reused == 1  # new-a's vector is version 1's: nothing is encoded
    catalog = read_catalog(second.export_path / "assets.extra" / EXPORT_CATALOG_FILE)
    assert catalog.set_index("item_id").loc[["new-a", COLD[0]], "retired"].all()
    metadata = json.loads((second.export_path / "assets.extra" / "tfrec_lm.json").read_text())
    assert metadata["catalog_update"]["retired"] == ["new-a", COLD[0]]
    script = (
        "import tensorflow as tf, json, sys\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "h = tf.constant([['', 'new-a', 'sne1']]); t = tf.zeros([1, 3], tf.int64)\n"
        "out = m.signatures['serving_default'](history_item_ids=h, history_timestamps=t)\n"
        "r = m.signatures['rank'](history_item_ids=h, history_timestamps=t, candidate_item_ids=tf.constant([['new-a', 'nov0']]))\n"
        "print(json.dumps({'top': out['item_ids'].numpy().astype(str).tolist(), 'rank': r['scores'].numpy().tolist()}))\n"
    )
    answer = subprocess.run([sys.executable, "-c", script, str(second.export_path)], capture_output=True, text=True,
                            timeout=300)
    assert answer.returncode == 0, answer.stderr[-2000:]
    got = json.loads(answer.stdout.strip().splitlines()[-1])
    assert "new-a" not in got["top"][0] and COLD[0] not in got["top"][0] and len(got["top"][0]) == 5
    assert got["rank"][0][0] == LOWEST_SCORE and got["rank"][0][1] > LOWEST_SCORE  # retired; cold but live


def test_a_chained_update_encodes_only_texts_new_to_the_version_it_extends(trained, encoder_factory, tmp_path,
                                                                           monkeypatch):
    """Version 1's encoded texts travel in its assets.extra; version 2 reuses them and encodes only new-b."""
    from tfrec_lm.layers.bert_text_encoder import BertTextEncoder
    from tfrec_lm.registry.layout import EXPORT_TEXT_VECTORS_FILE

    base = tmp_path / "exports"
    first = update_catalog(trained["run"], items_path=items_file(tmp_path / "a.csv", [("new-a", "red sneakers 40", "sneakers")]),
                           export_base=str(base), encoder_factory=encoder_factory)
    stored = np.load(first.export_path / "assets.extra" / EXPORT_TEXT_VECTORS_FILE)
    texts = read_catalog(first.export_path / "assets.extra" / EXPORT_CATALOG_FILE).set_index("item_id")["text"]
    assert stored["item_ids"].tolist() == ["new-a"] and stored["texts"].tolist() == [texts["new-a"]]
    encoded_rows = []
    original = BertTextEncoder.encode_table
    monkeypatch.setattr(BertTextEncoder, "encode_table",
                        lambda self, rows, **kw: encoded_rows.append(len(rows)) or original(self, rows, **kw))
    second = update_catalog(trained["run"], items_path=items_file(tmp_path / "b.csv", [("new-b", "blue novel", "novels")]),
                            export_base=str(base), encoder_factory=encoder_factory)
    assert (second.encoded, second.reused, encoded_rows) == (1, 1, [1])  # new-b only
    again = np.load(second.export_path / "assets.extra" / EXPORT_TEXT_VECTORS_FILE)
    assert again["item_ids"].tolist() == ["new-a", "new-b"]
    np.testing.assert_array_equal(again["vectors"][0], stored["vectors"][0])
    h, t = tf.constant([["sne1", "nov1"]]), tf.zeros([1, 2], tf.int64)
    scores = [signature(v.export_path, "rank")(history_item_ids=h, history_timestamps=t,
                                               candidate_item_ids=tf.constant([["new-a"]]))["scores"].numpy()
              for v in (first, second)]
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-6)  # new-a is the same vector in both versions
    third = update_catalog(trained["run"], items_path=items_file(tmp_path / "c.csv", [("new-a", "green boots", "boots")]),
                           export_base=str(base), encoder_factory=encoder_factory)
    assert (third.encoded, third.reused, encoded_rows) == (1, 1, [1, 1])  # a changed text is encoded again


def test_a_running_server_hot_swaps_to_the_update(trained, encoder_factory, tmp_path):
    import shutil

    from tfrec_lm.serve.manager import ModelConfig
    from tfrec_lm.serve.server import LocalServer, ServerOptions

    base = tmp_path / "exports"
    model_dir = base / trained["config"].model_name
    model_dir.mkdir(parents=True)
    shutil.copytree(trained["result"].export_path, model_dir / "1")
    body = json.dumps({"inputs": {"history_item_ids": [["", "new-a"]], "history_timestamps": [[0, 0]],
                                  "candidate_item_ids": [["new-a", "sne1"]]}})
    options = ServerOptions(grpc_port=0, rest_api_port=0, file_system_poll_wait_seconds=0.2,
                            load_retry_interval_micros=100_000)
    with LocalServer([ModelConfig(trained["config"].model_name, str(model_dir))], options) as server:
        url = f"{server.rest_url}/v1/models/{trained['config'].model_name}"
        before = requests.post(url + ":predict", data=body.replace('"inputs"', '"signature_name": "rank", "inputs"'),
                               headers={"Content-Type": "application/json"}, timeout=60).json()
        update = update_catalog(trained["run"], items_path=items_file(tmp_path / "a.csv", [("new-a", "red sneakers 40", "sneakers")]),
                                export_base=str(base), encoder_factory=encoder_factory)
        assert update.export_path == model_dir / "2"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = {s["version"]: s["state"] for s in requests.get(url, timeout=30).json()["model_version_status"]}
            if states.get("2") == "AVAILABLE":
                break
            time.sleep(0.2)
        after = requests.post(url + ":predict", data=body.replace('"inputs"', '"signature_name": "rank", "inputs"'),
                              headers={"Content-Type": "application/json"}, timeout=60).json()
    assert states.get("2") == "AVAILABLE", states
    assert before["outputs"]["scores"][0][0] == LOWEST_SCORE  # version 1 does not know new-a
    assert after["outputs"]["scores"][0][0] > LOWEST_SCORE


@pytest.mark.parametrize("case,error,match", [
    ("nothing", ConfigError, "nothing to update"),
    ("missing items file", DataError, "does not exist|not found|No such file"),
    ("bad row", DataError, "line 3"),
    ("retire unknown", DataError, "does not have: 'no-such-item'"),
    ("retire and list", DataError, "both retired and listed"),
    ("retire everything", DataError, "retires every item"),
    ("not a run", ConfigError, "not a finished training run"),
])
def test_bad_input_stops_with_a_clear_error(trained, encoder_factory, tmp_path, case, error, match):
    catalog = read_catalog(trained["run"] / CATALOG_FILE)
    run, items, retire = trained["run"], None, []
    if case == "missing items file":
        items = tmp_path / "missing.csv"
    elif case == "bad row":
        items = tmp_path / "bad.csv"
        items.write_text("item_id,title,genres\nnew-a,red sneakers,sneakers\n,no id here,sneakers\n")
    elif case == "retire unknown":
        retire = ["no-such-item"]
    elif case == "retire and list":
        items, retire = items_file(tmp_path / "a.csv", [("new-a", "red sneakers", "sneakers")]), ["new-a"]
    elif case == "retire everything":
        retire = catalog["item_id"].tolist()
    elif case == "not a run":
        run = tmp_path
    with pytest.raises(error, match=match):
        update_catalog(run, items_path=items, retire=retire, export_base=str(tmp_path / "exports"),
                       encoder_factory=encoder_factory)
    assert not (tmp_path / "exports").exists()  # nothing half-written


def test_new_items_take_after_their_text_neighbours_and_the_update_can_turn_it_off(trained, encoder_factory,
                                                                                     tmp_path):
    rows = [("new-a", "red sneakers 40", "sneakers"), ("new-b", "blue novels 41", "novels")]
    imputed = update_catalog(trained["run"], items_path=items_file(tmp_path / "a.csv", rows),
                             export_base=str(tmp_path / "a"), encoder_factory=encoder_factory)
    plain = update_catalog(trained["run"], items_path=items_file(tmp_path / "b.csv", rows),
                           export_base=str(tmp_path / "b"), encoder_factory=encoder_factory, cold_neighbours=0)
    assert trained["config"].cold_neighbours > 0
    metadata = json.loads((plain.export_path / "assets.extra" / "tfrec_lm.json").read_text())
    assert metadata["config"]["cold_neighbours"] == 0
    with_mix = tf.saved_model.load(str(imputed.export_path)).item_embeddings.numpy()
    without = tf.saved_model.load(str(plain.export_path)).item_embeddings.numpy()
    catalog = read_catalog(trained["run"] / CATALOG_FILE)
    warm = np.concatenate([[False], catalog["warm"].to_numpy(bool)])
    rows_before = len(warm)
    np.testing.assert_allclose(with_mix[:rows_before][warm], without[:rows_before][warm], atol=1e-6)
    cold = np.concatenate([np.flatnonzero(~warm)[1:], np.arange(rows_before, len(with_mix))])
    assert len(cold) == len(COLD) + 2
    assert np.abs(with_mix[cold] - without[cold]).max(axis=1).min() > 1e-3  # every cold item moved
    assert catalog_main(["--run", str(trained["run"]), "--retire", COLD[0], "--cold-neighbours", "-1",
                         "--export-base", str(tmp_path / "c")]) == 2
    assert not (tmp_path / "c").exists()


def test_the_neighbour_table_is_computed_once_and_the_deferral_changes_nothing_published(trained, encoder_factory,
                                                                                          tmp_path, monkeypatch):
    """The two models an update builds serve a zero cold-ID table until the grown one is filled."""
    from tfrec_lm.models.item_tower import ItemTower

    rows = [("new-a", "red sneakers 40", "sneakers"), ("new-b", "blue novels 41", "novels")]
    path = items_file(tmp_path / "a.csv", rows)
    calls = []
    table = ItemTower.cold_id_table
    monkeypatch.setattr(ItemTower, "cold_id_table", lambda self, *a, **k: calls.append(self) or table(self, *a, **k))
    deferred = update_catalog(trained["run"], items_path=path, export_base=str(tmp_path / "a"),
                              encoder_factory=encoder_factory)
    assert len(calls) == 1  # the grown model's, by `freeze_cold_ids`
    monkeypatch.setattr(ItemTower, "defer_cold_ids", lambda self: None)  # every inference call computes it again
    reference = update_catalog(trained["run"], items_path=path, export_base=str(tmp_path / "b"),
                               encoder_factory=encoder_factory)
    assert len(calls) > 2
    np.testing.assert_array_equal(tf.saved_model.load(str(deferred.export_path)).item_embeddings.numpy(),
                                  tf.saved_model.load(str(reference.export_path)).item_embeddings.numpy())


def test_cli_reports_errors_with_exit_code_2(trained, tmp_path, capsys):
    assert catalog_main(["--run", str(trained["run"]), "--retire", "no-such-item",
                         "--export-base", str(tmp_path / "exports")]) == 2
    assert "does not have: 'no-such-item'" in capsys.readouterr().err
    (tmp_path / "gone.txt").write_text("# retired today\nno-such-item\n\n")
    assert catalog_main(["--run", str(trained["run"]), "--retire-file", str(tmp_path / "gone.txt"),
                         "--export-base", str(tmp_path / "exports")]) == 2
    assert catalog_main(["--run", str(trained["run"]), "--retire-file", str(tmp_path / "absent.txt")]) == 2
    assert "cannot read --retire-file" in capsys.readouterr().err


def test_a_run_without_its_checkpoint_is_refused(trained, encoder_factory, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run, ignore=shutil.ignore_patterns("checkpoints"))
    with pytest.raises(ConfigError, match="--run: no checkpoint at"):
        update_catalog(run, retire=[COLD[0]], export_base=str(tmp_path / "exports"), encoder_factory=encoder_factory)


# ---------------------------------------------------------------- fold-in from an interaction log (issue 29)

T0 = 1_600_000_000


def fold_in_log(path, catalog_ids):
    """A log: new-a taken by two users with histories and one without; two items outside the catalog;
    three rows on warm items (out of the default scope). `catalog_ids`: warm item ids."""
    c = catalog_ids
    rows = [("u1", c[0], T0 + 100), ("u1", c[1], T0 + 200), ("u1", "new-a", T0 + 300),
            ("u2", c[2], T0 + 100), ("u2", "new-a", T0 + 250), ("u2", "outside-1", T0 + 260),
            ("u2", "outside-2", T0 + 270), ("u3", "new-a", T0 + 50)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(path, index=False)
    return path, [([c[0], c[1]], [T0 + 100, T0 + 200]), ([c[2]], [T0 + 100])]


def queries_through_rank(export_path, histories):
    """Each history's user vector, recovered from the export's `rank` scores over every item
    (scores = V u with V the served item vectors: least squares, exact when V has full column rank)."""
    module = tf.saved_model.load(str(export_path))
    vectors = module.item_embeddings.numpy()
    ids = np.array([""] + read_catalog(export_path / "assets.extra" / EXPORT_CATALOG_FILE)["item_id"].tolist())
    assert len(ids) == len(vectors)
    out = []
    for items, stamps in histories:
        scores = module.signatures["rank"](history_item_ids=tf.constant([items]),
                                           history_timestamps=tf.constant([stamps], tf.int64),
                                           candidate_item_ids=tf.constant([ids[1:].tolist()]))["scores"].numpy()[0]
        assert np.linalg.matrix_rank(vectors[1:]) == vectors.shape[1]
        out.append(np.linalg.lstsq(vectors[1:].astype(np.float64), scores.astype(np.float64), rcond=None)[0])
    return np.array(out), vectors, ids


def unit(vector):
    return vector / np.linalg.norm(vector)


def test_fold_in_moves_logged_new_items_toward_their_audience_and_trains_nothing(trained, encoder_factory, tmp_path,
                                                                                 monkeypatch):
    catalog = read_catalog(trained["run"] / CATALOG_FILE)
    items = items_file(tmp_path / "items.csv", [("new-a", "red sneakers 40", "sneakers"),
                                                ("new-b", "blue novels 41", "novels")])
    log, histories = fold_in_log(tmp_path / "log.csv", catalog.loc[catalog["warm"], "item_id"].tolist())

    def no_training(*args, **kwargs):
        raise AssertionError("a fold-in must not train")

    for name in ("fit", "train_step", "train_on_batch"):
        monkeypatch.setattr(tf.keras.Model, name, no_training)
    monkeypatch.setattr(tf.keras.optimizers.Optimizer, "apply_gradients", no_training)
    plain = update_catalog(trained["run"], items_path=items, export_base=str(tmp_path / "plain"),
                           encoder_factory=encoder_factory)
    folded = update_catalog(trained["run"], items_path=items, export_base=str(tmp_path / "folded"),
                            encoder_factory=encoder_factory, interactions=log, fold_in_shrinkage=2.0,
                            fold_in_map="none", popularity="off", new_item_offset="off")
    audience_only = update_catalog(trained["run"], items_path=items, export_base=str(tmp_path / "audience"),
                                   encoder_factory=encoder_factory, interactions=log, fold_in_shrinkage=0.0,
                                   fold_in_text_prior=False, fold_in_map="none", popularity="off", new_item_offset="off")
    mapped = update_catalog(trained["run"], items_path=items, export_base=str(tmp_path / "mapped"),
                            encoder_factory=encoder_factory, interactions=log)
    assert mapped.fold_in.audience_map == "none" and mapped.fold_in.map_items == 0  # 3 known rows: too few to fit
    # An encoder factory given: the run's encoder is not exported (`test_exported_text_encoder`).
    assert list(folded.stages) == [name for name in STAGES if name != "encoder_export"]
    assert list(plain.stages) == [name for name in STAGES if name not in ("fold_in", "popularity", "encoder_export")]
    assert all(seconds >= 0 for seconds in folded.stages.values())
    assert sum(folded.stages.values()) <= folded.seconds
    fold = folded.fold_in
    assert fold.log_rows == 8 and fold.used_rows == 2 and fold.no_history == 1  # u3 had nothing before new-a
    assert fold.outside_catalog == 2 and fold.outside_catalog_items == 2 and fold.out_of_scope == 3
    assert fold.interactions.tolist() == [2]

    queries, before, ids = queries_through_rank(plain.export_path, histories)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-4)  # the user tower's unit queries
    row = int(np.flatnonzero(ids == "new-a")[0])
    assert fold.rows.tolist() == [row]
    audience = unit(queries.sum(axis=0))
    expected = unit(0.5 * audience + 0.5 * unit(before[row]))  # n = 2, k = 2: halfway to the text-based vector
    after = tf.saved_model.load(str(folded.export_path)).item_embeddings.numpy()
    np.testing.assert_allclose(after[row], expected, atol=1e-4)
    np.testing.assert_allclose(tf.saved_model.load(str(audience_only.export_path)).item_embeddings.numpy()[row],
                               audience, atol=1e-4)
    others = np.arange(len(after)) != row
    np.testing.assert_allclose(after[others], before[others], atol=1e-6)  # nothing else moves
    manifest = json.loads((folded.export_path / "assets.extra" / "tfrec_lm.json").read_text())
    assert manifest["catalog_update"]["fold_in"]["outside_catalog_rows"] == 2
    assert manifest["catalog_update"]["fold_in"]["shrinkage"] == 2.0
    # The folded item's new vector is also what a history holding it reads: the served user changes.
    history = tf.constant([["", catalog.loc[catalog["warm"], "item_id"].iloc[0], "new-a"]])
    stamps = tf.constant([[0, T0, T0 + 10]], tf.int64)
    users = [tf.saved_model.load(str(u.export_path)).signatures["rank"](
        history_item_ids=history, history_timestamps=stamps,
        candidate_item_ids=tf.constant([ids[1:].tolist()]))["scores"].numpy() for u in (plain, folded)]
    assert not np.allclose(users[0], users[1])


def test_popularity_offset_adds_the_logs_recent_counts_to_every_score(trained, encoder_factory, tmp_path):
    """The export's scores with a fixed beta are the scores without it plus beta * log(1 + m_i), m_i the
    item's log rows weighted 0.5 ** (age / 7 days) from the newest row; `auto` scores the log's newest week."""
    from tfrec_lm.catalog.popularity import NEW_ITEM_GRID, SCALE_GRID

    catalog = read_catalog(trained["run"] / CATALOG_FILE)
    items = items_file(tmp_path / "items.csv", [("new-a", "red sneakers 40", "sneakers")])
    log, histories = fold_in_log(tmp_path / "log.csv", catalog.loc[catalog["warm"], "item_id"].tolist())
    common = dict(items_path=items, encoder_factory=encoder_factory, interactions=log, publish="always")
    plain = update_catalog(trained["run"], export_base=str(tmp_path / "plain"), popularity="off",
                           new_item_offset="off", **common)
    offset = update_catalog(trained["run"], export_base=str(tmp_path / "offset"), popularity=0.5,
                            new_item_offset=-0.25, **common)
    assert plain.popularity.chosen == "off" and plain.popularity.scale == 0.0
    assert offset.popularity.chosen == "given" and offset.popularity.scale == 0.5
    rows = pd.read_csv(log)
    now = rows["timestamp"].max() + 1
    weights = 0.5 ** ((now - rows["timestamp"]) / (7 * 86400.0))
    mass = weights.groupby(rows["item_id"].astype(str)).sum()
    ids = [""] + read_catalog(offset.export_path / "assets.extra" / EXPORT_CATALOG_FILE)["item_id"].tolist()
    expected = 0.5 * np.log1p(np.array([mass.get(i, 0.0) for i in ids[1:]]))
    assert expected.max() > 0.5  # new-a was taken three times in the last seconds
    untrained = {"new-a", *COLD}  # no trained ID embedding: the new item and the items cold in training
    expected -= 0.25 * np.array([i in untrained for i in ids[1:]])
    assert offset.popularity.new_item_offset == -0.25 and offset.popularity.new_item_chosen == "given"
    for history, stamps in histories:
        request = dict(history_item_ids=tf.constant([history]), history_timestamps=tf.constant([stamps], tf.int64),
                       candidate_item_ids=tf.constant([ids[1:]]))
        got = [signature(u.export_path, "rank")(**request) for u in (plain, offset)]
        np.testing.assert_allclose(got[1]["scores"].numpy()[0] - got[0]["scores"].numpy()[0], expected, atol=1e-5)
        np.testing.assert_allclose(got[1]["predicted_ratings"].numpy(), got[0]["predicted_ratings"].numpy(),
                                   atol=1e-6)  # the ranking head reads the model's columns only
        top = signature(offset.export_path)(history_item_ids=tf.constant([history]),
                                            history_timestamps=tf.constant([stamps], tf.int64))
        scores = dict(zip(ids[1:], got[1]["scores"].numpy()[0]))
        shown = [i for i in ids[1:] if i not in history]
        best = sorted(shown, key=lambda i: -scores[i])[:5]
        assert top["item_ids"].numpy()[0].astype(str).tolist() == best  # serving_default ranks with the offset
    manifest = json.loads((offset.export_path / "assets.extra" / "tfrec_lm.json").read_text())
    assert manifest["catalog_update"]["popularity_offset"]["scale"] == 0.5
    auto = update_catalog(trained["run"], export_base=str(tmp_path / "auto"), **common)
    calibration = auto.popularity.calibration
    assert calibration["targets"] == 3  # u1's second and third rows, u2's new-a: rows with an earlier catalog row
    assert list(calibration["hits"]) == [str(s) for s in SCALE_GRID]
    assert list(calibration["new_item_hits"]) == [str(g) for g in NEW_ITEM_GRID]
    assert auto.popularity.new_item_offset in NEW_ITEM_GRID
    assert auto.popularity.scale == SCALE_GRID[[calibration["hits"][str(s)] for s in SCALE_GRID].index(
        max(calibration["hits"].values()))]
    assert auto.gate.window.startswith("the log's newest week (3 interactions)")


def test_fold_in_cli_reports_the_log_and_refuses_bad_logs(trained, encoder_factory, tmp_path, capsys, monkeypatch):
    from tfrec_lm.models import factory

    monkeypatch.setattr(factory, "checkpoint_encoder_factory", lambda spec: encoder_factory)  # the tiny BERT
    catalog = read_catalog(trained["run"] / CATALOG_FILE)
    items = items_file(tmp_path / "items.csv", [("new-a", "red sneakers 40", "sneakers")])
    log, _ = fold_in_log(tmp_path / "log.csv", catalog.loc[catalog["warm"], "item_id"].tolist())
    base = tmp_path / "exports"
    assert catalog_main(["--run", str(trained["run"]), "--items", str(items), "--interactions", str(log),
                         "--export-base", str(base), "--publish", "always"]) == 0
    out = capsys.readouterr().out
    assert "fold-in: 2 of 8 log rows folded into 1 items" in out
    assert "2 rows on 2 items outside the catalog" in out and "1 without a history" in out
    timing = next(line for line in out.splitlines() if line.startswith("time: "))  # where the update's time went
    stages = [part.rsplit(" ", 2)[0] for part in timing[len("time: "):].split(" (of ")[0].split(", ")]
    assert stages[:9] == ["read", "encoder import", "build", "grow and encode", "fold in", "popularity",
                          "serving module", "save", "gate"]
    assert stages[9:] in ([], ["encoder export"])  # the run's first update without a factory exports its encoder
    assert (base / trained["config"].model_name / "1").is_dir()

    malformed = tmp_path / "malformed.csv"
    malformed.write_text("user_id,item_id,timestamp\nu1,new-a,not-a-time\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("user_id,item_id,timestamp\n")
    elsewhere = tmp_path / "elsewhere.csv"
    elsewhere.write_text(f"user_id,item_id,timestamp\nu1,outside-1,{T0}\nu2,outside-2,{T0}\n")
    cases = [([str(malformed)], "line 2"), ([str(empty)], "no data rows"),
             ([str(elsewhere)], "none of the log's 2 items is in the catalog"),
             ([str(log), "--since", "2030-01-01"], "no interaction at or after --since"),
             ([str(log), "--popularity-offset", "lots"], "--popularity-offset must be auto, off or a number"),
             ([str(log), "--popularity-half-life", "0"], "--popularity-half-life must be > 0 days"),
             ([str(log), "--new-item-offset", "down"], "--new-item-offset must be auto, off or a number"),
             ([str(tmp_path / "absent.csv")], "absent.csv")]
    for arguments, message in cases:
        bad_base = tmp_path / "bad"
        assert catalog_main(["--run", str(trained["run"]), "--items", str(items), "--interactions", *arguments,
                             "--export-base", str(bad_base)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not bad_base.exists()  # no version written


def test_text_vectors_that_do_not_fit_the_encoder_are_encoded_again(trained, encoder_factory, tmp_path):
    """A version's vectors of another width (not this run's encoder) are not used: the texts are encoded."""
    from tfrec_lm.catalog.table import write_text_vectors
    from tfrec_lm.registry.layout import EXPORT_TEXT_VECTORS_FILE

    base = tmp_path / "exports"
    first = update_catalog(trained["run"], items_path=items_file(tmp_path / "a.csv", [("new-a", "red sneakers 40", "sneakers")]),
                           export_base=str(base), encoder_factory=encoder_factory)
    path = first.export_path / "assets.extra" / EXPORT_TEXT_VECTORS_FILE
    with np.load(path) as stored:
        write_text_vectors(stored["item_ids"], stored["texts"], np.zeros((1, 3), np.float32), path)
    second = update_catalog(trained["run"], items_path=items_file(tmp_path / "b.csv", [("new-b", "blue novel", "novels")]),
                            export_base=str(base), encoder_factory=encoder_factory)
    assert (second.encoded, second.reused) == (2, 0)
