"""Item vocabulary, per-user sequences and the evaluation splits of SPEC section 2.

Vocabulary index 0 is the padding id ``""``; items 1..C follow the catalog order.
Histories are oldest first and right-padded with 0 (timestamps with 0), the layout of
the serving contract. Training examples exist for every train position t >= 1 (a
target with at least one earlier interaction); position 0 still counts as a training
interaction for popularity.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime
import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd

from tfrec_lm.data.schema import Dataset
from tfrec_lm.errors import ConfigError

logger = logging.getLogger(__name__)

PAD = ""


@dataclass
class ItemVocab:
    """Item id <-> index mapping.

    Attributes:
        ids: np.ndarray. object [C+1]; ids[0] is the padding id "", ids[1:] the catalog items.
    """

    ids: np.ndarray
    _lookup: pd.Index = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=object)
        if len(self.ids) == 0 or self.ids[0] != PAD:
            raise ValueError("ItemVocab.ids[0] must be the padding id ''")
        self._lookup = pd.Index(self.ids[1:])
        if not self._lookup.is_unique or (self.ids[1:] == PAD).any():
            raise ValueError("ItemVocab item ids must be unique and non-empty")

    @property
    def size(self) -> int:
        """The vocabulary size: C + 1 (catalog items plus padding). int."""
        return len(self.ids)

    def index(self, item_ids) -> np.ndarray:
        """Vocabulary indices of item ids.

        Args:
            item_ids: array-like of str [...]. item ids; unknown ids and "" map to 0.

        Returns:
            np.ndarray int32 [...].
        """
        arr = np.asarray(item_ids, dtype=object)
        flat = self._lookup.get_indexer(arr.ravel()) + 1
        return flat.astype(np.int32).reshape(arr.shape)


def build_vocab(items: pd.DataFrame) -> ItemVocab:
    """Vocabulary over a catalog.

    Args:
        items: pd.DataFrame. Dataset.items (column item_id, unique).

    Returns:
        ItemVocab. items 1..C in the order of items.
    """
    return ItemVocab(np.array([PAD, *items["item_id"].tolist()], dtype=object))


@dataclass
class UserSequences:
    """Every user's interactions, time-ordered.

    Attributes:
        user_ids: np.ndarray. object [U]; users in order of first appearance in the data.
        items: list[np.ndarray]. int32 [n_u] vocab indices per user, stable-sorted by time.
        timestamps: list[np.ndarray]. int64 [n_u] per user.
        ratings: list[np.ndarray]. float32 [n_u] per user, NaN where absent.
        vocab_size: int. C + 1; 0 means "take the largest index + 1".
    """

    user_ids: np.ndarray
    items: list[np.ndarray]
    timestamps: list[np.ndarray]
    ratings: list[np.ndarray]
    vocab_size: int = 0
    _table: Optional["SequenceTable"] = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.user_ids)

    def table(self) -> "SequenceTable":
        """All sequences end to end (made once, then shared by every example cut from them).

        Returns:
            SequenceTable. user u owns positions offsets[u]:offsets[u+1].
        """
        if self._table is None:
            lengths = np.array([len(s) for s in self.items], dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

            def cat(parts, dtype):
                return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)

            self._table = SequenceTable(cat(self.items, np.int32), cat(self.timestamps, np.int64),
                                        cat(self.ratings, np.float32), offsets)
        return self._table

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All sequences end to end.

        Returns:
            tuple (items int32 [N], timestamps int64 [N], ratings float32 [N],
                offsets int64 [U+1]); user u owns positions offsets[u]:offsets[u+1].
        """
        table = self.table()
        return table.items, table.timestamps, table.ratings, table.offsets

    def resolved_vocab_size(self) -> int:
        """The vocabulary size, resolved.

        Returns:
            int. vocab_size, or the largest item index + 1 when vocab_size is 0.
        """
        items = self.table().items
        top = int(items.max()) if len(items) else 0
        return max(self.vocab_size, top + 1)


def build_sequences(dataset: Dataset, vocab: ItemVocab) -> UserSequences:
    """Group interactions by user and sort each user's by timestamp (stable: ties keep file order).

    Args:
        dataset: Dataset. interactions in file order.
        vocab: ItemVocab. vocabulary over dataset.items.

    Returns:
        UserSequences. users in order of first appearance.
    """
    frame = dataset.interactions
    ids = frame["item_id"]
    if isinstance(ids.dtype, pd.CategoricalDtype):  # each distinct id looked up once
        items = vocab.index(ids.cat.categories.to_numpy(dtype=object))[ids.cat.codes.to_numpy()]
    else:
        items = vocab.index(ids.to_numpy(dtype=object))
    if (items == 0).any():
        unknown = ids.to_numpy(dtype=object)[items == 0][:5].tolist()
        raise ValueError(f"interactions hold items missing from the vocabulary, e.g. {unknown}")
    codes, users = pd.factorize(frame["user_id"])
    timestamps = frame["timestamp"].to_numpy(dtype=np.int64)
    ratings = frame["rating"].to_numpy(dtype=np.float32)
    by_time = np.argsort(timestamps, kind="stable")
    order = by_time[np.argsort(codes[by_time], kind="stable")]
    counts = np.bincount(codes, minlength=len(users))
    table = SequenceTable(items[order].astype(np.int32, copy=False), timestamps[order], ratings[order],
                          np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
    bounds = table.offsets[1:-1]
    sequences = UserSequences(
        user_ids=np.asarray(users, dtype=object),
        items=np.split(table.items, bounds),  # views into the table
        timestamps=np.split(table.timestamps, bounds),
        ratings=np.split(table.ratings, bounds),
        vocab_size=vocab.size,
    )
    sequences._table = table
    return sequences


@dataclass(frozen=True)
class SequenceTable:
    """Every user's interactions end to end, the one copy examples are cut from.

    Attributes:
        items: np.ndarray. int32 [N] vocab indices, each user's time-ordered.
        timestamps: np.ndarray. int64 [N] Unix seconds.
        ratings: np.ndarray. float32 [N]; NaN where absent.
        offsets: np.ndarray. int64 [U+1]; user u owns positions offsets[u]:offsets[u+1].
    """

    items: np.ndarray
    timestamps: np.ndarray
    ratings: np.ndarray
    offsets: np.ndarray


class ExcludeLists(collections.abc.Sequence):
    """Each evaluation example's full prior history (the items SPEC §2 removes from its
    candidates), as views into the sequence table, made when read.

    Args:
        table: SequenceTable. the sequences.
        starts: np.ndarray int64 [n]. where each example's user begins in the table.
        stops: np.ndarray int64 [n]. the example's target position in the table (excluded).
    """

    def __init__(self, table: SequenceTable, starts: np.ndarray, stops: np.ndarray):
        self._table = table
        self._starts = starts
        self._stops = stops

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ExcludeLists(self._table, self._starts[index], self._stops[index])
        return self._table.items[self._starts[index]:self._stops[index]]


@dataclass
class Examples:
    """(history, target) examples, cut from the sequence table when read.

    An example is its user and its target's position in that user's sequence: 12 bytes,
    whatever H is. Histories (`history`, `history_timestamps`, `window`) are made from the
    table on demand, in the blocks a reader asks for; the training pipeline cuts them per
    batch inside `tf.data` (`tf_features`).

    Attributes:
        table: SequenceTable. the sequences the examples point into.
        user_index: np.ndarray. int32 [n]; index into UserSequences.user_ids.
        position: np.ndarray. int32 [n]; the target's position in its user's sequence.
        max_history: int. H, the width of a history.
        evaluation: bool. `exclude` holds each example's full prior history (else None).

    Derived (read-only properties):
        history: np.ndarray int32 [n, H]. the most recent H items before the target,
            oldest first, right-padded with 0.
        history_timestamps: np.ndarray int64 [n, H]; 0 at padding.
        target: np.ndarray int32 [n]. target_timestamp: np.ndarray int64 [n].
        rating: np.ndarray float32 [n]; NaN when absent.
        exclude: ExcludeLists | None. for evaluation: every item of the user's full
            (untruncated) history before the target, int32 [m_i] each; None for training.
    """

    table: SequenceTable
    user_index: np.ndarray
    position: np.ndarray
    max_history: int
    evaluation: bool = False

    def __post_init__(self) -> None:
        if self.max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {self.max_history}")
        self.user_index = np.asarray(self.user_index, dtype=np.int32)
        self.position = np.asarray(self.position, dtype=np.int32)

    def __len__(self) -> int:
        return len(self.user_index)

    @property
    def source(self) -> np.ndarray:
        """Each target's position in the sequence table. np.ndarray int64 [n]."""
        return self.table.offsets[self.user_index] + self.position

    @property
    def target(self) -> np.ndarray:
        return self.table.items[self.source]

    @property
    def target_timestamp(self) -> np.ndarray:
        return self.table.timestamps[self.source]

    @property
    def rating(self) -> np.ndarray:
        return self.table.ratings[self.source]

    @property
    def exclude(self) -> Optional[ExcludeLists]:
        if not self.evaluation:
            return None
        return ExcludeLists(self.table, self.table.offsets[self.user_index], self.source)

    @property
    def history(self) -> np.ndarray:
        return self.window()[0]

    @property
    def history_timestamps(self) -> np.ndarray:
        return self.window()[1]

    def window(self, start: int = 0, stop: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """The histories of rows start:stop.

        Args:
            start: int. first row.
            stop: int or None. one past the last row (None: to the end).

        Returns:
            tuple (history int32 [m, H], history_timestamps int64 [m, H]).
        """
        rows = slice(start, stop)
        position = self.position[rows].astype(np.int64)
        source = self.table.offsets[self.user_index[rows]] + position
        length = np.minimum(position, self.max_history)
        cols = np.arange(self.max_history, dtype=np.int64)
        valid = cols[None, :] < length[:, None]
        at = np.where(valid, (source - length)[:, None] + cols[None, :], 0)
        if not len(self.table.items):
            return np.zeros(valid.shape, np.int32), np.zeros(valid.shape, np.int64)
        history = np.where(valid, self.table.items[at], 0).astype(np.int32)
        timestamps = np.where(valid, self.table.timestamps[at], 0).astype(np.int64)
        return history, timestamps

    def take(self, indices) -> "Examples":
        """Subset of the examples.

        Args:
            indices: array-like of int [m] or bool [n]. rows to keep, in this order.

        Returns:
            Examples.
        """
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        return dataclasses.replace(self, user_index=self.user_index[idx], position=self.position[idx])

    def tf_features(self):
        """A `tf.data` map function: a batch of row numbers -> that batch's features.

        The table and the examples' users and positions are captured once; each call cuts
        only its batch's history windows, so a pipeline holds O(interactions) memory, not
        O(examples x H).

        Returns:
            callable. int64 [B] row numbers -> dict `history` int32 [B, H],
                `history_timestamps` int64 [B, H], `target` int32 [B], `rating` float32 [B]
                (equal to `examples_to_features` of those rows).
        """
        import tensorflow as tf

        items = tf.constant(self.table.items, tf.int32)
        timestamps = tf.constant(self.table.timestamps, tf.int64)
        ratings = tf.constant(self.table.ratings, tf.float32)
        source = tf.constant(self.source, tf.int64)
        length = tf.constant(np.minimum(self.position, self.max_history).astype(np.int64), tf.int64)
        cols = tf.range(self.max_history, dtype=tf.int64)

        def features(rows):
            at_target = tf.gather(source, rows)
            count = tf.gather(length, rows)
            valid = cols[None, :] < count[:, None]
            at = tf.where(valid, (at_target - count)[:, None] + cols[None, :], tf.zeros([], tf.int64))
            return {
                "history": tf.where(valid, tf.gather(items, at), 0),
                "history_timestamps": tf.where(valid, tf.gather(timestamps, at), tf.zeros([], tf.int64)),
                "target": tf.gather(items, at_target),
                "rating": tf.gather(ratings, at_target),
            }

        return features


def _examples(sequences: UserSequences, users: np.ndarray, positions: np.ndarray, max_history: int, evaluation: bool) -> Examples:
    """Examples whose targets are the given positions.

    Args:
        sequences: UserSequences. all users.
        users: np.ndarray int [n]. user of each target.
        positions: np.ndarray int [n]. position of each target in its user's sequence.
        max_history: int. H.
        evaluation: bool. `exclude` is the full prior history.

    Returns:
        Examples. pointing into `sequences.table()`.
    """
    return Examples(table=sequences.table(), user_index=np.asarray(users, dtype=np.int32),
                    position=np.asarray(positions, dtype=np.int32), max_history=max_history, evaluation=evaluation)


def _positions(sequences: UserSequences) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each interaction's user, position and sequence length.

    Returns:
        tuple (user int64 [N], position int64 [N], length of that user's sequence int64 [N]).
    """
    lengths = np.array([len(s) for s in sequences.items], dtype=np.int64)
    users = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    positions = np.arange(len(users), dtype=np.int64) - np.repeat(starts, lengths)
    return users, positions, np.repeat(lengths, lengths)


@dataclass
class LeaveOneOutSplit:
    """SPEC section 2 leave-one-out split.

    Attributes:
        train: Examples. targets at train positions t >= 1 (all but the last two per user).
        validation: Examples. second-last interaction per user (users with >= 2).
        test: Examples. last interaction per user; its history includes the validation item.
        max_history: int. H.
        train_items: np.ndarray. int32 [N_train]; every training interaction (position 0 included).
        vocab_size: int. C + 1.
    """

    train: Examples
    validation: Examples
    test: Examples
    max_history: int
    train_items: np.ndarray
    vocab_size: int


def leave_one_out(sequences: UserSequences, max_history: int) -> LeaveOneOutSplit:
    """Leave-one-out split: last = test, second last = validation, the rest train.

    Args:
        sequences: UserSequences. time-ordered sequences.
        max_history: int. H, the number of most recent items kept in a history.

    Returns:
        LeaveOneOutSplit. users are in sequence order in validation and test.
    """
    users, positions, lengths = _positions(sequences)
    items, _, _, _ = sequences.flat()
    is_train = positions <= lengths - 3
    train = is_train & (positions >= 1)
    return LeaveOneOutSplit(
        train=_examples(sequences, users[train], positions[train], max_history, evaluation=False),
        validation=_examples(sequences, users[positions == lengths - 2], positions[positions == lengths - 2], max_history, True),
        test=_examples(sequences, users[positions == lengths - 1], positions[positions == lengths - 1], max_history, True),
        max_history=max_history,
        train_items=items[is_train].astype(np.int32),
        vocab_size=sequences.resolved_vocab_size(),
    )


@dataclass
class RefreshSplit:
    """SPEC section 2 refresh protocol split.

    Attributes:
        t1: float. q1-th percentile of all timestamps.
        t2: float. q2-th percentile of all timestamps.
        stale_train: Examples. targets (t >= 1) with time < t1.
        refresh_train: Examples. targets (t >= 1) with t1 <= time < t2.
        retrain_train: Examples. targets (t >= 1) with time < t2.
        evaluation: Examples. every interaction with time >= t2 (position 0 included),
            exclude = the user's full prior history.
        max_history: int. H.
        stale_items: np.ndarray. int32; every interaction with time < t1.
        refresh_items: np.ndarray. int32; every interaction with t1 <= time < t2.
        retrain_items: np.ndarray. int32; every interaction with time < t2.
        vocab_size: int. C + 1.
    """

    t1: float
    t2: float
    stale_train: Examples
    refresh_train: Examples
    retrain_train: Examples
    evaluation: Examples
    max_history: int
    stale_items: np.ndarray
    refresh_items: np.ndarray
    retrain_items: np.ndarray
    vocab_size: int


def refresh_split(sequences: UserSequences, max_history: int, q1: float = 70, q2: float = 85,
                  cutoffs: Optional[tuple[float, float]] = None) -> RefreshSplit:
    """Time-based split for the periodic re-fine-tuning benchmark.

    Args:
        sequences: UserSequences. time-ordered sequences.
        max_history: int. H.
        q1: float. percentile of all timestamps giving t1.
        q2: float. percentile of all timestamps giving t2.
        cutoffs: (float, float) or None. explicit (t1, t2) in Unix seconds instead of the
            percentiles (a backtest on an earlier window of the same data).

    Returns:
        RefreshSplit.
    """
    users, positions, _ = _positions(sequences)
    items, timestamps, _, _ = sequences.flat()
    if len(timestamps) == 0:
        raise ValueError("refresh_split needs at least one interaction")
    if cutoffs is not None:
        t1, t2 = (float(v) for v in cutoffs)
        if not t1 < t2:
            raise ValueError(f"refresh_split cutoffs must satisfy t1 < t2, got {cutoffs}")
    else:
        t1, t2 = (float(v) for v in np.percentile(timestamps, [q1, q2]))
    stale = timestamps < t1
    refresh = (timestamps >= t1) & (timestamps < t2)
    retrain = timestamps < t2
    evaluation = timestamps >= t2
    has_history = positions >= 1

    def make(mask, is_eval=False):
        return _examples(sequences, users[mask], positions[mask], max_history, is_eval)

    return RefreshSplit(
        t1=t1,
        t2=t2,
        stale_train=make(stale & has_history),
        refresh_train=make(refresh & has_history),
        retrain_train=make(retrain & has_history),
        evaluation=make(evaluation, True),
        max_history=max_history,
        stale_items=items[stale].astype(np.int32),
        refresh_items=items[refresh].astype(np.int32),
        retrain_items=items[retrain].astype(np.int32),
        vocab_size=sequences.resolved_vocab_size(),
    )


def train_interaction_counts(split: LeaveOneOutSplit | RefreshSplit, part: str | None = None) -> np.ndarray:
    """Interaction counts per item over the training interactions, for popularity.

    Args:
        split: LeaveOneOutSplit | RefreshSplit. the split.
        part: str | None. for RefreshSplit: "stale" (< t1), "refresh" ([t1, t2)) or
            "retrain" (< t2, the default); ignored for LeaveOneOutSplit.

    Returns:
        np.ndarray int64 [C+1]. counts[0] (padding) is 0.
    """
    if isinstance(split, LeaveOneOutSplit):
        items = split.train_items
    else:
        part = part or "retrain"
        if part not in ("stale", "refresh", "retrain"):
            raise ValueError(f"part must be 'stale', 'refresh' or 'retrain', got {part!r}")
        items = getattr(split, f"{part}_items")
    counts = np.bincount(items, minlength=split.vocab_size).astype(np.int64)
    counts[0] = 0
    return counts


def _date(seconds: int) -> str:
    """Unix seconds as a UTC date and time, for messages. str."""
    return datetime.datetime.fromtimestamp(int(seconds), tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def refresh_examples(target_timestamp: np.ndarray, config) -> np.ndarray:
    """Rows a refresh (`--since`) trains on, in their original order.

    Args:
        target_timestamp: np.ndarray int [n]. each training example's target time.
        config: TrainConfig. reads `since`, `replay` and `seed`.

    Returns:
        np.ndarray int. every row at or after `since`, and `replay` times as many older
            rows (at most all of them) drawn uniformly without replacement with `seed`.
    """
    recent = np.flatnonzero(target_timestamp >= config.since)
    if not len(recent):
        first, last = (int(target_timestamp.min()), int(target_timestamp.max())) if len(target_timestamp) else (0, 0)
        raise ConfigError(f"--since {config.since} ({_date(config.since)}): no training interaction at or after "
                          f"that time; the training interactions run from {_date(first)} to {_date(last)} "
                          f"({first} to {last})")
    older = np.flatnonzero(target_timestamp < config.since)
    count = min(len(older), int(round(config.replay * len(recent))))
    replayed = np.random.default_rng(config.seed).choice(older, size=count, replace=False) if count else []
    logger.info("refresh: %d interactions since %d, %d older replayed", len(recent), config.since, count)
    return np.sort(np.concatenate([recent, np.asarray(replayed, dtype=recent.dtype)]))


def refresh_validation(examples: Examples, since: Optional[int]) -> Examples:
    """The validation targets that early stopping watches.

    A refresh (`--since`) trains on recent interactions to follow recent interests, so it
    is validated on the users whose validation target is itself recent (at or after
    `since`); most users' validation targets predate a refresh window and say nothing
    about it. Without `--since`, or when no validation target is that recent, all of them.

    Args:
        examples: Examples. the validation examples.
        since: int or None. `--since` (Unix seconds).

    Returns:
        Examples. `examples` itself, or its rows whose target is at or after `since`.
    """
    if since is None:
        return examples
    recent = np.flatnonzero(examples.target_timestamp >= since)
    if not len(recent):
        logger.info("no validation target at or after --since %d: validating on all users", since)
        return examples
    logger.info("refresh: validating on the %d users whose validation target is at or after --since", len(recent))
    return examples.take(recent)
