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
import logging
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf

from tfrec_lm.catalog.table import read_catalog, training_catalog, write_catalog
from tfrec_lm.config import TrainConfig
from tfrec_lm.data.prepare import PreparedData, prepare_data, with_bad_rows
from tfrec_lm.data.schema import Dataset
from tfrec_lm.data.split import ItemVocab, LeaveOneOutSplit, refresh_validation
from tfrec_lm.distribute import WorkerGroup, WorkerOutputs, make_strategy
from tfrec_lm.evaluation.scoring import TestEvaluation, evaluate_test
from tfrec_lm.fitting import FitResult, fit, run_identity
from tfrec_lm.models.factory import EncoderFactory, build_for_training
from tfrec_lm.models.two_tower import TwoTowerModel
from tfrec_lm.registry.gate import GateDecision
from tfrec_lm.registry.manifest import data_fingerprint, iso_time
from tfrec_lm.registry.runs import RunFolder, checkpoint_prefix, options_hash, write_json_atomically
from tfrec_lm.registry.validation import ValidationRequests
from tfrec_lm.registry.model_versions import ModelVersions

logger = logging.getLogger(__name__)


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
        gate: GateDecision or None. what the publishing gate compared and decided (None without
            an export, or for a reused run).
        output_dir: Path or None. the run folder.
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
    gate: Optional[GateDecision] = None
    output_dir: Optional[Path] = None


def train(config: TrainConfig, dataset: Optional[Dataset] = None,
          encoder_factory: Optional[EncoderFactory] = None, verbose: int = 0,
          command: Optional[str] = None) -> TrainResult:
    """Trains, evaluates on the SPEC §2 test targets and (optionally) exports through the publishing gate.

    Re-running a run that died (the same options and data into the same `output_dir`)
    resumes from its backup (`tfrec_lm.fitting.fit`); re-running a finished one (its
    `metrics.json` records the same options and data) trains nothing and returns what it
    recorded (`TrainResult.reused`). A folder that holds a run of other options or data is
    refused (`tfrec_lm.registry.runs.RunFolder.claim`) unless `config.resume` or `config.overwrite`.

    Args:
        config: TrainConfig. every option of the run.
        dataset: Dataset. already-loaded data; read from `config` when None.
        encoder_factory: callable. returns `(TFBertModel, tokenizer)`; the
            pretrained `config.encoder` when None (tests pass tiny random BERTs).
        verbose: int. Keras progress output (0 silent, 1 progress bar, 2 one line per epoch).
        command: str or None. the command line that started the run, recorded in the manifest.

    Returns:
        TrainResult.

    Raises:
        ConfigError: bad options, a bad `--warm-start`, or an output folder that holds another run.
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
        run = RunFolder(config.output_dir)
        claim = run.claim(run_identity(config, data), resume=config.resume,
                          overwrite=config.overwrite and outputs.chief)
        # Only now: a folder that holds another run keeps its own report.
        data = dataclasses.replace(data, dataset=with_bad_rows(data.dataset, outputs.output_dir / "bad_rows.csv"))
        recorded = run.record() if claim == "reuse" else None
        model = build_for_training(config, data, encoder_factory, strategy, tune_text=recorded is None,
                                   verbose=verbose)
        stages.done("model")
        if recorded is not None:
            return recorded_result(config, model, data, recorded)
        fitted = fit(config, model, data, strategy, outputs.output_dir, verbose)
        stages.done("fit")
        evaluation = evaluate_test(model, data, verbose=verbose)
        stages.done("evaluation")
        return export_and_record(config, model, data, fitted, evaluation, strategy, outputs, stages,
                                 encoder_factory=encoder_factory, command=command)
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
    run = RunFolder(config.output_dir)
    logger.warning("%s already holds a finished run of these options and data (%s): not training again; "
                   "its recorded result is returned. Train again with another --output-dir, or --overwrite",
                   config.output_dir, run.metrics_file.name)
    model.load_weights(checkpoint_prefix(config.output_dir, "--output-dir")).expect_partial()
    export_path = recorded.get("export_path")
    slices = evaluate_test(model, data).slices
    return TrainResult(model=model, vocab=data.vocab, split=data.split, metrics=recorded["test"],
                       validation_ndcg=recorded["validation_ndcg_at_10"],
                       validation_seconds=recorded["validation_seconds"], train_seconds=recorded["train_seconds"],
                       export_path=Path(export_path) if export_path and Path(export_path).is_dir() else None,
                       counts=data.counts, dataset=data.dataset, slices=slices,
                       history={"loss": recorded.get("train_loss", [])}, reused=True, output_dir=run.path)


def export_and_record(config: TrainConfig, model: TwoTowerModel, data: PreparedData, fitted: FitResult,
                      evaluation: TestEvaluation, strategy, outputs: WorkerOutputs,
                      stages: Optional[StageClock] = None, encoder_factory: Optional[EncoderFactory] = None,
                      command: Optional[str] = None) -> TrainResult:
    """The last stage: records the run's catalog and validation requests, exports (with `config.export`)
    through the publishing gate, scores the export, writes `metrics.json`.

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
        encoder_factory: EncoderFactory or None. the run's encoder (a refresh that carries the
            served version's added items encodes their texts).
        command: str or None. the command line, for the manifest.

    Returns:
        TrainResult.
    """
    run = RunFolder(outputs.output_dir)
    metrics = evaluation.metrics
    result = TrainResult(model=model, vocab=data.vocab, split=data.split, metrics=metrics,
                         validation_ndcg=fitted.validation_ndcg, validation_seconds=fitted.validation_seconds,
                         train_seconds=fitted.train_seconds, export_path=None,
                         counts=data.counts, dataset=data.dataset, slices=evaluation.slices, history=fitted.history,
                         output_dir=Path(config.output_dir))
    catalog = training_catalog(data.dataset.items, data.counts, model.item_tower.warm_items)
    write_catalog(catalog, run.catalog_file)  # beside the checkpoint, for catalog updates
    validation = validation_requests(config, data)
    validation.save(run.validation_file)  # what the gate scores this run's versions on
    fingerprint = data_fingerprint(data.dataset, data.digest)
    if config.export:
        from tfrec_lm.export import export_model

        export_config = config.replace(export_base=str(outputs.export_base),
                                       staging_base=None if outputs.chief else f"{outputs.export_base}-staging")
        module, served_catalog = serving_module_of(export_config, model, data, catalog, encoder_factory)
        result.gate = export_model(result, export_config, catalog=served_catalog, run_dir=run.path,
                                   run_id=fitted.run_id, validation=validation, data=fingerprint,
                                   command=command, module=module)
        result.export_path = result.gate.path
        if config.top_k >= 10:
            from tfrec_lm.evaluation.export_eval import evaluate_export

            metrics["export"] = evaluate_export(result.export_path, evaluation.histories, evaluation.timestamps,
                                                data.split.test.target, data.vocab.ids, evaluation.slices,
                                                gather=data.workers.gather)
    summary = {
        "config": config.to_dict(),
        "options": config.options(),
        "options_hash": options_hash(config.options()),
        "run_id": fitted.run_id,
        "command": command,
        "data": fingerprint,
        "test": metrics,
        "validation_ndcg_at_10": fitted.validation_ndcg,
        "validation_seconds": fitted.validation_seconds,
        "train_seconds": fitted.train_seconds,
        "train_examples": int(data.workers.sum(np.array([len(data.train_examples)]))[0]),
        "export_path": str(result.export_path) if result.export_path else None,
        "published": bool(result.gate.published) if result.gate else False,
        "gate": result.gate.record() if result.gate else None,
        "train_loss": fitted.history.get("loss", []),
        "replicas": strategy.num_replicas_in_sync,
        "data_digest": data.digest,
    }
    if config.text_whitening != "none":
        # The mean pairwise cosine of the training items' text vectors, as cached and as projected.
        summary["text_cosine_before"], summary["text_cosine_after"] = model.item_tower.text_cosines()
    if config.item_fusion == "gated":
        # The learned text gate: a, b and g at 1, 10 and 100 training interactions.
        summary["fusion_gate"] = model.item_tower.fusion_gate()
        logger.info("item fusion gate: %s", summary["fusion_gate"])
    if config.export and config.export_text_encoder and outputs.chief:
        summary["text_encoder_seconds"] = export_text_encoder(config, model, run)
    if stages is not None:
        stages.done("export")
        summary["stages"] = stages.stages
        summary["validation_scoring_seconds"] = fitted.validation_scoring_seconds
    write_json_atomically(run.metrics_file, summary)  # whole or absent, for a run killed meanwhile
    # The run is recorded: its backup (for a run that dies before this point) is done with.
    shutil.rmtree(run.backup_dir, ignore_errors=True)
    if not outputs.chief:
        result.export_path = None  # written to this worker's temporary directory, removed on return
    return result


def export_text_encoder(config: TrainConfig, model: TwoTowerModel, run: RunFolder) -> Optional[float]:
    """Writes the run's frozen item encoder to `<run>/text_encoder/` for its catalog updates (`--export-text-encoder`).

    Only where an update needs the encoder for new texts alone (`exportable_item_encoder`); a failure
    is logged, never fatal (the run's first update then writes it).

    Args:
        config: TrainConfig. the run's options.
        model: TwoTowerModel. the trained model (its item tower's encoder and tokenizer).
        run: RunFolder. the run, its checkpoint written.

    Returns:
        float or None. the seconds it took (None: nothing written).
    """
    from tfrec_lm.layers import exported_text_encoder
    from tfrec_lm.models.factory import exportable_item_encoder

    tokenizer = getattr(model.item_tower, "tokenizer", None)
    if not (exportable_item_encoder(config) and run.has_checkpoint() and tokenizer is not None):
        return None
    return exported_text_encoder.try_save_text_encoder(
        model.item_tower.encoder, tokenizer, run.text_encoder_dir,
        exported_text_encoder.checkpoint_digest(run.checkpoint, config.mixed_precision))


def validation_requests(config: TrainConfig, data: PreparedData) -> ValidationRequests:
    """The requests the publishing gate scores this run's versions (and the served one) on.

    The validation targets (SPEC §2); for a refresh (`--since`), those in its window, the
    newest interactions, as its validation during training used.

    Args:
        config: TrainConfig. reads `since`.
        data: PreparedData. the data stage's result.

    Returns:
        ValidationRequests.
    """
    examples = refresh_validation(data.split.validation, config.since)
    window = "validation" if config.since is None or len(examples) == len(data.split.validation) else (
        f"validation since {iso_time(config.since)}")
    return ValidationRequests.from_examples(examples, data.vocab.ids, window=window)


def serving_module_of(config: TrainConfig, model: TwoTowerModel, data: PreparedData, catalog,
                      encoder_factory: Optional[EncoderFactory]):
    """The graph to export, and the catalog behind it.

    A refresh carries what catalog updates did to the version it replaces: that version's
    items that the refresh's data does not have are added (cold, by their text, as a
    catalog update adds them) and its retired items stay retired. So a refresh never
    drops an item or brings a retired one back. Other runs export their own catalog.

    Args:
        config: TrainConfig. the export's options.
        model: TwoTowerModel. the trained model.
        data: PreparedData. the data stage's result.
        catalog: pd.DataFrame. the run's own catalog (`training_catalog`).
        encoder_factory: EncoderFactory or None. the run's encoder, for the added items' texts.

    Returns:
        tuple (ServingModule, pd.DataFrame).
    """
    from tfrec_lm.serving_module import ServingModule

    versions = ModelVersions(config.export_base, config.model_name)
    parent = versions.newest()
    if config.warm_start and parent is not None and versions.catalog_path(parent).is_file():
        from tfrec_lm.catalog.table import carried_catalog

        carried, added = carried_catalog(catalog, read_catalog(versions.catalog_path(parent)))
        if added or carried["retired"].any():
            logger.info("refresh: carrying %d added and %d retired items of version %d", added,
                        int(carried["retired"].sum()), parent)
            grown = model
            if added:
                from tfrec_lm.catalog.update import build_on_catalog
                from tfrec_lm.models.factory import pretrained_encoder_factory

                grown = build_on_catalog(config, carried, encoder_factory or pretrained_encoder_factory(config.encoder))
                model.grow_into(grown, np.arange(len(catalog), len(carried)) + 1)
            ids = np.concatenate([[""], carried["item_id"].to_numpy(dtype=object)])
            counts = np.concatenate([[0], carried["count"].to_numpy(np.int64)])
            retired = np.concatenate([[False], carried["retired"].to_numpy(bool)])
            return ServingModule(grown, ids, counts, top_k=config.top_k, index=config.index, retired=retired), carried
    return ServingModule(model, data.vocab.ids, data.counts, top_k=config.top_k, index=config.index), catalog
