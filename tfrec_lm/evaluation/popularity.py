"""Most-popular baseline: item scores are training interaction counts."""

from __future__ import annotations

import numpy as np


def popularity_scores(counts: np.ndarray) -> np.ndarray:
    """Scores of the most-popular model.

    Args:
        counts: np.ndarray int [C+1]. training interactions per vocab index.

    Returns:
        np.ndarray float64 [C+1]. the counts, with column 0 (padding) = -inf.
    """
    scores = np.asarray(counts, dtype=np.float64).copy()
    scores[0] = -np.inf
    return scores


def most_popular(counts: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """The k most popular items.

    Args:
        counts: np.ndarray int [C+1]. training interactions per vocab index.
        k: int. number of items.
        exclude: np.ndarray | None. int vocab indices to leave out (e.g. a user's history).

    Returns:
        np.ndarray int64 [min(k, candidates)]. vocab indices, most popular first;
            ties go to the lower index; padding (0) never appears.
    """
    counts = np.asarray(counts, dtype=np.float64)
    keep = np.ones(len(counts), dtype=bool)
    keep[0] = False
    if exclude is not None:
        keep[np.asarray(exclude, dtype=np.int64)] = False
    candidates = np.flatnonzero(keep)
    order = np.argsort(-counts[candidates], kind="stable")
    return candidates[order[:k]].astype(np.int64)
