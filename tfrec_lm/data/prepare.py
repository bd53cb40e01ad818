"""The data stage of training: read the configured source, split it (SPEC §2), choose the rows to train on."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Optional

import numpy as np

from tfrec_lm.config import TrainConfig
from tfrec_lm.data.schema import Dataset, write_bad_rows
from tfrec_lm.data.split import (Examples, ItemVocab, LeaveOneOutSplit, UserSequences, build_sequences, build_vocab,
                                 leave_one_out, refresh_examples, train_interaction_counts)
from tfrec_lm.distribute import WorkerGroup
from tfrec_lm.errors import DataError


def load_dataset(data: str = "ml-100k", data_source: str = "auto", interactions: Optional[str] = None,
                 items: Optional[str] = None, strict: bool = False, progress: bool = True) -> Dataset:
    """Reads a data source into the SPEC §1 schema (the one dispatch of `tfrec_lm.train` and `tfrec_lm.drift`).

    Args:
        data: str. `ml-100k` or `files` (`--data`).
        data_source: str. where ml-100k comes from: `auto` (TFDS when prepared locally, else
            the fetched asset), `tfds` or `recbole` (`--data-source`).
        interactions: str or None. interactions file, with `files`.
        items: str or None. items file, with `files`.
        strict: bool. stop on rows that break the schema.
        progress: bool. show a download progress line when the ml-100k asset is fetched.

    Returns:
        Dataset.

    Raises:
        DataError: `files` without `interactions`, or unreadable data; AssetError: the asset fetch failed.
    """
    if data == "files":
        if not interactions:
            raise DataError("--data files needs --interactions (and usually --items)")
        from tfrec_lm.data.files import load_interactions_file

        return load_interactions_file(interactions, items, strict=strict)
    from tfrec_lm.data import movielens

    if data_source == "tfds" or (data_source == "auto" and movielens.tfds_available()):
        return movielens.load_movielens_100k_tfds(strict=strict)
    from tfrec_lm.assets import movielens_100k_dir

    return movielens.load_movielens_100k(movielens_100k_dir(progress=progress), strict=strict)


def load_training_data(config: TrainConfig, shard: Optional[tuple] = None) -> Dataset:
    """Reads the data source `config` names (`data`, `data_source`, `interactions`, `items`, `strict`).

    Args:
        config: TrainConfig. the data options.
        shard: (index, count) or None. with `--data files`: read only this worker's Parquet shards.
    """
    if shard is not None:
        from tfrec_lm.data.files import load_interactions_file

        return load_interactions_file(config.interactions, config.items, strict=config.strict, shard=shard)
    return load_dataset(config.data, config.data_source, config.interactions, config.items, strict=config.strict)


def require_training_examples(split: LeaveOneOutSplit, sequences) -> None:
    """Checks that the split has a training example (before any model is built).

    Args:
        split: LeaveOneOutSplit. the leave-one-out split.
        sequences: UserSequences. the users' time-ordered interactions (for the message).

    Raises:
        DataError: the split has no training example.
    """
    if len(split.train):
        return
    longest = max((len(items) for items in sequences.items), default=0)
    raise DataError(f"no training examples: leave-one-out keeps each user's last two interactions for validation "
                    f"and test and a training example needs an earlier one as its history, so some user needs "
                    f"at least 4 interactions ({len(sequences)} users, the most active has {longest})")


def examples_to_features(examples: Examples) -> dict:
    """The model's input features of examples, made whole (for a few rows: the training
    pipeline cuts them per batch with `Examples.tf_features`).

    Args:
        examples: Examples. n examples with histories of width H.

    Returns:
        dict. `history` int32 [n, H], `history_timestamps` int64 [n, H], `target` int32 [n],
            `rating` float32 [n] (NaN where unknown).
    """
    history, timestamps = examples.window()
    return {
        "history": history.astype(np.int32),
        "history_timestamps": timestamps.astype(np.int64),
        "target": examples.target.astype(np.int32),
        "rating": examples.rating.astype(np.float32),
    }


@dataclasses.dataclass
class PreparedData:
    """What the data stage hands the later stages.

    Attributes:
        dataset: Dataset. the data in the SPEC §1 schema.
        vocab: ItemVocab. item index <-> item id (index 0 padding).
        sequences: UserSequences. each user's time-ordered items and timestamps.
        split: LeaveOneOutSplit. SPEC §2 train / validation / test examples.
        counts: np.ndarray. [C+1] training interaction counts (popularity), over every worker's data.
        target_counts: np.ndarray. [C+1] training targets per item (the sampling probabilities
            and which items are warm), over every worker's data.
        train_examples: Examples. the rows `fit` trains on: `split.train`, cut to a refresh
            window (`since`, `replay`) and to `max_train_examples` (most recent kept).
    """

    dataset: Dataset
    vocab: ItemVocab
    sequences: UserSequences
    split: LeaveOneOutSplit
    counts: np.ndarray
    target_counts: np.ndarray
    train_examples: Examples
    workers: WorkerGroup = dataclasses.field(default_factory=WorkerGroup)  # a sharded run's: the digest covers every worker's data

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 of what a run trains and is evaluated on (a resumed or finished run must match it).

        Computed once per `PreparedData`: the hex digest over the sequences, the training,
        validation and test examples (users and target positions) and the item texts. str.
        """
        digest = hashlib.sha256()
        table = self.sequences.table()
        for name, array in (("items", table.items), ("timestamps", table.timestamps), ("ratings", table.ratings),
                            ("offsets", table.offsets)):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        for examples in (self.train_examples, self.split.validation, self.split.test):
            # An example is its user, its target's position and H (the rest is the table's).
            digest.update(f"examples {len(examples)} H={examples.max_history}".encode())
            digest.update(np.ascontiguousarray(examples.user_index).tobytes())
            digest.update(np.ascontiguousarray(examples.position).tobytes())
        items = self.dataset.items
        digest.update("\n".join(f"{i}\t{t}" for i, t in zip(items["item_id"], items["text"])).encode())
        if self.workers.sharded:  # every worker's data, in rank order
            every = self.workers.gather(np.frombuffer(digest.digest(), np.uint8)[None, :])
            return hashlib.sha256(every.tobytes()).hexdigest()
        return digest.hexdigest()


def with_bad_rows(dataset: Dataset, path) -> Dataset:
    """Writes every bad row of the dataset's reports to `path` and names the file in a copy of it.

    Args:
        dataset: Dataset. loaded data (a copy is returned: a dataset the caller shares, the
            tuner's trials', stays as it was).
        path: str | Path. the CSV file (`tfrec_lm.data.schema.write_bad_rows`).

    Returns:
        Dataset. with `bad_rows_path` set (None without bad rows).
    """
    return dataclasses.replace(dataset, bad_rows_path=write_bad_rows(dataset.reports, path))


def prepare_data(config: TrainConfig, dataset: Optional[Dataset] = None, workers=None,
                 bad_rows_path=None) -> PreparedData:
    """Reads (unless given), indexes and splits the data, and chooses the training rows.

    Args:
        config: TrainConfig. reads the data options, `max_history`, `since`, `replay`, `seed`,
            `max_train_examples`.
        dataset: Dataset or None. already-loaded data; read from `config` when None.
        workers: tfrec_lm.distribute.WorkerGroup or None. a sharded multi-worker run: this
            worker reads only its shards, and the counts (and the digest) are summed over the
            workers. None: one worker (every combination is the identity).
        bad_rows_path: str, Path or None. where to write every bad row of the data's reports
            (`tfrec_lm.data.schema.write_bad_rows`; a stale file there is removed when there is
            none); the returned data's `dataset.bad_rows_path` names it. None: not written.

    Returns:
        PreparedData.

    Raises:
        DataError: no training example; ConfigError: no training interaction at or after `since`.
    """
    workers = workers if workers is not None else WorkerGroup()
    dataset = dataset if dataset is not None else load_training_data(config, workers.shard)
    if bad_rows_path is not None:
        dataset = with_bad_rows(dataset, bad_rows_path)
    vocab = build_vocab(dataset.items)
    sequences = build_sequences(dataset, vocab)
    split = leave_one_out(sequences, config.max_history)
    require_training_examples(split, sequences)
    counts = train_interaction_counts(split)
    target_counts = np.bincount(split.train.target, minlength=vocab.size).astype(np.int64)
    counts, target_counts = workers.sum(counts), workers.sum(target_counts)
    train_examples = split.train
    if config.since is not None:
        train_examples = train_examples.take(refresh_examples(train_examples.target_timestamp, config))
    if config.max_train_examples is not None and len(train_examples) > config.max_train_examples:
        keep = np.argsort(-train_examples.target_timestamp, kind="stable")[: config.max_train_examples]
        train_examples = train_examples.take(np.sort(keep))
    data = PreparedData(dataset=dataset, vocab=vocab, sequences=sequences, split=split, counts=counts,
                        target_counts=target_counts, train_examples=train_examples, workers=workers)
    if workers.sharded:
        _ = data.digest  # a collective: now, at the same point on every worker
    return data
