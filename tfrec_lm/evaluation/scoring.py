"""The evaluation stage: full-catalog scoring of a model and the SPEC §2 metrics, during and after training."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Optional

import numpy as np
import tensorflow as tf

from tfrec_lm.evaluation.metrics import full_catalog_ranks, ranking_metrics, sliced_metrics
from tfrec_lm.evaluation.migration import js_migration_scores, migration_slices
from tfrec_lm.evaluation.popularity import popularity_scores

logger = logging.getLogger(__name__)


def user_embeddings(model, history: np.ndarray, timestamps: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Runs the user tower over histories.

    Args:
        model: TwoTowerModel. the model.
        history: np.ndarray int. [n, H] item indices, oldest first, 0 = padding.
        timestamps: np.ndarray int. [n, H] Unix seconds.
        batch_size: int. histories per call.

    Returns:
        np.ndarray float32. [n, D].
    """
    return np.concatenate([
        model.embed_users(tf.constant(history[i:i + batch_size], tf.int32),
                          tf.constant(timestamps[i:i + batch_size], tf.int64)).numpy()
        for i in range(0, len(history), batch_size)], axis=0)


EVALUATION_BLOCK = 1024  # evaluation examples scored at once: [block, C+1] float32 scores in memory


def catalog_items(model) -> np.ndarray:
    """Every catalog item's embedding.

    Args:
        model: TwoTowerModel. the model.

    Returns:
        np.ndarray float32. [C+1, D]; row 0 is the padding id.
    """
    return model.item_tower(tf.range(model.item_tower.num_items), training=False).numpy()


def score_catalog(model, examples, start: int = 0, stop: Optional[int] = None,
                  items: Optional[np.ndarray] = None) -> np.ndarray:
    """Full-catalog scores of evaluation examples (rows start:stop).

    Args:
        model: TwoTowerModel. the model.
        examples: Examples. n examples (their histories and timestamps are read).
        start: int. first row.
        stop: int or None. one past the last row (None: to the end).
        items: np.ndarray or None. `catalog_items(model)`, when already computed.

    Returns:
        np.ndarray float32. [stop - start, C+1], column 0 (padding) = -inf.
    """
    items = catalog_items(model) if items is None else items
    history, timestamps = examples.window(start, stop)
    scores = user_embeddings(model, history, timestamps) @ items.T
    scores[:, 0] = -np.inf
    return scores


def blocked_ranks(scores_of, examples, block: int = EVALUATION_BLOCK, verbose: int = 0) -> np.ndarray:
    """SPEC §2 full-catalog ranks, `block` examples at a time (memory: one [block, C+1] score block).

    Args:
        scores_of: callable. (start, stop) -> np.ndarray float [stop - start, C+1], the scores of those rows.
        examples: Examples. their targets and excluded (history) items.
        block: int. rows per block.
        verbose: int. 1: a progress bar (Keras's convention).

    Returns:
        np.ndarray int64 [n]. 0-based ranks (`metrics.full_catalog_ranks`).
    """
    targets, exclude = examples.target, examples.exclude
    ranks = np.empty(len(examples), dtype=np.int64)
    progress = tf.keras.utils.Progbar(len(examples), verbose=1 if verbose == 1 else 0, unit_name="user")
    for start in range(0, len(examples), block):
        stop = min(start + block, len(examples))
        ranks[start:stop] = full_catalog_ranks(scores_of(start, stop), targets[start:stop],
                                               None if exclude is None else exclude[start:stop])
        progress.add(stop - start)
    return ranks


def model_ranks(model, examples, block: int = EVALUATION_BLOCK, verbose: int = 0) -> np.ndarray:
    """The model's SPEC §2 full-catalog ranks of evaluation examples, in blocks.

    Args:
        model: TwoTowerModel. the model.
        examples: Examples. the evaluation examples.
        block: int. examples scored at once.
        verbose: int. 1: a progress bar.

    Returns:
        np.ndarray int64 [n].
    """
    items = catalog_items(model)
    return blocked_ranks(lambda start, stop: score_catalog(model, examples, start, stop, items), examples, block,
                         verbose=verbose)


class ValidationNDCG(tf.keras.callbacks.Callback):
    """Adds SPEC validation NDCG@10 (full catalog, history excluded) to the epoch logs.

    Args:
        examples: Examples. the validation examples.
        budget_seconds: float or None. stop training after the first epoch that ends later
            than this many seconds after `fit` started.
        workers: tfrec_lm.distribute.WorkerGroup or None. a sharded run: each worker ranks
            its own users and the ranks are gathered, so every worker sees the NDCG@10 of all.

    Attributes:
        history: list of float. validation NDCG@10 after each epoch.
        seconds: list of float. seconds since `fit` started at each of those evaluations.
        scoring_seconds: float. the time this callback spent scoring (in this process).
    """

    def __init__(self, examples, budget_seconds: Optional[float] = None, workers=None):
        super().__init__()
        self.examples = examples
        self.workers = workers
        self.scoring_seconds = 0.0
        self.history: list[float] = []
        self.seconds: list[float] = []
        self.budget_seconds = budget_seconds
        self._start = None

    def on_train_begin(self, logs=None):
        self._start = time.monotonic()

    def state(self) -> dict:
        """What a resumed run needs to continue this callback (see `restore`).

        Returns:
            dict. `history` and `seconds`, JSON-ready.
        """
        return {"history": [float(v) for v in self.history], "seconds": [float(v) for v in self.seconds]}

    def restore(self, state: dict) -> None:
        """Continues from `state` (a `state()` of a run that died): the earlier epochs' values, and
        the clock (seconds since `fit` started, the time budget) from the last of them.

        Args:
            state: dict. a `state()` result.
        """
        self.history = [float(v) for v in state["history"]]
        self.seconds = [float(v) for v in state["seconds"]]
        self._start = time.monotonic() - (self.seconds[-1] if self.seconds else 0.0)

    def on_epoch_end(self, epoch, logs=None):
        began = time.monotonic()
        ranks = model_ranks(self.model, self.examples)
        if self.workers is not None:
            ranks = self.workers.gather(ranks)
        ndcg = float(ranking_metrics(ranks, ks=(10,))["NDCG@10"])
        self.history.append(ndcg)
        self.scoring_seconds += time.monotonic() - began
        self.seconds.append(time.monotonic() - self._start)
        if logs is not None:
            logs["val_ndcg_at_10"] = ndcg
        logger.info("epoch %d: validation NDCG@10 %.4f", epoch + 1, ndcg)
        if self.budget_seconds is not None and time.monotonic() - self._start > self.budget_seconds:
            logger.info("time budget reached after epoch %d", epoch + 1)
            self.model.stop_training = True


@dataclasses.dataclass
class TestEvaluation:
    """What the evaluation stage measured on the SPEC §2 test targets.

    Attributes:
        metrics: dict. `{"model": {slice: {metric: value}}, "most_popular": ...}`.
        slices: dict. slice name (`all`, `migrating`, `stable`) -> bool [n_test].
        histories: list of np.ndarray. each test user's full time-ordered history (item indices).
        timestamps: list of np.ndarray. their timestamps.
    """

    __test__ = False  # not a pytest test class

    metrics: dict
    slices: dict
    histories: list
    timestamps: list


def evaluate_test(model, data, verbose: int = 0) -> TestEvaluation:
    """Scores the model and the most-popular baseline on the test targets, per migration slice.

    In a sharded run (`data.workers`) each worker ranks its own test users; the ranks and
    the migration scores are gathered, so the metrics and slices are those of every user.

    Args:
        model: TwoTowerModel. the trained model.
        data: tfrec_lm.data.prepare.PreparedData. the prepared data.
        verbose: int. 1: a progress bar while the test users are ranked.

    Returns:
        TestEvaluation. `histories` and `timestamps` are this worker's test users'.
    """
    gather = data.workers.gather
    test = data.split.test
    histories = [data.sequences.items[u][:-1] for u in test.user_index]  # full, time-ordered
    migration = gather(js_migration_scores(histories, [()] + data.dataset.items["genres"].tolist()))
    slices = migration_slices(migration)
    popularity = popularity_scores(data.counts)
    popular_ranks = blocked_ranks(lambda start, stop: np.repeat(popularity[None, :], stop - start, axis=0), test)
    metrics = {
        "model": sliced_metrics(gather(model_ranks(model, test, verbose=verbose)), slices),
        "most_popular": sliced_metrics(gather(popular_ranks), slices),
    }
    return TestEvaluation(metrics=metrics, slices=slices, histories=histories,
                          timestamps=[data.sequences.timestamps[u][:-1] for u in test.user_index])
