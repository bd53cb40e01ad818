"""Reading a search's results: the trials table and the best configuration."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Optional

import yaml

from tfrec_lm.config import RUN_CONTROL, TrainConfig

from tuning.tuner import OBJECTIVE_NAME, OUTPUT_KEYS, TRIAL_CONFIG_FILE, TRIAL_RUN_DIR


@dataclasses.dataclass
class TrialRow:
    """One trial of a search.

    Attributes:
        trial_id: str.
        status: str. KerasTuner's status (COMPLETED, RUNNING, FAILED, INVALID, ...).
        score: float or None. the trial's objective: validation NDCG@10 of the epoch it kept.
        hyperparameters: dict. the trial's active hyperparameter values (incl. `tuner/*`).
        epochs: int or None. epochs trained (from the trial's metrics.json).
        train_seconds: float or None. wall time of `fit`.
    """

    trial_id: str
    status: str
    score: Optional[float]
    hyperparameters: dict
    epochs: Optional[int] = None
    train_seconds: Optional[float] = None


def trial_rows(tuner) -> list[TrialRow]:
    """Every trial of the tuner's project, in start order."""
    rows = []
    for trial_id, trial in sorted(tuner.oracle.trials.items(), key=lambda item: int(item[0])):
        score = trial.metrics.get_best_value(OBJECTIVE_NAME) if trial.metrics.exists(OBJECTIVE_NAME) else None
        row = TrialRow(trial_id=trial_id, status=str(trial.status), score=score,
                       hyperparameters=dict(trial.hyperparameters.values))
        metrics_file = Path(tuner.get_trial_dir(trial_id)) / TRIAL_RUN_DIR / "metrics.json"
        if metrics_file.is_file():
            summary = json.loads(metrics_file.read_text())
            row.epochs = len(summary.get("validation_ndcg_at_10", []))
            row.train_seconds = summary.get("train_seconds")
        rows.append(row)
    return rows


def best_trial(tuner):
    """The completed trial with the highest validation NDCG@10, or None."""
    trials = [t for t in tuner.oracle.get_best_trials(1)
              if t.status == "COMPLETED" and t.score is not None and math.isfinite(t.score)]
    return trials[0] if trials else None


def best_config(tuner, base: Optional[TrainConfig] = None) -> TrainConfig:
    """The best trial's TrainConfig with the output options of `base` (default: the hypermodel's base).

    The trial's own `config.yaml` is the source (it is exactly what trained); without it
    (a trial from an older layout) the hypermodel rebuilds it from the hyperparameters.

    Raises:
        LookupError: no trial completed.
    """
    trial = best_trial(tuner)
    if trial is None:
        raise LookupError("no completed trial: nothing to choose from")
    base = base or tuner.hypermodel.base
    config_file = Path(tuner.get_trial_dir(trial.trial_id)) / TRIAL_CONFIG_FILE
    if config_file.is_file():
        values = yaml.safe_load(config_file.read_text())
    else:
        values = tuner.trial_config(trial).to_dict()
    values.update({key: getattr(base, key) for key in OUTPUT_KEYS})
    # Its own run folder: training the best config never lands in (or over) the main run's.
    values["output_dir"] = str(Path(base.output_dir).parent / f"{tuner.project_name}-best")
    return TrainConfig.from_dict(values)


WRITTEN_WITHOUT = ("export_base", "staging_base") + RUN_CONTROL


def write_config(config: TrainConfig, path, comment: str = "") -> Path:
    """Writes a config as YAML that `python -m tfrec_lm.train --config` reads as is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    # No export base and no run-control flags: the retrain publishes into the default base
    # through the publishing gate (`--publish if-better`), as any run does.
    values = {key: value for key, value in config.to_dict().items()
              if key not in WRITTEN_WITHOUT}
    path.write_text(header + yaml.safe_dump(values, sort_keys=False))
    return path


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def format_trials_table(rows: list[TrialRow], best_id: Optional[str] = None) -> str:
    """A plain-text table: trial, status, validation NDCG@10, epochs, seconds, hyperparameters."""
    header = ["trial", "status", "val NDCG@10", "epochs", "seconds", "hyperparameters"]
    lines = []
    for row in rows:
        hps = ", ".join(f"{name}={_format_value(value)}" for name, value in row.hyperparameters.items()
                        if name not in ("tuner/bracket", "tuner/round", "tuner/initial_epoch"))
        lines.append([
            row.trial_id + (" *" if row.trial_id == best_id else ""),
            row.status,
            "" if row.score is None else f"{row.score:.4f}",
            "" if row.epochs is None else str(row.epochs),
            "" if row.train_seconds is None else f"{row.train_seconds:.0f}",
            hps,
        ])
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) if lines else len(header[i])
              for i in range(len(header) - 1)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  " + header[-1]]
    for line in lines:
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1])
    return "\n".join(out)
