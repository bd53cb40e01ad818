"""Tests of tfrec_lm.config and the `python -m tfrec_lm.train` command line:
config files (YAML/JSON) with unknown-key errors, validation, option precedence and
the CLI's exit codes and messages."""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tfrec_lm.config import PRESETS, TrainConfig, load_config_file
from tfrec_lm.errors import ConfigError
from tfrec_lm.train import build_parser, config_from_args

REPO = Path(__file__).resolve().parents[1]


def parse(*argv) -> TrainConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


def cli(*argv, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "tfrec_lm.train", *argv], capture_output=True, text=True,
                          cwd=str(cwd), env=env, timeout=300)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- config files and validation


@pytest.mark.parametrize("name,text", [
    ("bad.yaml", "epochs: 2\nlearning_rat: 0.01\n"),
    ("bad.json", json.dumps({"epochs": 2, "learning_rat": 0.01})),
])
def test_unknown_key_in_config_file_names_the_key(tmp_path, name, text):
    path = write(tmp_path / name, text)
    with pytest.raises(ConfigError, match="learning_rat"):
        parse("--config", str(path))
    with pytest.raises(ConfigError, match="learning_rat"):
        TrainConfig.from_dict(load_config_file(path))


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="bogus"):
        TrainConfig.from_dict({"epochs": 1, "bogus": True})


def test_config_file_accepts_dashes_and_both_formats(tmp_path):
    yaml_path = write(tmp_path / "c.yaml", "batch-size: 32\nuser_tower: history-text\nitem-ids: false\n")
    json_path = write(tmp_path / "c.json", json.dumps({"batch-size": 32, "user_tower": "history-text",
                                                      "item-ids": False}))
    for path in (yaml_path, json_path):
        assert load_config_file(path) == {"batch_size": 32, "user_tower": "history-text", "item_ids": False}
        config = parse("--config", str(path))
        assert (config.batch_size, config.user_tower, config.item_ids) == (32, "history-text", False)


@pytest.mark.parametrize("name,text,match", [
    ("missing.yaml", None, "not found"),
    ("broken.yaml", "epochs: [1,\n", "not valid YAML"),
    ("broken.json", "{\"epochs\": 1,", "not valid JSON"),
    ("list.yaml", "- 1\n- 2\n", "mapping"),
])
def test_bad_config_files_raise_config_error(tmp_path, name, text, match):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config_file(path)


def test_empty_config_file_is_no_change(tmp_path):
    assert load_config_file(write(tmp_path / "empty.yaml", "")) == {}


@pytest.mark.parametrize("changes,match", [
    ({"finetune": "partial"}, "finetune"),
    ({"negatives": "random"}, "negatives"),
    ({"user_tower": "mlp"}, "user_tower"),
    ({"index": "faiss"}, "index"),
    ({"data": "ml-1m"}, "data"),
    ({"epochs": 0}, "epochs"),
    ({"batch_size": -1}, "batch_size"),
    ({"top_k": 0}, "top_k"),
    ({"dropout": 1.0}, "dropout"),
    ({"temperature": 0.0}, "temperature"),
    ({"data": "files"}, "--interactions"),
    ({"item_text": False, "item_ids": False}, "item-ids"),
    ({"negatives": "catalog", "finetune": "full"}, "in-batch"),
    ({"negatives": "catalog", "finetune": "top-k"}, "in-batch"),
])
def test_invalid_values_raise_config_error(changes, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig().replace(**changes)
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(changes)


def test_valid_combinations_pass():
    TrainConfig().replace(negatives="in-batch", finetune="full").validate()
    TrainConfig().replace(negatives="in-batch", finetune="top-k", trainable_layers=1).validate()
    TrainConfig().replace(data="files", interactions="x.csv").validate()
    for preset in PRESETS.values():
        TrainConfig.from_dict(preset)


def test_negatives_catalog_with_full_finetune_from_flags():
    with pytest.raises(ConfigError, match="finetune frozen"):
        parse("--negatives", "catalog", "--finetune", "full")
    # The GPU preset fine-tunes with in-batch negatives; asking it for catalog negatives fails.
    with pytest.raises(ConfigError):
        parse("--preset", "gpu", "--negatives", "catalog")


@pytest.mark.parametrize("values", [{"epochs": "ten"}, {"dropout": "high"}, {"batch_size": "64"},
                                    {"epochs": True}])
def test_wrongly_typed_config_values_raise_config_error(values):
    with pytest.raises(ConfigError):
        TrainConfig.from_dict(values)


def test_yaml_exponent_float_is_accepted(tmp_path):
    # PyYAML reads `1e-3` (no dot) as text; a float option still takes it.
    values = load_config_file(write(tmp_path / "lr.yaml", "learning_rate: 1e-3\n"))
    assert TrainConfig.from_dict(values).learning_rate == 0.001


def test_string_boolean_in_config_is_rejected():
    with pytest.raises(ConfigError, match="export"):
        TrainConfig.from_dict({"export": "false"})


# ---------------------------------------------------------------- precedence


def test_defaults_without_arguments():
    assert parse() == TrainConfig()


def test_precedence_defaults_preset_file_flags(tmp_path):
    tiny = PRESETS["tiny"]
    config = parse("--preset", "tiny")
    assert (config.epochs, config.batch_size, config.max_history) == (tiny["epochs"], tiny["batch_size"],
                                                                      tiny["max_history"])
    assert config.learning_rate == TrainConfig().learning_rate  # not in the preset: the default

    path = write(tmp_path / "c.yaml", "epochs: 3\nembedding_dim: 24\nexport: false\nlearning-rate: 0.01\n")
    config = parse("--preset", "tiny", "--config", str(path))
    assert config.epochs == 3 and config.embedding_dim == 24  # file over preset
    assert config.batch_size == tiny["batch_size"]  # preset where the file is silent
    assert config.export is False and config.learning_rate == 0.01
    assert config.weight_decay == TrainConfig().weight_decay  # default where all are silent

    config = parse("--preset", "tiny", "--config", str(path), "--epochs", "5", "--export",
                   "--batch-size", "8")
    assert (config.epochs, config.export, config.batch_size) == (5, True, 8)  # flags over everything
    assert config.embedding_dim == 24 and config.max_history == tiny["max_history"]
    assert config.learning_rate == 0.01

    config = parse("--config", str(path), "--no-item-ids", "--top-k", "7", "--dropout", "0.5")
    assert (config.item_ids, config.top_k, config.dropout, config.epochs) == (False, 7, 0.5, 3)
    assert config.batch_size == TrainConfig().batch_size  # default preset `cpu` is empty


def test_flags_are_typed():
    config = parse("--max-train-examples", "100", "--time-budget-minutes", "1.5", "--temperature", "0.1",
                   "--interactions", "a.csv", "--data", "files")
    assert config.max_train_examples == 100 and isinstance(config.max_train_examples, int)
    assert config.time_budget_minutes == 1.5 and config.temperature == 0.1
    assert config.interactions == "a.csv"


# ---------------------------------------------------------------- the command line


def test_help_lists_every_field_as_a_flag():
    text = build_parser().format_help()
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        assert flag in text, flag
        if field.type in (bool, "bool"):
            assert "--no-" + field.name.replace("_", "-") in text, field.name
    for option in ("--config", "--preset"):
        assert option in text


def test_cli_help_exits_zero(tmp_path):
    completed = cli("--help", cwd=tmp_path)
    assert completed.returncode == 0
    for field in dataclasses.fields(TrainConfig):
        assert "--" + field.name.replace("_", "-") in completed.stdout


def assert_clean_error(completed, *needles):
    assert completed.returncode == 2, (completed.returncode, completed.stderr[-2000:])
    assert "Traceback" not in completed.stderr
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), completed.stderr[-2000:]
    for needle in needles:
        assert needle in last
    return last


def test_cli_bad_config_exits_2_with_one_line(tmp_path):
    path = write(tmp_path / "bad.yaml", "epochs: 2\nlearning_rat: 0.01\n")
    completed = cli("--config", str(path), "--output-dir", str(tmp_path / "out"), cwd=tmp_path)
    assert_clean_error(completed, "learning_rat")
    assert len(completed.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_catalog_with_full_finetune_exits_2(tmp_path):
    completed = cli("--negatives", "catalog", "--finetune", "full", cwd=tmp_path)
    assert_clean_error(completed, "in-batch")
    assert len(completed.stderr.strip().splitlines()) == 1


def test_cli_invalid_choice_is_an_argparse_error(tmp_path):
    completed = cli("--finetune", "partial", cwd=tmp_path)
    assert completed.returncode == 2 and "invalid choice" in completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize("text,needle", [("epochs: ten\n", "epochs"), ("1: 2\n", "1")])
def test_cli_wrongly_typed_config_file_exits_2(tmp_path, text, needle):
    path = write(tmp_path / "typed.yaml", text)
    completed = cli("--config", str(path), cwd=tmp_path)
    assert_clean_error(completed, needle)


def test_non_string_config_key_raises_config_error(tmp_path):
    with pytest.raises(ConfigError):
        load_config_file(write(tmp_path / "intkey.yaml", "1: 2\n"))


def test_cli_missing_interactions_file_exits_2_before_loading_the_encoder(tmp_path):
    # The encoder is a folder that does not exist: had the CLI loaded the encoder before
    # the data, the error would be about the encoder, not the interactions file.
    completed = cli("--data", "files", "--interactions", "missing.csv", "--encoder", str(tmp_path / "no-encoder"),
                    "--output-dir", str(tmp_path / "out"), "--export-base", str(tmp_path / "exports"), cwd=tmp_path)
    last = assert_clean_error(completed, "missing.csv")
    assert "not found" in last
    assert not (tmp_path / "out").exists() and not (tmp_path / "exports").exists()


# ---------------------------------------------------------------- data that cannot train (issue 11, section 3)


def run_main_on(tmp_path, capsys, text):
    """Runs the CLI in-process on an interactions file; the encoder does not exist, so an
    error raised after the data stage would be about the encoder, not the data."""
    from tfrec_lm.train import main

    path = write(tmp_path / "inter.csv", text)
    code = main(["--data", "files", "--interactions", str(path), "--encoder", str(tmp_path / "no-encoder"),
                 "--output-dir", str(tmp_path / "out"), "--export-base", str(tmp_path / "exports")])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and last.count(". ") == 0, err[-2000:]
    assert not (tmp_path / "exports").exists()
    return last


@pytest.mark.parametrize("text,needle", [
    ("user_id,item_id,timestamp\n", "no interactions to use: the file has no data rows"),
    ("user_id,item_id,timestamp\nu1,a,x\nu1,,5\n", "no interactions to use: all 2 rows break the schema"),
])
def test_cli_data_without_usable_rows_exits_2(tmp_path, capsys, text, needle):
    assert needle in run_main_on(tmp_path, capsys, text)


def test_cli_too_few_interactions_for_a_training_example_exits_2(tmp_path, capsys):
    # Three interactions per user: leave-one-out leaves each user one training item, which
    # is no (history, target) example.
    rows = [f"u{u},i{k},{10 * u + k}" for u in range(4) for k in range(3)]
    last = run_main_on(tmp_path, capsys, "user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    assert "no training examples" in last and "at least 4 interactions" in last and "4 users" in last


def test_cli_prints_the_data_report_once_with_the_file_of_every_bad_row(tmp_path, capsys, monkeypatch):
    """A real (tiny) run through `main`: the data report is printed once, after training, with
    the path of the CSV that lists every bad row; the data stage only logs it (at INFO), so
    the CLI's own WARNING log (as `logging.basicConfig` sets it up) does not show it again."""
    import csv
    import io
    import logging

    from tfrec_lm import bert
    from tfrec_lm.train import main

    good = [f"u{u},i{(u + k) % 7},{100 * u + k}" for u in range(6) for k in range(6)]
    bad = [f"u9,i1,not-a-time-{k}" for k in range(8)]
    path = write(tmp_path / "inter.csv", "user_id,item_id,timestamp\n" + "\n".join(good + bad) + "\n")
    tokenizer = bert.tiny_tokenizer([f"i{k}" for k in range(7)], tmp_path / "tokenizer")
    monkeypatch.setattr(bert, "load_bert", lambda spec: (bert.tiny_bert(tokenizer.vocab_size, seed=0), tokenizer))
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setLevel(logging.WARNING)
    logging.getLogger().addHandler(handler)
    try:
        code = main(["--preset", "tiny", "--data", "files", "--interactions", str(path), "--no-export",
                     "--output-dir", str(tmp_path / "out"), "--export-base", str(tmp_path / "exports")])
    finally:
        logging.getLogger().removeHandler(handler)
    printed = capsys.readouterr()
    assert code == 0, printed.err[-2000:]
    everything = printed.out + printed.err + log.getvalue()
    assert everything.count("8 bad rows left out") == 1, everything[-3000:]
    assert everything.count("not-a-time-0") == 1 and "not-a-time-5" not in everything  # the first five only
    listing = tmp_path / "out" / "bad_rows.csv"
    assert f"every bad row (line, column, reason, value): {listing}" in printed.out
    with open(listing, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["line"], r["column"], r["value"]) for r in rows] == [
        (str(len(good) + 2 + k), "timestamp", f"not-a-time-{k}") for k in range(8)]
