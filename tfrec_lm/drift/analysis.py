"""Every drift quantity of one dataset, computed once: scores, slices, migration points."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd

from tfrec_lm.data.schema import Dataset
from tfrec_lm.errors import DataError
from tfrec_lm.data.split import ItemVocab, UserSequences, build_sequences, build_vocab
from tfrec_lm.drift.scores import (
    NULL_QUANTILE,
    RECENT_ITEMS,
    WINDOW,
    embedding_migration_scores,
    genre_migration_scores,
    item_profiles,
    item_text_vectors,
    migration_points,
    null_threshold,
    population_stats,
)
from tfrec_lm.evaluation.migration import migration_slices

logger = logging.getLogger(__name__)

KINDS = ("genre", "embedding")


@dataclasses.dataclass
class DriftAnalysis:
    """Drift quantities of one dataset.

    Scores follow SPEC section 2 (per user, the history before the test target, i.e. all
    but the last interaction); migration points are searched over every interaction.

    Attributes:
        dataset: Dataset. the data.
        vocab: ItemVocab. vocabulary over dataset.items.
        sequences: UserSequences. every user's interactions, time-ordered.
        item_genres: list[tuple[str, ...]]. genres per vocab index (index 0: ()).
        item_vectors: np.ndarray float32 | None. [C+1, D] encoder vectors per vocab index.
        scores: dict[str, np.ndarray]. "genre" and/or "embedding" -> float64 [U].
        points: dict[str, np.ndarray]. same keys -> int64 [U]; position of the migration
            point in each user's sequence, -1 when none.
        thresholds: dict[str, float]. same keys -> the calibrated migration threshold.
        shuffled_flagged: dict[str, float]. same keys -> the share of users whose histories,
            shuffled in time once more (a fresh shuffle, not the calibration's), get a
            migration point at that threshold: the measured false-alarm rate under no drift.
        slices: dict[str, np.ndarray]. bool [U] masks "all", "migrating", "stable" from the
            genre score (the SPEC slices), or from the embedding score without genres.
        window: int. trailing window of the migration points.
        recent: int. recent items of the scores.
        quantile: float. calibration quantile of the thresholds (`null_threshold`).
    """

    dataset: Dataset
    vocab: ItemVocab
    sequences: UserSequences
    item_genres: list
    item_vectors: np.ndarray | None
    scores: dict
    points: dict
    thresholds: dict
    slices: dict
    shuffled_flagged: dict = dataclasses.field(default_factory=dict)
    window: int = WINDOW
    recent: int = RECENT_ITEMS
    quantile: float = NULL_QUANTILE

    @property
    def kinds(self) -> list[str]:
        """The scores present, "genre" first.

        Returns:
            list[str].
        """
        return [k for k in KINDS if k in self.scores]

    @property
    def slice_kind(self) -> str:
        """The score the slices come from.

        Returns:
            str.
        """
        return self.kinds[0]

    def profiles(self, kind: str) -> tuple[np.ndarray, str]:
        """Per-item profiles of one score.

        Args:
            kind: str. "genre" or "embedding".

        Returns:
            tuple (profiles [V, D], distance name).
        """
        return item_profiles(kind, self.item_genres, self.item_vectors)

    def stats(self) -> dict:
        """Population statistics of the scores.

        Returns:
            dict. `population_stats` of the scores, plus per kind the share of users
            with a migration point ("with_point": flagged on their real histories), the
            share flagged on time-shuffled histories ("shuffled_with_point") and the
            threshold.
        """
        out = population_stats(self.scores)
        for kind in self.kinds:
            out[kind]["with_point"] = float((self.points[kind] >= 0).mean()) if len(self.points[kind]) else 0.0
            out[kind]["shuffled_with_point"] = self.shuffled_flagged.get(kind, float("nan"))
            out[kind]["threshold"] = self.thresholds[kind]
        return out

    def frame(self) -> pd.DataFrame:
        """One row per user.

        Returns:
            pd.DataFrame. columns user_id, interactions, first_time, last_time, slice, then
            per kind `<kind>_score`, `<kind>_point` (position, -1 if none) and
            `<kind>_point_time` (Unix seconds of that interaction, -1 if none).
        """
        seq = self.sequences
        slice_name = np.where(self.slices["migrating"], "migrating", np.where(self.slices["stable"], "stable", "middle"))
        data = {
            "user_id": seq.user_ids,
            "interactions": [len(s) for s in seq.items],
            "first_time": [int(t[0]) if len(t) else -1 for t in seq.timestamps],
            "last_time": [int(t[-1]) if len(t) else -1 for t in seq.timestamps],
            "slice": slice_name,
        }
        for kind in self.kinds:
            points = self.points[kind]
            data[f"{kind}_score"] = self.scores[kind]
            data[f"{kind}_point"] = points
            data[f"{kind}_point_time"] = [int(t[p]) if p >= 0 else -1 for t, p in zip(seq.timestamps, points)]
        return pd.DataFrame(data)


def has_genres(dataset: Dataset) -> bool:
    """Whether any catalog item has a genre.

    Args:
        dataset: Dataset.

    Returns:
        bool.
    """
    return any(len(g) for g in dataset.items["genres"])


def analyze(dataset: Dataset, encoder=None, window: int = WINDOW, recent: int = RECENT_ITEMS,
            quantile: float = NULL_QUANTILE, seed: int = 0, max_item_tokens: int = 32) -> DriftAnalysis:
    """Scores, slices and migration points of every user.

    Args:
        dataset: Dataset. interactions and catalog (SPEC section 1 schema).
        encoder: None | str | tuple | np.ndarray. None: no embedding score; an encoder spec
            or a ``(TFBertModel, tokenizer)`` pair: item vectors from the item texts
            (`item_text_vectors`); an array float [C+1, D]: the item vectors themselves.
        window: int. trailing window of the migration points.
        recent: int. recent items of the scores (SPEC: 10).
        quantile: float. calibration quantile of the migration thresholds (`null_threshold`).
        seed: int. seed of the calibration shuffles.
        max_item_tokens: int. word pieces per item text when encoding.

    Returns:
        DriftAnalysis.

    Raises:
        DataError: no interactions, or neither genres nor an encoder to measure with.
    """
    if len(dataset.interactions) == 0:
        raise DataError(f"{dataset.name}: no interactions to analyse")
    vocab = build_vocab(dataset.items)
    sequences = build_sequences(dataset, vocab)
    item_genres = [()] + [tuple(g) for g in dataset.items["genres"]]
    vectors = None
    if isinstance(encoder, np.ndarray):
        vectors = np.asarray(encoder, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != vocab.size:
            raise ValueError(f"item vectors must be [{vocab.size}, D], got {list(vectors.shape)}")
    elif encoder is not None:
        vectors = item_text_vectors(dataset.items["text"].tolist(), encoder, max_item_tokens=max_item_tokens)
    if not has_genres(dataset) and vectors is None:
        raise DataError(f"{dataset.name}: the items have no genres and no encoder was given: nothing to measure with")

    histories = [s[:-1] for s in sequences.items]  # SPEC: the history before the test target
    scores, points, thresholds, shuffled_flagged = {}, {}, {}, {}
    rng = np.random.default_rng([seed, 1])  # not the calibration's shuffles
    shuffled = [rng.permutation(np.asarray(s)) for s in sequences.items]
    if has_genres(dataset):
        scores["genre"] = genre_migration_scores(histories, item_genres, recent=recent)
    if vectors is not None:
        scores["embedding"] = embedding_migration_scores(histories, vectors, recent=recent)
    for kind in scores:
        profiles, distance = item_profiles(kind, item_genres, vectors)
        thresholds[kind] = null_threshold(sequences.items, profiles, window, distance, quantile, seed=seed)
        points[kind] = migration_points(sequences.items, profiles, window, thresholds[kind], distance=distance)
        null_points = migration_points(shuffled, profiles, window, thresholds[kind], distance=distance)
        shuffled_flagged[kind] = float((null_points >= 0).mean()) if len(null_points) else 0.0
        logger.info("%s: threshold %.4f, %d of %d users with a migration point (%.1f%% of shuffled histories)",
                    kind, thresholds[kind], int((points[kind] >= 0).sum()), len(sequences),
                    100 * shuffled_flagged[kind])
    slice_kind = "genre" if "genre" in scores else "embedding"
    return DriftAnalysis(dataset=dataset, vocab=vocab, sequences=sequences, item_genres=item_genres,
                         item_vectors=vectors, scores=scores, points=points, thresholds=thresholds,
                         slices=migration_slices(scores[slice_kind]), shuffled_flagged=shuffled_flagged,
                         window=window, recent=recent, quantile=quantile)
