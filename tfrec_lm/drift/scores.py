"""Per-user interest-migration scores, migration points and population statistics.

Two scores, both comparing a user's *early* items (the first half of the history) with
the *recent* ones (the last 10), as in SPEC section 2:

- the genre score, the Jensen-Shannon divergence (base 2, in [0, 1]) between the early
  and recent genre distributions, is `tfrec_lm.evaluation.migration.js_migration_scores`
  itself (re-exported here as `genre_migration_scores`), so it and the
  migrating/stable slices of every benchmark are the same numbers;
- the embedding score (`embedding_migration_scores`) needs no categories: the cosine
  distance (1 - cosine similarity, in [0, 2]) between the means of the L2-normalised item
  vectors of the early and recent items, with item vectors from any text encoder
  (`item_text_vectors`) or made by hand.

A *migration point* (`migration_points`) is where a user's recent window departs
from the long-term profile before it; `window_distances` gives the curve it is
read from. `population_stats` summarises scores over users.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np

from tfrec_lm.evaluation.migration import (
    RECENT_ITEMS,
    genre_matrix,
    js_divergence,
    js_migration_scores,
)

logger = logging.getLogger(__name__)

WINDOW = 10
DISTANCES = ("js", "cosine")
NULL_QUANTILE = 0.95

genre_migration_scores = js_migration_scores


def _clean(history) -> np.ndarray:
    """The non-padding items of a history.

    Args:
        history: array-like int. [n].

    Returns:
        np.ndarray int64. [m] the non-padding (non-zero) indices.
    """
    h = np.asarray(history, dtype=np.int64).ravel()
    return h[h != 0]


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalised rows.

    Args:
        vectors: np.ndarray float. [V, D].

    Returns:
        np.ndarray float64. [V, D] each row divided by its norm; all-zero rows stay zero.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cosine similarity, row by row.

    Args:
        a: np.ndarray float. [..., D].
        b: np.ndarray float. [..., D].

    Returns:
        np.ndarray float64. [...] in [0, 2]; 0 where either row is all zero.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    empty = (na <= 0) | (nb <= 0)
    cos = (a * b).sum(-1) / np.where(empty, 1.0, na * nb)
    return np.where(empty, 0.0, np.clip(1.0 - cos, 0.0, 2.0))


def profile_distance(a: np.ndarray, b: np.ndarray, distance: str) -> np.ndarray:
    """Distance between two sums of item profiles.

    Args:
        a: np.ndarray float. [..., D] summed item profiles (genre weights or unit vectors).
        b: np.ndarray float. [..., D].
        distance: str. "js" (Jensen-Shannon, base 2, of the normalised sums; for genre
            weights) or "cosine" (1 - cosine similarity of the sums, i.e. of the means; for
            L2-normalised item vectors).

    Returns:
        np.ndarray float64. [...] 0 where either side is empty.
    """
    if distance == "js":
        return js_divergence(a, b)
    if distance == "cosine":
        return cosine_distance(a, b)
    raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")


def embedding_migration_scores(histories: Sequence, item_vectors: np.ndarray, recent: int = RECENT_ITEMS) -> np.ndarray:
    """Domain-free migration score of each user, from item vectors.

    Early = the first half of the history (``h[: len(h) // 2]``), recent = its last
    `recent` items, the split of SPEC section 2. Each item vector is L2-normalised; the
    score is the cosine distance between the mean early vector and the mean recent vector.

    Args:
        histories: Sequence of array-like int. [h_u] vocab indices per user, oldest first
            (0 = padding, ignored).
        item_vectors: np.ndarray float. [V, D] vector of each vocab index (row 0, padding,
            is never read), e.g. from `item_text_vectors`.
        recent: int. number of most recent items.

    Returns:
        np.ndarray float64. [U] in [0, 2]: 0 for identical directions, 1 for
        orthogonal ones; 0 when either side is empty (fewer than 2 items).
    """
    if recent < 1:
        raise ValueError(f"recent must be >= 1, got {recent}")
    unit = normalize_rows(item_vectors)
    if unit.ndim != 2:
        raise ValueError(f"item_vectors must be [V, D], got shape {list(unit.shape)}")
    early = np.zeros((len(histories), unit.shape[1]))
    late = np.zeros_like(early)
    for u, history in enumerate(histories):
        h = _clean(history)
        if len(h) >= 2:
            early[u] = unit[h[: len(h) // 2]].mean(axis=0)
            late[u] = unit[h[-recent:]].mean(axis=0)
    return cosine_distance(early, late)


def item_text_vectors(texts: Sequence[str], encoder, max_item_tokens: int = 32, batch_size: int = 64) -> np.ndarray:
    """Mean-pooled encoder vectors of the item texts, one forward pass per item.

    Args:
        texts: Sequence[str]. [C] item texts in vocabulary order (item 1 first).
        encoder: str | os.PathLike | tuple. an encoder spec for `tfrec_lm.bert.load_bert`
            (alias such as "all-MiniLM-L6-v2", local folder, hub name), or a ready
            ``(TFBertModel, tokenizer)`` pair.
        max_item_tokens: int. word pieces kept per text (as in training).
        batch_size: int. texts per forward pass.

    Returns:
        np.ndarray float32. [C+1, D] row 0 (padding) is zero.

    Raises:
        AssetError: unresolvable encoder spec.
    """
    from tfrec_lm.layers.bert_text_encoder import BertTextEncoder
    from tfrec_lm.text import tokenize_items

    if isinstance(encoder, tuple):
        bert, tokenizer = encoder
    else:
        from tfrec_lm.bert import load_bert

        bert, tokenizer = load_bert(encoder)
    tokens = tokenize_items(list(texts), tokenizer, max_item_tokens)
    layer = BertTextEncoder(bert, finetune="frozen")
    vectors = np.zeros((len(texts) + 1, layer.hidden_size), dtype=np.float32)
    if len(texts):
        vectors[1:] = layer.encode_table(tokens.with_special_tokens()[1:], pad_id=tokens.pad_id, batch_size=batch_size)
    logger.info("encoded %d item texts into %d-dim vectors", len(texts), vectors.shape[1])
    return vectors


def item_profiles(kind: str, item_genres: Sequence[tuple[str, ...]] | None = None,
                  item_vectors: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """Per-item profiles and the distance that compares their sums.

    Args:
        kind: str. "genre" (genre weights, each item spreading 1/|genres|; distance "js") or
            "embedding" (L2-normalised item vectors; distance "cosine").
        item_genres: Sequence[tuple[str, ...]] | None. genres per vocab index, for "genre".
        item_vectors: np.ndarray float | None. [V, D] for "embedding".

    Returns:
        tuple (profiles: np.ndarray float64 [V, D'], distance: str).
    """
    if kind == "genre":
        if item_genres is None:
            raise ValueError("genre profiles need item_genres")
        return genre_matrix(list(item_genres))[0], "js"
    if kind == "embedding":
        if item_vectors is None:
            raise ValueError("embedding profiles need item_vectors")
        return normalize_rows(item_vectors), "cosine"
    raise ValueError(f"kind must be 'genre' or 'embedding', got {kind!r}")


def window_distances(history, profiles: np.ndarray, window: int = WINDOW, distance: str = "js",
                     min_long_term: int | None = None) -> np.ndarray:
    """Distance between each trailing window and the long-term profile before it.

    Args:
        history: array-like int. [n] vocab indices, oldest first (0 = padding, removed first).
        profiles: np.ndarray float. [V, D] per-item profile: genre weights (distance "js")
            or L2-normalised vectors (distance "cosine"); see `item_profiles`.
        window: int. w, items in the trailing window.
        distance: str. "js" or "cosine" (see `profile_distance`).
        min_long_term: int | None. items the long-term profile needs; None means `window`.

    Returns:
        np.ndarray float64. [n] entry i is the distance between the profile of the
        window h[i-w+1 : i+1] (the w items ending at item i) and that of every item
        before it, h[: i-w+1]; NaN where fewer than min_long_term items precede the window.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    m = window if min_long_term is None else int(min_long_term)
    if m < 1:
        raise ValueError(f"min_long_term must be >= 1, got {m}")
    h = _clean(history)
    out = np.full(len(h), np.nan)
    if len(h) < window + m:
        return out
    sums = np.concatenate([np.zeros((1, profiles.shape[1])), np.cumsum(profiles[h], axis=0)])
    ends = np.arange(window + m, len(h) + 1)  # t: window is h[t-w:t]
    out[ends - 1] = profile_distance(sums[ends - window], sums[ends] - sums[ends - window], distance)
    return out


def null_threshold(histories: Sequence, profiles: np.ndarray, window: int = WINDOW, distance: str = "js",
                   quantile: float = NULL_QUANTILE, min_long_term: int | None = None,
                   permutations: int = 3, seed: int = 0) -> float:
    """Threshold for `migration_points`, calibrated on time-shuffled histories.

    Shuffling a history keeps its items and destroys their order, so a shuffled user has
    no migration. Each history is shuffled `permutations` times and the largest window
    distance of each shuffle is kept (the alarm of `migration_points` fires when
    any window exceeds the threshold, so the maximum is what a false alarm depends on);
    the threshold is the `quantile` of these maxima over the population. With the
    default 0.95, about 5% of users whose interests do not move get a migration point
    (more of the users with long histories, which have more windows, fewer of the short).

    Args:
        histories: Sequence of array-like int. vocab indices per user, oldest first.
        profiles: np.ndarray float. [V, D] see `window_distances`.
        window: int. w.
        distance: str. "js" or "cosine".
        quantile: float. in (0, 1).
        min_long_term: int | None. see `window_distances`.
        permutations: int. shuffles per user.
        seed: int. seed of the shuffles.

    Returns:
        float. the threshold; inf when no history is long enough to have a window.
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    rng = np.random.default_rng(seed)
    maxima = []
    for history in histories:
        h = _clean(history)
        for _ in range(permutations):
            d = window_distances(rng.permutation(h), profiles, window, distance, min_long_term)
            if not np.isnan(d).all():
                maxima.append(np.nanmax(d))
    return float(np.quantile(maxima, quantile)) if maxima else float("inf")


def _onset(h: np.ndarray, profiles: np.ndarray, end: int, window: int, distance: str) -> int:
    """Where the departing window h[end-w : end] starts to depart.

    Every suffix h[p:end] of the window (p from end-w to end-1) is compared with the
    long-term profile h[: end-w]; the onset is the p with the largest
    (end - p) * distance (a suffix that is both long and far), the earliest on ties.

    Returns:
        int. p.
    """
    start = end - window
    reference = profiles[h[:start]].sum(axis=0)
    sums = np.cumsum(profiles[h[start:end]][::-1], axis=0)[::-1]  # sums[j] = sum of h[start+j : end]
    lengths = np.arange(window, 0, -1)
    d = profile_distance(np.broadcast_to(reference, sums.shape), sums, distance)
    return start + int(np.argmax(lengths * d))


def migration_points(histories: Sequence, profiles: np.ndarray, window: int = WINDOW, threshold: float | None = None,
                     *, distance: str = "js", min_long_term: int | None = None, quantile: float = NULL_QUANTILE,
                     seed: int = 0) -> np.ndarray:
    """Per user, the position where the recent window departs from the long-term profile.

    The curve of `window_distances` is scanned from the oldest position; the first
    window h[t-w : t] whose distance to the long-term profile h[: t-w] exceeds
    `threshold` raises the alarm. The migration point is then the onset of the departure
    inside that window: the start p of the window suffix h[p:t] that maximises
    (t - p) * distance(long-term, h[p:t]) (earliest on ties). A user whose last item
    raises the alarm gets a point no later than that item; a user never raising it, -1.

    Threshold: a float (genre JS is in [0, 1], cosine distance in [0, 2]) or None, the
    default, which calibrates it on the population itself with `null_threshold`:
    the `quantile` (0.95) over users of the largest window distance of their histories
    shuffled in time, so that about 5% of users without any migration would get a
    point. The calibrated value is logged.

    Args:
        histories: Sequence of array-like int. [n_u] vocab indices per user, oldest first
            (0 = padding, ignored; positions count the non-padding items).
        profiles: np.ndarray float. [V, D] per-item profiles (`item_profiles`): a genre
            matrix with distance "js", or L2-normalised item vectors with distance "cosine".
        window: int. w, items in the trailing window.
        threshold: float | None. distance above which a window departs; None: calibrated.
        distance: str. "js" or "cosine".
        min_long_term: int | None. items the long-term profile needs; None means `window`.
        quantile: float. quantile of the calibration when threshold is None.
        seed: int. seed of the calibration shuffles.

    Returns:
        np.ndarray int64. [U] index of the migration point in each user's history, or -1.
    """
    profiles = np.asarray(profiles, dtype=np.float64)
    if threshold is None:
        threshold = null_threshold(histories, profiles, window, distance, quantile, min_long_term, seed=seed)
        logger.info("migration threshold (%s, window %d): %.4f, the %.2f quantile of time-shuffled histories",
                    distance, window, threshold, quantile)
    points = np.full(len(histories), -1, dtype=np.int64)
    for u, history in enumerate(histories):
        h = _clean(history)
        d = window_distances(h, profiles, window, distance, min_long_term)
        above = np.flatnonzero(np.nan_to_num(d, nan=-np.inf) > threshold)
        if len(above):
            points[u] = _onset(h, profiles, int(above[0]) + 1, window, distance)
    return points


def _rank(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share).

    Args:
        values: np.ndarray. [n].

    Returns:
        np.ndarray float64. [n] average ranks (ties share).
    """
    import pandas as pd

    return pd.Series(values).rank(method="average").to_numpy(dtype=np.float64)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant or has fewer than 2 values."""
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


DEFAULT_THRESHOLDS = (0.05, 0.1, 0.2, 0.3)


def population_stats(scores: Mapping[str, np.ndarray] | np.ndarray,
                     thresholds: Sequence[float] | Mapping[str, Sequence[float]] = DEFAULT_THRESHOLDS) -> dict:
    """Summary of migration scores over users.

    Args:
        scores: Mapping[str, np.ndarray] | np.ndarray. score name (e.g. "genre",
            "embedding") -> float [U], the same users in the same order; a bare array is
            named "score". NaN entries are left out of that score's statistics.
        thresholds: Sequence[float] | Mapping[str, Sequence[float]]. thresholds for the
            "share above" statistics, for every score or per score name.

    Returns:
        dict. per score name: {"count", "mean", "std", "min", "q10", "q25",
        "median", "q75", "q90", "max", "migrating_cut" (the lowest score of the
        migrating top third), "share_above": {str(threshold): share of users strictly
        above}}; and, with two or more scores, "correlation": {"a~b": {"pearson",
        "spearman", "n", "slice_agreement" (share of a's migrating third that is also
        b's migrating third)}} over the users where both are defined.
    """
    if not isinstance(scores, Mapping):
        scores = {"score": scores}
    scores = {name: np.asarray(values, dtype=np.float64).ravel() for name, values in scores.items()}
    sizes = {len(v) for v in scores.values()}
    if len(sizes) > 1:
        raise ValueError(f"scores must cover the same users, got lengths {sorted(sizes)}")
    out: dict = {}
    for name, values in scores.items():
        v = values[~np.isnan(values)]
        cuts = thresholds.get(name, DEFAULT_THRESHOLDS) if isinstance(thresholds, Mapping) else thresholds
        if len(v) == 0:
            out[name] = {"count": 0}
            continue
        q = np.quantile(v, [0.1, 0.25, 0.5, 0.75, 0.9])
        third = len(v) // 3
        out[name] = {
            "count": int(len(v)),
            "mean": float(v.mean()),
            "std": float(v.std()),
            "min": float(v.min()),
            "q10": float(q[0]),
            "q25": float(q[1]),
            "median": float(q[2]),
            "q75": float(q[3]),
            "q90": float(q[4]),
            "max": float(v.max()),
            "migrating_cut": float(np.sort(v)[::-1][third - 1]) if third else float("nan"),
            "share_above": {f"{t:g}": float((v > t).mean()) for t in cuts},
        }
    names = list(scores)
    if len(names) >= 2:
        from tfrec_lm.evaluation.migration import migration_slices

        correlation = {}
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                both = ~np.isnan(scores[a]) & ~np.isnan(scores[b])
                x, y = scores[a][both], scores[b][both]
                mig_a = migration_slices(x)["migrating"]
                mig_b = migration_slices(y)["migrating"]
                correlation[f"{a}~{b}"] = {
                    "pearson": _corr(x, y),
                    "spearman": _corr(_rank(x), _rank(y)) if len(x) else float("nan"),
                    "n": int(both.sum()),
                    "slice_agreement": float((mig_a & mig_b).sum() / mig_a.sum()) if mig_a.any() else float("nan"),
                }
        out["correlation"] = correlation
    return out
