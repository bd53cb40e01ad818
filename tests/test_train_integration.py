"""End to end on the real data and the pretrained encoder: the CLI a user runs."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_cli_trains_evaluates_and_exports_on_movielens(tmp_path):
    runs, exports = tmp_path / "runs", tmp_path / "exports"
    completed = subprocess.run(
        [sys.executable, "-m", "tfrec_lm.train", "--epochs", "1", "--output-dir", str(runs),
         "--export-base", str(exports)],
        capture_output=True, text=True, timeout=1200,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "most-popular" in completed.stdout and "migrating" in completed.stdout
    summary = json.loads((runs / "metrics.json").read_text())
    test = summary["test"]
    model, popular, export = test["model"]["all"], test["most_popular"]["all"], test["export"]["all"]
    assert model["count"] == 943 and test["model"]["migrating"]["count"] == 314
    # One epoch over the frozen MiniLM cache already beats popularity clearly.
    assert model["NDCG@10"] > popular["NDCG@10"] + 0.01, (model, popular)
    # The SavedModel answers like the in-memory model (ScaNN is approximate; exclusion is exact).
    assert export["NDCG@10"] == pytest.approx(model["NDCG@10"], abs=0.01), (export, model)
    assert (exports / "tfrec_lm" / "1" / "saved_model.pb").is_file()
    assert (runs / "tensorboard").is_dir()
    assert any((runs / "checkpoints").iterdir())
