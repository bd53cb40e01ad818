"""Tests of tfrec_lm.export against the SPEC section 3 serving contract.

Trained tiny models are exported with the brute-force and the ScaNN top-k index,
reloaded in a fresh Python process that imports only TensorFlow (plus ScaNN's ops for
the ScaNN export), and queried through `serving_default` and `rank`. The answers are
compared with the in-memory `ServingModule` and with a direct numpy computation from the
model's towers.
"""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfrec_lm.evaluation.popularity import most_popular
from tfrec_lm.export import export_model
from tfrec_lm.registry.model_versions import ModelVersions
from tfrec_lm.serving_module import LOWEST_SCORE, ServingModule

K = 10

# Run in a fresh interpreter: argv = exports.json requests.json output.json with_scann.
SERVER = textwrap.dedent(r'''
    import json, sys
    import tensorflow as tf
    if sys.argv[4] == "1":
        import scann.scann_ops.py.scann_ops  # noqa: F401  (registers the ScaNN ops)

    def spec(t):
        return [t.dtype.name, None if t.shape.rank is None else t.shape.as_list()]

    exports = json.load(open(sys.argv[1]))
    requests = json.load(open(sys.argv[2]))
    out = {}
    for name, path in exports.items():
        loaded = tf.saved_model.load(path)
        result = {"signatures": {}, "retrieve": {}, "rank": {}}
        for key, fn in loaded.signatures.items():
            result["signatures"][key] = {
                "inputs": {k: spec(v) for k, v in fn.structured_input_signature[1].items()},
                "outputs": {k: spec(v) for k, v in fn.structured_outputs.items()},
            }
        retrieve, rank = loaded.signatures["serving_default"], loaded.signatures["rank"]
        explain = loaded.signatures.get("explain")
        result["explain"] = {}
        for case, request in requests["retrieve"].items():
            inputs = dict(history_item_ids=tf.constant(request["history_item_ids"], tf.string),
                          history_timestamps=tf.constant(request["history_timestamps"], tf.int64))
            answer = retrieve(**inputs)
            result["retrieve"][case] = {
                "item_ids": [[v.decode() for v in row] for row in answer["item_ids"].numpy().tolist()],
                "scores": answer["scores"].numpy().tolist(),
                "shapes": {k: v.shape.as_list() for k, v in answer.items()},
                "dtypes": {k: v.dtype.name for k, v in answer.items()},
            }
            if explain is not None:
                answer = explain(**inputs)
                result["explain"][case] = {
                    k: [[x.decode() if isinstance(x, bytes) else x for x in row] for row in v.numpy().tolist()]
                    for k, v in answer.items()}
        for case, request in requests["rank"].items():
            answer = rank(history_item_ids=tf.constant(request["history_item_ids"], tf.string),
                          history_timestamps=tf.constant(request["history_timestamps"], tf.int64),
                          candidate_item_ids=tf.constant(request["candidate_item_ids"], tf.string))
            result["rank"][case] = {"scores": answer["scores"].numpy().tolist(),
                                    "dtype": answer["scores"].dtype.name}
        out[name] = result
    out["modules"] = {"tfrec_lm": "tfrec_lm" in sys.modules, "transformers": "transformers" in sys.modules,
                      "scann": any(m.startswith("scann") for m in sys.modules)}
    json.dump(out, open(sys.argv[3], "w"))
''')


def serve_in_fresh_process(exports: dict, requests: dict, directory: Path, with_scann: bool) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "exports.json").write_text(json.dumps({k: str(v) for k, v in exports.items()}))
    (directory / "requests.json").write_text(json.dumps(requests))
    output = directory / "answers.json"
    completed = subprocess.run(
        [sys.executable, "-c", SERVER, str(directory / "exports.json"), str(directory / "requests.json"),
         str(output), "1" if with_scann else "0"],
        capture_output=True, text=True, timeout=300, cwd=str(directory))
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(output.read_text())


# ---------------------------------------------------------------- requests


def pad_rows(rows, width=None, pad=""):
    width = width or max(len(r) for r in rows)
    return [list(r) + [pad] * (width - len(r)) for r in rows]


def request(rows, width=None):
    """A serving request: ids right-padded with "", increasing timestamps, 0 at padding."""
    ids = pad_rows(rows, width)
    stamps = [[1_600_000_000 + 60 * j if v else 0 for j, v in enumerate(row)] for row in ids]
    return {"history_item_ids": ids, "history_timestamps": stamps}


def build_requests(run):
    vocab, split = run.result.vocab, run.result.split
    test_ids = [[vocab.ids[i] for i in row if i] for row in split.test.history[:6]]
    users = test_ids[:5] + [test_ids[5][-3:]]  # the last user with a short history
    with_unknown = [["no-such-item"] + row[:4] + ["zzz", " "] + row[4:] for row in users]
    catalog = [str(v) for v in vocab.ids[1:]]
    long_rows = [catalog[:30], [vocab.ids[i] for i in [*split.test.history[0], *split.test.history[1]] if i]]
    candidates = [[catalog[0], "no-such-item", catalog[7], "", catalog[20], users[0][-1]]] * 3
    rank_rows = users[:2] + [[]]
    # Unknown ids are dropped with their timestamps: the known items keep the times they
    # have in "users", the unknown ones get times of their own (even out of order).
    plain = request(users, width=12)["history_timestamps"]
    width = max(len(r) for r in with_unknown)
    with_unknown_request = {
        "history_item_ids": pad_rows(with_unknown, width),
        "history_timestamps": [[1_700_000_000] + t[:min(4, len(u))] + [5, 1_650_000_000] + t[4:len(u)]
                               + [0] * (width - len(r))
                               for u, r, t in zip(users, with_unknown, plain)],
    }
    requests = {
        "retrieve": {
            "users": request(users, width=12),
            "with_unknown": with_unknown_request,
            "no_known": request([["no-such-item", "", ""], ["", "", ""], ["  ", "x", "y"]]),
            "long": request(long_rows),
            "mixed": request([users[0], [], ["unknown"]], width=11),
        },
        "rank": {
            "rank": {**request(rank_rows, width=10), "candidate_item_ids": candidates},
        },
    }
    return requests


# ---------------------------------------------------------------- the numpy reference


def tower_scores(run, rows, stamps):
    """Full-catalog scores from the model's towers. [B, C+1], column 0 = -inf."""
    model, vocab = run.model, run.result.vocab
    history = vocab.index(np.array(rows, dtype=object))
    users = model.user_tower(tf.constant(history, tf.int32), tf.constant(stamps, tf.int64), training=False).numpy()
    items = model.item_tower(tf.range(model.item_tower.num_items), training=False).numpy()
    scores = users @ items.T
    scores[:, 0] = -np.inf
    return history, scores


def expected_retrieve(run, rows, stamps, k=K):
    """(item ids [B, K], scores [B, K]) by numpy: top-K excluding history, popular without history."""
    history, scores = tower_scores(run, rows, stamps)
    counts = run.result.counts
    share = counts / counts[1:].sum()
    ids, values = [], []
    for row, known in zip(scores, history):
        known = known[known > 0]
        if len(known) == 0:
            top = most_popular(counts, k)
            ids.append(list(run.result.vocab.ids[top]))
            values.append(share[top])
            continue
        row = row.copy()
        row[known] = -np.inf
        top = np.argsort(-row, kind="stable")[:k]
        ids.append(list(run.result.vocab.ids[top]))
        values.append(row[top])
    return ids, np.array(values, np.float32)


def expected_rank(run, rows, stamps, candidates):
    history, scores = tower_scores(run, rows, stamps)
    counts = run.result.counts
    share = counts / counts[1:].sum()
    candidate_index = run.result.vocab.index(np.array(candidates, dtype=object))
    out = np.empty(candidate_index.shape, np.float64)
    for b, (known, row) in enumerate(zip(history, scores)):
        source = row if (known > 0).any() else share
        out[b] = np.where(candidate_index[b] > 0, source[candidate_index[b]], LOWEST_SCORE)
    return out


def in_memory(module, req):
    return module.retrieve(tf.constant(req["history_item_ids"], tf.string),
                           tf.constant(req["history_timestamps"], tf.int64))


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def served(item_sequence_run, history_text_run, tmp_path_factory):
    """Three exports, their in-memory modules and their answers from fresh processes."""
    base = tmp_path_factory.mktemp("exports")
    runs = {"item_sequence": item_sequence_run, "history_text": history_text_run}
    modules = {
        "item_sequence_bf": ServingModule(item_sequence_run.model, item_sequence_run.result.vocab.ids,
                                          item_sequence_run.result.counts, top_k=K, index="brute-force"),
        "history_text_bf": ServingModule(history_text_run.model, history_text_run.result.vocab.ids,
                                         history_text_run.result.counts, top_k=K, index="brute-force"),
        "item_sequence_scann": ServingModule(item_sequence_run.model, item_sequence_run.result.vocab.ids,
                                             item_sequence_run.result.counts, top_k=K, index="scann"),
    }
    paths = {name: ModelVersions(base, name).save(module, {"name": name}) for name, module in modules.items()}
    requests = build_requests(item_sequence_run)
    plain = serve_in_fresh_process({k: v for k, v in paths.items() if not k.endswith("scann")}, requests,
                                   base / "plain", with_scann=False)
    scann = serve_in_fresh_process({"item_sequence_scann": paths["item_sequence_scann"]}, requests,
                                   base / "scann", with_scann=True)
    return {
        "base": base, "paths": paths, "modules": modules, "requests": requests,
        "answers": {**{k: v for k, v in plain.items() if k != "modules"}, **scann},
        "imports": {"plain": plain["modules"], "scann": scann["modules"]},
        "runs": {"item_sequence_bf": runs["item_sequence"], "history_text_bf": runs["history_text"],
                 "item_sequence_scann": runs["item_sequence"]},
    }


EXPORTS = ["item_sequence_bf", "history_text_bf", "item_sequence_scann"]


@pytest.fixture(params=EXPORTS)
def export_name(request):
    return request.param


# ---------------------------------------------------------------- layout and serving process


def test_layout_is_base_name_version(served):
    for name, path in served["paths"].items():
        assert path == served["base"] / name / "1"
        assert (path / "saved_model.pb").is_file() and (path / "variables").is_dir()
        assert json.loads((path / "assets.extra" / "tfrec_lm.json").read_text()) == {"name": name, "model_name": name,
                                                                                   "version": 1}
        assert [p.name for p in (served["base"] / name).iterdir()] == ["1"]


def test_serving_process_imported_only_tensorflow(served):
    plain, scann = served["imports"]["plain"], served["imports"]["scann"]
    assert plain == {"tfrec_lm": False, "transformers": False, "scann": False}
    assert scann["tfrec_lm"] is False and scann["transformers"] is False


# ---------------------------------------------------------------- signatures


def test_signature_inputs_and_rank_outputs(served, export_name):
    signatures = served["answers"][export_name]["signatures"]
    assert {"serving_default", "rank"} <= set(signatures)
    history = {"history_item_ids": ["string", [None, None]], "history_timestamps": ["int64", [None, None]]}
    assert signatures["serving_default"]["inputs"] == history
    assert signatures["rank"]["inputs"] == {**history, "candidate_item_ids": ["string", [None, None]]}
    assert signatures["rank"]["outputs"]["scores"] == ["float32", [None, None]]


def test_serving_default_output_signature(served, export_name):
    # (The ScaNN op's result has no static shape; the export must still declare [None, K].)
    outputs = served["answers"][export_name]["signatures"]["serving_default"]["outputs"]
    assert outputs == {"item_ids": ["string", [None, K]], "scores": ["float32", [None, K]]}


def test_answers_have_contract_shapes_and_dtypes(served, export_name):
    for case, answer in served["answers"][export_name]["retrieve"].items():
        batch = len(served["requests"]["retrieve"][case]["history_item_ids"])
        assert answer["shapes"] == {"item_ids": [batch, K], "scores": [batch, K]}, case
        assert answer["dtypes"] == {"item_ids": "string", "scores": "float32"}, case
    rank = served["answers"][export_name]["rank"]["rank"]
    assert rank["dtype"] == "float32"
    assert np.array(rank["scores"]).shape == np.array(served["requests"]["rank"]["rank"]["candidate_item_ids"]).shape


# ---------------------------------------------------------------- answers


def test_reloaded_equals_in_memory_module(served, export_name):
    module = served["modules"][export_name]
    for case, req in served["requests"]["retrieve"].items():
        expected = in_memory(module, req)
        answer = served["answers"][export_name]["retrieve"][case]
        assert answer["item_ids"] == [[v.decode() for v in row] for row in expected["item_ids"].numpy().tolist()]
        np.testing.assert_allclose(answer["scores"], expected["scores"].numpy(), rtol=1e-5, atol=1e-6)
    req = served["requests"]["rank"]["rank"]
    expected = module.rank(*(tf.constant(req[k], d) for k, d in (
        ("history_item_ids", tf.string), ("history_timestamps", tf.int64), ("candidate_item_ids", tf.string))))
    np.testing.assert_allclose(served["answers"][export_name]["rank"]["rank"]["scores"],
                               expected["scores"].numpy(), rtol=1e-5, atol=1e-6)


def test_retrieve_equals_numpy_over_the_towers(served, export_name):
    run = served["runs"][export_name]
    for case, req in served["requests"]["retrieve"].items():
        ids, scores = expected_retrieve(run, req["history_item_ids"], req["history_timestamps"])
        answer = served["answers"][export_name]["retrieve"][case]
        assert answer["item_ids"] == ids, case
        np.testing.assert_allclose(answer["scores"], scores, rtol=1e-4, atol=1e-5, err_msg=case)


def test_rank_equals_numpy_and_unknown_candidates_are_lowest(served, export_name):
    run = served["runs"][export_name]
    req = served["requests"]["rank"]["rank"]
    scores = np.array(served["answers"][export_name]["rank"]["rank"]["scores"], np.float64)
    expected = expected_rank(run, req["history_item_ids"], req["history_timestamps"], req["candidate_item_ids"])
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
    unknown = np.array([[c.strip() not in set(run.result.vocab.ids[1:]) for c in row]
                        for row in req["candidate_item_ids"]])
    assert unknown.any() and (~unknown).any()
    assert (scores[unknown] == float(np.finfo(np.float32).min)).all()
    assert (scores[~unknown] > float(np.finfo(np.float32).min)).all()


def test_history_items_never_returned_and_no_repeats(served, export_name):
    for case, req in served["requests"]["retrieve"].items():
        answer = served["answers"][export_name]["retrieve"][case]
        for history, items in zip(req["history_item_ids"], answer["item_ids"]):
            assert len(items) == K and len(set(items)) == K, case
            assert "" not in items, case
            assert not set(items) & {h.strip() for h in history if h.strip()}, case


def test_scores_are_in_descending_order(served, export_name):
    for case, answer in served["answers"][export_name]["retrieve"].items():
        scores = np.array(answer["scores"])
        assert (np.diff(scores, axis=1) <= 1e-6).all(), case


def test_unknown_history_ids_are_ignored(served, export_name):
    answers = served["answers"][export_name]["retrieve"]
    assert answers["with_unknown"]["item_ids"] == answers["users"]["item_ids"]
    np.testing.assert_allclose(answers["with_unknown"]["scores"], answers["users"]["scores"], atol=1e-6)


def test_no_known_history_returns_most_popular(served, export_name):
    run = served["runs"][export_name]
    counts = run.result.counts
    popular = [str(v) for v in run.result.vocab.ids[most_popular(counts, K)]]
    answers = served["answers"][export_name]["retrieve"]
    for items in answers["no_known"]["item_ids"]:
        assert items == popular
    np.testing.assert_allclose(answers["no_known"]["scores"][0],
                               counts[most_popular(counts, K)] / counts[1:].sum(), rtol=1e-5)
    # Rows of one batch are answered independently: [history, empty, unknown].
    mixed = answers["mixed"]["item_ids"]
    assert mixed[0] == answers["users"]["item_ids"][0]
    assert mixed[1] == popular and mixed[2] == popular


def test_long_history_excludes_all_its_items(served, export_name):
    req = served["requests"]["retrieve"]["long"]
    assert all(len([h for h in row if h]) > served["runs"][export_name].config.max_history
               for row in req["history_item_ids"])
    answer = served["answers"][export_name]["retrieve"]["long"]
    for history, items in zip(req["history_item_ids"], answer["item_ids"]):
        assert not set(items) & set(history)
        assert len(set(items)) == K


def test_rank_of_retrieved_items_reproduces_their_scores(served, export_name):
    module = served["modules"][export_name]
    req = served["requests"]["retrieve"]["users"]
    retrieved = in_memory(module, req)
    ranked = module.rank(tf.constant(req["history_item_ids"]), tf.constant(req["history_timestamps"], tf.int64),
                         retrieved["item_ids"])
    np.testing.assert_allclose(ranked["scores"].numpy(), retrieved["scores"].numpy(), rtol=1e-5, atol=1e-6)


def test_brute_force_and_scann_agree(served):
    a = served["answers"]["item_sequence_bf"]["retrieve"]
    b = served["answers"]["item_sequence_scann"]["retrieve"]
    for case in a:
        assert a[case]["item_ids"] == b[case]["item_ids"], case


def test_zero_width_history_returns_most_popular(served):
    run = served["runs"]["item_sequence_bf"]
    module = served["modules"]["item_sequence_bf"]
    answer = module.retrieve(tf.zeros([2, 0], tf.string), tf.zeros([2, 0], tf.int64))
    popular = [str(v) for v in run.result.vocab.ids[most_popular(run.result.counts, K)]]
    assert [[v.decode() for v in row] for row in answer["item_ids"].numpy().tolist()] == [popular, popular]


def test_top_k_larger_than_catalog_is_rejected(item_sequence_run):
    result = item_sequence_run.result
    with pytest.raises(ValueError):
        ServingModule(result.model, result.vocab.ids, result.counts, top_k=result.vocab.size, index="brute-force")


# ---------------------------------------------------------------- versioning


@pytest.fixture(scope="module")
def small_module(item_sequence_run):
    result = item_sequence_run.result
    return ServingModule(result.model, result.vocab.ids, result.counts, top_k=3, index="brute-force")


def test_versions_increase_and_no_staging_remains(small_module, tmp_path):
    versions = ModelVersions(tmp_path, "recs")
    first = versions.save(small_module, {"n": 1})
    second = versions.save(small_module, {"n": 2})
    assert (first, second) == (tmp_path / "recs" / "1", tmp_path / "recs" / "2")
    assert sorted(p.name for p in (tmp_path / "recs").iterdir()) == ["1", "2"]
    assert not list((tmp_path / "recs").glob(".tmp-*"))
    assert json.loads((second / "assets.extra" / "tfrec_lm.json").read_text()) == {"n": 2, "model_name": "recs",
                                                                                 "version": 2}
    assert versions.next_version() == 3 and versions.manifest(2)["n"] == 2
    with pytest.raises(FileExistsError):
        versions.save(small_module, {}, version=1)
    assert sorted(p.name for p in (tmp_path / "recs").iterdir()) == ["1", "2"]


def test_failed_save_leaves_no_version(small_module, tmp_path, monkeypatch):
    def broken_save(*args, **kwargs):
        Path(args[1], "partial").mkdir(parents=True)
        raise RuntimeError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(RuntimeError):
        ModelVersions(tmp_path, "recs").save(small_module, {})
    assert list((tmp_path / "recs").iterdir()) == []


def test_export_model_uses_config(item_sequence_run, tmp_path):
    config = item_sequence_run.config.replace(export_base=str(tmp_path), model_name="m", index="brute-force",
                                              top_k=4, export=True)
    decision = export_model(item_sequence_run.result, config)
    path = decision.path
    assert path == tmp_path / "m" / "1" and decision.published
    metadata = json.loads((path / "assets.extra" / "tfrec_lm.json").read_text())
    assert metadata["index"] == "brute-force" and metadata["top_k"] == 4
    assert metadata["num_items"] == item_sequence_run.result.vocab.size - 1
    assert metadata["config"]["model_name"] == "m"
    loaded = tf.saved_model.load(str(path))
    answer = loaded.signatures["serving_default"](
        history_item_ids=tf.constant([["sne1", "sne2"]]), history_timestamps=tf.constant([[1, 2]], tf.int64))
    assert answer["item_ids"].shape == (1, 4)


def test_served_model_follows_the_newest_items(served):
    """Histories are oldest first: the trained item-sequence model recommends the category
    the user migrated to (the newest items' category), not the one they left."""
    req = served["requests"]["retrieve"]["users"]
    answer = served["answers"]["item_sequence_bf"]["retrieve"]["users"]
    newest, oldest, top = [], [], []
    for history, items in zip(req["history_item_ids"][:5], answer["item_ids"][:5]):
        known = [h for h in history if h]
        newest.append(known[-1][:3])
        oldest.append(known[0][:3])
        top.append(items[0][:3])
    assert newest != oldest
    assert sum(t == n for t, n in zip(top, newest)) >= 4, (top, newest, oldest)


# ---------------------------------------------------------------- explain (when exported)


def test_explain_agrees_with_retrieve_and_cites_history_items(served, export_name):
    answers = served["answers"][export_name]
    if "explain" not in answers["signatures"]:
        pytest.skip("this export has no explain signature")
    run = served["runs"][export_name]
    model = run.model
    embeddings = model.item_tower(tf.range(model.item_tower.num_items), training=False).numpy()
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    vocab = run.result.vocab
    for case, req in served["requests"]["retrieve"].items():
        explained, retrieved = answers["explain"][case], answers["retrieve"][case]
        assert explained["item_ids"] == retrieved["item_ids"], case
        np.testing.assert_allclose(explained["scores"], retrieved["scores"], rtol=1e-5, atol=1e-6)
        for history, items, because, similarity in zip(req["history_item_ids"], explained["item_ids"],
                                                       explained["because_item_ids"],
                                                       explained["because_similarity"]):
            known = vocab.index(np.array([h.strip() for h in history], dtype=object))
            known = known[known > 0]
            if len(known) == 0:
                assert because == [""] * K and similarity == [0.0] * K, case
                continue
            for item, cited, value in zip(items, because, similarity):
                cosine = embeddings[known] @ embeddings[vocab.index(np.array([item], dtype=object))[0]]
                assert cited in set(vocab.ids[known]), case
                assert value == pytest.approx(cosine.max(), abs=1e-5), case
                assert vocab.index(np.array([cited], dtype=object))[0] in known[np.isclose(cosine, cosine.max(),
                                                                                           atol=1e-5)]


# ---------------------------------------------------------------- SPEC metrics from the export


def test_export_metrics_match_the_model_on_the_test_split(served, item_sequence_run):
    """`evaluate_export` (full histories through serving_default) agrees with the in-memory
    SPEC evaluation. Where the test target already is in the user's history the export
    can never return it (history items are excluded), while the SPEC ranks keep the target
    as a candidate; those users are compared separately."""
    from tfrec_lm.evaluation.export_eval import evaluate_export
    from tfrec_lm.evaluation.metrics import full_catalog_ranks, sliced_metrics
    from tfrec_lm.evaluation.scoring import score_catalog

    result = item_sequence_run.result
    test = result.split.test
    repeat = np.array([t in set(e.tolist()) for t, e in zip(test.target, test.exclude)])
    slices = {"all": np.ones(len(test), bool), "new_target": ~repeat, "repeat_target": repeat}
    from tfrec_lm.data.split import build_sequences

    sequences = build_sequences(result.dataset, result.vocab)
    exported = evaluate_export(served["paths"]["item_sequence_bf"], test.exclude,
                               [sequences.timestamps[u][:-1] for u in test.user_index],
                               test.target, result.vocab.ids, slices)
    ranks = full_catalog_ranks(score_catalog(result.model, test), test.target, test.exclude)
    model = sliced_metrics(ranks, slices, ks=(10,))
    assert model["all"]["HR@10"] == pytest.approx(result.metrics["model"]["all"]["HR@10"])
    assert exported["new_target"]["count"] == (~repeat).sum() > 0
    for metric in ("HR@10", "NDCG@10", "MRR@10"):
        assert exported["new_target"][metric] == pytest.approx(model["new_target"][metric], abs=1e-9), metric
    if repeat.any():
        assert exported["repeat_target"]["HR@10"] == 0.0
