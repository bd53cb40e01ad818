"""The fit stage of training: warm start, optimizer, input pipeline, callbacks, `model.fit`."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf

from tfrec_lm.config import TrainConfig
from tfrec_lm.data.prepare import PreparedData
from tfrec_lm.data.split import refresh_validation
from tfrec_lm.distribute import is_chief
from tfrec_lm.errors import ConfigError
from tfrec_lm.evaluation.scoring import ValidationNDCG
from tfrec_lm.registry.layout import BACKUP_DIR, CHECKPOINT, STATE_FILE
from tfrec_lm.registry.runs import RunFolder, checkpoint_prefix, write_json_atomically

logger = logging.getLogger(__name__)

_EPOCH_ENDS_ONLY = 2 ** 62  # a step frequency that never comes: backups at epoch ends only


def make_optimizer(config: TrainConfig, total_steps: Optional[int] = None):
    """AdamW with `learning_rate` and `weight_decay` (none on biases, norms, embeddings and the
    `--item-fusion gated` gate's a and b, whose decay would pull the gate toward 1/2);
    wrapped in a LossScaleOptimizer under `mixed_float16`.

    Args:
        config: TrainConfig. reads `learning_rate`, `lr_decay`, `weight_decay` and `mixed_precision`.
        total_steps: int or None. the run's training steps (`--lr-decay cosine` decays over them;
            needed then).
    """
    learning_rate = config.learning_rate
    if config.lr_decay == "cosine":
        if not total_steps or total_steps < 1:
            raise ValueError("--lr-decay cosine needs the run's total steps")
        learning_rate = tf.keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=total_steps)
    optimizer = tf.keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=config.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["bias", "LayerNorm", "layer_norm", "norm", "embedding",
                                                 "fusion_gate"])
    if config.mixed_precision == "mixed_float16":
        # float16 gradients underflow without loss scaling (bfloat16 has float32's range).
        optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def warm_start_and_compile(model, config: TrainConfig, total_steps: Optional[int] = None) -> None:
    """Restores the towers and head from `--warm-start` (if any) and compiles the model.

    Args:
        model: TwoTowerModel. every variable already created.
        config: TrainConfig. reads `warm_start`, the optimizer options and `jit_compile`.
        total_steps: int or None. the run's training steps (for `--lr-decay cosine`).
    """
    if config.warm_start:
        # Towers and head only: the checkpoint's optimizer (and its learning rate) stays behind.
        try:
            model.load_towers(checkpoint_prefix(config.warm_start))
        except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as error:
            raise ConfigError(f"--warm-start {config.warm_start}: its checkpoint does not fit a model of these "
                              f"options (a model option differs from that run's; keep its options): "
                              f"{str(error).splitlines()[0][:200]}") from None
        logger.info("warm start from %s", config.warm_start)
    model.compile(optimizer=make_optimizer(config, total_steps), jit_compile=config.jit_compile)


def training_dataset(train_examples, config: TrainConfig, start: tuple = (0, 0), batch_size: Optional[int] = None,
                     batches_per_step: int = 1, shard_policy=None) -> tf.data.Dataset:
    """The shuffled, batched, prefetched training pipeline, sharded by data across workers.

    The shuffle draws a new order for each new iterator (`reshuffle_each_iteration`, from
    the seeded generator of the shuffle); Keras makes one iterator before the first epoch
    and, without `steps_per_epoch`, a new one per epoch. A resumed run (`start` past the
    beginning) gets the batches the uninterrupted run would have seen from there: the
    orders of the epochs already done are drawn and dropped first, and the batches of
    the resumed epoch already trained on are skipped.

    Args:
        train_examples: Examples. the rows to train on.
        config: TrainConfig. reads `seed`, `batch_size` (global) and `steps_per_epoch` (repeat when set).
        start: tuple of int. `(epoch, step)` where training starts (a resumed run's backup position).
        batch_size: int or None. the batch of this pipeline (`config.batch_size` when None; a
            sharded run's per-replica batch).
        batches_per_step: int. batches one training step takes from this pipeline (a sharded
            run: the worker's local replicas), for a resumed run's skip.
        shard_policy: tf.data.experimental.AutoShardPolicy or None. how a multi-worker
            strategy splits the pipeline (DATA when None: workers split each global batch).

    Returns:
        tf.data.Dataset. batches of feature dicts (`Examples.tf_features`). Without `steps_per_epoch` and
            with `start[1] > 0` it repeats, and `fit` must be given `steps_per_epoch`
            (`resume_steps_per_epoch`).
    """
    epoch, step = start
    batch_size = batch_size or config.batch_size
    options = tf.data.Options()
    # Workers split each global batch (the rows are in memory: no files to shard by); a
    # sharded run's workers each hold their own rows (OFF).
    options.experimental_distribute.auto_shard_policy = (tf.data.experimental.AutoShardPolicy.DATA
                                                         if shard_policy is None else shard_policy)
    # Row numbers are shuffled and batched; each batch's histories are cut from the
    # sequence table only then (memory O(interactions), not O(examples x H)). The order
    # is the one shuffling the whole feature rows drew: a shuffle's order depends on the
    # element count, the buffer and the seed only.
    shuffled = (tf.data.Dataset.range(len(train_examples))
                .shuffle(min(len(train_examples), 100_000), seed=config.seed, reshuffle_each_iteration=True))
    features = train_examples.tf_features()
    if config.steps_per_epoch is not None:
        # One iterator for the whole fit: an "epoch" is then steps_per_epoch steps between validations.
        dataset = shuffled.repeat().batch(batch_size)
        if epoch or step:
            dataset = dataset.skip((epoch * config.steps_per_epoch + step) * batches_per_step)
    else:
        dataset = shuffled.batch(batch_size)
        # Uninterrupted, epoch e trains on the (e + 1)-th order drawn (Keras's first iterator
        # goes unused); a resumed fit's first epoch must too.
        for _ in range(epoch + 1 if step else epoch):
            iter(dataset)  # draws the next order (an iterator draws its order when made)
        if step:
            # Mid-epoch: one iterator over the passes from here, `fit` cutting it into epochs.
            dataset = dataset.repeat().skip(step)
    return dataset.map(features).prefetch(tf.data.AUTOTUNE).with_options(options)


def sharded_training_input(train_examples, config: TrainConfig, start: tuple):
    """The input of a sharded run's `fit`: each worker's own rows, batched per replica.

    Args:
        train_examples: Examples. this worker's rows.
        config: TrainConfig. with `steps_per_epoch` set (the pipeline repeats).
        start: tuple of int. `(epoch, step)` where training starts.

    Returns:
        tf.keras.utils.experimental.DatasetCreator. Keras calls it on each worker with the
            worker's input context (`training_dataset` with the per-replica batch, not sharded).
    """
    def per_worker(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local = max(1, context.num_replicas_in_sync // context.num_input_pipelines)
        return training_dataset(train_examples, config, start, batch_size=context.get_per_replica_batch_size(
            config.batch_size), batches_per_step=local, shard_policy=tf.data.experimental.AutoShardPolicy.OFF)

    return tf.keras.utils.experimental.DatasetCreator(per_worker)


def resume_steps_per_epoch(train_examples, config: TrainConfig, start: tuple) -> Optional[int]:
    """The `steps_per_epoch` to give `fit` with `training_dataset(..., start)`.

    Args:
        train_examples: Examples. the rows to train on.
        config: TrainConfig. reads `steps_per_epoch`, `batch_size`.
        start: tuple of int. `(epoch, step)` where training starts.

    Returns:
        int or None. `config.steps_per_epoch`, or the batches of one pass when a resumed
            epoch starts mid-way (the pipeline then repeats).
    """
    if config.steps_per_epoch is None and start[1]:
        return math.ceil(len(train_examples) / config.batch_size)
    return config.steps_per_epoch


def run_identity(config: TrainConfig, data: PreparedData) -> dict:
    """What must be equal for a backup or a finished run to belong to this run.

    Args:
        config: TrainConfig. the run's options (`RUN_CONTROL` ones aside: any backup frequency
            resumes, and a publishing policy does not change what is trained).
        data: PreparedData. the data stage's result.

    Returns:
        dict. `{"config": options as JSON values, "data": data.digest}`.
    """
    return {"config": config.options(), "data": data.digest}


def backup_position(backup_dir: Path, steps_per_epoch: Optional[int]) -> Optional[tuple]:
    """Where a run resumes from the Keras backup in `backup_dir`, as `BackupAndRestore` will.

    Args:
        backup_dir: Path. `<output_dir>/backup`.
        steps_per_epoch: int or None. steps of one epoch (a backup at an epoch's last step
            resumes at the next epoch).

    Returns:
        tuple of int or None. `(epoch, step)`, None without a backup.
    """
    latest = tf.train.latest_checkpoint(str(backup_dir / "chief"))
    if latest is None:
        return None
    reader = tf.train.load_checkpoint(latest)
    epoch = int(reader.get_tensor("ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"))
    batch = int(reader.get_tensor("ckpt_saved_batch/.ATTRIBUTES/VARIABLE_VALUE"))
    if epoch < 0 or batch < 0:
        return None
    if steps_per_epoch is not None and batch == steps_per_epoch - 1:
        return epoch + 1, 0
    return epoch, batch + 1


class ResumableBackup(tf.keras.callbacks.BackupAndRestore):
    """Keras's `BackupAndRestore` (model, optimizer, epoch and step counters), plus what the
    other callbacks of `fit` carry from epoch to epoch, so that a resumed run continues as
    the uninterrupted one would have.

    Backs up every `every_steps` steps and at every epoch end, after the other callbacks
    have run (it must come last in `fit`'s callbacks): the states of `ValidationNDCG`,
    `EarlyStopping` (its best weights in an `.npz` beside) and `ModelCheckpoint` and the
    epoch logs go to `callbacks.json` first, the Keras checkpoint second. The file keeps
    the last two epochs' states, since a run killed between the two writes resumes from
    the backup before. Only the chief writes; every worker reads the chief's backup.

    Args:
        backup_dir: Path. `<output_dir>/backup` as configured (shared by the workers).
        every_steps: int or None. steps between backups; None or 0: epoch ends only.
        chief: bool. whether this process writes the backup's files.
        validation: ValidationNDCG. the run's validation callback.
        early_stopping: tf.keras.callbacks.EarlyStopping. with `restore_best_weights`.
        checkpoint: tf.keras.callbacks.ModelCheckpoint. the best-weights checkpoint.
        resume: dict or None. the state (`callbacks.json` entry) of the epochs done before the
            backup's position, restored at the start of `fit`.

    Attributes:
        history: dict. epoch logs of every epoch, the resumed-from run's included.
    """

    def __init__(self, backup_dir: Path, every_steps: Optional[int], chief: bool, validation: ValidationNDCG,
                 early_stopping, checkpoint, resume: Optional[dict] = None):
        super().__init__(str(backup_dir), save_freq=every_steps or _EPOCH_ENDS_ONLY, delete_checkpoint=False)
        self.directory = Path(backup_dir)
        self.every_steps = every_steps or None
        self.chief = chief
        self.validation = validation
        self.early_stopping = early_stopping
        self.checkpoint = checkpoint
        self.resume = resume
        self.history: dict = {key: list(values) for key, values in (resume or {}).get("history", {}).items()}
        self._steps = 0
        self._written_weights = None  # the EarlyStopping best weights last written, and their file
        self._weights_file = (resume or {}).get("best_weights")

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)  # restores the model, the optimizer and the counters
        if self.resume is not None:
            restore_callbacks(self.resume, self.directory, self.validation, self.early_stopping, self.checkpoint)
            self._written_weights = self.early_stopping.best_weights

    def _implements_train_batch_hooks(self):
        return bool(self.every_steps)  # epoch ends only: no per-step work at all

    def on_train_batch_end(self, batch, logs=None):
        self._training_state.backup_if_preempted()
        self._steps += 1
        steps = self.params.get("steps")
        if self.every_steps and self._steps >= self.every_steps and (steps is None or batch != steps - 1):
            # (an epoch's last step is backed up at its end, once the callbacks have run)
            self._steps = 0
            self._backup(epoch=self._current_epoch, batch=batch)

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        if self.chief:
            self._write_state(epoch + 1)
        self._steps = 0
        steps = self.params.get("steps")  # known: the pipeline's cardinality or steps_per_epoch
        if steps:
            self._training_state._ckpt_saved_batch.assign(steps - 1)  # the last step: resumes at the next epoch
        self._backup(epoch=epoch)

    def _write_state(self, epochs_done: int) -> None:
        """Writes the callbacks' states after `epochs_done` epochs (before the Keras backup)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        stopping = self.early_stopping
        if stopping.best_weights is not None and stopping.best_weights is not self._written_weights:
            self._weights_file = f"best_weights-{epochs_done}.npz"
            temporary = self.directory / f".{self._weights_file}.tmp"
            with open(temporary, "wb") as handle:
                np.savez(handle, *stopping.best_weights)
            os.replace(temporary, self.directory / self._weights_file)
            self._written_weights = stopping.best_weights
        state = {
            "epochs_done": epochs_done,
            "stopped": bool(self.model.stop_training),
            "validation": self.validation.state(),
            "early_stopping": {"wait": int(stopping.wait), "stopped_epoch": int(stopping.stopped_epoch),
                               "best": float(stopping.best), "best_epoch": int(stopping.best_epoch)},
            "best_weights": self._weights_file,
            "checkpoint_best": float(self.checkpoint.best),
            "history": self.history,
        }
        path = self.directory / STATE_FILE
        previous = json.loads(path.read_text())["states"][-1:] if path.is_file() else []
        states = [s for s in previous if s["epochs_done"] < epochs_done] + [state]
        write_json_atomically(path, {"states": states})
        keep = {s["best_weights"] for s in states}
        for stale in self.directory.glob("best_weights-*.npz"):
            if stale.name not in keep:
                stale.unlink(missing_ok=True)


class LoraTableRefresh(tf.keras.callbacks.Callback):
    """`--finetune lora`: keeps the item tower's table of adapted text vectors in step with the adapters.

    The table (`ItemTower.text_cache`) serves the catalog softmax's negatives, the history
    positions and every evaluation; a training step recomputes only its positives with gradient
    (`ItemTower.adapted_table`). This recomputes the whole table from the adapted top layers
    (`ItemTower.refresh_adapted_table`) at the start, every `every_steps` steps and at every
    epoch end, before the validation callback scores the epoch (it must come before it in
    `fit`'s callbacks).

    Args:
        item_tower: tfrec_lm.models.ItemTower. a tower with `adapts_text`.
        every_steps: int. steps between refreshes (>= 1).
    """

    def __init__(self, item_tower, every_steps: int):
        super().__init__()
        self.item_tower = item_tower
        self.every_steps = int(every_steps)
        self.refreshes = 0
        self.refresh_seconds = 0.0
        self._steps = 0

    def _refresh(self) -> None:
        start = time.monotonic()
        self.item_tower.refresh_adapted_table()
        self.refreshes += 1
        self.refresh_seconds += time.monotonic() - start

    def on_train_begin(self, logs=None):
        self.item_tower.prepare_lora()
        self._refresh()

    def _implements_train_batch_hooks(self):
        return True

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if self._steps % self.every_steps == 0:
            self._refresh()

    def on_epoch_end(self, epoch, logs=None):
        self._refresh()

    def on_train_end(self, logs=None):
        logger.info("lora: %d refreshes of the adapted item table, %.1f s", self.refreshes, self.refresh_seconds)


def finish_lora(model) -> None:
    """After `--finetune lora` trains: folds the adapters into the encoder's base kernels
    (`BertTextEncoder.merge_adapters`, B = 0 after: the same encoder) and recomputes the item
    table from it, so the final item vectors, the export and a catalog update's new texts are the
    adapted encoder's. Nothing for another strategy."""
    tower = model.item_tower
    if not tower.adapts_text:
        return
    tower.encoder.merge_adapters()
    tower.refresh_adapted_table()


def restore_callbacks(state: dict, directory: Path, validation: ValidationNDCG, early_stopping, checkpoint) -> None:
    """Puts a `callbacks.json` state back into the callbacks (after their own `on_train_begin`).

    Args:
        state: dict. one entry of `callbacks.json`'s `states`.
        directory: Path. the backup directory (the best weights' `.npz`).
        validation: ValidationNDCG. gets the earlier epochs' values and clock.
        early_stopping: tf.keras.callbacks.EarlyStopping. gets wait, best, best epoch and weights.
        checkpoint: tf.keras.callbacks.ModelCheckpoint. gets the best value saved so far.
    """
    validation.restore(state["validation"])
    for name, value in state["early_stopping"].items():
        setattr(early_stopping, name, value)
    if state["best_weights"]:
        with np.load(directory / state["best_weights"]) as stored:
            early_stopping.best_weights = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    checkpoint.best = state["checkpoint_best"]


def resume_state(directory: Path, start: Optional[tuple]) -> Optional[dict]:
    """The callbacks' state that goes with a backup position.

    Args:
        directory: Path. `<output_dir>/backup`.
        start: tuple of int or None. `backup_position`.

    Returns:
        dict or None. the `callbacks.json` state after `start[0]` epochs; None from the
            first epoch (nothing to restore besides the Keras backup).

    Raises:
        RuntimeError: the backup is past an epoch whose callback state is missing.
    """
    if start is None or start[0] == 0:
        return None
    path = directory / STATE_FILE
    states = json.loads(path.read_text())["states"] if path.is_file() else []
    for state in states:
        if state["epochs_done"] == start[0]:
            return state
    raise RuntimeError(f"the backup in {directory} resumes at epoch {start[0] + 1} but {path} has no state "
                       f"after epoch {start[0]}; remove {directory} to start over")


@dataclasses.dataclass
class FitResult:
    """What the fit stage produced (the model itself holds the kept epoch's weights, `--keep-weights`).

    Attributes:
        validation_ndcg: list of float. validation NDCG@10 after each epoch.
        validation_seconds: list of float. seconds since `fit` started at each of those evaluations.
        train_seconds: float. wall time of `fit`.
        history: dict. Keras `fit` logs per epoch.
        validation_scoring_seconds: float. of `train_seconds`, the time spent scoring the
            validation users (`ValidationNDCG`) in this process's `fit`.
        run_id: str or None. the run's id (kept across resumes; None on a non-chief worker).
    """

    validation_ndcg: list
    validation_seconds: list
    train_seconds: float
    history: dict
    validation_scoring_seconds: float = 0.0
    run_id: Optional[str] = None


EPOCHS_TRAINED = "epochs_trained"


def log_epochs_trained(epoch: int, logs: Optional[dict]) -> None:
    """Adds the epochs trained so far to an epoch's logs (what `--keep-weights last` keeps the latest of)."""
    if logs is not None:
        logs[EPOCHS_TRAINED] = float(epoch + 1)


def fit(config: TrainConfig, model, data: PreparedData, strategy, output_dir: Path, verbose: int = 0) -> FitResult:
    """The fit stage: warm start and compile, then train, validating NDCG@10 after every epoch, and
    keep the last epoch's weights or (`--keep-weights best`, with early stopping) the best one's.

    A run that died resumes: `<config.output_dir>/backup` (`ResumableBackup`) holds the
    model, the optimizer, the epoch and step, the other callbacks' states and the epoch
    logs of the last backup, and the input pipeline continues where it was. A backup of
    other options or data is dropped. The backup stays after `fit` (a run killed while
    evaluating or exporting does not train again); `training.export_and_record` removes it.

    Args:
        config: TrainConfig. the run's options.
        model: TwoTowerModel. from the model stage (every variable created).
        data: PreparedData. `train_examples` to train on, `split.validation` to validate on.
        strategy: tf.distribute.Strategy. the strategy the model was built under.
        output_dir: Path. checkpoints (`checkpoints/best.weights`) and TensorBoard logs go here.
        verbose: int. Keras progress output.

    Returns:
        FitResult. The model ends with the kept epoch's weights.
    """
    workers = data.workers if data.workers.sharded else None
    identity = run_identity(config, data)
    if workers is not None:
        # Each worker trains on its own rows, batch_size / workers of them a step, repeating
        # them; an epoch (unless --steps-per-epoch) is the largest worker's pass.
        largest_pass = workers.max(math.ceil(len(data.train_examples) * workers.count / config.batch_size))
        config = config.replace(steps_per_epoch=config.steps_per_epoch or largest_pass)
    passes = math.ceil(len(data.train_examples) / config.batch_size)
    with strategy.scope():
        warm_start_and_compile(model, config, total_steps=config.epochs * (config.steps_per_epoch or passes))
    output_dir.mkdir(parents=True, exist_ok=True)
    chief = is_chief(strategy)
    # Every worker reads the chief's backup (a non-chief's output_dir is a temporary one).
    backup_dir = Path(config.output_dir) / BACKUP_DIR
    run_id = RunFolder(config.output_dir).start_backup(identity, adopt=config.resume) if chief else None
    start = backup_position(backup_dir, config.steps_per_epoch or passes)
    resume = resume_state(backup_dir, start)
    if start is not None:
        logger.info("resuming from the backup in %s at epoch %d, step %d", backup_dir, start[0] + 1, start[1])
    start = start or (0, 0)
    validation = ValidationNDCG(refresh_validation(data.split.validation, config.since),
                                None if config.time_budget_minutes is None else 60 * config.time_budget_minutes,
                                workers=workers)
    # `--keep-weights last`: the callbacks that keep the best epoch watch the epoch count,
    # which every epoch improves, so the kept epoch is the latest and nothing stops early.
    monitor = "val_ndcg_at_10" if config.keep_weights == "best" else EPOCHS_TRAINED
    early_stopping = tf.keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=config.patience,
                                                      restore_best_weights=True)
    # Under a multi-worker strategy both callbacks write on the chief only (Keras).
    checkpoint = tf.keras.callbacks.ModelCheckpoint(str(output_dir / CHECKPOINT),
                                                    monitor=monitor, mode="max", save_best_only=True,
                                                    save_weights_only=True)
    backup = ResumableBackup(backup_dir, config.backup_steps, chief, validation, early_stopping, checkpoint, resume)
    callbacks = [
        # `--finetune lora`: the adapted item table is recomputed before the validation scores an epoch.
        *([LoraTableRefresh(model.item_tower, config.lora_refresh_steps)] if model.item_tower.adapts_text else []),
        validation,
        tf.keras.callbacks.LambdaCallback(on_epoch_end=log_epochs_trained),
        early_stopping,
        checkpoint,
        backup,  # after the callbacks whose states it backs up
        tf.keras.callbacks.TensorBoard(log_dir=str(output_dir / "tensorboard"), update_freq="epoch"),
    ]
    start_time = time.monotonic()
    if resume is not None and (resume["stopped"] or resume["epochs_done"] >= config.epochs):
        # Killed after training ended (evaluating, exporting): nothing left to train.
        logger.info("the backup in %s is of a finished fit; not training again", backup_dir)
        restore_callbacks(resume, backup_dir, validation, early_stopping, checkpoint)
        model.set_weights(early_stopping.best_weights)
        history = dict(backup.history)
    else:
        train_ds = (training_dataset(data.train_examples, config, start) if workers is None
                    else sharded_training_input(data.train_examples, config, start))
        fitted = model.fit(train_ds, epochs=config.epochs,
                           steps_per_epoch=resume_steps_per_epoch(data.train_examples, config, start),
                           callbacks=callbacks, verbose=verbose)
        history = dict(fitted.history) if resume is None and start == (0, 0) else dict(backup.history)
        if (config.keep_weights == "best" and validation.history
                and len(validation.history) - 1 != int(np.argmax(validation.history))):
            # EarlyStopping restores the best weights only when it stops early; make it
            # unconditional (from memory: a non-chief worker has no checkpoint file).
            model.set_weights(early_stopping.best_weights)
    finish_lora(model)
    # Seconds of training, the resumed-from run's included (until its last validation).
    train_seconds = time.monotonic() - start_time + (resume["validation"]["seconds"][-1]
                                                     if resume and resume["validation"]["seconds"] else 0.0)
    return FitResult(validation_ndcg=validation.history, validation_seconds=validation.seconds,
                     train_seconds=train_seconds, history=history, validation_scoring_seconds=validation.scoring_seconds,
                     run_id=run_id)
