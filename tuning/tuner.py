"""KerasTuner tuners whose trials run `tfrec_lm.training.train`.

KerasTuner 1.4.8 checks models against Keras 3 (`keras.models.Model`) in its default
`Tuner.run_trial`, and tfrec_lm's models are tf-keras (`TF_USE_LEGACY_KERAS=1`), so the
stock path rejects them ("Expected ... a valid Keras Model instance"). The tuners here
override `run_trial`: build the trial's `TrainConfig` with the hypermodel, call the same
`train()` the CLI calls, return `{"val_ndcg_at_10": the validation NDCG@10 of the epoch the
run keeps}` (`--keep-weights`: the last, or the best; SPEC §2: full catalog, history
excluded, validation targets, never test).

Everything lives under `directory/project_name` (KerasTuner's own layout):

- `oracle.json`, `tuner0.json`, `trial_<id>/trial.json`: the search state. A new tuner
  on the same directory and project (`overwrite=False`, the default) reloads it: finished
  trials are not run again, and a trial that was running when the process died is run
  again with the same hyperparameters.
- `trial_<id>/config.yaml`: the exact `TrainConfig` of the trial; `trial_<id>/run/`:
  `train()`'s output_dir (metrics.json, TensorBoard logs).
- `tensorboard/`: TensorBoard HParams logs, one run per trial
  (`tensorboard --logdir <directory>/<project_name>/tensorboard`, HPARAMS tab).

Usage:

    from tuning import RecommenderHyperModel, make_tuner
    tuner = make_tuner("bayesian", RecommenderHyperModel(base_config), max_trials=20,
                       directory="tuning_runs", project_name="ml100k", budget_minutes=60)
    tuner.search(dataset=dataset)   # dataset=None reads base_config's data in every trial
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import io
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Optional

import tfrec_lm  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow is imported)

import keras_tuner as kt
import tensorflow as tf
import yaml
from keras_tuner.src.engine import oracle as kt_oracle
from keras_tuner.src.tuners.bayesian import BayesianOptimizationOracle

from tfrec_lm.config import TrainConfig
from tfrec_lm.errors import ConfigError

from tuning.hypermodel import RecommenderHyperModel

logger = logging.getLogger(__name__)

OBJECTIVE_NAME = "val_ndcg_at_10"
OBJECTIVE = kt.Objective(OBJECTIVE_NAME, direction="max")
STRATEGIES = ("random", "bayesian", "hyperband")
TRIAL_CONFIG_FILE = "config.yaml"
TRIAL_RUN_DIR = "run"
SETTINGS_FILE = "search_settings.yaml"
# Options that say where and how a run writes, not what it learns: a trial sets its own,
# and the best config takes the base config's.
OUTPUT_KEYS = ("output_dir", "export", "export_base", "model_name")


class TrialIdDisplay(kt_oracle.Display):
    """KerasTuner's per-trial display (shown at `verbose >= 1`), naming each trial by its `trial_id`.

    KerasTuner's own display counts trials from 1 ("Running Trial #1") while their ids,
    folders (`trial_<id>`), TensorBoard runs, our logs and the summary table count from 0
    ("0", "00", ...), and a trial run again after an interruption gets a new count. Here
    the display says "Trial <trial_id>" everywhere, so one trial has one name.
    """

    def on_trial_begin(self, trial):
        if self.verbose < 1:
            return
        start = datetime.datetime.now()
        self.trial_start[trial.trial_id] = start
        if self.search_start is None:
            self.search_start = start
        self.trial_number[trial.trial_id] = trial.trial_id  # on_trial_end prints "Trial <this> Complete"
        print(f"\nSearch: Running Trial {trial.trial_id}\n")
        self.show_hyperparameter_table(trial)
        print()


class _BudgetSpent(Exception):
    """Raised before a trial would start after the search's time budget."""


class TrainingTunerMixin:
    """Runs each trial through `tfrec_lm.training.train` (put it before a KerasTuner tuner class).

    Args:
        hypermodel: RecommenderHyperModel. its `build(hp)` returns the trial's TrainConfig.
        budget_minutes: float or None. wall-clock budget of each `search()` call: once spent,
            no new trial starts (the running one finishes). A resumed search gets a new budget.
        keep_checkpoints: bool. keep each trial's weight checkpoints (`trial_<id>/run/checkpoints`);
            off by default, as they hold the whole model (encoder included) and no later step
            reads them (the best config is retrained for export).
        **kwargs: the KerasTuner tuner's arguments (`max_trials`, `directory`, `project_name`,
            `overwrite`, `seed`, ...). The objective is always validation NDCG@10 (max).

    `search(dataset=None, encoder_factory=None, verbose=0)`: `dataset` (a tfrec_lm Dataset)
    is shared by every trial (None: each trial reads its config's data source);
    `encoder_factory` is passed to `train` (None: the config's pretrained encoder);
    `verbose` >= 1 shows KerasTuner's per-trial display and is Keras' fit verbosity.
    """

    def __init__(self, hypermodel: RecommenderHyperModel, budget_minutes: Optional[float] = None,
                 keep_checkpoints: bool = False, **kwargs):
        if not isinstance(hypermodel, RecommenderHyperModel):
            raise TypeError(f"hypermodel must be a RecommenderHyperModel, got {type(hypermodel).__name__}")
        if kwargs.pop("objective", None) not in (None, OBJECTIVE_NAME, OBJECTIVE):
            raise ValueError(f"the objective is {OBJECTIVE_NAME} (max); it cannot be changed")
        self.budget_minutes = budget_minutes
        self.keep_checkpoints = keep_checkpoints
        self.budget_spent = False
        self.changed_settings: list[str] = []
        self._deadline = None
        # KerasTuner prints "Reloading Tuner from ..." on resume; a library logs instead.
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            if "oracle" not in kwargs:  # a tuner that builds its own oracle gives it the objective
                kwargs["objective"] = OBJECTIVE
            super().__init__(hypermodel=hypermodel, **kwargs)
        if captured.getvalue().strip():
            logger.info(captured.getvalue().strip())
        display = TrialIdDisplay(self.oracle)
        display.set_state(self.oracle._display.get_state())  # a resumed search's start times
        self.oracle._display = display
        self.oracle.verbose = 0

    # ---- search loop -----------------------------------------------------------------

    def search(self, dataset=None, encoder_factory=None, verbose: int = 0):
        """Runs trials until the oracle stops (max_trials, Hyperband's schedule) or the budget is spent."""
        self.budget_spent = False
        self._deadline = None if self.budget_minutes is None else time.monotonic() + 60.0 * self.budget_minutes
        try:
            super().search(dataset=dataset, encoder_factory=encoder_factory, verbose=verbose)
        except _BudgetSpent:
            self.budget_spent = True
            logger.info("time budget of %s minutes spent; no new trial started", self.budget_minutes)
            self.on_search_end()

    def pre_create_trial(self):
        # Called by BaseTuner.search before asking the oracle for the next trial: the one
        # point of its loop where stopping leaves no trial half-created.
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise _BudgetSpent()
        super().pre_create_trial()

    def on_search_begin(self):
        super().on_search_begin()
        self._check_settings()
        self._write_hparams_config()

    def _check_settings(self):
        """Records the search's base config and space; on resume, notes what changed since."""
        path = Path(self.project_dir) / SETTINGS_FILE
        current = self.hypermodel.describe()
        if not path.is_file():
            path.write_text(yaml.safe_dump(current, sort_keys=False))
            return
        stored = yaml.safe_load(path.read_text()) or {}
        changed = [f"base.{key}" for key, value in current["base"].items()
                   if stored.get("base", {}).get(key) != value and key not in OUTPUT_KEYS]
        if stored.get("space") != current["space"]:
            changed.append("space")
        self.changed_settings = changed
        if changed:
            logger.warning("resuming %s with settings that differ from the ones it started with: %s "
                           "(earlier trials keep theirs; see %s)", self.project_dir, ", ".join(changed), path)

    # ---- one trial -------------------------------------------------------------------

    def trial_config(self, trial) -> TrainConfig:
        """The TrainConfig a trial trains: the hypermodel's build, outputs in the trial dir, no export."""
        hp = trial.hyperparameters
        changes = {"output_dir": str(Path(self.get_trial_dir(trial.trial_id)) / TRIAL_RUN_DIR), "export": False}
        if "tuner/epochs" in hp.values:
            # Hyperband's budget for this round. tfrec_lm's train() starts from fresh weights
            # (no warm start from `tuner/trial_id`), so a promoted trial is retrained.
            changes["epochs"] = int(hp.values["tuner/epochs"])
        return self.hypermodel.build(hp).replace(**changes)

    def run_trial(self, trial, dataset=None, encoder_factory=None, verbose: int = 0):
        """Trains the trial's config with `tfrec_lm.training.train`; returns the objective dict."""
        from tfrec_lm import training  # looked up per call: one entry point, patchable in tests

        try:
            config = self.trial_config(trial)
        except ConfigError as error:
            raise kt.errors.FailedTrialError(f"invalid configuration: {error}") from error
        trial_dir = Path(self.get_trial_dir(trial.trial_id))
        logdir = self.tensorboard_dir / f"trial_{trial.trial_id}"
        # A trial that was interrupted (and is now run again) starts over: no stale logs.
        for stale in (Path(config.output_dir), logdir):
            shutil.rmtree(stale, ignore_errors=True)
        (trial_dir / TRIAL_CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        writer = tf.summary.create_file_writer(str(logdir))
        try:
            with writer.as_default():
                _hparams_api().hparams(self._hparams(trial), trial_id=trial.trial_id)
            writer.flush()
            tf.keras.backend.clear_session()
            gc.collect()
            result = training.train(config, dataset=dataset, encoder_factory=encoder_factory,
                                    verbose=max(0, int(verbose)))
            history = [float(v) for v in result.validation_ndcg]
            del result
            gc.collect()
            with writer.as_default():
                for epoch, value in enumerate(history, start=1):
                    tf.summary.scalar(OBJECTIVE_NAME, value, step=epoch)
        finally:
            writer.close()
            if not self.keep_checkpoints:
                shutil.rmtree(Path(config.output_dir) / "checkpoints", ignore_errors=True)
        if not history:
            raise kt.errors.FailedTrialError("training ran no epoch: no validation NDCG@10")
        # The objective is the validation NDCG@10 of the epoch the run keeps (`--keep-weights`:
        # the last, or the best). A non-finite value (a diverged epoch) never wins; all
        # non-finite -> NaN -> the oracle marks the trial invalid.
        kept = history[-1:] if config.keep_weights == "last" else history
        best = max((v for v in kept if math.isfinite(v)), default=float("nan"))
        if not math.isfinite(best):
            logger.warning("trial %s: no finite validation NDCG@10 (%s)", trial.trial_id, history)
        return {OBJECTIVE_NAME: best}

    def load_model(self, trial):
        raise NotImplementedError(
            "trials keep no model: build the best trial's config with tuning.best_config(tuner) and "
            "train it (`python -m tuning.search --export-best` does, and exports it)")

    # ---- TensorBoard HParams ---------------------------------------------------------

    @property
    def tensorboard_dir(self) -> Path:
        return Path(self.project_dir) / "tensorboard"

    def _hparams(self, trial) -> dict:
        """HParam -> value of the trial's active hyperparameters (and Hyperband's `tuner/*`)."""
        api = _hparams_api()
        hp = trial.hyperparameters
        values = {_hparam(api, p): hp.values[p.name] for p in hp.space
                  if hp.is_active(p) and hp.values.get(p.name) is not None}
        for name, value in hp.values.items():
            if name.startswith("tuner/"):
                values[api.HParam(name)] = value
        return values

    def _write_hparams_config(self):
        """The experiment's HParams domains and metric, once per project."""
        marker = self.tensorboard_dir / ".hparams_config_written"
        if marker.exists():
            return
        api = _hparams_api()
        hparams = [_hparam(api, p) for p in self.oracle.get_space().space]
        writer = tf.summary.create_file_writer(str(self.tensorboard_dir))
        with writer.as_default():
            api.hparams_config(hparams=hparams,
                               metrics=[api.Metric(OBJECTIVE_NAME, display_name="validation NDCG@10")])
        writer.close()
        marker.write_text("")


def _hparams_api():
    from tensorboard.plugins.hparams import api

    return api


def _hparam(api, hyperparameter):
    """The TensorBoard HParam (name and domain) of a KerasTuner hyperparameter."""
    config = hyperparameter.get_config()
    if "values" in config:  # Choice
        domain = api.Discrete(list(config["values"]))
    elif "min_value" in config:  # Int, Float
        if isinstance(config["min_value"], int) and config.get("step") in (None, 1):
            domain = api.IntInterval(config["min_value"], config["max_value"])
        else:
            domain = api.RealInterval(float(config["min_value"]), float(config["max_value"]))
    elif "value" in config:  # Fixed
        domain = api.Discrete([config["value"]])
    else:  # Boolean
        domain = api.Discrete([False, True])
    return api.HParam(hyperparameter.name, domain)


class RandomSearchTuner(TrainingTunerMixin, kt.RandomSearch):
    """`kt.RandomSearch` over `RecommenderHyperModel`, trials through `tfrec_lm.training.train`."""


class NoRepeatBayesianOracle(BayesianOptimizationOracle):
    """KerasTuner's Gaussian-process oracle that never proposes a point a trial already had.

    On a small discrete space the process's optimum often lands on a tried point again, and
    KerasTuner 1.4.8 runs it again: a search over three two- and three-valued knobs
    (`benchmarks/results/tuning_issue30.json`) spent four of its six trials on one point. A
    repeated proposal is replaced by an untried random point; once none is left (KerasTuner's
    collision limit), the search stops. Arguments: those of `BayesianOptimizationOracle`.
    """

    def populate_space(self, trial_id):
        proposal = super().populate_space(trial_id)
        if proposal.get("status") == kt.engine.trial.TrialStatus.RUNNING and self._duplicate(proposal["values"]):
            logger.info("the Gaussian process proposed a tried point again; trial %s gets an untried random one",
                        trial_id)
            return self._random_populate_space()
        return proposal


class BayesianOptimizationTuner(TrainingTunerMixin, kt.Tuner):
    """Bayesian optimisation (a Gaussian process, `NoRepeatBayesianOracle`) over `RecommenderHyperModel`.

    Args: `kt.BayesianOptimization`'s (`max_trials`, `num_initial_points`, `alpha`, `beta`,
    `seed`, ...) and `TrainingTunerMixin`'s.
    """

    ORACLE_ARGUMENTS = ("max_trials", "num_initial_points", "alpha", "beta", "seed", "hyperparameters",
                        "tune_new_entries", "allow_new_entries", "max_retries_per_trial",
                        "max_consecutive_failed_trials")
    """What `kt.BayesianOptimization` hands its oracle; the rest of its arguments go to `kt.Tuner`."""

    def __init__(self, hypermodel: RecommenderHyperModel, budget_minutes: Optional[float] = None,
                 keep_checkpoints: bool = False, **kwargs):
        oracle_kwargs = {name: kwargs.pop(name) for name in self.ORACLE_ARGUMENTS if name in kwargs}
        oracle = NoRepeatBayesianOracle(objective=OBJECTIVE, **oracle_kwargs)
        super().__init__(hypermodel, budget_minutes=budget_minutes, keep_checkpoints=keep_checkpoints,
                         oracle=oracle, **kwargs)


class HyperbandTuner(TrainingTunerMixin, kt.Hyperband):
    """`kt.Hyperband`: `tuner/epochs` becomes the trial config's `epochs`.

    `max_epochs` defaults to the base config's `epochs`. `max_trials`, if given, caps the
    number of trials (KerasTuner's Hyperband has no such argument; its oracle honours it).
    Trials promoted to a later round are retrained from scratch for the round's epochs,
    as tfrec_lm's `train()` has no warm start.
    """

    def __init__(self, hypermodel: RecommenderHyperModel, max_trials: Optional[int] = None,
                 max_epochs: Optional[int] = None, **kwargs):
        super().__init__(hypermodel, max_epochs=max_epochs or hypermodel.base.epochs, **kwargs)
        self.oracle.max_trials = max_trials


TUNERS = {"random": RandomSearchTuner, "bayesian": BayesianOptimizationTuner, "hyperband": HyperbandTuner}


def make_tuner(strategy: str, hypermodel: RecommenderHyperModel, **kwargs):
    """A tuner of the given strategy (`random`, `bayesian`, `hyperband`).

    Args:
        strategy: str. one of STRATEGIES.
        hypermodel: RecommenderHyperModel.
        **kwargs: the tuner's arguments (`max_trials`, `directory`, `project_name`,
            `budget_minutes`, `seed`, `overwrite`; `num_initial_points` for bayesian;
            `max_epochs`, `factor`, `hyperband_iterations` for hyperband).
    """
    if strategy not in TUNERS:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    return TUNERS[strategy](hypermodel, **kwargs)

