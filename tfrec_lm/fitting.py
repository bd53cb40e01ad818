"""The fit stage of training: warm start, optimizer, input pipeline, callbacks, `model.fit`."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfrec_lm.config import TrainConfig
from tfrec_lm.data.prepare import PreparedData, examples_to_features
from tfrec_lm.data.split import refresh_validation
from tfrec_lm.errors import ConfigError
from tfrec_lm.evaluation.scoring import ValidationNDCG

logger = logging.getLogger(__name__)


def checkpoint_prefix(path: str, flag: str = "--warm-start") -> str:
    """Resolves a run directory or a checkpoint prefix (`--warm-start`, `--run`) to a prefix.

    Args:
        path: str. a training run's `--output-dir` or a checkpoint prefix.
        flag: str. the option that named `path`, for the messages.

    Returns:
        str. the checkpoint prefix (`<dir>/checkpoints/best.weights` for a run directory).

    Raises:
        ConfigError: a SavedModel export, or no checkpoint there.
    """
    candidate = Path(path)
    if (candidate / "saved_model.pb").is_file():
        raise ConfigError(f"{flag} {path} is a SavedModel export, which holds the serving graph only; "
                          "pass the training run's --output-dir (or its checkpoints/best.weights)")
    if candidate.is_dir():
        candidate = candidate / "checkpoints" / "best.weights"
    if not Path(f"{candidate}.index").is_file():
        raise ConfigError(f"{flag}: no checkpoint at {candidate} (expected {candidate}.index)")
    return str(candidate)


def make_optimizer(config: TrainConfig):
    """AdamW with `learning_rate` and `weight_decay` (none on biases, norms and embeddings);
    wrapped in a LossScaleOptimizer under `mixed_float16`."""
    optimizer = tf.keras.optimizers.AdamW(learning_rate=config.learning_rate, weight_decay=config.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["bias", "LayerNorm", "layer_norm", "norm", "embedding"])
    if config.mixed_precision == "mixed_float16":
        # float16 gradients underflow without loss scaling (bfloat16 has float32's range).
        optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def warm_start_and_compile(model, config: TrainConfig) -> None:
    """Restores the towers and head from `--warm-start` (if any) and compiles the model.

    Args:
        model: TwoTowerModel. every variable already created.
        config: TrainConfig. reads `warm_start`, the optimizer options and `jit_compile`.
    """
    if config.warm_start:
        # Towers and head only: the checkpoint's optimizer (and its learning rate) stays behind.
        towers = tf.train.Checkpoint(user_tower=model.user_tower, item_tower=model.item_tower,
                                     ranking_head=model.ranking_head)
        towers.read(checkpoint_prefix(config.warm_start)).expect_partial().assert_existing_objects_matched()
        logger.info("warm start from %s", config.warm_start)
    model.compile(optimizer=make_optimizer(config), jit_compile=config.jit_compile)


def training_dataset(train_examples, config: TrainConfig) -> tf.data.Dataset:
    """The shuffled, batched, prefetched training pipeline, sharded by data across workers.

    Args:
        train_examples: Examples. the rows to train on.
        config: TrainConfig. reads `seed`, `batch_size` (global) and `steps_per_epoch` (repeat when set).

    Returns:
        tf.data.Dataset. batches of `examples_to_features` dicts.
    """
    options = tf.data.Options()
    # Workers split each global batch (from_tensor_slices has no files to shard by).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = (tf.data.Dataset.from_tensor_slices(examples_to_features(train_examples))
               .shuffle(min(len(train_examples), 100_000), seed=config.seed, reshuffle_each_iteration=True))
    if config.steps_per_epoch is not None:
        dataset = dataset.repeat()  # an "epoch" is then steps_per_epoch steps between validations
    return dataset.batch(config.batch_size).prefetch(tf.data.AUTOTUNE).with_options(options)


@dataclasses.dataclass
class FitResult:
    """What the fit stage produced (the model itself holds the best validation weights).

    Attributes:
        validation_ndcg: list of float. validation NDCG@10 after each epoch.
        validation_seconds: list of float. seconds since `fit` started at each of those evaluations.
        train_seconds: float. wall time of `fit`.
        history: dict. Keras `fit` logs per epoch.
    """

    validation_ndcg: list
    validation_seconds: list
    train_seconds: float
    history: dict


def fit(config: TrainConfig, model, data: PreparedData, strategy, output_dir: Path, verbose: int = 0) -> FitResult:
    """The fit stage: warm start and compile, then train with early stopping on validation NDCG@10.

    Args:
        config: TrainConfig. the run's options.
        model: TwoTowerModel. from the model stage (every variable created).
        data: PreparedData. `train_examples` to train on, `split.validation` to validate on.
        strategy: tf.distribute.Strategy. the strategy the model was built under.
        output_dir: Path. checkpoints (`checkpoints/best.weights`) and TensorBoard logs go here.
        verbose: int. Keras progress output.

    Returns:
        FitResult. The model ends with the best validation epoch's weights.
    """
    with strategy.scope():
        warm_start_and_compile(model, config)
    output_dir.mkdir(parents=True, exist_ok=True)
    train_ds = training_dataset(data.train_examples, config)
    validation = ValidationNDCG(refresh_validation(data.split.validation, config.since),
                                None if config.time_budget_minutes is None else 60 * config.time_budget_minutes)
    early_stopping = tf.keras.callbacks.EarlyStopping(monitor="val_ndcg_at_10", mode="max", patience=config.patience,
                                                      restore_best_weights=True)
    callbacks = [
        validation,
        early_stopping,
        # Under a multi-worker strategy both callbacks write on the chief only (Keras).
        tf.keras.callbacks.ModelCheckpoint(str(output_dir / "checkpoints" / "best.weights"),
                                           monitor="val_ndcg_at_10", mode="max", save_best_only=True,
                                           save_weights_only=True),
        tf.keras.callbacks.TensorBoard(log_dir=str(output_dir / "tensorboard"), update_freq="epoch"),
    ]
    start = time.monotonic()
    history = model.fit(train_ds, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
                        callbacks=callbacks, verbose=verbose)
    train_seconds = time.monotonic() - start
    if validation.history and len(validation.history) - 1 != int(np.argmax(validation.history)):
        # EarlyStopping restores the best weights only when it stops early; make it
        # unconditional (from memory: a non-chief worker has no checkpoint file).
        model.set_weights(early_stopping.best_weights)
    return FitResult(validation_ndcg=validation.history, validation_seconds=validation.seconds,
                     train_seconds=train_seconds, history=dict(history.history))
