"""What `python -m tfrec_lm.train` shows on its console.

The CLI runs for real in a subprocess, in the `tiny` preset, on the synthetic data written
as CSV files and a tiny random BERT saved as an encoder folder, its output piped (as in CI
or a log file): TensorFlow's and CUDA's C++ lines, absl's and transformers' notices stay
out of stderr, Keras prints one line per epoch (no progress bar redraws), and `-v` brings
the third-party lines back. The summary says in words whether the run beats the
most-popular baseline printed beside it.
"""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import io
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tfrec_lm import training
from tfrec_lm.bert import tiny_bert, tiny_tokenizer
from tfrec_lm.console import keras_verbosity
from tfrec_lm.errors import ConfigError
from tfrec_lm.evaluation.metrics import baseline_verdicts
from tfrec_lm.train import main

REPO = Path(__file__).resolve().parents[1]
# TensorFlow's own C++ log line: "2026-01-01 12:00:00.123456: I tensorflow/...".
TF_CPP_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] ", re.MULTILINE)
NOISE = ("cuInit", "cpu_feature_guard", "cudart_stub", "oneDNN", "TensorFlow and JAX classes are deprecated",
         "PredictCost", "absl::InitializeLog", "initializing TFBertModel", "is slow compared to the batch time")


@pytest.fixture(scope="module")
def cli_inputs(synthetic, tmp_path_factory):
    """The synthetic interactions and items as CSV files, and a tiny BERT encoder folder."""
    root = tmp_path_factory.mktemp("console")
    synthetic.interactions.to_csv(root / "interactions.csv", index=False)
    items = synthetic.items.copy()
    items["genres"] = ["|".join(g) for g in items["genres"]]
    items.to_csv(root / "items.csv", index=False)
    words = re.findall(r"[a-z0-9]+", " ".join(synthetic.items["text"]).lower())
    tokenizer = tiny_tokenizer(words, root / "encoder")
    tiny_bert(tokenizer.vocab_size, seed=0).save_pretrained(str(root / "encoder"))
    return root


def run_cli(root: Path, work: Path, *flags):
    """The CLI in a subprocess, stdout and stderr piped, without the user's log settings."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    for name in ("TF_CPP_MIN_LOG_LEVEL", "TRANSFORMERS_VERBOSITY"):
        env.pop(name, None)
    argv = ["--preset", "tiny", "--data", "files", "--interactions", str(root / "interactions.csv"),
            "--items", str(root / "items.csv"), "--encoder", str(root / "encoder"),
            "--output-dir", str(work / "run"), "--export-base", str(work / "exports"), *flags]
    return subprocess.run([sys.executable, "-m", "tfrec_lm.train", *argv], capture_output=True, text=True,
                          cwd=str(work), env=env, timeout=300)


def test_piped_run_prints_epoch_lines_and_no_third_party_noise(cli_inputs, tmp_path):
    completed = run_cli(cli_inputs, tmp_path, "--epochs", "2", "--index", "brute-force")
    assert completed.returncode == 0, completed.stderr[-3000:]
    for needle in NOISE:
        assert needle not in completed.stderr, f"{needle!r} on stderr:\n{completed.stderr[-3000:]}"
    assert not TF_CPP_LINE.search(completed.stderr), completed.stderr[-3000:]
    out = completed.stdout
    assert "Epoch 1/2" in out and "Epoch 2/2" in out
    epoch_lines = [line for line in out.splitlines() if re.match(r"^\d+/\d+ - .*val_ndcg_at_10: ", line)]
    assert len(epoch_lines) == 2, out
    assert "\r" not in out and "\x08" not in out, "a progress bar was drawn into a pipe"
    # The summary's verdict agrees with the recorded numbers.
    test = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    model, popular = test["model"]["all"]["NDCG@10"], test["most_popular"]["all"]["NDCG@10"]
    verdict = "tfrec_lm beats the most-popular baseline" if model > popular else "tfrec_lm loses to most-popular"
    assert verdict in out, out


def test_verbose_brings_the_third_party_lines_back(cli_inputs, tmp_path):
    completed = run_cli(cli_inputs, tmp_path, "-v", "--no-export")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert TF_CPP_LINE.search(completed.stderr), completed.stderr[-3000:]
    assert "TensorFlow and JAX classes are deprecated" in completed.stderr
    assert " INFO " in completed.stderr  # -v is also the library's INFO logging


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_keras_progress_bar_only_on_a_terminal(monkeypatch, tmp_path):
    assert keras_verbosity(Terminal()) == 1 and keras_verbosity(io.StringIO()) == 2
    seen = []

    def fake_train(config, verbose=0, **kwargs):
        seen.append(verbose)
        raise ConfigError("stop here")

    monkeypatch.setattr(training, "train", fake_train)
    argv = ["-v", "--preset", "tiny", "--output-dir", str(tmp_path / "run"), "--export-base", str(tmp_path / "e")]
    for stdout, expected in ((Terminal(), 1), (io.StringIO(), 2)):
        monkeypatch.setattr(sys, "stdout", stdout)
        assert main(argv) == 2
        assert seen[-1] == expected


def table(model: float, popular: float) -> dict:
    return {"tfrec_lm": {"all": {"NDCG@10": model}}, "most-popular": {"all": {"NDCG@10": popular}}}


def test_baseline_verdicts_say_plainly_who_wins():
    (beats,) = baseline_verdicts(table(0.0973, 0.0432))
    assert beats.startswith("tfrec_lm beats the most-popular baseline") and "2.25x" in beats
    (loses,) = baseline_verdicts(table(0.0244, 0.0432))
    assert loses.startswith("WORSE THAN THE BASELINE: tfrec_lm loses to most-popular")
    assert "0.0244 vs 0.0432" in loses
    (ties,) = baseline_verdicts(table(0.05, 0.05))
    assert "only ties" in ties
    assert baseline_verdicts({"tfrec_lm": {"all": {"NDCG@10": 0.1}}}) == []


def test_cli_summary_says_when_the_run_loses_to_the_baseline(monkeypatch, tmp_path, capsys):
    def slices(value):
        return {"all": {"HR@10": value, "NDCG@10": value, "MRR@10": value, "count": 40}}

    metrics = {"model": slices(0.02), "most_popular": slices(0.04), "export": slices(0.05)}
    result = types.SimpleNamespace(dataset=types.SimpleNamespace(reports=[]), train_seconds=1.0,
                                   validation_ndcg=[0.03], metrics=metrics, gate=None, export_path=None)
    monkeypatch.setattr(training, "train", lambda config, verbose=0, **kwargs: result)
    argv = ["-v", "--preset", "tiny", "--output-dir", str(tmp_path / "run"), "--export-base", str(tmp_path / "e")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "WORSE THAN THE BASELINE: tfrec_lm loses to most-popular on NDCG@10 over all users: 0.0200 vs 0.0400" in out
    assert "export (serving_default) beats the most-popular baseline on NDCG@10 over all users: 0.0500 vs 0.0400" in out


def test_the_slow_callback_notice_is_filtered_and_other_tensorflow_warnings_are_not():
    import logging

    from tfrec_lm.console import _drop_slow_callback_notice

    def record(message):
        return logging.LogRecord("tensorflow", logging.WARNING, __file__, 1, message, None, None)

    assert not _drop_slow_callback_notice(record("Callback method `on_train_batch_end` is slow compared to the "
                                                 "batch time (batch time: 0.0185s vs `on_train_batch_end` time: "
                                                 "0.0632s). Check your callbacks."))
    assert _drop_slow_callback_notice(record("Model failed to serialize as JSON."))
