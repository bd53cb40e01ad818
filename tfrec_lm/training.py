"""The one training function shared by the CLI, the tuner, the benchmarks and the tests."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from tfrec_lm.config import ConfigError, TrainConfig
from tfrec_lm.data.schema import DataError, Dataset
from tfrec_lm.data.split import (ItemVocab, LeaveOneOutSplit, build_sequences, build_vocab, leave_one_out,
                                 train_interaction_counts)
from tfrec_lm.distribute import WorkerOutputs, make_strategy
from tfrec_lm.evaluation.metrics import full_catalog_ranks, ranking_metrics, sliced_metrics
from tfrec_lm.evaluation.migration import js_migration_scores, migration_slices
from tfrec_lm.evaluation.popularity import popularity_scores
from tfrec_lm.layers.bert_text_encoder import BertTextEncoder
from tfrec_lm.layers.history_text_composer import HistoryTextComposer
from tfrec_lm.models.history_text_user_tower import HistoryTextUserTower
from tfrec_lm.models.item_sequence_user_tower import ItemSequenceUserTower
from tfrec_lm.models.item_tower import ItemTower
from tfrec_lm.models.two_tower import TwoTowerModel
from tfrec_lm.text import tokenize_items

logger = logging.getLogger(__name__)

EncoderFactory = Callable[[], tuple]  # () -> (TFBertModel, tokenizer)


@dataclasses.dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        model: TwoTowerModel. the trained model (best validation weights).
        vocab: ItemVocab. item index <-> item id.
        split: LeaveOneOutSplit. the data split used.
        metrics: dict. `{"model": {slice: {metric: value}}, "most_popular": ...}` on test.
        validation_ndcg: list of float. validation NDCG@10 after each epoch.
        validation_seconds: list of float. seconds since `fit` started at each of those
            evaluations (the time-to-quality curve).
        train_seconds: float. wall time of `fit`.
        export_path: Path or None. the SavedModel version directory.
        counts: np.ndarray. [C+1] training interaction counts (popularity).
        history: dict. Keras `fit` logs per epoch (`loss`: the global batch's mean loss
            of each epoch's last step).
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


def load_training_data(config: TrainConfig) -> Dataset:
    """Reads the configured data source into the SPEC §1 schema."""
    if config.data == "files":
        from tfrec_lm.data.files import load_interactions_file

        return load_interactions_file(config.interactions, config.items, strict=config.strict)
    from tfrec_lm.data import movielens

    if config.data_source == "tfds" or (config.data_source == "auto" and movielens.tfds_available()):
        return movielens.load_movielens_100k_tfds(strict=config.strict)
    from tfrec_lm.assets import movielens_100k_dir

    return movielens.load_movielens_100k(movielens_100k_dir(), strict=config.strict)


def build_model(config: TrainConfig, vocab: ItemVocab, item_texts, encoder_factory: EncoderFactory,
                item_probability=None) -> TwoTowerModel:
    """Builds towers and tasks for `config` around fresh encoder copies."""
    bert, tokenizer = encoder_factory()
    tokens = tokenize_items(item_texts, tokenizer, config.max_item_tokens)
    item_encoder = BertTextEncoder(bert, finetune=config.finetune, trainable_layers=config.trainable_layers,
                                   name="item_text_encoder")
    item_tower = ItemTower(item_encoder, tokens.with_special_tokens(), embedding_dim=config.embedding_dim,
                           use_item_ids=config.item_ids, dropout=config.dropout, use_text=config.item_text,
                           name="item_tower")
    if config.user_tower == "item-sequence":
        user_tower = ItemSequenceUserTower(item_tower, max_history=config.max_history,
                                           num_blocks=config.num_blocks, num_heads=config.num_heads,
                                           dropout=config.dropout, pooling=config.sequence_pooling,
                                           time_features=config.reads_item_ages, long_short=config.long_short,
                                           short_window=config.short_window, name="user_tower")
    else:
        history_bert, _ = encoder_factory()
        history_encoder = BertTextEncoder(history_bert, finetune=config.finetune,
                                          trainable_layers=config.trainable_layers, name="history_text_encoder")
        composer = HistoryTextComposer(tokens.token_ids, tokens.lengths, tokens.cls_id, tokens.sep_id,
                                       max_tokens=config.history_tokens, name="history_text_composer")
        user_tower = HistoryTextUserTower(history_encoder, composer, embedding_dim=config.embedding_dim,
                                          dropout=config.dropout, name="user_tower")
    model = TwoTowerModel(user_tower, item_tower, negatives=config.negatives, temperature=config.temperature,
                          retrieval_weight=config.retrieval_weight, ranking_weight=config.ranking_weight,
                          item_probability=item_probability)
    item_tower.trim_padding = item_tower.unique_items = not config.jit_compile  # XLA: static shapes only
    if item_tower.text_cache is not None:
        cache_dir = None
        if config.cache_text_vectors:
            from tfrec_lm.assets import cache_dir as asset_cache_dir

            cache_dir = asset_cache_dir() / "text_vectors"
        item_tower.refresh_cache(cache_dir=cache_dir)
    return model


def pretrained_encoder_factory(spec: str) -> EncoderFactory:
    """Loads the pretrained encoder on the first call; each call returns an independent copy.

    Loading waits for the first call so that the encoder's variables are created where
    the model is built (inside the distribution strategy's scope).
    """
    from tfrec_lm.bert import load_bert

    loaded = []

    def factory():
        if not loaded:
            bert, tokenizer = load_bert(spec)
            loaded.append((bert, tokenizer, bert.get_weights()))
            return bert, tokenizer
        bert, tokenizer, weights = loaded[0]
        copy = type(bert)(bert.config)
        copy(copy.dummy_inputs)
        copy.set_weights(weights)
        return copy, tokenizer

    return factory


def examples_to_features(examples) -> dict:
    return {
        "history": examples.history.astype(np.int32),
        "history_timestamps": examples.history_timestamps.astype(np.int64),
        "target": examples.target.astype(np.int32),
        "rating": examples.rating.astype(np.float32),
    }


def user_embeddings(model: TwoTowerModel, history: np.ndarray, timestamps: np.ndarray,
                    batch_size: int = 256) -> np.ndarray:
    """Runs the user tower over histories. [n, H], [n, H] -> [n, D]."""
    return np.concatenate([
        model.embed_users(tf.constant(history[i:i + batch_size], tf.int32),
                          tf.constant(timestamps[i:i + batch_size], tf.int64)).numpy()
        for i in range(0, len(history), batch_size)], axis=0)


def score_catalog(model: TwoTowerModel, examples) -> np.ndarray:
    """Full-catalog scores of evaluation examples. [n, C+1], column 0 = -inf."""
    items = model.item_tower(tf.range(model.item_tower.num_items), training=False).numpy()
    scores = user_embeddings(model, examples.history, examples.history_timestamps) @ items.T
    scores[:, 0] = -np.inf
    return scores


def spec_metrics(scores: np.ndarray, examples, slices: dict) -> dict:
    """SPEC §2 metrics per slice from full-catalog scores."""
    ranks = full_catalog_ranks(scores, examples.target, examples.exclude)
    return sliced_metrics(ranks, slices)


class ValidationNDCG(tf.keras.callbacks.Callback):
    """Adds SPEC validation NDCG@10 (full catalog, history excluded) to the epoch logs."""

    def __init__(self, examples, budget_seconds: Optional[float] = None):
        super().__init__()
        self.examples = examples
        self.history: list[float] = []
        self.seconds: list[float] = []
        self.budget_seconds = budget_seconds
        self._start = None

    def on_train_begin(self, logs=None):
        self._start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        scores = score_catalog(self.model, self.examples)
        ranks = full_catalog_ranks(scores, self.examples.target, self.examples.exclude)
        ndcg = float(ranking_metrics(ranks, ks=(10,))["NDCG@10"])
        self.history.append(ndcg)
        self.seconds.append(time.monotonic() - self._start)
        if logs is not None:
            logs["val_ndcg_at_10"] = ndcg
        logger.info("epoch %d: validation NDCG@10 %.4f", epoch + 1, ndcg)
        if self.budget_seconds is not None and time.monotonic() - self._start > self.budget_seconds:
            logger.info("time budget reached after epoch %d", epoch + 1)
            self.model.stop_training = True


def refresh_validation(examples, since: Optional[int]):
    """The validation targets that early stopping watches.

    A refresh (`--since`) trains on recent interactions to follow recent interests, so it
    is validated on the users whose validation target is itself recent (at or after
    `since`); most users' validation targets predate a refresh window and say nothing
    about it. Without `--since`, or when no validation target is that recent, all of them.
    """
    if since is None:
        return examples
    recent = np.flatnonzero(examples.target_timestamp >= since)
    if not len(recent):
        logger.info("no validation target at or after --since %d: validating on all users", since)
        return examples
    logger.info("refresh: validating on the %d users whose validation target is at or after --since", len(recent))
    return examples.take(recent)


def require_training_examples(split: LeaveOneOutSplit, sequences) -> None:
    """Raises DataError when the split has no training example (before any model is built).

    split: LeaveOneOutSplit. The leave-one-out split.
    sequences: UserSequences. The users' time-ordered interactions (for the message).
    """
    if len(split.train):
        return
    longest = max((len(items) for items in sequences.items), default=0)
    raise DataError(f"no training examples: leave-one-out keeps each user's last two interactions for validation "
                    f"and test and a training example needs an earlier one as its history, so some user needs "
                    f"at least 4 interactions ({len(sequences)} users, the most active has {longest})")


def refresh_examples(target_timestamp: np.ndarray, config: TrainConfig) -> np.ndarray:
    """Rows a refresh (`--since`) trains on, in their original order.

    target_timestamp: np.ndarray int [n]. Each training example's target time.
    config: TrainConfig. Reads `since`, `replay` and `seed`.
    Returns np.ndarray int. Every row at or after `since`, and `replay` times as many older
        rows (at most all of them) drawn uniformly without replacement with `seed`.
    """
    recent = np.flatnonzero(target_timestamp >= config.since)
    if not len(recent):
        raise ConfigError(f"--since {config.since}: no training interaction at or after that time")
    older = np.flatnonzero(target_timestamp < config.since)
    count = min(len(older), int(round(config.replay * len(recent))))
    replayed = np.random.default_rng(config.seed).choice(older, size=count, replace=False) if count else []
    logger.info("refresh: %d interactions since %d, %d older replayed", len(recent), config.since, count)
    return np.sort(np.concatenate([recent, np.asarray(replayed, dtype=recent.dtype)]))


def checkpoint_prefix(path: str) -> str:
    """Resolves `--warm-start` (a run directory or a checkpoint prefix) to a prefix."""
    candidate = Path(path)
    if (candidate / "saved_model.pb").is_file():
        raise ConfigError(f"--warm-start {path} is a SavedModel export, which holds the serving graph only; "
                          "pass the training run's --output-dir (or its checkpoints/best.weights)")
    if candidate.is_dir():
        candidate = candidate / "checkpoints" / "best.weights"
    if not Path(f"{candidate}.index").is_file():
        raise ConfigError(f"--warm-start: no checkpoint at {candidate} (expected {candidate}.index)")
    return str(candidate)


def make_optimizer(config: TrainConfig):
    optimizer = tf.keras.optimizers.AdamW(learning_rate=config.learning_rate, weight_decay=config.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["bias", "LayerNorm", "layer_norm", "norm", "embedding"])
    if config.mixed_precision == "mixed_float16":
        # float16 gradients underflow without loss scaling (bfloat16 has float32's range).
        optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def train(config: TrainConfig, dataset: Optional[Dataset] = None,
          encoder_factory: Optional[EncoderFactory] = None, verbose: int = 0) -> TrainResult:
    """Trains, evaluates on the SPEC §2 test targets and (optionally) exports.

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
    try:
        return _train(config, strategy, outputs, dataset, encoder_factory, verbose)
    finally:
        outputs.cleanup()


@contextlib.contextmanager
def dtype_policy(name: str):
    """Sets the Keras global dtype policy (e.g. `mixed_bfloat16`) inside, restores it after."""
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


def _train(config: TrainConfig, strategy, outputs: WorkerOutputs, dataset: Optional[Dataset],
           encoder_factory: Optional[EncoderFactory], verbose: int) -> TrainResult:
    tf.keras.utils.set_random_seed(config.seed)
    dataset = dataset if dataset is not None else load_training_data(config)
    vocab = build_vocab(dataset.items)
    sequences = build_sequences(dataset, vocab)
    split = leave_one_out(sequences, config.max_history)
    require_training_examples(split, sequences)
    counts = train_interaction_counts(split)
    train_examples = split.train
    if config.since is not None:
        train_examples = train_examples.take(refresh_examples(train_examples.target_timestamp, config))
    if config.max_train_examples is not None and len(train_examples) > config.max_train_examples:
        keep = np.argsort(-train_examples.target_timestamp, kind="stable")[: config.max_train_examples]
        train_examples = train_examples.take(np.sort(keep))
    encoder_factory = encoder_factory or pretrained_encoder_factory(config.encoder)
    target_counts = np.bincount(split.train.target, minlength=vocab.size).astype(np.float64)
    # Variables (mirrored under a strategy), optimizer and metrics in the strategy's scope.
    # Layers take the global dtype policy when they are created, so every layer is created
    # (and built) under `--mixed-precision`'s; the loss layers that TFRS creates inside
    # its tasks while tracing the training step are then float32, as the logits.
    with strategy.scope():
        with dtype_policy(config.mixed_precision):
            model = build_model(config, vocab, dataset.items["text"].tolist(), encoder_factory,
                                item_probability=target_counts / max(target_counts.sum(), 1.0))
            _create_variables(model, train_examples)
        _warm_start_and_compile(model, config, train_examples)

    output_dir = outputs.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    features = examples_to_features(train_examples)
    options = tf.data.Options()
    # Workers split each global batch (from_tensor_slices has no files to shard by).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train_ds = (tf.data.Dataset.from_tensor_slices(features)
                .shuffle(min(len(train_examples), 100_000), seed=config.seed, reshuffle_each_iteration=True))
    if config.steps_per_epoch is not None:
        train_ds = train_ds.repeat()  # an "epoch" is then steps_per_epoch steps between validations
    train_ds = train_ds.batch(config.batch_size).prefetch(tf.data.AUTOTUNE).with_options(options)
    validation = ValidationNDCG(refresh_validation(split.validation, config.since),
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

    test = split.test
    test_histories = [sequences.items[u][:-1] for u in test.user_index]  # full, time-ordered
    slices = migration_slices(js_migration_scores(test_histories, [()] + dataset.items["genres"].tolist()))
    popularity = np.broadcast_to(popularity_scores(counts), (len(test.target), vocab.size))
    metrics = {
        "model": spec_metrics(score_catalog(model, test), test, slices),
        "most_popular": spec_metrics(np.array(popularity), test, slices),
    }
    result = TrainResult(model=model, vocab=vocab, split=split, metrics=metrics,
                         validation_ndcg=validation.history, validation_seconds=validation.seconds,
                         train_seconds=train_seconds, export_path=None,
                         counts=counts, dataset=dataset, slices=slices, history=dict(history.history))
    if config.export:
        from tfrec_lm.export import export_model

        result.export_path = export_model(result, config.replace(export_base=str(outputs.export_base)))
        if config.top_k >= 10:
            from tfrec_lm.evaluation.export_eval import evaluate_export

            metrics["export"] = evaluate_export(
                result.export_path, test_histories, [sequences.timestamps[u][:-1] for u in test.user_index],
                test.target, vocab.ids, slices)
    summary = {
        "config": config.to_dict(),
        "test": metrics,
        "validation_ndcg_at_10": validation.history,
        "validation_seconds": validation.seconds,
        "train_seconds": train_seconds,
        "train_examples": len(train_examples),
        "export_path": str(result.export_path) if result.export_path else None,
        "train_loss": history.history.get("loss", []),
        "replicas": strategy.num_replicas_in_sync,
    }
    (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    if not outputs.chief:
        result.export_path = None  # written to this worker's temporary directory, removed on return
    return result


def _create_variables(model: TwoTowerModel, train_examples) -> None:
    """Creates every model variable now, eagerly.

    Built lazily inside a replica's first step, the random initialisers would draw
    differently under each strategy; and a warm start restores all variables at once.
    """
    probe = {name: value[:2] for name, value in examples_to_features(train_examples).items()}
    users, items = model(probe, training=False)
    model.predict_rating(users, items)


def _warm_start_and_compile(model: TwoTowerModel, config: TrainConfig, train_examples) -> None:
    if config.warm_start:
        # Towers and head only: the checkpoint's optimizer (and its learning rate) stays behind.
        towers = tf.train.Checkpoint(user_tower=model.user_tower, item_tower=model.item_tower,
                                     ranking_head=model.ranking_head)
        towers.read(checkpoint_prefix(config.warm_start)).expect_partial().assert_existing_objects_matched()
        logger.info("warm start from %s", config.warm_start)
    model.compile(optimizer=make_optimizer(config), jit_compile=config.jit_compile)
