"""Interest-migration scores and user slices (SPEC section 2).

For each user's history before the test target: *early* is its first half
(``h[: len(h) // 2]``), *recent* its last 10 items. Each item spreads weight
1/|genres| over its genres (an item without genres adds nothing). The migration score
is the Jensen-Shannon divergence, base 2 (in [0, 1]), between the early and recent genre
distributions; it is 0 when either side has no genre weight. Padding (index 0) is
ignored, so right-padded history rows may be passed as they are.
"""

from __future__ import annotations

import numpy as np

RECENT_ITEMS = 10


def genre_matrix(item_genres: list[tuple[str, ...]]) -> tuple[np.ndarray, list[str]]:
    """Per-item genre weights.

    Args:
        item_genres: list[tuple[str, ...]]. genres of each vocab index (index 0 = padding, ()).

    Returns:
        tuple (weights: np.ndarray float64 [V, G], each row summing to 1 or 0;
            genres: list[str] [G], in order of first appearance).
    """
    names: dict[str, int] = {}
    for genres in item_genres:
        for g in genres:
            names.setdefault(g, len(names))
    weights = np.zeros((len(item_genres), len(names)))
    for i, genres in enumerate(item_genres):
        distinct = list(dict.fromkeys(genres))
        for g in distinct:
            weights[i, names[g]] = 1.0 / len(distinct)
    return weights, list(names)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence, base 2, row by row.

    Args:
        p: np.ndarray float [..., G]. non-negative weights (normalised here).
        q: np.ndarray float [..., G]. non-negative weights (normalised here).

    Returns:
        np.ndarray float [...]. in [0, 1]; 0 where either row sums to 0.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p_sum, q_sum = p.sum(-1, keepdims=True), q.sum(-1, keepdims=True)
    empty = (p_sum[..., 0] <= 0) | (q_sum[..., 0] <= 0)
    p = p / np.where(p_sum > 0, p_sum, 1.0)
    q = q / np.where(q_sum > 0, q_sum, 1.0)
    m = 0.5 * (p + q)

    def kl(a):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, a * np.log2(np.where(a > 0, a, 1.0) / np.where(m > 0, m, 1.0)), 0.0).sum(-1)

    js = np.clip(0.5 * kl(p) + 0.5 * kl(q), 0.0, 1.0)
    return np.where(empty, 0.0, js)


def js_migration_scores(
    histories: list[np.ndarray], item_genres: list[tuple[str, ...]], recent: int = RECENT_ITEMS
) -> np.ndarray:
    """Migration score of each user.

    Args:
        histories: list[np.ndarray]. int vocab indices [h_u] per user, oldest first, the
            history before the test target (0 = padding, ignored).
        item_genres: list[tuple[str, ...]]. genres of each vocab index.
        recent: int. number of most recent items forming the recent distribution.

    Returns:
        np.ndarray float64 [U]. JS divergence (base 2) between early and recent genres.
    """
    weights, _ = genre_matrix(item_genres)
    early = np.zeros((len(histories), weights.shape[1]))
    late = np.zeros_like(early)
    for u, history in enumerate(histories):
        h = np.asarray(history, dtype=np.int64).ravel()
        h = h[h != 0]
        early[u] = weights[h[: len(h) // 2]].sum(axis=0)
        late[u] = weights[h[-recent:]].sum(axis=0) if len(h) else 0.0
    return js_divergence(early, late)


def migration_slices(scores: np.ndarray) -> dict[str, np.ndarray]:
    """All / migrating / stable user masks.

    Args:
        scores: np.ndarray float [U]. migration scores.

    Returns:
        dict[str, np.ndarray]. bool [U] masks: "all"; "migrating", the U // 3
            highest scores; "stable", the U // 3 lowest. One stable ordering (by score,
            descending; ties in user order) gives both, so the slices never overlap even
            when many scores tie.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    third = n // 3
    migrating = np.zeros(n, dtype=bool)
    stable = np.zeros(n, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    migrating[order[:third]] = True
    stable[order[n - third:]] = True
    return {"all": np.ones(n, dtype=bool), "migrating": migrating, "stable": stable}
