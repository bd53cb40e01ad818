"""The one training function shared by the CLI, the tuner, the benchmarks and the tests.

`train` composes the stages, each in its own module and each returning a small result:

1. data: `tfrec_lm.data.prepare.prepare_data` -> `PreparedData`
2. model: `tfrec_lm.models.factory.build_for_training` -> `TwoTowerModel` (variables created)
3. fit: `tfrec_lm.fitting.fit` -> `FitResult`
4. evaluation: `tfrec_lm.evaluation.scoring.evaluate_test` -> `TestEvaluation`
5. export and record: `export_and_record` here (the SavedModel, its own metrics, `metrics.json`)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf

from tfrec_lm.catalog.table import CATALOG_FILE, training_catalog, write_catalog
from tfrec_lm.config import TrainConfig
from tfrec_lm.data.prepare import PreparedData, prepare_data
from tfrec_lm.data.schema import Dataset
from tfrec_lm.data.split import ItemVocab, LeaveOneOutSplit
from tfrec_lm.distribute import WorkerGroup, WorkerOutputs, make_strategy
from tfrec_lm.evaluation.scoring import TestEvaluation, evaluate_test
from tfrec_lm.fitting import BACKUP_DIR, FitResult, checkpoint_prefix, fit, run_identity, write_json_atomically
from tfrec_lm.models.factory import EncoderFactory, build_for_training
from tfrec_lm.models.two_tower import TwoTowerModel

logger = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"


@dataclasses.dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        model: TwoTowerModel. the trained model (best validation weights).
        vocab: ItemVocab. item index <-> item id.
        split: LeaveOneOutSplit. the data split used.
        metrics: dict. `{"model": {slice: {metric: value}}, "most_popular": ...}` on test
            (and `"export"`: the exported SavedModel's, when exported with top_k >= 10).
        validation_ndcg: list of float. validation NDCG@10 after each epoch.
        validation_seconds: list of float. seconds since `fit` started at each of those
            evaluations (the time-to-quality curve).
        train_seconds: float. wall time of `fit`.
        export_path: Path or None. the SavedModel version directory.
        counts: np.ndarray. [C+1] training interaction counts (popularity).
        dataset: Dataset. the data trained on.
        slices: dict. test slice name -> bool [n_test] (all, migrating, stable).
        history: dict. Keras `fit` logs per epoch (`loss`: the global batch's mean loss
            of each epoch's last step).
        reused: bool. the output directory already held this run, finished (same options and
            data): nothing was trained, `metrics`, the validation values, `train_seconds` and
            `export_path` are its recorded ones and `model` has its best checkpoint's weights.
    """

    model: TwoTowerModel
    vocab: ItemVocab
    split: LeaveOneOutSplit
    metrics: dict
    validation_ndcg: list
    validation_seconds: list
    train_seconds: float
    export_path: Optional[Path]
    counts: np.ndarray
    dataset: Dataset
    slices: dict
    history: dict = dataclasses.field(default_factory=dict)
    reused: bool = False


def train(config: TrainConfig, dataset: Optional[Dataset] = None,
          encoder_factory: Optional[EncoderFactory] = None, verbose: int = 0) -> TrainResult:
    """Trains, evaluates on the SPEC §2 test targets and (optionally) exports.

    Re-running a run that died (the same options and data into the same `output_dir`)
    resumes from its backup (`tfrec_lm.fitting.fit`); re-running a finished one (its
    `metrics.json` records the same options and data) trains nothing and returns what it
    recorded (`TrainResult.reused`).

    Args:
        config: TrainConfig. every option of the run.
        dataset: Dataset. already-loaded data; read from `config` when None.
        encoder_factory: callable. returns `(TFBertModel, tokenizer)`; the
            pretrained `config.encoder` when None (tests pass tiny random BERTs).
        verbose: int. Keras progress output (0 silent, 1 progress bar, 2 one line per epoch).

    Returns:
        TrainResult.
    """
    config.validate()
    # First: a multi-worker strategy configures TensorFlow's collective ops at startup.
    strategy = make_strategy(config.strategy)
    if config.warm_start:
        checkpoint_prefix(config.warm_start)  # fail before any work on a bad path
    outputs = WorkerOutputs(strategy, config.output_dir, config.export_base)
    stages = StageClock()
    try:
        tf.keras.utils.set_random_seed(config.seed)
        workers = WorkerGroup(strategy, sharded=reads_shards(config, dataset))
        data = prepare_data(config, dataset, workers)
        stages.done("data")
        recorded = finished_run(config, data)
        model = build_for_training(config, data, encoder_factory, strategy, tune_text=recorded is None)
        stages.done("model")
        if recorded is not None:
            return recorded_result(config, model, data, recorded)
        fitted = fit(config, model, data, strategy, outputs.output_dir, verbose)
        stages.done("fit")
        evaluation = evaluate_test(model, data)
        stages.done("evaluation")
        return export_and_record(config, model, data, fitted, evaluation, strategy, outputs, stages)
    finally:
        outputs.cleanup()


class StageClock:
    """Wall seconds and this process's peak resident memory at the end of each stage of `train`.

    Attributes:
        stages: dict. stage name -> `{"seconds": float, "peak_rss_bytes": int}`; the peak is
            the process's high-water mark so far (it includes the earlier stages).
    """

    def __init__(self):
        self.stages: dict = {}
        self._last = time.monotonic()

    def done(self, name: str) -> None:
        """Records the stage that just ended."""
        now = time.monotonic()
        self.stages[name] = {"seconds": now - self._last, "peak_rss_bytes": peak_rss_bytes()}
        self._last = now


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def reads_shards(config: TrainConfig, dataset: Optional[Dataset]) -> bool:
    """Whether each worker of a multi-worker run reads only its own interaction shards.

    Args:
        config: TrainConfig. `--strategy multi-worker` with `--data files` and `--interactions`
            naming several Parquet files (a folder or a glob).
        dataset: Dataset or None. data given in memory (then every worker holds it all).

    Returns:
        bool.
    """
    if dataset is not None or config.strategy != "multi-worker" or config.data != "files":
        return False
    from tfrec_lm.data.files import interaction_files

    return len(interaction_files(config.interactions)) > 1


def finished_run(config: TrainConfig, data: PreparedData) -> Optional[dict]:
    """The recorded `metrics.json` of a finished run of these options and data in `config.output_dir`.

    Args:
        config: TrainConfig. the run's options (`backup_steps` aside).
        data: PreparedData. the data stage's result.

    Returns:
        dict or None. the run's `metrics.json`; None when there is none, it records other
            options or data, or its best checkpoint is gone.
    """
    run_dir = Path(config.output_dir)
    path = run_dir / METRICS_FILE
    if not path.is_file() or not Path(f"{run_dir / 'checkpoints' / 'best.weights'}.index").is_file():
        return None
    try:
        recorded = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    identity = run_identity(config, data)
    options = dict(recorded.get("config", {}))
    options.pop("backup_steps", None)
    if options != identity["config"] or recorded.get("data_digest") != data.digest:
        return None
    return recorded


def recorded_result(config: TrainConfig, model: TwoTowerModel, data: PreparedData, recorded: dict) -> TrainResult:
    """The result of a finished run, without training: its best weights and what it recorded.

    Args:
        config: TrainConfig. the run's options.
        model: TwoTowerModel. built for this config; gets the run's best checkpoint.
        data: PreparedData. the data stage's result.
        recorded: dict. the run's `metrics.json`.

    Returns:
        TrainResult. with `reused` True.
    """
    logger.warning("%s already holds a finished run of these options and data (%s): not training again; "
                   "its recorded result is returned. Train again with another --output-dir (or remove %s)",
                   config.output_dir, METRICS_FILE, METRICS_FILE)
    model.load_weights(checkpoint_prefix(config.output_dir, "--output-dir")).expect_partial()
    export_path = recorded.get("export_path")
    slices = evaluate_test(model, data).slices
    return TrainResult(model=model, vocab=data.vocab, split=data.split, metrics=recorded["test"],
                       validation_ndcg=recorded["validation_ndcg_at_10"],
                       validation_seconds=recorded["validation_seconds"], train_seconds=recorded["train_seconds"],
                       export_path=Path(export_path) if export_path and Path(export_path).is_dir() else None,
                       counts=data.counts, dataset=data.dataset, slices=slices,
                       history={"loss": recorded.get("train_loss", [])}, reused=True)


def export_and_record(config: TrainConfig, model: TwoTowerModel, data: PreparedData, fitted: FitResult,
                      evaluation: TestEvaluation, strategy, outputs: WorkerOutputs,
                      stages: Optional[StageClock] = None) -> TrainResult:
    """The last stage: exports (with `config.export`), scores the export, writes `metrics.json`.

    Args:
        config: TrainConfig. the run's options.
        model: TwoTowerModel. the trained model.
        data: PreparedData. the data stage's result.
        fitted: FitResult. the fit stage's result.
        evaluation: TestEvaluation. the evaluation stage's result; the export's metrics are
            added to its `metrics` under `"export"`.
        strategy: tf.distribute.Strategy. for the replica count in `metrics.json`.
        outputs: WorkerOutputs. where this worker writes (a non-chief worker: a temporary directory).
        stages: StageClock or None. the earlier stages' times; `metrics.json` records them and this one's (`stages`).

    Returns:
        TrainResult.
    """
    metrics = evaluation.metrics
    result = TrainResult(model=model, vocab=data.vocab, split=data.split, metrics=metrics,
                         validation_ndcg=fitted.validation_ndcg, validation_seconds=fitted.validation_seconds,
                         train_seconds=fitted.train_seconds, export_path=None,
                         counts=data.counts, dataset=data.dataset, slices=evaluation.slices, history=fitted.history)
    catalog = training_catalog(data.dataset.items, data.counts, model.item_tower.warm_items)
    write_catalog(catalog, outputs.output_dir / CATALOG_FILE)  # beside the checkpoint, for catalog updates
    if config.export:
        from tfrec_lm.export import export_model

        result.export_path = export_model(result, config.replace(export_base=str(outputs.export_base)),
                                          catalog=catalog, run_dir=outputs.output_dir)
        if config.top_k >= 10:
            from tfrec_lm.evaluation.export_eval import evaluate_export

            metrics["export"] = evaluate_export(result.export_path, evaluation.histories, evaluation.timestamps,
                                                data.split.test.target, data.vocab.ids, evaluation.slices,
                                                gather=data.workers.gather)
    summary = {
        "config": config.to_dict(),
        "test": metrics,
        "validation_ndcg_at_10": fitted.validation_ndcg,
        "validation_seconds": fitted.validation_seconds,
        "train_seconds": fitted.train_seconds,
        "train_examples": int(data.workers.sum(np.array([len(data.train_examples)]))[0]),
        "export_path": str(result.export_path) if result.export_path else None,
        "train_loss": fitted.history.get("loss", []),
        "replicas": strategy.num_replicas_in_sync,
        "data_digest": data.digest,
    }
    if stages is not None:
        stages.done("export")
        summary["stages"] = stages.stages
        summary["validation_scoring_seconds"] = fitted.validation_scoring_seconds
    write_json_atomically(outputs.output_dir / METRICS_FILE, summary)  # whole or absent, for a run killed meanwhile
    # The run is recorded: its backup (for a run that dies before this point) is done with.
    shutil.rmtree(outputs.output_dir / BACKUP_DIR, ignore_errors=True)
    if not outputs.chief:
        result.export_path = None  # written to this worker's temporary directory, removed on return
    return result
