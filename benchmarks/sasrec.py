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
normalisation). One target per history prefix (the package's training examples, with
the same history truncation H), Adam 1e-3, batch 128, 6 epochs, no early stopping.

    python benchmarks/sasrec.py                    # seeds 42 1 2
    python benchmarks/sasrec.py --seeds 42 --epochs 6

Output: `benchmarks/results/sasrec.json`: per seed the test metrics (all / migrating /
stable users, plus the most-popular baseline), per-user test ranks and slice members (the
layout of `ml100k.run_variant`, so `recency_ablation.paired` can compare runs user by
user), training seconds; and the mean over seeds. Rewritten after every seed.
"""

from __future__ import annotations

import argparse
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


def run_key(seed: int) -> str:
    """The run's key in the results, `recency_ablation.run_key`'s: `sasrec` for seed 42, else `sasrec@seed<N>`.

    Args:
        seed: int. the run's seed.

    Returns:
        str. so `recency_ablation.paired({**ablation_runs, **sasrec_runs}, "time", "sasrec")` pairs by seed.
    """
    return "sasrec" if seed == DEFAULT_SEEDS[0] else f"sasrec@seed{seed}"


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


class SASRec(tf.keras.Model):
    """One-block SASRec over item IDs, scoring the full catalog with the tied item table.

    Args:
        vocab_size: int. C + 1 (index 0 is padding).
        max_history: int. H, the history length (position embeddings).
        dim: int. embedding and hidden width d.
        heads: int. attention heads.
        dropout: float. dropout rate of embeddings, attention and feed-forward.
    """

    def __init__(self, vocab_size: int, max_history: int, dim: int = 64, heads: int = 2, dropout: float = 0.2,
                 **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
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

    def call(self, history, training=False):
        """Full-catalog logits of left-padded histories.

        Args:
            history: tf.Tensor. int32 [B, H] item indices, left-padded with 0, newest last.
            training: bool. dropout on.

        Returns:
            tf.Tensor. float32 [B, C+1] logits; column 0 (padding) is -1e9.
        """
        valid = tf.cast(tf.not_equal(history, 0), tf.float32)  # [B, H]
        width = tf.shape(history)[1]
        x = self.items(history) * (self.dim ** 0.5) + self.positions(tf.range(width))[None]
        x = self.input_dropout(x, training=training) * valid[..., None]
        mask = tf.cast(valid[:, None, :], tf.bool)  # every query attends to the non-padding keys
        h = self.attention_norm(x)
        x = x + self.attention_dropout(self.attention(h, h, attention_mask=mask, training=training),
                                       training=training)
        h = self.ffn_norm(x)
        x = x + self.ffn_dropout(self.ffn_out(self.ffn_in(h)), training=training)
        x = x * valid[..., None]
        user = self.final_norm(x[:, -1])  # the newest item's position
        logits = tf.matmul(user, self.items.embeddings, transpose_b=True)
        padding = tf.one_hot(0, tf.shape(logits)[1], on_value=-1e9, off_value=0.0)
        return logits + padding[None]


def train_sasrec(examples, vocab_size: int, max_history: int, seed: int, epochs: int = SETTINGS["epochs"],
                 batch_size: int = SETTINGS["batch_size"], learning_rate: float = SETTINGS["learning_rate"],
                 dim: int = SETTINGS["dim"], heads: int = SETTINGS["heads"], dropout: float = SETTINGS["dropout"],
                 verbose: int = 0) -> tuple[SASRec, float]:
    """Builds and trains the baseline on (history prefix, next item) examples.

    Args:
        examples: tfrec_lm.data.split.Examples. training examples (right-padded histories).
        vocab_size: int. C + 1.
        max_history: int. H.
        seed: int. seeds weights, dropout and shuffling.
        epochs: int. passes over the examples (no early stopping).
        batch_size: int. examples per step.
        learning_rate: float. Adam learning rate.
        dim: int. width d.
        heads: int. attention heads.
        dropout: float. dropout rate.
        verbose: int. Keras fit verbosity.

    Returns:
        tuple (SASRec, float). the trained model and the seconds `fit` took.
    """
    tf.keras.utils.set_random_seed(seed)
    model = SASRec(vocab_size, max_history, dim=dim, heads=heads, dropout=dropout)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = left_pad(examples.history)
    data = (tf.data.Dataset.from_tensor_slices((history, examples.target.astype(np.int32)))
            .shuffle(len(history), seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    start = time.monotonic()
    model.fit(data, epochs=epochs, verbose=verbose)
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


def run_seed(data, seed: int, settings: dict, verbose: int = 2) -> dict:
    """Trains and evaluates the baseline once.

    Args:
        data: tfrec_lm.data.prepare.PreparedData. the prepared data (CPU preset).
        seed: int. the run's seed.
        settings: dict. keyword arguments of `train_sasrec` (dim, heads, dropout, ...).
        verbose: int. Keras fit verbosity.

    Returns:
        dict. `seed`, `config` ({"seed"}, for `recency_ablation.paired`), `train_seconds`,
            `wall_seconds`, `train_examples` and the entries of `evaluate`.
    """
    start = time.monotonic()
    model, seconds = train_sasrec(data.split.train, data.vocab.size, data.split.train.history.shape[1], seed,
                                  verbose=verbose, **settings)
    result = evaluate(model, data)
    return {"variant": "sasrec", "seed": seed, "config": {"seed": seed}, "train_seconds": seconds,
            "wall_seconds": time.monotonic() - start, "train_examples": len(data.split.train), **result}


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS))
    parser.add_argument("--epochs", type=int, default=SETTINGS["epochs"])
    parser.add_argument("--output", default="sasrec", help="result name under benchmarks/results/")
    args = parser.parse_args(argv)
    from tfrec_lm.config import PRESETS, TrainConfig
    from tfrec_lm.data.prepare import prepare_data

    config = TrainConfig.from_dict(dict(PRESETS["cpu"]))
    data = prepare_data(config)
    settings = {**SETTINGS, "epochs": args.epochs}
    runs = {}
    for seed in args.seeds:
        key = run_key(seed)
        runs[key] = run_seed(data, seed, settings)
        summary = mean_over_seeds(runs)
        path = write_result(args.output, {
            "settings": settings, "max_history": config.max_history, "data": config.data,
            "mean": summary, "runs": runs})
        test = runs[key]["test"]["model"]
        print(f"seed {seed}: test NDCG@10 all {test['all']['NDCG@10']:.4f}, migrating {test['migrating']['NDCG@10']:.4f}, "
              f"stable {test['stable']['NDCG@10']:.4f}; train {runs[key]['train_seconds']:.0f} s -> {path}",
              flush=True)
    print(f"mean over seeds {summary['seeds']}: NDCG@10 all {summary['all']['NDCG@10']:.4f}, migrating "
          f"{summary['migrating']['NDCG@10']:.4f}, stable {summary['stable']['NDCG@10']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
