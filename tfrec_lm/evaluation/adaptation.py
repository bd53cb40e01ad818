"""Adaptation lag: how many interactions after an interest switch until the recommendations follow."""

from __future__ import annotations

import numpy as np


def adaptation_lags(embed_users, item_embeddings, sequences, switch_index, new_category, item_category,
                    k: int = 10, share: float = 0.5, timestamps=None) -> np.ndarray:
    """Per user, interactions after the switch until `share` of the top-k is in the new category.

    For n = 0, 1, ... the user's history is everything up to the switch plus the first n
    interactions after it; the model's top-k (history items excluded, full catalog) is
    checked for the new category. The lag is the first such n.

    Args:
        embed_users: callable. [B, N] int32 histories (oldest first, 0-padded) -> [B, D];
            with `timestamps`, ([B, N] histories, [B, N] int64 timestamps) -> [B, D].
        item_embeddings: np.ndarray. [C+1, D] item embeddings (row 0 padding).
        sequences: list of np.ndarray int. per user, item indices in time order.
        switch_index: sequence of int. per user, position of the first post-switch item.
        new_category: sequence of str. per user, the category switched to.
        item_category: np.ndarray of str. [C+1] category of each item index.
        k: int. list length.
        share: float. fraction of the top-k that must be in the new category.
        timestamps: list of np.ndarray int64. optional, per user, the time of each item.

    Returns:
        np.ndarray float [U]: the lag, or `inf` where the user never adapted within their
        post-switch interactions (censored).
    """
    queries, owners, steps = [], [], []
    for user, (items, start) in enumerate(zip(sequences, switch_index)):
        for n in range(len(items) - start + 1):
            queries.append(np.asarray(items[: start + n], dtype=np.int32))
            owners.append(user)
            steps.append(n)
    width = max(len(q) for q in queries)
    history = np.zeros((len(queries), width), dtype=np.int32)
    times = np.zeros((len(queries), width), dtype=np.int64)
    for row, query in enumerate(queries):
        history[row, : len(query)] = query
        if timestamps is not None:
            times[row, : len(query)] = np.asarray(timestamps[owners[row]])[: len(query)]
    if timestamps is None:
        embed = lambda start: embed_users(history[start:start + 512])  # noqa: E731
    else:
        embed = lambda start: embed_users(history[start:start + 512], times[start:start + 512])  # noqa: E731
    users = np.concatenate([np.asarray(embed(i)) for i in range(0, len(history), 512)])
    scores = users @ np.asarray(item_embeddings).T
    scores[:, 0] = -np.inf
    rows = np.repeat(np.arange(len(queries)), [len(q) for q in queries])
    scores[rows, np.concatenate(queries)] = -np.inf
    top = np.argsort(-scores, axis=1)[:, :k]
    hits = item_category[top] == np.asarray(new_category, dtype=object)[np.asarray(owners)][:, None]
    adapted = hits.mean(axis=1) >= share
    lags = np.full(len(sequences), np.inf)
    for row in np.flatnonzero(adapted)[::-1]:
        lags[owners[row]] = min(lags[owners[row]], steps[row])
    return lags
