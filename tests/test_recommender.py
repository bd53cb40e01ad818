"""`tfrec_lm.Recommender`: an export queried in-process, by item ids or exact titles.

One tiny run is trained and exported (brute force, K = 5, with its catalog) from a
working folder of its own, with relative `--output-dir` and `--export-base` as a user
would type them; every test queries that version and compares the answers with the
export's own signatures called directly.
"""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from tfrec_lm import Recommender
from tfrec_lm.catalog.table import read_catalog, write_catalog
from tfrec_lm.registry.layout import EXPORT_CATALOG_FILE
from tfrec_lm.registry.model_versions import ModelVersions
from tfrec_lm.training import train

K = 5
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(synthetic, encoder_factory, tmp_path_factory):
    """A tiny run trained in `<root>` with `output_dir="run"`, `export_base="exports"` (relative)."""
    root = tmp_path_factory.mktemp("recommender")
    here = os.getcwd()
    os.chdir(root)
    try:
        config = tiny_config(Path("."), export=True, index="brute-force", top_k=K, epochs=1, dropout=0.0)
        assert config.output_dir == "run" and config.export_base == "exports"
        result = train(config, dataset=synthetic, encoder_factory=encoder_factory)
    finally:
        os.chdir(here)
    version = root / "exports" / "tfrec_lm" / "1"
    assert (version / "saved_model.pb").is_file() and (version / "assets.extra" / EXPORT_CATALOG_FILE).is_file()
    catalog = read_catalog(version / "assets.extra" / EXPORT_CATALOG_FILE)
    frame = synthetic.interactions.sort_values(["user_id", "timestamp"], kind="stable")
    users = [(group["item_id"].tolist()[:-1], group["timestamp"].tolist()[:-1]) for _, group in frame.groupby("user_id")]
    return {"root": root, "version": version, "run": root / "run", "result": result,
            "titles": dict(zip(catalog["item_id"], catalog["title"])), "users": users[:6],
            "recommender": Recommender.load(version)}


@functools.lru_cache(maxsize=None)
def loaded(version: str):
    return tf.saved_model.load(version)


def call(version, name, history, timestamps, **extra):
    """A signature of the version, called directly (rows without the leading padding column)."""
    signature = loaded(str(version)).signatures[name]
    return signature(history_item_ids=tf.constant([history]), history_timestamps=tf.constant([timestamps], tf.int64),
                     **extra)


def test_import_tfrec_lm_imports_no_tensorflow():
    code = "import sys, tfrec_lm; tfrec_lm.Recommender; assert 'tensorflow' not in sys.modules, 'tensorflow'"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert completed.returncode == 0, completed.stderr


def test_recommend_is_serving_default_with_titles(exported):
    model, titles = exported["recommender"], exported["titles"]
    assert model.top_k == K
    for history, timestamps in exported["users"]:
        direct = call(exported["version"], "serving_default", history, timestamps)
        expected = [v.decode() for v in direct["item_ids"][0].numpy()]
        answer = model.recommend(history, k=K, timestamps=timestamps)
        assert [r["item_id"] for r in answer] == expected
        np.testing.assert_allclose([r["score"] for r in answer], direct["scores"][0].numpy(), rtol=1e-5, atol=1e-6)
        assert [r["title"] for r in answer] == [titles[item] for item in expected]
        assert not set(expected) & set(history)
        for r in answer:  # "because you watched": a history item, by its title too
            assert r["because_item_id"] in history and r["because_title"] == titles[r["because_item_id"]]
            assert -1.0 - 1e-5 <= r["because_similarity"] <= 1.0 + 1e-5
        # The same history given by exact titles is the same request; k cuts the list.
        by_title = model.recommend([titles[item] for item in history], k=2, timestamps=timestamps)
        assert [r["item_id"] for r in by_title] == expected[:2]


def test_recommend_without_timestamps_spaces_them_as_the_client_does(exported, monkeypatch):
    from tfrec_lm import protocol as client_timestamps

    monkeypatch.setattr(client_timestamps.time, "time", lambda: 1_700_000_000)
    model = exported["recommender"]
    history, _ = exported["users"][0]
    spaced = [1_700_000_000 - 60 * (len(history) - 1 - j) for j in range(len(history))]
    direct = call(exported["version"], "serving_default", history, spaced)
    assert [r["item_id"] for r in model.recommend(history, k=K)] == [v.decode() for v in direct["item_ids"][0].numpy()]


def test_recommend_without_history_is_the_popular_items_unexplained(exported):
    answer = exported["recommender"].recommend([], k=K)
    direct = call(exported["version"], "serving_default", [""], [0])
    assert [r["item_id"] for r in answer] == [v.decode() for v in direct["item_ids"][0].numpy()]
    assert all(r["because_item_id"] is None and r["because_similarity"] is None for r in answer)


def test_rank_scores_known_candidates_and_names_unknown_ones(exported):
    model, titles = exported["recommender"], exported["titles"]
    history, timestamps = exported["users"][1]
    known = [item for item in model.item_ids if item not in history][:3]
    candidates = [known[0], "no-such-item", known[1], titles[known[2]]]  # the last one by its title
    answer = model.rank(history, candidates, timestamps=timestamps)
    assert answer["unknown_item_ids"] == ["no-such-item"]
    results = answer["results"]
    assert [r["item_id"] for r in results[-1:]] == ["no-such-item"]
    assert results[-1]["score"] is None and results[-1]["predicted_rating"] is None
    direct = call(exported["version"], "rank", history, timestamps,
                  candidate_item_ids=tf.constant([[known[0], "no-such-item", known[1], known[2]]]))
    expected = dict(zip([known[0], known[1], known[2]], direct["scores"][0].numpy()[[0, 2, 3]]))
    assert direct["scores"][0].numpy()[1] == pytest.approx(np.finfo(np.float32).min)  # how the export says unknown
    scored = results[:-1]
    assert sorted(r["item_id"] for r in scored) == sorted(known)
    for r in scored:
        assert r["score"] == pytest.approx(float(expected[r["item_id"]]), rel=1e-5, abs=1e-6)
        assert r["title"] == titles[r["item_id"]] and isinstance(r["predicted_rating"], float)
    assert [r["score"] for r in scored] == sorted((r["score"] for r in scored), reverse=True)
    assert model.rank(history, []) == {"results": [], "unknown_item_ids": []}


def test_similar_is_the_explain_likeness(exported):
    model, titles = exported["recommender"], exported["titles"]
    item = model.item_ids[0]
    everything = model.similar(titles[item], k=len(model.item_ids))
    assert len(everything) == len(model.item_ids) - 1 and item not in [r["item_id"] for r in everything]
    likeness = [r["similarity"] for r in everything]
    assert likeness == sorted(likeness, reverse=True)
    assert [r["item_id"] for r in model.similar(item, k=3)] == [r["item_id"] for r in everything[:3]]
    # With a one-item history, explain's because_similarity is the same cosine.
    of = {r["item_id"]: r["similarity"] for r in everything}
    for r in model.recommend([item], k=K):
        assert r["because_item_id"] == item
        assert r["because_similarity"] == pytest.approx(of[r["item_id"]], abs=1e-5)


def test_load_from_a_version_a_model_folder_an_export_base_and_a_run(exported, tmp_path, monkeypatch):
    root, version = exported["root"], exported["version"]
    monkeypatch.chdir(tmp_path)  # the run recorded relative paths: they are read against the run's own folder
    assert json.loads((exported["run"] / "metrics.json").read_text())["export_path"] == "exports/tfrec_lm/1"
    for path in (version, root / "exports" / "tfrec_lm", root / "exports", exported["run"]):
        assert Recommender.load(path).path == version
    # A newer version: the base serves it; the run still names its own.
    newer = ModelVersions(root / "exports", "tfrec_lm").publish(version, move=False)
    try:
        assert Recommender.load(root / "exports").path == newer
        assert Recommender.load(root / "exports" / "tfrec_lm").path == newer
        assert Recommender.load(exported["run"]).path == version
    finally:
        import shutil

        shutil.rmtree(newer)


def test_a_staged_version_published_later_is_found_by_the_runs_id(exported, tmp_path):
    # The run's record names a staging folder that `versions publish` has since moved.
    run = tmp_path / "run"
    run.mkdir()
    record = json.loads((exported["run"] / "metrics.json").read_text())
    record["export_path"] = str(tmp_path / "exports-staging" / "tfrec_lm" / "1")
    record["config"] = {**record["config"], "output_dir": str(run), "export_base": str(exported["root"] / "exports")}
    (run / "metrics.json").write_text(json.dumps(record))
    assert Recommender.load(run).path == exported["version"]


def test_bad_inputs_raise_clear_errors(exported, tmp_path):
    model, titles = exported["recommender"], exported["titles"]
    history, timestamps = exported["users"][0]
    with pytest.raises(ValueError, match="'Not A Title'"):
        model.recommend([titles[history[0]], "Not A Title"], k=K)
    with pytest.raises(ValueError, match="'zz-unknown'"):
        model.rank(["zz-unknown"], [history[0]])
    with pytest.raises(ValueError, match="'nothing-like-it'"):
        model.similar("nothing-like-it")
    for k in (0, K + 1, 2.5, True):
        with pytest.raises(ValueError, match="k must be"):
            model.recommend(history, k=k)
    with pytest.raises(ValueError, match="timestamps"):
        model.recommend(history, k=K, timestamps=timestamps[:-1])
    with pytest.raises(ValueError, match="not one string"):
        model.recommend(history[0], k=K)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        Recommender.load(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="not an export version"):
        Recommender.load(tmp_path)
    no_export = tmp_path / "run"
    no_export.mkdir()
    (no_export / "metrics.json").write_text(json.dumps({"config": {"output_dir": str(no_export), "export": False},
                                                        "export_path": None, "run_id": "r1"}))
    with pytest.raises(FileNotFoundError, match="recorded no export"):
        Recommender.load(no_export)
    # A title two items share names neither: the message asks for the id.
    copy = ModelVersions(tmp_path / "dup", "tfrec_lm").publish(exported["version"], move=False)
    catalog = read_catalog(copy / "assets.extra" / EXPORT_CATALOG_FILE)
    catalog.loc[1, "title"] = catalog.loc[0, "title"]
    write_catalog(catalog, copy / "assets.extra" / EXPORT_CATALOG_FILE)
    shared = catalog.loc[0, "title"]
    with pytest.raises(ValueError, match=f"the title '{shared}' names 2 items .*give its item id"):
        Recommender.load(copy).recommend([shared], k=K)
    two = tmp_path / "two"
    for name in ("a", "b"):
        ModelVersions(two, name).publish(exported["version"], move=False)
    with pytest.raises(ValueError, match="several models"):
        Recommender.load(two)
    assert Recommender.load(two, model_name="b").path == two / "b" / "1"
