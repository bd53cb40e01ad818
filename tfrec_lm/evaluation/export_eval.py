"""SPEC §2 metrics computed from an exported SavedModel's `serving_default` outputs."""

from __future__ import annotations

import numpy as np

from tfrec_lm.evaluation.metrics import ranks_from_topk, sliced_metrics
from tfrec_lm.protocol import history_batch


def history_requests(histories, timestamps, vocab_ids) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads full histories into serving requests (`tfrec_lm.protocol.history_batch`, no lead column).

    Args:
        histories: list of np.ndarray int. per user, item indices oldest first.
        timestamps: list of np.ndarray int64. matching timestamps.
        vocab_ids: np.ndarray of str. [C+1] index -> item id.

    Returns:
        (history_item_ids, history_timestamps): [U, N] str (padding "") and int64 (padding 0).
    """
    vocab_ids = np.asarray(vocab_ids)
    rows = [vocab_ids[np.asarray(items, dtype=np.int64)] for items in histories]
    batch = history_batch(rows, timestamps, lead_padding=False)
    return batch["history_item_ids"], batch["history_timestamps"]


def serving_topk(export_path, id_histories, timestamps, batch_size: int = 128) -> np.ndarray:
    """Each user's `serving_default` top-K, asked as a TF Serving client would ask it.

    Args:
        export_path: str | Path. a SavedModel version directory.
        id_histories: list of np.ndarray of str. per user, item ids oldest first.
        timestamps: list of np.ndarray int64. matching timestamps.
        batch_size: int. users per request.

    Returns:
        np.ndarray of str objects. [U, K] item ids, best first.
    """
    import tensorflow as tf

    from tfrec_lm.scann_ops import load_scann_ops

    load_scann_ops()
    serve = tf.saved_model.load(str(export_path)).signatures["serving_default"]
    returned = []
    for start in range(0, len(id_histories), batch_size):  # requests made per batch: memory of one batch
        batch = history_batch(id_histories[start:start + batch_size], timestamps[start:start + batch_size],
                              lead_padding=False)
        out = serve(history_item_ids=tf.constant(batch["history_item_ids"].astype(str)),
                    history_timestamps=tf.constant(batch["history_timestamps"]))
        returned.append(out["item_ids"].numpy())
    return np.concatenate(returned, axis=0) if returned else np.zeros((0, 10), dtype=object)


def evaluate_export(export_path, histories, timestamps, targets, vocab_ids, slices, batch_size: int = 128,
                    gather=None) -> dict:
    """Queries `serving_default` with each user's full history and scores its top-K.

    Args:
        export_path: str. a SavedModel version directory.
        histories: list of np.ndarray int. each user's history before the target.
        timestamps: list of np.ndarray int64. matching timestamps.
        targets: np.ndarray int. [U] target item indices.
        vocab_ids: np.ndarray of str. [C+1] index -> item id.
        slices: dict of str -> bool np.ndarray. user slices.
        batch_size: int. users per request.
        gather: callable or None. a sharded run's `WorkerGroup.gather`: `histories` are this
            worker's users, `slices` every worker's; the ranks are gathered before the metrics.

    Returns:
        dict slice -> metric -> value, for k=10 (the export's K must be >= 10).
    """
    vocab_ids = np.asarray(vocab_ids, dtype=object)
    id_histories = [vocab_ids[np.asarray(items, dtype=np.int64)] for items in histories]
    topk = serving_topk(export_path, id_histories, timestamps, batch_size)
    if topk.shape[1] < 10:
        raise ValueError(f"the export returns K={topk.shape[1]} items; NDCG@10 needs K >= 10")
    target_ids = vocab_ids[np.asarray(targets, dtype=np.int64)].astype(str)
    ranks = ranks_from_topk(topk, target_ids)
    return sliced_metrics(ranks if gather is None else gather(ranks), slices, ks=(10,))
