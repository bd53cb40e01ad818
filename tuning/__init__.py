"""Hyperparameter search for tfrec_lm with KerasTuner.

- `tuning.hypermodel.RecommenderHyperModel`: the search space; `build(hp)` returns a
  `TrainConfig`.
- `tuning.tuner`: Random search, Bayesian optimization and Hyperband tuners whose trials
  call `tfrec_lm.training.train` (the CLI's and the tests' training function) and report
  validation NDCG@10 (SPEC §2, full catalog) as the objective (max).
- `tuning.results`: the trials table and the best configuration as a `--config` file.
- `python -m tuning.search`: the command line.
"""

import tfrec_lm  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

from tuning.hypermodel import DEFAULT_SPACE, KNOBS, Range, RecommenderHyperModel
from tuning.results import best_config, best_trial, format_trials_table, trial_rows, write_config
from tuning.tuner import (OBJECTIVE, OBJECTIVE_NAME, STRATEGIES, BayesianOptimizationTuner, HyperbandTuner,
                          RandomSearchTuner, make_tuner)

__all__ = [
    "DEFAULT_SPACE", "KNOBS", "Range", "RecommenderHyperModel",
    "best_config", "best_trial", "format_trials_table", "trial_rows", "write_config",
    "OBJECTIVE", "OBJECTIVE_NAME", "STRATEGIES", "BayesianOptimizationTuner", "HyperbandTuner",
    "RandomSearchTuner", "make_tuner",
]
