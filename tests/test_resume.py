"""A run that dies resumes (`BackupAndRestore` plus the callbacks' states and the input position).

Each run is `tests/resume_helper.py` in its own process (the tiny preset on the synthetic
data, a tiny random BERT, dropout and ID dropout 0 (their random draws are not part
of a backup), 3 epochs of 49 steps of 16 examples): one run is
SIGKILLed right after its K-th backup (`TFREC_LM_TEST_KILL_AFTER_BACKUP`), then the same
command runs again and must resume from the backup, not start over, and end with the
uninterrupted run's test metrics, validation NDCG@10 and losses to the last digit.
"""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_config
from tfrec_lm.errors import ConfigError
from tfrec_lm.fitting import run_identity
from tfrec_lm.train import build_parser, config_from_args

HELPER = Path(__file__).with_name("resume_helper.py")
STEPS = 49  # ceil(780 training examples / 16)


def run_helper(out: Path, *args, kill_after: int = 0) -> dict:
    """Runs the helper; the result line, or None when it was killed as asked."""
    env = {k: v for k, v in os.environ.items() if k != "TFREC_LM_TEST_KILL_AFTER_BACKUP"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    if kill_after:
        env["TFREC_LM_TEST_KILL_AFTER_BACKUP"] = str(kill_after)
    done = subprocess.run([sys.executable, str(HELPER), str(out), "--backup-steps", "5", *args],
                          env=env, capture_output=True, text=True, timeout=300)
    if kill_after:
        assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
        assert not (out / "run" / "metrics.json").exists()
        return None
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_same_run(resumed: dict, uninterrupted: dict):
    assert resumed["test"] == uninterrupted["test"]  # every metric, every slice, every digit
    assert resumed["validation_ndcg"] == uninterrupted["validation_ndcg"]
    assert resumed["train_loss"] == uninterrupted["train_loss"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    result = run_helper(tmp_path_factory.mktemp("uninterrupted"))
    assert result["start"] is None and result["epochs_trained"] == 3 and len(result["validation_ndcg"]) == 3
    return result


@pytest.fixture(scope="module")
def resumed_mid_epoch(tmp_path_factory):
    """Killed in the second epoch: 10 backups in the first (steps 5, ..., 45, its end), then steps 5 and 10."""
    out = tmp_path_factory.mktemp("killed")
    run_helper(out, kill_after=12)
    states = json.loads((out / "run" / "backup" / "callbacks.json").read_text())["states"]
    assert [s["epochs_done"] for s in states] == [1]
    return out, run_helper(out)


def test_killed_run_resumes_mid_epoch_to_the_last_digit(resumed_mid_epoch, uninterrupted):
    out, resumed = resumed_mid_epoch
    assert resumed["start"] == [1, 10]  # epoch 2, after its first 10 steps: not from the start
    assert resumed["fit_calls"] == 1 and resumed["epochs_trained"] == 2 and not resumed["reused"]
    assert_same_run(resumed, uninterrupted)
    assert (out / "run" / "metrics.json").is_file()
    assert not (out / "run" / "backup").exists()  # removed once the run is recorded


def test_finished_run_is_not_redone(resumed_mid_epoch, uninterrupted):
    out, _ = resumed_mid_epoch
    before = (out / "run" / "metrics.json").read_text()
    again = run_helper(out)
    assert again["reused"] and again["fit_calls"] == 0 and again["epochs_trained"] == 0
    assert_same_run(again, uninterrupted)
    assert (out / "run" / "metrics.json").read_text() == before


def test_run_killed_after_training_does_not_train_again(tmp_path, uninterrupted):
    """Killed after the last epoch's backup (30 backups), before metrics.json: evaluates, no training."""
    run_helper(tmp_path, kill_after=3 * 10)
    resumed = run_helper(tmp_path)
    assert resumed["start"] == [3, 0] and resumed["fit_calls"] == 0 and not resumed["reused"]
    assert_same_run(resumed, uninterrupted)


def test_resumes_mid_epoch_with_steps_per_epoch(tmp_path):
    """`--steps-per-epoch` (one repeating pipeline): killed at epoch 2, step 5 (backups: step 5, epoch end, step 5)."""
    uninterrupted = run_helper(tmp_path / "whole", "--steps-per-epoch", "7")
    run_helper(tmp_path / "killed", "--steps-per-epoch", "7", kill_after=3)
    resumed = run_helper(tmp_path / "killed", "--steps-per-epoch", "7")
    assert resumed["start"] == [1, 5] and resumed["epochs_trained"] == 2
    assert_same_run(resumed, uninterrupted)


def backup_of(tmp_path, synthetic):
    """A run folder with a backup of the tiny config (a `chief` folder in it), and what made it."""
    from tfrec_lm.data.prepare import prepare_data
    from tfrec_lm.registry.runs import RunFolder

    config = tiny_config(tmp_path)
    data = prepare_data(config, synthetic)
    folder = RunFolder(tmp_path / "backup-run")
    run_id = folder.start_backup(run_identity(config, data))
    (folder.backup_dir / "chief").mkdir()
    return folder, config, data, run_id


def test_backup_of_other_options_is_dropped(tmp_path, synthetic):
    folder, config, data, run_id = backup_of(tmp_path, synthetic)
    assert folder.start_backup(run_identity(config.replace(backup_steps=0), data)) == run_id  # same run
    assert (folder.backup_dir / "chief").is_dir()
    other = run_identity(config.replace(learning_rate=0.5), data)
    assert folder.start_backup(other) != run_id
    assert not (folder.backup_dir / "chief").exists() and folder.backup()["identity"] == other


def test_backup_of_other_options_is_kept_with_resume(tmp_path, synthetic):
    folder, config, data, run_id = backup_of(tmp_path, synthetic)
    other = run_identity(config.replace(learning_rate=0.5), data)
    with pytest.raises(ConfigError, match="holds the backup of a killed run with other options .*--resume"):
        folder.claim(other)
    assert folder.claim(other, resume=True) == "resume"
    assert folder.start_backup(other, adopt=True) == run_id and (folder.backup_dir / "chief").is_dir()


def test_backup_steps_option():
    assert config_from_args(build_parser().parse_args(["--backup-steps", "0"])).backup_steps == 0
    assert config_from_args(build_parser().parse_args([])).backup_steps == 500
    with pytest.raises(ConfigError, match="backup_steps"):
        config_from_args(build_parser().parse_args(["--backup-steps", "-1"]))
