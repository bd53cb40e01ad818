"""`ValidationRequests`: the validation users a run recorded, as serving requests, and their scores."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np


@dataclasses.dataclass
class ValidationRequests:
    """The validation targets of a run as `serving_default` requests, so that any version can be scored.

    The publishing gate scores a candidate and the served version on the same requests,
    through each one's `serving_default`, as a TF Serving client would ask: item ids, not
    vocabulary indices, so versions with other catalogs compare fairly.

    Attributes:
        items: np.ndarray of str. [T] every request's history item ids, oldest first, concatenated.
        timestamps: np.ndarray int64. [T] their timestamps.
        lengths: np.ndarray int64. [U] history length of each request.
        targets: np.ndarray of str. [U] the item each user took next.
        window: str. what the requests are (`validation`, or `validation since <time>` for a refresh).
    """

    items: np.ndarray
    timestamps: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray
    window: str = "validation"

    def __len__(self) -> int:
        return len(self.targets)

    @classmethod
    def from_examples(cls, examples, vocab_ids, window: str = "validation") -> "ValidationRequests":
        """The requests of evaluation `Examples` (each user's full history before the target).

        Args:
            examples: tfrec_lm.data.split.Examples. evaluation examples.
            vocab_ids: np.ndarray of str. [C+1] index -> item id.
            window: str. what they are.

        Returns:
            ValidationRequests.
        """
        vocab_ids = np.asarray(vocab_ids, dtype=object)
        table = examples.table
        starts = table.offsets[examples.user_index].astype(np.int64)
        stops = examples.source.astype(np.int64)
        rows = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)]) if len(starts) else np.zeros(0, int)
        return cls(items=vocab_ids[table.items[rows]].astype(str), timestamps=table.timestamps[rows].astype(np.int64),
                   lengths=(stops - starts).astype(np.int64), targets=vocab_ids[examples.target].astype(str),
                   window=window)

    @classmethod
    def from_log(cls, log, rows, window: str) -> "ValidationRequests":
        """Requests from rows of an interaction log: each row's target, its user's earlier rows the history.

        Args:
            log: pd.DataFrame. user_id, item_id, timestamp, sorted by user then time.
            rows: np.ndarray int. the target rows (positions in `log`).
            window: str. what they are.

        Returns:
            ValidationRequests.
        """
        users = log["user_id"].to_numpy(dtype=object)
        items = log["item_id"].to_numpy(dtype=object).astype(str)
        stamps = log["timestamp"].to_numpy(np.int64)
        new_user = np.concatenate([[True], users[1:] != users[:-1]]) if len(users) else np.zeros(0, bool)
        starts = np.maximum.accumulate(np.where(new_user, np.arange(len(users)), 0)) if len(users) else new_user
        rows = np.asarray(rows, np.int64)
        spans = [np.arange(starts[r], r) for r in rows]
        history = np.concatenate(spans) if spans else np.zeros(0, np.int64)
        return cls(items=items[history], timestamps=stamps[history],
                   lengths=np.array([len(span) for span in spans], np.int64), targets=items[rows], window=window)

    def histories(self) -> tuple[list, list]:
        """Per request, its item ids and timestamps. tuple of two lists of np.ndarray."""
        bounds = np.concatenate([[0], np.cumsum(self.lengths)])
        return ([self.items[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
                [self.timestamps[a:b] for a, b in zip(bounds[:-1], bounds[1:])])

    def save(self, path) -> None:
        """Writes the requests to an `.npz` file."""
        path = Path(path)
        temporary = path.with_name(f".{path.name}.tmp.npz")
        np.savez_compressed(temporary, items=self.items, timestamps=self.timestamps, lengths=self.lengths,
                            targets=self.targets, window=np.array(self.window))
        temporary.replace(path)

    @classmethod
    def load(cls, path) -> "ValidationRequests":
        """Reads requests written by `save`. ValidationRequests."""
        with np.load(path, allow_pickle=False) as stored:
            return cls(items=stored["items"], timestamps=stored["timestamps"], lengths=stored["lengths"],
                       targets=stored["targets"], window=str(stored["window"]))

    def score(self, version_dir, k: int = 10) -> dict:
        """HR@k and NDCG@k of a version's `serving_default` on these requests.

        Args:
            version_dir: str | Path. a SavedModel version folder (its K at least `k`).
            k: int. the cut-off.

        Returns:
            dict. `HR@k`, `NDCG@k`, `users`.
        """
        from tfrec_lm.evaluation.export_eval import serving_topk
        from tfrec_lm.evaluation.metrics import ranking_metrics, ranks_from_topk

        histories, timestamps = self.histories()
        topk = serving_topk(version_dir, histories, timestamps)
        if topk.shape[1] < k:
            raise ValueError(f"{version_dir} returns K={topk.shape[1]} items; the gate needs K >= {k}")
        metrics = ranking_metrics(ranks_from_topk(topk[:, :k], self.targets), ks=(k,))
        return {f"HR@{k}": float(metrics[f"HR@{k}"]), f"NDCG@{k}": float(metrics[f"NDCG@{k}"]), "users": int(len(self))}
