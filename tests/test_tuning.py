"""KerasTuner search over tfrec_lm (tuning/): search space, tuners, resume, CLI.

Trials really train (tiny random BERT, synthetic data, one epoch) through
`tfrec_lm.training.train`; a counting wrapper around it tells which trials ran.
"""

import dataclasses
import re
from pathlib import Path

import tfrec_lm  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)

import math  # noqa: E402

import keras_tuner as kt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402

from tfrec_lm import training  # noqa: E402
from tfrec_lm.data import prepare  # noqa: E402
from tfrec_lm.models import factory as model_factory  # noqa: E402
from tfrec_lm.bert import tiny_bert, tiny_tokenizer  # noqa: E402
from tfrec_lm.config import PRESETS, TrainConfig, load_config_file  # noqa: E402
from tfrec_lm.errors import ConfigError  # noqa: E402
from tfrec_lm.data.schema import BadRow, LoadReport  # noqa: E402
from tfrec_lm.data.synthetic import synthetic_migration  # noqa: E402

from tuning import (OBJECTIVE_NAME, Range, RecommenderHyperModel, best_config, best_trial,  # noqa: E402
                    format_trials_table, make_tuner, trial_rows, write_config)
from tuning import search as search_cli  # noqa: E402

TRAIN = training.train  # the real one, before any test wraps it


@pytest.fixture(scope="module")
def tiny_data():
    """20 users x 10 interactions: 140 training examples, 20 validation targets, 48 items."""
    dataset, _ = synthetic_migration(num_users=20, length=10, seed=3)
    return dataset


@pytest.fixture(scope="module")
def tiny_encoder(tiny_data, tmp_path_factory):
    tokenizer = tiny_tokenizer(tiny_data.items["text"].tolist(), tmp_path_factory.mktemp("tuning_tokenizer"))

    def factory():
        return tiny_bert(tokenizer.vocab_size, hidden_size=16, num_layers=1, num_heads=2,
                         intermediate_size=32, max_position=64, seed=0), tokenizer

    return factory


def tiny_base(directory: Path) -> TrainConfig:
    """The tiny preset, one epoch, two full batches (one trace), outputs under `directory`."""
    values = dict(PRESETS["tiny"])
    values.update(epochs=1, max_history=5, batch_size=64, max_train_examples=128, export=False,
                  output_dir=str(directory / "base_run"), export_base=str(directory / "exports"))
    return TrainConfig.from_dict(values)


def tiny_hypermodel(directory: Path) -> RecommenderHyperModel:
    return RecommenderHyperModel(
        tiny_base(directory),
        fixed={"finetune": "frozen", "negatives": "catalog", "user_tower": "item-sequence"},
        space={"learning_rate": Range(1e-3, 1e-2, sampling="log"), "embedding_dim": [16, 32],
               "dropout": [0.0, 0.1]},
        tune=["learning_rate", "embedding_dim", "dropout"],
    )


class CountingTrain:
    """Wraps `tfrec_lm.training.train`: records each call's trial and can interrupt one."""

    def __init__(self, interrupt_at=None):
        self.calls = []
        self.interrupt_at = interrupt_at

    def __call__(self, config, dataset=None, encoder_factory=None, verbose=0):
        self.calls.append(Path(config.output_dir).parent.name)
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt("simulated Ctrl-C in the middle of a trial")
        return TRAIN(config, dataset=dataset, encoder_factory=encoder_factory, verbose=verbose)


def event_summaries(logdir: Path):
    """(tag, plugin_name) of every summary value in the event files under `logdir`."""
    found = []
    for path in logdir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found.append((value.tag, value.metadata.plugin_data.plugin_name))
    return found


def test_random_search_resumes_after_interruption_and_best_config_trains(tiny_data, tiny_encoder, tmp_path,
                                                                        monkeypatch):
    hypermodel = tiny_hypermodel(tmp_path)
    counting = CountingTrain(interrupt_at=2)
    monkeypatch.setattr(training, "train", counting)
    options = dict(max_trials=2, directory=str(tmp_path / "search"), project_name="tiny", seed=7)

    # First run: trial 0 completes, Ctrl-C arrives during trial 1.
    tuner = make_tuner("random", hypermodel, **options)
    with pytest.raises(KeyboardInterrupt):
        tuner.search(dataset=tiny_data, encoder_factory=tiny_encoder)
    assert counting.calls == ["trial_0", "trial_1"]
    interrupted_values = dict(tuner.oracle.trials["1"].hyperparameters.values)
    assert tuner.oracle.trials["0"].status == "COMPLETED"

    # A new process, same directory/project: only the interrupted trial runs, with its values.
    counting.interrupt_at = None
    resumed = make_tuner("random", tiny_hypermodel(tmp_path), **options)
    assert resumed.oracle.trials["0"].status == "COMPLETED"
    resumed.search(dataset=tiny_data, encoder_factory=tiny_encoder)
    assert counting.calls == ["trial_0", "trial_1", "trial_1"]
    trials = resumed.oracle.trials
    assert sorted(trials) == ["0", "1"]
    assert dict(trials["1"].hyperparameters.values) == interrupted_values
    for trial_id, trial in trials.items():
        assert trial.status == "COMPLETED"
        assert math.isfinite(trial.score) and 0.0 <= trial.score <= 1.0
        # The objective is the run's best validation NDCG@10 (SPEC §2), as train() reported it.
        summary = yaml.safe_load((Path(resumed.get_trial_dir(trial_id)) / "run" / "metrics.json").read_text())
        assert trial.score == pytest.approx(max(summary["validation_ndcg_at_10"]))
        assert not (Path(resumed.get_trial_dir(trial_id)) / "run" / "checkpoints").exists()

    # Once more: the search is complete, nothing trains.
    again = make_tuner("random", tiny_hypermodel(tmp_path), **options)
    again.search(dataset=tiny_data, encoder_factory=tiny_encoder)
    assert len(counting.calls) == 3
    assert resumed.changed_settings == [] and again.changed_settings == []
    # Resuming with another search space is allowed but reported.
    narrowed = RecommenderHyperModel(tiny_hypermodel(tmp_path).base, space={"learning_rate": [1e-3, 1e-2]},
                                     tune=["learning_rate"])
    other = make_tuner("random", narrowed, budget_minutes=0.0, **options)
    other.search()
    assert other.changed_settings == ["space"] and len(counting.calls) == 3

    # TensorBoard HParams: one run per trial with its hyperparameters and the objective,
    # and the experiment's domains at the top.
    tensorboard = Path(again.project_dir) / "tensorboard"
    for trial_id in trials:
        assert len(list((tensorboard / f"trial_{trial_id}").glob("events.out.tfevents.*"))) == 1
        summaries = event_summaries(tensorboard / f"trial_{trial_id}")
        assert ("_hparams_/session_start_info", "hparams") in summaries
        assert any(tag == OBJECTIVE_NAME for tag, _ in summaries)
    assert ("_hparams_/experiment", "hparams") in event_summaries(tensorboard)

    # The table lists both trials.
    table = format_trials_table(trial_rows(again), best_id=best_trial(again).trial_id)
    assert table.count("COMPLETED") == 2 and "learning_rate=" in table

    # The best config: a file `python -m tfrec_lm.train --config` reads as is, with the best
    # trial's values, the base's output options (no trial paths), and it trains.
    best = best_trial(again)
    assert best.score == max(t.score for t in trials.values())
    path = write_config(best_config(again), tmp_path / "best.yaml", comment="best of the tiny search")
    assert "trial_" not in path.read_text()
    config = TrainConfig.from_dict(load_config_file(path))
    for name, value in best.hyperparameters.values.items():
        assert getattr(config, name) == value
    # Its own run folder beside the base run's, never the base run's (nor an export base).
    assert config.output_dir == str(tmp_path / "tiny-best") and config.export is False
    assert "export_base" not in load_config_file(path) and "output_dir" in load_config_file(path)
    from tfrec_lm.train import build_parser, config_from_args

    assert config_from_args(build_parser().parse_args(["--config", str(path)])) == config
    result = TRAIN(config, dataset=tiny_data, encoder_factory=tiny_encoder)
    assert len(result.validation_ndcg) == 1 and math.isfinite(result.validation_ndcg[0])


def test_cli_hyperband_search_writes_table_and_best_config(tiny_data, tiny_encoder, tmp_path, monkeypatch,
                                                         capsys):
    counting = CountingTrain()
    monkeypatch.setattr(training, "train", counting)
    # The data as read with one bad row: the search prints the data report once and lists the row.
    flawed = dataclasses.replace(tiny_data, reports=[LoadReport("inter.csv", 9, [
        BadRow(4, "timestamp 'soon' is not an integer", (("timestamp", "timestamp 'soon' is not an integer", "soon"),))])])
    monkeypatch.setattr(prepare, "load_training_data", lambda config: flawed)
    monkeypatch.setattr(model_factory, "pretrained_encoder_factory", lambda spec: tiny_encoder)
    best_path = tmp_path / "best_config.yaml"
    argv = ["--strategy", "hyperband", "--max-epochs", "1", "--directory", str(tmp_path / "runs"),
            "--project-name", "hb", "--preset", "tiny", "--best-config", str(best_path),
            "--set", "max_history=5", "--set", "batch_size=64", "--set", "max_train_examples=128",
            "--set", "finetune=frozen", "--set", "negatives=catalog", "--set", "user_tower=item-sequence",
            "--set", f"output_dir={tmp_path / 'out'}", "--set", "export=false",
            "--tune", "learning_rate,dropout", "--space", "learning_rate=1e-3..1e-2:log",
            "--space", "dropout=0.0,0.1"]
    assert search_cli.main(argv) == 0
    out = capsys.readouterr().out
    # Hyperband with max_epochs=1 has one bracket of one 1-epoch trial.
    assert len(counting.calls) == 1
    assert "COMPLETED" in out and "tuner/epochs=1" in out and "best config:" in out
    # One trial, one name: the summary table, KerasTuner's display and the trial folder agree.
    table = out[out.index("trials (objective"):].splitlines()
    trial_id, best_mark = table[2].split()[:2]
    assert best_mark == "*" and (tmp_path / "runs" / "hb" / f"trial_{trial_id}" / "run" / "metrics.json").is_file()
    assert re.findall(r"Search: Running Trial (\S+)", out) == [trial_id]
    assert re.findall(r"Trial (\S+) Complete", out) == [trial_id]
    assert f"best: trial {trial_id}," in out
    listing = tmp_path / "runs" / "hb" / "bad_rows.csv"
    assert out.count("inter.csv: 9 rows read, 1 bad rows left out") == 1 and str(listing) in out
    assert pd.read_csv(listing).values.tolist() == [["inter.csv", 4, "timestamp", "timestamp 'soon' is not an integer",
                                                     "soon"]]
    config = TrainConfig.from_dict(load_config_file(best_path))
    assert config.epochs == 1 and config.output_dir == str(tmp_path / "hb-best")
    assert config.finetune == "frozen" and config.max_train_examples == 128
    assert 1e-3 <= config.learning_rate <= 1e-2

    # The same command again resumes a finished search: nothing retrains, same best config.
    assert search_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "resuming after 1 completed trial(s)" in out
    assert len(counting.calls) == 1
    assert TrainConfig.from_dict(load_config_file(best_path)) == config


def test_time_budget_stops_before_a_trial_starts(tmp_path, monkeypatch):
    counting = CountingTrain()
    monkeypatch.setattr(training, "train", counting)
    tuner = make_tuner("random", tiny_hypermodel(tmp_path), max_trials=3, directory=str(tmp_path),
                       project_name="budget", budget_minutes=0.0)
    tuner.search()
    assert tuner.budget_spent and counting.calls == [] and tuner.oracle.trials == {}


def test_bayesian_optimization_second_trial_from_the_gaussian_process(tiny_data, tiny_encoder, tmp_path):
    pytest.importorskip("sklearn", reason="BayesianOptimization needs keras-tuner[bayesian] (scikit-learn)")
    tuner = make_tuner("bayesian", tiny_hypermodel(tmp_path), max_trials=2, num_initial_points=1,
                       directory=str(tmp_path), project_name="bayes", seed=3)
    tuner.search(dataset=tiny_data, encoder_factory=tiny_encoder)
    trials = tuner.oracle.trials
    assert [t.status for t in trials.values()] == ["COMPLETED", "COMPLETED"]
    assert all(math.isfinite(t.score) for t in trials.values())
    config = best_config(tuner)
    assert config.embedding_dim in (16, 32) and 1e-3 <= config.learning_rate <= 1e-2


def test_the_bayesian_tuner_hands_kerastuners_oracle_arguments_to_its_oracle(tmp_path):
    pytest.importorskip("sklearn", reason="BayesianOptimization needs keras-tuner[bayesian] (scikit-learn)")
    tuner = make_tuner("bayesian", tiny_hypermodel(tmp_path), max_trials=3, num_initial_points=2, beta=1.5,
                       max_consecutive_failed_trials=5, directory=str(tmp_path), project_name="args")
    oracle = tuner.oracle
    assert (oracle.max_trials, oracle.num_initial_points, oracle.beta, oracle.max_consecutive_failed_trials) == (
        3, 2, 1.5, 5)


def test_the_bayesian_oracle_never_runs_a_tried_point_again(tmp_path):
    pytest.importorskip("sklearn", reason="BayesianOptimization needs keras-tuner[bayesian] (scikit-learn)")
    from tuning.tuner import NoRepeatBayesianOracle

    hp = kt.HyperParameters()
    hp.Choice("item_fusion", ["sum", "gated"])
    hp.Choice("logit_adjustment", [0.0, 0.5])
    oracle = NoRepeatBayesianOracle(objective=kt.Objective(OBJECTIVE_NAME, "max"), max_trials=8,
                                    num_initial_points=1, seed=3)
    oracle.hyperparameters = hp
    oracle._set_project_dir(str(tmp_path), "oracle")
    seen = []
    while True:
        trial = oracle.create_trial("tuner0")
        if trial.status == "STOPPED":
            break
        values = (trial.hyperparameters.values["item_fusion"], trial.hyperparameters.values["logit_adjustment"])
        seen.append(values)
        # One point scores far above the rest: the Gaussian process's optimum stays there.
        oracle.update_trial(trial.trial_id, {OBJECTIVE_NAME: 1.0 if values == seen[0] else 0.0})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    assert len(seen) == len(set(seen)) == 4  # every point once, then the search stops


def test_search_space_respects_train_config_constraints():
    hypermodel = RecommenderHyperModel(TrainConfig())
    hp = kt.HyperParameters()
    hypermodel.build(hp)
    oracle = kt.oracles.RandomSearchOracle(objective=kt.Objective(OBJECTIVE_NAME, "max"), max_trials=500, seed=1)
    oracle.hyperparameters = hp.copy()
    seen, recency, scores, text_tuning, id_rates, unseen = set(), set(), set(), set(), set(), set()
    for _ in range(300):
        sample = hp.copy()
        sample.values = oracle._random_values()
        config = hypermodel.build(sample)  # validated
        assert config.finetune == "frozen" or config.negatives == "in-batch"
        if config.user_tower == "item-sequence":
            assert config.embedding_dim % config.num_heads == 0
        seen.add((config.finetune, config.negatives, config.user_tower))
        scores.add((config.similarity, config.temperature))
        recency.add((config.user_tower, config.time_features, config.long_short, config.short_window))
        text_tuning.add((config.finetune, config.text_tuning_steps))
        id_rates.add((config.item_ids, config.id_lr_multiplier))
        unseen.add((config.negatives, config.history_negatives))
    assert {("frozen", "catalog", "item-sequence"), ("frozen", "in-batch", "history-text"),
            ("top-k", "in-batch", "item-sequence"), ("full", "in-batch", "history-text")} <= seen
    assert not {s for s in seen if s[0] != "frozen" and s[1] == "catalog"}
    # The temperature is a knob of cosine scores only; raw dot products keep temperature 1.
    assert {t for s, t in scores if s == "dot"} == {1.0}
    assert len({t for s, t in scores if s == "cosine"}) > 50
    # Recency knobs: both settings of each on the item-sequence tower, never on history-text.
    sequence = {r for r in recency if r[0] == "item-sequence"}
    assert {r[1] for r in sequence} == {r[2] for r in sequence} == {True, False}
    assert {r[3] for r in sequence if r[2]} == {5, 10, 20}
    assert all(not r[1] and not r[2] for r in recency if r[0] == "history-text")

    # Text tuning is a knob of frozen encoders only.
    assert text_tuning == {("frozen", 0), ("frozen", 300), ("top-k", 0), ("full", 0)}
    assert "text_tuning_steps" not in RecommenderHyperModel(TrainConfig(item_text=False, item_ids=True)).space

    # The ID learning-rate multiplier is a knob of towers with IDs only.
    assert id_rates == {(True, 1.0), (True, 2.0), (True, 3.0), (False, 1.0)}
    # History negatives are a knob of both kinds of negatives.
    assert unseen == {(n, h) for n in ("catalog", "in-batch") for h in (True, False)}

    # The tiny search's pins and narrowed ranges hold.
    tiny = tiny_hypermodel(Path("/tmp"))
    assert set(tiny.space) == {"learning_rate", "embedding_dim", "dropout"}
    # ID-only item towers: item_ids is not a knob.
    assert "item_ids" not in RecommenderHyperModel(TrainConfig(item_text=False, item_ids=True)).space
    with pytest.raises(ConfigError, match="catalog"):
        RecommenderHyperModel(TrainConfig(), fixed={"negatives": "catalog"})
    with pytest.raises(ConfigError, match="not a tunable knob"):
        RecommenderHyperModel(TrainConfig(), space={"seed": [1, 2]})
    with pytest.raises(ConfigError, match="num_heads"):
        RecommenderHyperModel(TrainConfig(), space={"embedding_dim": [24], "num_heads": [1, 5]})


def test_trials_vary_only_live_knobs():
    """A knob that cannot matter to a trial has no value in it (KerasTuner conditional scopes),
    and a knob that cannot matter to any trial of a search is not in its space."""
    hypermodel = RecommenderHyperModel(TrainConfig())
    hp = kt.HyperParameters()
    hypermodel.build(hp)
    oracle = kt.oracles.RandomSearchOracle(objective=kt.Objective(OBJECTIVE_NAME, "max"), max_trials=500, seed=2)
    oracle.hyperparameters = hp.copy()
    finetunes, id_knobs = set(), set()
    for _ in range(200):
        sample = hp.copy()
        sample.values = oracle._random_values()
        config = hypermodel.build(sample)
        values = sample.values
        finetunes.add(config.finetune)
        if config.finetune != "top-k":  # a frozen (or fully tuned) encoder: no layer count to vary
            assert "trainable_layers" not in values and not sample.is_active("trainable_layers")
        else:
            assert values["trainable_layers"] == config.trainable_layers
        if not config.item_ids:
            assert not {"item_fusion", "id_dropout", "id_lr_multiplier"} & set(values), values
        else:
            id_knobs.add((values["item_fusion"], values["id_dropout"]))
        if config.similarity == "dot":
            assert "temperature" not in values
    assert finetunes == {"frozen", "top-k", "full"} and len(id_knobs) == 9  # sum, balanced, gated x 3 dropouts

    # Pinned parents take their children out of the search.
    frozen = RecommenderHyperModel(TrainConfig(), fixed={"finetune": "frozen"})
    assert "trainable_layers" not in frozen.space and "text_tuning_steps" in frozen.space
    hp = kt.HyperParameters()
    config = frozen.build(hp)
    assert "trainable_layers" not in hp.values and config.trainable_layers == TrainConfig().trainable_layers
    no_ids = RecommenderHyperModel(TrainConfig(), fixed={"item_ids": False})
    assert not {"item_fusion", "id_dropout", "id_lr_multiplier"} & set(no_ids.space)
    # Without item text no tower reads the encoder (item-sequence): no fine-tuning knobs, no fusion.
    ids_only = RecommenderHyperModel(TrainConfig(item_text=False, item_ids=True),
                                     fixed={"user_tower": "item-sequence", "negatives": "catalog"})
    assert not {"finetune", "trainable_layers", "item_fusion", "text_tuning_steps"} & set(ids_only.space)
    assert "id_dropout" in ids_only.space
    assert "id_dropout" not in RecommenderHyperModel(TrainConfig(cold_items="id")).space
    # Nested scopes: short_window is live only on the item-sequence tower with long_short on.
    hp = kt.HyperParameters()
    hp.Fixed("user_tower", "history-text")
    RecommenderHyperModel(TrainConfig(), tune=["user_tower", "long_short", "short_window"],
                          space={"user_tower": ["item-sequence", "history-text"]}).build(hp)
    assert not hp.is_active("short_window") and not hp.is_active("long_short")



def test_evidence_shrinkage_is_a_knob_only_where_the_tower_has_text_and_ids():
    """`item_fusion=evidence` needs a frozen encoder, the item text and IDs: the search offers it (and its
    k, `evidence_shrinkage`, in a nested conditional scope) only where every trial could run it."""
    frozen = RecommenderHyperModel(TrainConfig(), fixed={"finetune": "frozen"})
    assert "evidence" in frozen.space["item_fusion"] and "evidence_shrinkage" in frozen.space
    hp = kt.HyperParameters()
    frozen.build(hp)
    oracle = kt.oracles.RandomSearchOracle(objective=kt.Objective(OBJECTIVE_NAME, "max"), max_trials=500, seed=4)
    oracle.hyperparameters = hp.copy()
    fusions, ks = set(), set()
    for _ in range(200):
        sample = hp.copy()
        sample.values = oracle._random_values()
        config = frozen.build(sample)  # validated
        values = sample.values
        fusions.add((config.item_ids, config.item_fusion))
        if config.item_fusion == "evidence":
            assert values["evidence_shrinkage"] == config.evidence_shrinkage and 1.0 <= config.evidence_shrinkage <= 100
            ks.add(config.evidence_shrinkage)
        else:
            assert "evidence_shrinkage" not in values and not sample.is_active("evidence_shrinkage")
            assert config.evidence_shrinkage == TrainConfig().evidence_shrinkage
    assert {(True, "sum"), (True, "balanced"), (True, "evidence"), (True, "gated"), (False, "sum")} == fusions
    assert len(ks) > 10
    # No text or no IDs: neither the fusion nor its k; a tuned encoder could not run it: no evidence.
    for hypermodel in (RecommenderHyperModel(TrainConfig(), fixed={"finetune": "frozen", "item_ids": False}),
                       RecommenderHyperModel(TrainConfig(item_text=False, item_ids=True),
                                             fixed={"user_tower": "item-sequence", "negatives": "catalog"})):
        assert not {"item_fusion", "evidence_shrinkage"} & set(hypermodel.space)
    for hypermodel in (RecommenderHyperModel(TrainConfig()),
                       RecommenderHyperModel(TrainConfig(cold_neighbours=0), fixed={"finetune": "frozen"}),
                       RecommenderHyperModel(TrainConfig(cold_items="id"), fixed={"finetune": "frozen"})):
        assert hypermodel.space["item_fusion"] == ["sum", "balanced", "gated"]
        assert "evidence_shrinkage" not in hypermodel.space
    with pytest.raises(ConfigError, match="item_fusion=evidence needs a frozen encoder in every trial"):
        RecommenderHyperModel(TrainConfig(), space={"item_fusion": ["sum", "evidence"]})
    # Evidence as the base's fusion: every trial must be able to run it.
    with pytest.raises(ConfigError, match="item_fusion=evidence is the base config's"):
        RecommenderHyperModel(TrainConfig(), fixed={"finetune": "frozen", "item_fusion": "evidence"})
    pinned = RecommenderHyperModel(TrainConfig(), fixed={"finetune": "frozen", "item_fusion": "evidence",
                                                        "item_ids": True})
    assert "evidence_shrinkage" in pinned.space and "item_fusion" not in pinned.space
    hp = kt.HyperParameters()
    assert pinned.build(hp).item_fusion == "evidence" and "evidence_shrinkage" in hp.values

def test_cli_value_parsing():
    assert search_cli.parse_value("1e-3") == pytest.approx(1e-3)
    assert search_cli.parse_value("64") == 64 and search_cli.parse_value("false") is False
    assert search_cli.parse_space("16,32") == [16, 32]
    assert search_cli.parse_space("1e-4..1e-2:log") == Range(1e-4, 1e-2, sampling="log")
    assert np.isclose(search_cli.parse_space("0.0..0.5").max, 0.5)


def test_a_choice_named_none_stays_a_choice_on_the_command_line():
    from tuning.search import build_parser, hypermodel_from_args, parse_space, parse_value

    assert parse_space("none,center", "text_whitening") == ["none", "center"]
    assert parse_value("none", "text_whitening") == "none"
    assert parse_value("none", "max_history") is None  # no choices: still None
    args = build_parser().parse_args(["--space", "text_whitening=none,center", "--tune", "text_whitening"])
    hypermodel = hypermodel_from_args(args)
    assert hypermodel.space["text_whitening"] == ["none", "center"]
