"""A plain SASRec-style ID baseline on MovieLens-100K (SPEC §2), the reference for quality claims.

Not a product path: a small Keras model that lives only here, trained and evaluated on
exactly the package's split (`tfrec_lm.data.prepare.prepare_data` with the CPU preset)
and scored by the package's metrics (`full_catalog_ranks`, `sliced_metrics`, the
migration slices of `evaluate_test`), so a model's NDCG@10 can be quoted as a ratio
against it measured in the same run.

The model: item IDs alone; an embedding table [C+1, d] (0 = padding, masked), learned
position embeddings counted back from the newest item (histories are re-laid out
left-padded, SASRec's layout, so the newest item always sits at the last position), one
pre-LN transformer block (2 heads, ReLU feed-forward, dropout 0.2), a final LayerNorm;
the newest position's output is scored by a dot product with the same (tied) item table
over the full catalog, softmax cross-entropy over every item (no temperature, no
normalisation). Adam 1e-3, batch 128, 6 epochs, no early stopping. Two training
objectives (`--objective`):

- `prefix` (the default, the committed reference): one target per history prefix (the
  package's training examples, with the same history truncation H); each example runs the
  transformer over its H-item history to score one target.
- `causal` (SASRec's own objective): each training sequence is a window of one user's
  training interactions, H inputs and the H next items as targets (`causal_windows`: the
  newest window ends at the user's last training target, earlier windows are cut back
  from it H targets at a time, so every training target of `prefix` is a target exactly
  once per epoch; the oldest window is left-padded). A causal attention mask (position t
  attends to positions <= t) lets every position predict its next item in one pass, with
  the same tied full-catalog softmax; padding positions are out of the loss (the mean
  over real targets). About H times less transformer work per target. Evaluation is the
  same (the newest position's output; for one block its causal and full masks agree).

    python benchmarks/sasrec.py                    # prefix, seeds 42 1 2 -> sasrec.json
    python benchmarks/sasrec.py --seeds 42 --epochs 6
    python benchmarks/sasrec.py --objective causal # seeds 42 1 2 -> sasrec_causal.json
    python benchmarks/sasrec.py --no-history-negatives  # -> sasrec_no_history_negatives.json

`--no-history-negatives` (prefix only) leaves each example's own history items out of its
softmax, as the package's model does by default (the evaluation never ranks them): the
reference given the same training change, to tell that change from the architecture.

Output: `benchmarks/results/sasrec.json` (`prefix`): per seed the test metrics (all /
migrating / stable users, plus the most-popular baseline), per-user test ranks and slice
members (the layout of `ml100k.run_variant`, so `recency_ablation.paired` can compare runs
user by user), training seconds; and the mean over seeds. Rewritten after every seed.
`benchmarks/results/sasrec_causal.json` (`causal`): the same per run, keyed
`sasrec-causal` / `sasrec-causal@seed<N>` (`sasrec-causal-e<E>` for a non-default epoch
count), runs already in the file and not rerun kept; `paired`: each causal variant
against the committed prefix runs of `sasrec.json` over the seeds both ran
(`recency_ablation.paired`: ratio of mean NDCG@10, 95% bootstrap interval over test
users, all / migrating / stable); `speed`: training seconds, seconds per epoch and
training targets per second of both objectives per seed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tfrec_lm  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf  # noqa: E402
from _common import write_result  # noqa: E402

DEFAULT_SEEDS = (42, 1, 2)
SLICES = ("all", "migrating", "stable")
SETTINGS = {"dim": 64, "heads": 2, "dropout": 0.2, "learning_rate": 1e-3, "batch_size": 128, "epochs": 6}
OBJECTIVES = ("prefix", "causal")
PREFIX_VARIANT = "sasrec"
CAUSAL_VARIANT = "sasrec-causal"
UNSEEN_VARIANT = "sasrec-no-history-negatives"
# result names under benchmarks/results/
OUTPUTS = {"prefix": "sasrec", "causal": "sasrec_causal", UNSEEN_VARIANT: "sasrec_no_history_negatives"}


def run_key(seed: int, variant: str = PREFIX_VARIANT) -> str:
    """The run's key in the results, `recency_ablation.run_key`'s: the variant for seed 42, else `<variant>@seed<N>`.

    Args:
        seed: int. the run's seed.
        variant: str. `sasrec` (prefix objective) or `sasrec-causal[-e<E>]`.

    Returns:
        str. so `recency_ablation.paired({**ablation_runs, **sasrec_runs}, "time", "sasrec")` pairs by seed.
    """
    return variant if seed == DEFAULT_SEEDS[0] else f"{variant}@seed{seed}"


def variant_name(objective: str, epochs: int, history_negatives: bool = True) -> str:
    """The runs' variant: `sasrec` for prefix (`sasrec-no-history-negatives` without history
    negatives); `sasrec-causal`, or `sasrec-causal-e<E>` off the default epochs.

    Args:
        objective: str. `prefix` or `causal`.
        epochs: int. training epochs.
        history_negatives: bool. prefix only: False names the runs without history negatives.

    Returns:
        str.
    """
    if objective == "prefix":
        return PREFIX_VARIANT if history_negatives else UNSEEN_VARIANT
    return CAUSAL_VARIANT if epochs == SETTINGS["epochs"] else f"{CAUSAL_VARIANT}-e{epochs}"


def left_pad(history: np.ndarray) -> np.ndarray:
    """Moves right-padded histories to SASRec's layout: left-padded, newest item last.

    Args:
        history: np.ndarray. int [n, H] item indices, oldest first, right-padded with 0.

    Returns:
        np.ndarray. int32 [n, H]; the same items, oldest first, ending at column H - 1.
    """
    history = np.asarray(history)
    n, width = history.shape
    lengths = (history != 0).sum(axis=1)
    source = np.arange(width)[None, :] - (width - lengths)[:, None]
    out = np.take_along_axis(history, np.clip(source, 0, width - 1), axis=1)
    return np.where(source >= 0, out, 0).astype(np.int32)


def causal_windows(examples, max_history: int) -> dict:
    """Cuts the training targets into SASRec's causal windows, each target exactly once.

    A user's training targets (the positions of `examples`, contiguous from 1 in the
    leave-one-out split) are taken H at a time back from the newest: the newest window
    ends at the last training target, the oldest holds the remainder, left-padded. A
    window's inputs are the items one position before its targets, so input column c + 1
    is target column c and nothing past the last training target is read.

    Args:
        examples: tfrec_lm.data.split.Examples. training examples (one per target).
        max_history: int. H, the window width.

    Returns:
        dict. `inputs` int32 [W, H] (items, left-padded with 0, newest last), `targets`
            int32 [W, H] (the next item of each input; 0 at padding), `position` int32
            [W, H] (each target's position in its user's sequence; -1 at padding), `user`
            int32 [W] (the window's user index). Windows are ordered by user, oldest first.

    Raises:
        ValueError. a user's target positions are not contiguous from >= 1.
    """
    width = int(max_history)
    order = np.lexsort((examples.position, examples.user_index))
    users = examples.user_index[order].astype(np.int64)
    positions = examples.position[order].astype(np.int64)
    if len(users) and positions.min() < 1:
        raise ValueError("causal windows need every target to have an earlier interaction (position >= 1)")
    same_user = users[1:] == users[:-1]
    if (np.diff(positions)[same_user] != 1).any():
        raise ValueError("causal windows need each user's training targets at contiguous positions")
    first = np.flatnonzero(np.concatenate([[True], ~same_user])) if len(users) else np.zeros(0, np.int64)
    counts = np.diff(np.concatenate([first, [len(users)]]))
    per_user = -(-counts // width)  # windows per user
    window_start = np.concatenate([[0], np.cumsum(per_user)[:-1]]).astype(np.int64)
    back = np.repeat(first + counts, counts) - 1 - np.arange(len(users))  # targets after this one, same user
    window = np.repeat(window_start + per_user - 1, counts) - back // width  # oldest window first
    column = width - 1 - back % width
    total = int(per_user.sum())
    source = examples.table.offsets[users] + positions
    inputs = np.zeros((total, width), np.int32)
    targets = np.zeros((total, width), np.int32)
    target_position = np.full((total, width), -1, np.int32)
    inputs[window, column] = examples.table.items[source - 1]
    targets[window, column] = examples.table.items[source]
    target_position[window, column] = positions
    return {"inputs": inputs, "targets": targets, "position": target_position,
            "user": np.repeat(users[first], per_user).astype(np.int32)}


def causal_attention_mask(valid: tf.Tensor) -> tf.Tensor:
    """Query t attends to the non-padding keys at positions <= t.

    Args:
        valid: tf.Tensor. float [B, H]; 1 at items, 0 at padding.

    Returns:
        tf.Tensor. bool [B, H (queries), H (keys)].
    """
    width = tf.shape(valid)[1]
    lower = tf.cast(tf.linalg.band_part(tf.ones([width, width]), -1, 0), tf.bool)  # [query, key]: key <= query
    return tf.logical_and(tf.cast(valid[:, None, :], tf.bool), lower[None])


class SASRec(tf.keras.Model):
    """One-block SASRec over item IDs, scoring the full catalog with the tied item table.

    Args:
        vocab_size: int. C + 1 (index 0 is padding).
        max_history: int. H, the history length (position embeddings).
        dim: int. embedding and hidden width d.
        heads: int. attention heads.
        dropout: float. dropout rate of embeddings, attention and feed-forward.
        causal: bool. causal attention mask and the every-position training step
            (`train_step` takes (inputs [B, H], targets [B, H]) windows); else every query
            attends to every non-padding key and training is Keras's (one target per row).
        history_negatives: bool. prefix only: False leaves each row's own history items
            (but not its target) out of its training softmax.
    """

    def __init__(self, vocab_size: int, max_history: int, dim: int = 64, heads: int = 2, dropout: float = 0.2,
                 causal: bool = False, history_negatives: bool = True, **kwargs):
        super().__init__(**kwargs)
        if causal and not history_negatives:
            raise ValueError("history_negatives=False is for the prefix objective")
        self.dim = dim
        self.causal = causal
        self.history_negatives = history_negatives
        self.items = tf.keras.layers.Embedding(vocab_size, dim, name="items")
        self.positions = tf.keras.layers.Embedding(max_history, dim, name="positions")
        self.input_dropout = tf.keras.layers.Dropout(dropout)
        self.attention_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self.attention = tf.keras.layers.MultiHeadAttention(heads, dim // heads, dropout=dropout)
        self.attention_dropout = tf.keras.layers.Dropout(dropout)
        self.ffn_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)
        self.ffn_in = tf.keras.layers.Dense(dim, activation="relu")
        self.ffn_out = tf.keras.layers.Dense(dim)
        self.ffn_dropout = tf.keras.layers.Dropout(dropout)
        self.final_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6)

    def block(self, history, training=False):
        """The transformer block's output at every position (before the final LayerNorm).

        Args:
            history: tf.Tensor. int32 [B, H] item indices, left-padded with 0, newest last.
            training: bool. dropout on.

        Returns:
            tf.Tensor. float32 [B, H, d]; 0 at padding.
        """
        valid = tf.cast(tf.not_equal(history, 0), tf.float32)  # [B, H]
        width = tf.shape(history)[1]
        x = self.items(history) * (self.dim ** 0.5) + self.positions(tf.range(width))[None]
        x = self.input_dropout(x, training=training) * valid[..., None]
        if self.causal:
            mask = causal_attention_mask(valid)  # query t attends to the non-padding keys <= t
        else:
            mask = tf.cast(valid[:, None, :], tf.bool)  # every query attends to the non-padding keys
        h = self.attention_norm(x)
        x = x + self.attention_dropout(self.attention(h, h, attention_mask=mask, training=training),
                                       training=training)
        h = self.ffn_norm(x)
        x = x + self.ffn_dropout(self.ffn_out(self.ffn_in(h)), training=training)
        return x * valid[..., None]

    def states(self, history, training=False):
        """Every position's user state (after the final LayerNorm): position t's predicts item t + 1.

        Args:
            history: tf.Tensor. int32 [B, H] item indices, left-padded with 0, newest last.
            training: bool. dropout on.

        Returns:
            tf.Tensor. float32 [B, H, d].
        """
        return self.final_norm(self.block(history, training=training))

    def catalog_logits(self, user):
        """Full-catalog logits of user states with the tied item table.

        Args:
            user: tf.Tensor. float32 [n, d].

        Returns:
            tf.Tensor. float32 [n, C+1]; column 0 (padding) is -1e9.
        """
        logits = tf.matmul(user, self.items.embeddings, transpose_b=True)
        padding = tf.one_hot(0, tf.shape(logits)[1], on_value=-1e9, off_value=0.0)
        return logits + padding[None]

    def call(self, history, training=False):
        """Full-catalog logits of left-padded histories.

        Args:
            history: tf.Tensor. int32 [B, H] item indices, left-padded with 0, newest last.
            training: bool. dropout on.

        Returns:
            tf.Tensor. float32 [B, C+1] logits; column 0 (padding) is -1e9.
        """
        x = self.block(history, training=training)
        user = self.final_norm(x[:, -1])  # the newest item's position
        return self.catalog_logits(user)

    def causal_loss(self, inputs, targets, training=False):
        """Mean softmax cross-entropy over every real target of causal windows.

        Args:
            inputs: tf.Tensor. int32 [B, H] windows, left-padded with 0, newest last.
            targets: tf.Tensor. int32 [B, H] the next item of each input; 0 at padding
                (out of the loss).
            training: bool. dropout on.

        Returns:
            tf.Tensor. float32 scalar.
        """
        real = tf.not_equal(targets, 0)
        x = tf.boolean_mask(self.block(inputs, training=training), real)  # [n, d], padding dropped
        logits = self.catalog_logits(self.final_norm(x))
        return tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
            tf.boolean_mask(targets, real), logits, from_logits=True))

    def unseen_loss(self, history, target, training=False):
        """Mean softmax cross-entropy of prefix rows with each row's history items out of its softmax.

        Args:
            history: tf.Tensor. int32 [B, H] left-padded histories, newest last.
            target: tf.Tensor. int32 [B] the next items (kept in the softmax even when in the history).
            training: bool. dropout on.

        Returns:
            tf.Tensor. float32 scalar.
        """
        from tfrec_lm.layers.history_ops import in_history

        logits = self(history, training=training)
        items = tf.range(tf.shape(logits)[1])
        # [B, C+1]; the padding column is -1e9 in every row already
        seen = tf.logical_and(in_history(history, items), tf.not_equal(items[None, :], target[:, None]))
        return tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
            target, tf.where(seen, -1e9, logits), from_logits=True))

    def train_step(self, data):
        """Keras's step for the prefix objective (or `unseen_loss` without history negatives); for
        `causal`, one step over (inputs, targets) windows."""
        if not self.causal and self.history_negatives:
            return super().train_step(data)
        inputs, targets = data
        with tf.GradientTape() as tape:
            if self.causal:
                loss = self.causal_loss(inputs, targets, training=True)
            else:
                loss = self.unseen_loss(inputs, tf.cast(targets, tf.int32), training=True)
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        return {"loss": loss}


class EpochTimer(tf.keras.callbacks.Callback):
    """Records each epoch's wall seconds in `seconds`."""

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.monotonic() - self._start)


def train_sasrec(examples, vocab_size: int, max_history: int, seed: int, epochs: int = SETTINGS["epochs"],
                 batch_size: int = SETTINGS["batch_size"], learning_rate: float = SETTINGS["learning_rate"],
                 dim: int = SETTINGS["dim"], heads: int = SETTINGS["heads"], dropout: float = SETTINGS["dropout"],
                 verbose: int = 0, objective: str = "prefix", callbacks=None,
                 history_negatives: bool = True) -> tuple[SASRec, float]:
    """Builds and trains the baseline on (history prefix, next item) examples or on causal windows of them.

    Args:
        examples: tfrec_lm.data.split.Examples. training examples (right-padded histories).
        vocab_size: int. C + 1.
        max_history: int. H.
        seed: int. seeds weights, dropout and shuffling.
        epochs: int. passes over the training targets (no early stopping); a causal epoch
            also has every target once.
        batch_size: int. rows per step: examples (prefix) or windows of up to H targets (causal).
        learning_rate: float. Adam learning rate.
        dim: int. width d.
        heads: int. attention heads.
        dropout: float. dropout rate.
        verbose: int. Keras fit verbosity.
        objective: str. `prefix` (one target per example) or `causal` (`causal_windows`).
        callbacks: list or None. Keras callbacks for `fit`.
        history_negatives: bool. prefix only: False leaves each row's history out of its softmax.

    Returns:
        tuple (SASRec, float). the trained model and the seconds `fit` took.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    tf.keras.utils.set_random_seed(seed)
    model = SASRec(vocab_size, max_history, dim=dim, heads=heads, dropout=dropout, causal=objective == "causal",
                   history_negatives=history_negatives)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if objective == "causal":
        windows = causal_windows(examples, max_history)
        history, target = windows["inputs"], windows["targets"]
    else:
        history, target = left_pad(examples.history), examples.target.astype(np.int32)
    data = (tf.data.Dataset.from_tensor_slices((history, target))
            .shuffle(len(history), seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    start = time.monotonic()
    model.fit(data, epochs=epochs, verbose=verbose, callbacks=callbacks)
    return model, time.monotonic() - start


def score(model: SASRec, examples, batch_size: int = 512) -> np.ndarray:
    """Full-catalog scores of evaluation examples.

    Args:
        model: SASRec. a trained model.
        examples: tfrec_lm.data.split.Examples. n examples (right-padded histories).
        batch_size: int. histories per call.

    Returns:
        np.ndarray. float32 [n, C+1]; column 0 (padding) = -inf.
    """
    history = left_pad(examples.history)
    scores = np.concatenate([model(tf.constant(history[i:i + batch_size]), training=False).numpy()
                             for i in range(0, len(history), batch_size)], axis=0)
    scores[:, 0] = -np.inf
    return scores


def spec_slices(data) -> dict:
    """All / migrating / stable masks of the test users, as `evaluate_test` builds them.

    Args:
        data: tfrec_lm.data.prepare.PreparedData. the prepared data.

    Returns:
        dict. slice name -> bool [n_test].
    """
    from tfrec_lm.evaluation.migration import js_migration_scores, migration_slices

    histories = [data.sequences.items[u][:-1] for u in data.split.test.user_index]
    return migration_slices(js_migration_scores(histories, [()] + data.dataset.items["genres"].tolist()))


def evaluate(model: SASRec, data) -> dict:
    """SPEC §2 test and validation metrics of the model and test metrics of most-popular.

    Args:
        model: SASRec. a trained model.
        data: tfrec_lm.data.prepare.PreparedData. the prepared data.

    Returns:
        dict. `test` ({"model", "most_popular"} -> slice -> metrics), `validation` (all
            users' metrics), `test_ranks` (0-based rank per test user), `test_slices`
            (slice -> member indices).
    """
    from tfrec_lm.evaluation.metrics import full_catalog_ranks, sliced_metrics
    from tfrec_lm.evaluation.popularity import popularity_scores

    test, validation = data.split.test, data.split.validation
    slices = spec_slices(data)
    ranks = full_catalog_ranks(score(model, test), test.target, test.exclude)
    popular = np.broadcast_to(popularity_scores(data.counts), (len(test.target), data.vocab.size))
    val_ranks = full_catalog_ranks(score(model, validation), validation.target, validation.exclude)
    return {
        "test": {"model": sliced_metrics(ranks, slices),
                 "most_popular": sliced_metrics(full_catalog_ranks(np.array(popular), test.target, test.exclude),
                                                slices)},
        "validation": sliced_metrics(val_ranks, {"all": np.ones(len(val_ranks), dtype=bool)})["all"],
        "test_ranks": ranks.astype(int).tolist(),
        "test_slices": {name: np.flatnonzero(mask).tolist() for name, mask in slices.items()},
    }


def run_seed(data, seed: int, settings: dict, verbose: int = 2, objective: str = "prefix") -> dict:
    """Trains and evaluates the baseline once.

    Args:
        data: tfrec_lm.data.prepare.PreparedData. the prepared data (CPU preset).
        seed: int. the run's seed.
        settings: dict. keyword arguments of `train_sasrec` (dim, heads, dropout, ...).
        verbose: int. Keras fit verbosity.
        objective: str. `prefix` or `causal`.

    Returns:
        dict. `variant`, `seed`, `config` ({"seed"}, for `recency_ablation.paired`),
            `train_seconds`, `wall_seconds`, `train_examples` (training targets) and the
            entries of `evaluate`; for `causal` also `objective`, `epochs`,
            `train_windows`, `epoch_seconds` and `train_targets_per_second`.
    """
    start = time.monotonic()
    train = data.split.train
    width = train.history.shape[1]
    timer = EpochTimer() if objective == "causal" else None
    model, seconds = train_sasrec(train, data.vocab.size, width, seed, verbose=verbose, objective=objective,
                                  callbacks=[timer] if timer else None, **settings)
    result = evaluate(model, data)
    variant = variant_name(objective, settings["epochs"], settings.get("history_negatives", True))
    run = {"variant": variant, "seed": seed, "config": {"seed": seed},
           "train_seconds": seconds, "wall_seconds": time.monotonic() - start, "train_examples": len(train),
           **result}
    if objective == "causal":  # prefix runs keep the committed layout
        run.update({"objective": objective, "epochs": settings["epochs"],
                    "train_windows": int(len(causal_windows(train, width)["user"])),
                    "epoch_seconds": timer.seconds,
                    "train_targets_per_second": len(train) * settings["epochs"] / seconds})
    return run


def mean_over_seeds(runs: dict) -> dict:
    """Mean and spread of the headline metrics over runs.

    Args:
        runs: dict. key -> run_seed result.

    Returns:
        dict. per slice `{metric: mean}` and `{metric}_per_seed` for NDCG@10 and HR@10, plus
            `train_seconds` (mean).
    """
    out = {}
    for slice_name in SLICES:
        row = {}
        for metric in ("NDCG@10", "HR@10", "MRR@10", "NDCG@20"):
            values = [run["test"]["model"][slice_name][metric] for run in runs.values()]
            row[metric] = float(np.mean(values))
            if metric in ("NDCG@10", "HR@10"):
                row[f"{metric}_per_seed"] = values
        out[slice_name] = row
    out["train_seconds"] = float(np.mean([run["train_seconds"] for run in runs.values()]))
    out["seeds"] = [run["seed"] for run in runs.values()]
    return out


def speed(causal_runs: dict, prefix_runs: dict, variant: str) -> dict:
    """Training time of a causal variant against the prefix runs, per seed both ran.

    Args:
        causal_runs: dict. key -> causal run.
        prefix_runs: dict. key -> prefix run (the committed `sasrec.json` runs).
        variant: str. the causal variant.

    Returns:
        dict. per seed `{objective}_train_seconds`, `{objective}_seconds_per_epoch`,
            `{objective}_targets_per_second` and `prefix_over_causal_train_seconds`; `mean`
            of those over the seeds (empty when no seed pairs).
    """
    out = {}
    for run in causal_runs.values():
        if run["variant"] != variant:
            continue
        seed = run["seed"]
        prefix = prefix_runs.get(run_key(seed))
        if prefix is None:
            continue
        prefix_epochs = prefix["epochs"]
        out[str(seed)] = {
            "prefix_train_seconds": prefix["train_seconds"],
            "causal_train_seconds": run["train_seconds"],
            "prefix_seconds_per_epoch": prefix["train_seconds"] / prefix_epochs,
            "causal_seconds_per_epoch": run["train_seconds"] / run["epochs"],
            "prefix_targets_per_second": prefix["train_examples"] * prefix_epochs / prefix["train_seconds"],
            "causal_targets_per_second": run["train_targets_per_second"],
            "prefix_over_causal_train_seconds": prefix["train_seconds"] / run["train_seconds"],
        }
    if out:
        out["mean"] = {name: float(np.mean([row[name] for row in out.values()])) for name in next(iter(out.values()))}
    return out


def compare_with_prefix(causal_runs: dict, prefix_runs: dict) -> tuple[dict, dict]:
    """Paired quality (`recency_ablation.paired`) and training time of every causal variant against prefix.

    Args:
        causal_runs: dict. key -> causal run.
        prefix_runs: dict. key -> prefix run.

    Returns:
        tuple (dict, dict). `"<variant>:sasrec"` -> paired result, and -> `speed`.
    """
    from recency_ablation import paired

    quality, timing = {}, {}
    for variant in sorted({run["variant"] for run in causal_runs.values()}):
        spec = f"{variant}:{PREFIX_VARIANT}"
        result = paired({**prefix_runs, **causal_runs}, variant, PREFIX_VARIANT)
        if result:
            quality[spec] = result
            if variant.startswith(CAUSAL_VARIANT):
                timing[spec] = speed(causal_runs, prefix_runs, variant)
    return quality, timing


def load_runs(name: str, with_epochs: bool = True) -> dict:
    """The runs of an earlier results file: the suite's results folder first, else the committed one.

    Args:
        name: str. result name (`sasrec`, `sasrec_causal`).
        with_epochs: bool. give each run `epochs` (the file's `settings` where the run has
            none); False: the runs as stored.

    Returns:
        dict. key -> run; empty when there is no such file.
    """
    from _common import RESULTS, results_dir

    for directory in (results_dir(), RESULTS):
        path = directory / f"{name}.json"
        if path.is_file():
            payload = json.loads(path.read_text())
            epochs = payload.get("settings", {}).get("epochs", SETTINGS["epochs"])
            if not with_epochs:
                return dict(payload["runs"])
            return {key: {"epochs": epochs, **run} for key, run in payload["runs"].items()}
    return {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS))
    parser.add_argument("--epochs", type=int, default=SETTINGS["epochs"])
    parser.add_argument("--objective", choices=OBJECTIVES, default="prefix",
                        help="prefix: one target per history prefix (the reference); causal: SASRec's windows, "
                             "every position a target")
    parser.add_argument("--no-history-negatives", dest="history_negatives", action="store_false",
                        help="prefix only: leave each example's own history items out of its softmax (as the "
                             "package's model does by default), runs paired against the reference")
    parser.add_argument("--output", default=None,
                        help="result name under benchmarks/results/ (default: sasrec for prefix, sasrec_causal "
                             "for causal, sasrec_no_history_negatives without history negatives)")
    parser.add_argument("--fresh", action="store_true",
                        help="drop the runs of an earlier results file (by default runs of other seeds are kept, "
                             "so `--seeds 3 4` adds two seeds)")
    args = parser.parse_args(argv)
    from tfrec_lm.config import PRESETS, TrainConfig
    from tfrec_lm.data.prepare import prepare_data

    if args.objective == "causal" and not args.history_negatives:
        parser.error("--no-history-negatives is for the prefix objective")
    settings = {**SETTINGS, "epochs": args.epochs}
    if not args.history_negatives:
        settings["history_negatives"] = False
    variant = variant_name(args.objective, args.epochs, args.history_negatives)
    # every variant but the reference itself is written with its pairing against the reference
    compared = variant != PREFIX_VARIANT
    output = args.output or OUTPUTS[UNSEEN_VARIANT if not args.history_negatives else args.objective]
    config = TrainConfig.from_dict(dict(PRESETS["cpu"]))
    data = prepare_data(config)
    runs, prefix_runs = {}, {}
    if compared:
        prefix_runs = {key: run for key, run in load_runs(OUTPUTS["prefix"]).items()
                       if run.get("variant") == PREFIX_VARIANT}
    if not args.fresh:
        redo = {run_key(seed, variant) for seed in args.seeds}
        runs = {key: run for key, run in load_runs(output, with_epochs=args.objective == "causal").items()
                if key not in redo}
    for seed in args.seeds:
        key = run_key(seed, variant)
        runs[key] = run_seed(data, seed, settings, objective=args.objective)
        if compared:
            mine = {k: run for k, run in runs.items() if run["variant"] == variant}
            quality, timing = compare_with_prefix(runs, prefix_runs)
            summary = mean_over_seeds(mine)
            path = write_result(output, {
                "objective": args.objective, "settings": settings, "max_history": config.max_history,
                "data": config.data, "baseline": f"{OUTPUTS['prefix']}.json runs (variant {PREFIX_VARIANT})",
                "mean": {name: mean_over_seeds({k: run for k, run in runs.items() if run["variant"] == name})
                         for name in sorted({run["variant"] for run in runs.values()})},
                "paired": quality, "speed": timing, "runs": runs})
        else:
            summary = mean_over_seeds({k: run for k, run in runs.items() if run["variant"] == variant})
            path = write_result(output, {
                "settings": settings, "max_history": config.max_history, "data": config.data,
                "mean": summary, "runs": runs})
        test = runs[key]["test"]["model"]
        print(f"{key}: test NDCG@10 all {test['all']['NDCG@10']:.4f}, migrating {test['migrating']['NDCG@10']:.4f}, "
              f"stable {test['stable']['NDCG@10']:.4f}; train {runs[key]['train_seconds']:.0f} s -> {path}",
              flush=True)
        if compared:
            spec = f"{variant}:{PREFIX_VARIANT}"
            for slice_name in SLICES if spec in quality else ():
                row = quality[spec][slice_name]
                print(f"  {spec} {slice_name}: x{row['ratio']:.3f} [{row['ratio_95ci'][0]:.3f}, "
                      f"{row['ratio_95ci'][1]:.3f}] over seeds {quality[spec]['seeds']}", flush=True)
            if timing.get(spec):
                print(f"  training seconds prefix/causal: x{timing[spec]['mean']['prefix_over_causal_train_seconds']:.1f}",
                      flush=True)
    print(f"mean over seeds {summary['seeds']}: NDCG@10 all {summary['all']['NDCG@10']:.4f}, migrating "
          f"{summary['migrating']['NDCG@10']:.4f}, stable {summary['stable']['NDCG@10']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
