"""Runs and versions never clobber each other (issue 28): the README's sequence in tiny mode.

train -> tune -> train the best config -> catalog update -> refresh -> catalog update ->
rollback, each step through the same function the CLI calls. After every step nothing that
existed before it has changed: no run folder's record or checkpoint, no version's files (a
manifest may only gain the gate's record while a version is still a staged candidate).
Every version's manifest names its parent; the newest version only ever changes through the
publishing gate; the catalog update after the refresh keeps the items and retirements the
refresh carried; a rollback serves the earlier version's answers exactly.
"""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfrec_lm.catalog.table import read_catalog
from tfrec_lm.catalog.update import update_catalog
from tfrec_lm.config import PRESETS
from tfrec_lm.data import prepare
from tfrec_lm.models import factory as model_factory
from tfrec_lm.registry.layout import ASSETS_EXTRA, MANIFEST_FILE
from tfrec_lm.registry.model_versions import ModelVersions
from tfrec_lm.catalog.__main__ import main as catalog_main
from tfrec_lm.train import build_parser, config_from_args
from tfrec_lm.train import main as train_main
from tfrec_lm.training import train
from tfrec_lm.versions import main as versions_main

TINY = ["--preset", "tiny", "--max-history", "10", "--index", "brute-force", "--top-k", "5", "--epochs", "1",
        "--dropout", "0.0"]


def files_of(folder: Path, skip_manifest: bool = False) -> dict:
    """Relative path -> sha256 of every file under `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()
            and not (skip_manifest and p.name == MANIFEST_FILE and p.parent.name == ASSETS_EXTRA)}


def snapshot(root: Path) -> dict:
    """Every version folder (its files, manifest aside) and every run's record and checkpoint."""
    kept = {}
    for base in ("exports/tfrec_lm", "exports-staging/tfrec_lm"):
        for version in ModelVersions.of(root / base).versions():
            kept[f"{base}/{version}"] = files_of(root / base / str(version), skip_manifest=True)
    for record in root.rglob("metrics.json"):
        run = record.parent
        kept[str(run.relative_to(root))] = {"metrics.json": hashlib.sha256(record.read_bytes()).hexdigest(),
                                            **files_of(run / "checkpoints")}
    return kept


def assert_nothing_overwritten(before: dict, after: dict):
    for key, files in before.items():
        assert after.get(key) == files, f"{key} was overwritten or removed"


def newest_manifest(root: Path) -> dict:
    versions = ModelVersions(root / "exports", "tfrec_lm")
    return versions.manifest(versions.newest())


def topk(version_dir: Path, histories):
    """serving_default's ids and scores for histories of item ids (all timestamps 0)."""
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    width = max(len(h) for h in histories)
    ids = np.array([[""] * (width - len(h)) + list(h) for h in histories], dtype=object)
    out = signature(history_item_ids=tf.constant(ids), history_timestamps=tf.zeros(ids.shape, tf.int64))
    return out["item_ids"].numpy(), out["scores"].numpy()


@pytest.fixture
def patched(synthetic, encoder_factory, monkeypatch, tmp_path):
    """The CLI's data and encoder are the synthetic data and the tiny BERT; cwd is a fresh folder."""
    monkeypatch.setattr(prepare, "load_training_data", lambda config, shard=None: synthetic)
    monkeypatch.setattr(model_factory, "pretrained_encoder_factory", lambda spec: encoder_factory)
    monkeypatch.setattr(model_factory, "checkpoint_encoder_factory", lambda spec: encoder_factory)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def refused(capsys, main, argv, message) -> bool:
    """`main(argv)` exits with 2 and one line on stderr that holds `message`."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], (code, err)
    return True


def cli_config(*argv):
    return config_from_args(build_parser().parse_args(list(argv)))


def test_readme_sequence_never_clobbers_and_publishes_only_through_the_gate(patched, synthetic, capsys):
    from tuning import search as search_cli

    root = patched
    versions = ModelVersions(root / "exports", "tfrec_lm")

    # 1. The main run: the first version of the model is published.
    main = train(cli_config(*TINY, "--export"), command="train")
    assert Path(main.output_dir).resolve() == (root / "runs" / "tfrec_lm").resolve()
    assert versions.versions() == [1] and main.gate.published
    first = versions.manifest(1)
    assert first["kind"] == "train" and first["parent_version"] is None and first["run_id"]
    assert first["data"]["rows"] == len(synthetic.interactions) and first["data"]["hash"]
    assert first["options_hash"] and first["command"] == "train" and "NDCG@5" in first["validation"]
    state = snapshot(root)

    # Other options into the finished run's folder: refused; left at the default, a folder of their own.
    assert refused(capsys, train_main, [*TINY, "--export", "--output-dir", "runs/tfrec_lm", "--learning-rate",
                                        "0.002"], "holds a finished run with other options (--learning-rate")
    assert cli_config(*TINY, "--learning-rate", "0.002").output_dir.startswith("runs/tfrec_lm-")
    assert cli_config(*TINY).output_dir == "runs/tfrec_lm"
    assert_nothing_overwritten(state, snapshot(root))

    # 2. Tune: one trial; the best config names a run folder of its own and no export base.
    argv = ["--strategy", "random", "--max-trials", "1", "--directory", str(root / "tuning_runs"),
            "--project-name", "tiny", "--preset", "tiny", "--best-config", str(root / "best_config.yaml"),
            "--set", "max_history=10", "--set", "index=brute-force", "--set", "top_k=5",
            "--tune", "learning_rate", "--space", "learning_rate=1e-3..1e-2:log"]
    assert search_cli.main(argv) == 0
    best_file = (root / "best_config.yaml").read_text()
    assert "export_base" not in best_file and "runs/tfrec_lm\n" not in best_file
    assert_nothing_overwritten(state, snapshot(root))
    state = snapshot(root)

    # 3. Train the best config: its own folder; the gate compares it with version 1.
    tuned = train(cli_config("--config", str(root / "best_config.yaml"), "--export"), command="train --config")
    assert Path(tuned.output_dir).resolve() != Path(main.output_dir).resolve()
    gate = tuned.gate
    assert gate.served_version == 1 and gate.candidate is not None and gate.served is not None
    assert gate.metric == "NDCG@5"  # K = 5 exports
    assert gate.published == (gate.candidate["NDCG@5"] >= gate.served["NDCG@5"])
    if not gate.published:
        assert versions.versions() == [1] and "exports-staging" in str(gate.path)
    assert_nothing_overwritten(state, snapshot(root))
    served_run = Path(newest_manifest(root)["run_dir"])

    # 4. A catalog update on the served version: two items added, one retired.
    catalog = read_catalog(served_run / "catalog.parquet")
    retired_id = catalog["item_id"].iloc[3]
    new_items = root / "new.csv"
    pd.DataFrame([("new-a", "red sneakers 90", "sneakers"), ("new-b", "blue novels 91", "novels")],
                 columns=["item_id", "title", "genres"]).to_csv(new_items, index=False)
    parent = versions.newest()
    state = snapshot(root)
    update = update_catalog(items_path=new_items, retire=[retired_id], publish="always", command="catalog 1")
    assert update.gate.published and versions.newest() == parent + 1
    assert newest_manifest(root)["parent_version"] == parent and newest_manifest(root)["kind"] == "catalog-update"
    assert_nothing_overwritten(state, snapshot(root))

    # 5. A refresh of the main run: its options are the run's, its catalog keeps the update's.
    since = pd.to_datetime(int(np.percentile(synthetic.interactions["timestamp"], 80)), unit="s", utc=True)
    refresh_config = cli_config("--warm-start", str(main.output_dir), "--since", since.isoformat(),
                                "--output-dir", str(root / "runs" / "refresh-1"), "--publish", "always")
    assert refresh_config.embedding_dim == PRESETS["tiny"]["embedding_dim"] and refresh_config.top_k == 5
    state = snapshot(root)
    parent = versions.newest()
    refresh = train(refresh_config, command="refresh")
    assert refresh.gate.published and versions.newest() == parent + 1
    manifest = newest_manifest(root)
    assert manifest["kind"] == "refresh" and manifest["parent_version"] == parent
    refreshed = read_catalog(versions.catalog_path(versions.newest())).set_index("item_id")
    assert {"new-a", "new-b"} <= set(refreshed.index) and refreshed.loc[retired_id, "retired"]
    assert_nothing_overwritten(state, snapshot(root))

    # An update of the pre-refresh run would roll the refresh back, and a refresh that changes
    # the model's shape cannot load its checkpoint: each refused in one sentence.
    assert refused(capsys, catalog_main, ["--run", str(main.output_dir), "--retire", catalog["item_id"].iloc[4]],
                   "would roll it back")
    assert refused(capsys, train_main, ["--warm-start", str(main.output_dir), "--embedding-dim", "32"],
                   "was trained with other model options (--embedding-dim 32 (the run: 16))")
    assert_nothing_overwritten(state, snapshot(root))

    # 6. A catalog update after the refresh extends the refresh's version.
    parent = versions.newest()
    state = snapshot(root)
    pd.DataFrame([("new-c", "green cameras 92", "cameras")], columns=["item_id", "title", "genres"]).to_csv(
        new_items, index=False)
    update = update_catalog(items_path=new_items, publish="always", command="catalog 2")
    assert Path(update.run_dir).resolve() == (root / "runs" / "refresh-1").resolve()
    kept = read_catalog(versions.catalog_path(versions.newest())).set_index("item_id")
    assert {"new-a", "new-b", "new-c"} <= set(kept.index) and kept.loc[retired_id, "retired"]
    assert newest_manifest(root)["parent_version"] == parent
    assert_nothing_overwritten(state, snapshot(root))

    # 7. Roll back to the refresh's version: its files byte for byte, its answers exactly.
    target, state = parent, snapshot(root)
    capsys.readouterr()
    assert versions_main(["--export-base", "exports", "--models-config", str(root / "models.config"),
                          "rollback"]) == 0
    copy = versions.newest()
    assert copy == target + 2
    assert files_of(versions.path(copy), skip_manifest=True) == files_of(versions.path(target), skip_manifest=True)
    histories = [["sne1", "sne2", "new-a"], ["nov3"], ["new-c", "cam1"]]
    for served, expected in zip(topk(versions.path(copy), histories), topk(versions.path(target), histories)):
        np.testing.assert_array_equal(served, expected)
    rolled = versions.manifest(copy)
    assert rolled["kind"] == "rollback" and rolled["rollback_of"] == target and rolled["parent_version"] == copy - 1
    assert_nothing_overwritten(state, snapshot(root))

    # Every version names its parent (the first has none), and each newest version got there through the gate.
    for version in versions.versions()[1:]:
        manifest = versions.manifest(version)
        assert manifest["parent_version"] is not None and manifest["parent_version"] < version
        if manifest["kind"] != "rollback":
            assert manifest["gate"]["decision"] == "published"
    capsys.readouterr()
    assert versions_main(["--export-base", "exports", "--models-config", str(root / "models.config"), "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == len(versions.versions()) and "newest" in listed[-1] and "rollback" in listed[-1]


def test_the_gate_holds_a_worse_candidate_and_publishes_a_better_one(tmp_path, monkeypatch):
    """The decision rule on canned scores (the scores themselves are measured in the walk above)."""
    from tfrec_lm.registry import gate as gate_module
    from tfrec_lm.registry.validation import ValidationRequests

    served = ModelVersions(tmp_path / "exports", "m")
    staging = ModelVersions(tmp_path / "exports-staging", "m")

    def write_version(target, number=None):
        folder = target.model_dir / str(number or target.next_version())
        (folder / ASSETS_EXTRA).mkdir(parents=True)
        (folder / "saved_model.pb").write_bytes(b"model")
        (folder / ASSETS_EXTRA / MANIFEST_FILE).write_text(json.dumps({"top_k": 10}))
        return folder

    write_version(served)
    requests = ValidationRequests(items=np.array(["a"]), timestamps=np.zeros(1, np.int64),
                                  lengths=np.ones(1, np.int64), targets=np.array(["b"]))
    scores = {}
    monkeypatch.setattr(ValidationRequests, "score",
                        lambda self, folder, k=10: {"NDCG@10": scores[Path(folder).parent.parent.name],
                                                    "HR@10": 0.0, "users": 1})

    scores.update({"exports": 0.30, "exports-staging": 0.29})
    held = gate_module.PublishGate(served, staging, "if-better", requests).submit(write_version, top_k=10)
    assert not held.published and served.versions() == [1] and held.path.parent == staging.model_dir
    assert "worse than version 1" in held.reason and "0.2900" in held.summary() and "0.3000" in held.summary()
    assert json.loads((held.path / ASSETS_EXTRA / MANIFEST_FILE).read_text())["gate"]["decision"] == "held"

    within = gate_module.PublishGate(served, staging, "if-better", requests, tolerance=0.05).submit(
        write_version, top_k=10)
    assert within.published and served.versions() == [1, 2]

    never = gate_module.PublishGate(served, staging, "never", requests).submit(write_version, top_k=10)
    assert not never.published and served.versions() == [1, 2]
    scores.update({"exports-staging": 0.10})
    always = gate_module.PublishGate(served, staging, "always", requests).submit(write_version, top_k=10)
    assert always.published and served.versions() == [1, 2, 3] and always.candidate["NDCG@10"] == 0.10
    assert json.loads((served.path(3) / ASSETS_EXTRA / MANIFEST_FILE).read_text())["gate"]["served_version"] == 2


def test_promote_writes_tf_serving_version_labels(tmp_path, capsys):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    base = tmp_path / "exports"
    for version in (1, 2, 3):
        (base / "tfrec_lm" / str(version)).mkdir(parents=True)
    config_path = tmp_path / "models.config"
    config_path.write_text('# kept comment\nmodel_config_list { config { name: "tfrec_lm" base_path: "/models/tfrec_lm" '
                           'model_platform: "tensorflow" } config { name: "other" base_path: "/models/other" } }\n')
    assert versions_main(["--export-base", str(base), "--models-config", str(config_path), "promote", "2"]) == 0
    parsed = text_format.Parse(config_path.read_text(), model_server_config_pb2.ModelServerConfig())
    model = {m.name: m for m in parsed.model_config_list.config}["tfrec_lm"]
    assert dict(model.version_labels) == {"stable": 2, "canary": 3}
    assert sorted(model.model_version_policy.specific.versions) == [2, 3]
    assert model.base_path == "/models/tfrec_lm" and "other" in {m.name for m in parsed.model_config_list.config}
    assert config_path.read_text().startswith("# kept comment")
    capsys.readouterr()
    assert versions_main(["--export-base", str(base), "--models-config", str(config_path), "list"]) == 0
    out = capsys.readouterr().out
    assert "[stable]" in out and "[canary, newest]" in out


@pytest.mark.parametrize("argv, message", [
    (["promote", "9"], "no version 9 in"),
    (["show", "9"], "no version 9 in"),
    (["rollback", "3"], "already the newest version"),
])
def test_versions_refusals_are_one_sentence_with_exit_code_2(tmp_path, capsys, argv, message):
    base = tmp_path / "exports"
    for version in (1, 2, 3):
        (base / "tfrec_lm" / str(version)).mkdir(parents=True)
    assert versions_main(["--export-base", str(base), "--models-config", str(tmp_path / "m.config"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("error: ")


def test_since_with_no_data_names_the_data_dates(patched, synthetic, capsys):
    year = pd.to_datetime(synthetic.interactions["timestamp"].min(), unit="s", utc=True).year
    assert refused(capsys, train_main, [*TINY, "--since", "2031-01-01"],
                   f"--since 1924992000 (2031-01-01 00:00 UTC): no training interaction at or after that time; "
                   f"the training interactions run from {year}-")


def test_a_killed_runs_backup_of_other_options_is_refused_without_resume(patched, capsys):
    from tfrec_lm.registry.runs import RunFolder

    folder = RunFolder(patched / "runs" / "killed")
    folder.start_backup({"config": {"learning_rate": 0.5}, "data": "another"})
    assert refused(capsys, train_main, [*TINY, "--output-dir", str(folder.path)],
                   "holds the backup of a killed run with other options")
    assert folder.backup()["identity"]["data"] == "another"  # left as it was


def test_a_run_killed_after_its_export_does_not_publish_twice(patched, monkeypatch):
    """Killed after the version was renamed into place, before metrics.json: the rerun finishes the record."""
    from tfrec_lm import training

    config = cli_config(*TINY, "--export")
    real = training.write_json_atomically

    def killed(path, value):
        if Path(path).name == "metrics.json":
            raise KeyboardInterrupt
        real(path, value)

    monkeypatch.setattr(training, "write_json_atomically", killed)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    versions = ModelVersions(patched / "exports", "tfrec_lm")
    assert versions.versions() == [1] and not (patched / "runs" / "tfrec_lm" / "metrics.json").exists()
    monkeypatch.setattr(training, "write_json_atomically", real)
    again = train(config)
    assert versions.versions() == [1] and Path(again.export_path).resolve() == versions.path(1).resolve()
    record = json.loads((patched / "runs" / "tfrec_lm" / "metrics.json").read_text())
    assert record["run_id"] == versions.manifest(1)["run_id"]
