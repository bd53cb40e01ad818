"""Closed-form fold-in of items from an interaction log (issue 29): no training step runs.

For an item i with log interactions r = 1..n (user u_r took it at time t_r), q_r is the
frozen user tower's query for u_r's history before that interaction (every earlier row of
u_r in the log, oldest first, as `serving_default` would be asked). The folded target is

    q_i = normalize(sum_r w_r q_r)                 w_r = 1, or 0.5 ** (age_r / half-life)
    v_i = normalize(a_i q_i + (1 - a_i) p_i)       a_i = m_i / (m_i + k),  m_i = sum_r w_r

with k the shrinkage (`--fold-in-shrinkage`) and p_i the prior: the item's current output
direction (for a new item: its text projection plus the ID part its text neighbours give
it), or, with the text prior off, the model's learned no-ID vector alone (zero in a model
trained without cold items, which leaves v_i the audience alone). With the text prior off,
a new item without log interactions is that prior alone too (m_i = 0, a_i = 0): the whole
update then reads no text, which is what the text's share is measured against. q_i goes through the
audience map below before the mix.

The audience map (`linear`, the default). In this model a user's query and the vectors of the
items they take live in different regions of the space: the centroid of an item's takers'
queries has a higher cosine with most users than trained item vectors do, so a centroid
alone puts the folded items into most top-10 lists (measured: BUILD_NOTES, "Issue 29"). The
map is fitted in closed form on the known items of the same log: ridge regression from each
warm item's takers' centroid c_j (up to `MAP_ROWS_PER_ITEM` of its newest log rows, at least
`MAP_MIN_ROWS`) to its current unit vector y_j, with an intercept,
`W = argmin sum_j |[c_j, 1] W - y_j|^2 + ridge |W|^2`; a folded item's audience is then
`normalize([q_i, 1] W)` instead of q_i. `none` keeps q_i. The map is fitted on at most
`MAP_MAX_ITEMS` warm items, those with the most log rows (ties: the lower vocabulary index),
so its user-tower queries are at most MAP_MAX_ITEMS x MAP_ROWS_PER_ITEM (82 k) whatever the
catalog's size: every warm item of a 1 M-item catalog would be up to 20 M queries, for a
regression with D + 1 unknowns per output coordinate.

Cost: besides the item tower's passes over the catalog, the log is read once (item ids to
vocabulary indices through a hash index, histories cut with vectorised index arithmetic) and
the user tower runs on the rows folded in and the (capped) map rows: it grows with the catalog
and the log, not with catalog x log.

Where it lives: the item's *representation* (the item tower's unnormalised vector, the
text part plus the ID part) is replaced by `|rep_i| v_i`, so the served item vector (its
L2 normalisation) is exactly v_i, and a history holding the item reads the same vector. It
is the ID part solved from the text part and the sum fusion, `id_i = |rep_i| v_i - text_i`,
written into the export's tables (`ServingModule(item_representations=...)`) rather than
into the checkpoint, so it works for any fusion; the run's weights are untouched. The
queries are computed once, from the representations before the fold-in.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Optional

import numpy as np
import pandas as pd

DEFAULT_SHRINKAGE = 3.0
"""k of a_i = n / (n + k): an item with 3 log interactions is half its audience, half its prior.
Set a priori, not chosen on a validation window (BUILD_NOTES, "Issue 29")."""

SCOPES = ("new", "all")
MAPS = ("linear", "none")
MAP_ROWS_PER_ITEM = 20
MAP_MAX_ITEMS = 4096
"""Most warm items the audience map is fitted on (the ones with the most log rows)."""
MAP_MIN_ROWS = 3
MAP_RIDGE = 1.0


@dataclasses.dataclass
class FoldIn:
    """What a fold-in did.

    Attributes:
        representations: np.ndarray float32. [C+1, D] every item's representation, folded rows replaced.
        rows: np.ndarray int64. vocabulary indices of the folded items.
        interactions: np.ndarray int64. [len(rows)] log interactions of each folded item.
        log_rows: int. rows of the log read (before `since`).
        used_rows: int. log rows folded in (at or after `since`, on items in scope).
        outside_catalog: int. log rows whose item is not in the catalog (counted, never folded).
        outside_catalog_items: int. distinct such items.
        out_of_scope: int. log rows on catalog items left as they are (known items when scope is `new`).
        no_history: int. rows in scope whose user had no earlier known item (no query to fold in).
        shrinkage: float. k.
        text_prior: bool. whether the prior was the item's current (text-based) vector.
        half_life_days: float or None. recency weighting.
        scope: str. `new` (items without a trained ID embedding) or `all`.
        audience_map: str. `linear` (fitted on `map_items` known items) or `none`.
        map_items: int. known items the map was fitted on (0: not fitted, the identity).
        map_fit_r2: float or None. the share of the known items' vector variance the map explains.
    """

    representations: np.ndarray
    rows: np.ndarray
    interactions: np.ndarray
    log_rows: int
    used_rows: int
    outside_catalog: int
    outside_catalog_items: int
    out_of_scope: int
    no_history: int
    shrinkage: float
    text_prior: bool
    half_life_days: Optional[float]
    scope: str
    audience_map: str = "none"
    map_items: int = 0
    map_fit_r2: Optional[float] = None

    def summary(self) -> dict:
        """The manifest's record of the fold-in (no vectors). dict."""
        return {"folded_items": int(len(self.rows)), "log_rows": self.log_rows, "used_rows": self.used_rows,
                "outside_catalog_rows": self.outside_catalog, "outside_catalog_items": self.outside_catalog_items,
                "out_of_scope_rows": self.out_of_scope, "no_history_rows": self.no_history,
                "shrinkage": self.shrinkage, "text_prior": self.text_prior,
                "half_life_days": self.half_life_days, "scope": self.scope, "audience_map": self.audience_map,
                "map_items": self.map_items, "map_fit_r2": self.map_fit_r2}


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.where(norms > 0, vectors / np.maximum(norms, 1e-30), 0.0)


def fit_audience_map(centroids: np.ndarray, vectors: np.ndarray, ridge: float = MAP_RIDGE) -> np.ndarray:
    """Ridge regression with an intercept from audience centroids to item vectors.

    Args:
        centroids: np.ndarray. [m, D] unit centroids of known items' takers' queries.
        vectors: np.ndarray. [m, D] those items' unit vectors.
        ridge: float. the penalty on W.

    Returns:
        np.ndarray float64. [D+1, D] W (last row the intercept): `[c, 1] @ W`.
    """
    inputs = np.hstack([np.asarray(centroids, np.float64), np.ones((len(centroids), 1))])
    gram = inputs.T @ inputs + ridge * np.eye(inputs.shape[1])
    return np.linalg.solve(gram, inputs.T @ np.asarray(vectors, np.float64))


def map_audience(audience: np.ndarray, mapping: Optional[np.ndarray]) -> np.ndarray:
    """`normalize([a, 1] @ W)` for each row of `audience` (unchanged when `mapping` is None)."""
    if mapping is None:
        return audience
    return _unit(np.hstack([audience, np.ones((len(audience), 1))]) @ mapping)


def fold_in_vectors(representations: np.ndarray, priors: np.ndarray, queries: np.ndarray, row_items: np.ndarray,
                    weights: np.ndarray, shrinkage: float, mapping: Optional[np.ndarray] = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The closed form, in numpy: folded representations of the items in `row_items`.

    Args:
        representations: np.ndarray. [C+1, D] current representations (their norms are kept).
        priors: np.ndarray. [C+1, D] each item's prior direction (normalised here; a zero row is no prior).
        queries: np.ndarray. [R, D] the query of each log row.
        row_items: np.ndarray int. [R] the item of each log row.
        weights: np.ndarray. [R] each row's weight (1, or its recency weight).
        shrinkage: float. k >= 0.
        mapping: np.ndarray or None. [D+1, D] the audience map (`fit_audience_map`); None: identity.

    Returns:
        tuple (np.ndarray float32 [C+1, D] representations with the folded rows replaced,
            np.ndarray int64 the folded rows in increasing order).
    """
    if shrinkage < 0:
        raise ValueError(f"shrinkage must be >= 0, got {shrinkage}")
    out = np.array(representations, np.float64)
    rows, inverse = np.unique(np.asarray(row_items, np.int64), return_inverse=True)
    if not len(rows):
        return out.astype(np.float32), rows
    weights = np.asarray(weights, np.float64)
    summed = np.zeros((len(rows), out.shape[1]))
    np.add.at(summed, inverse, weights[:, None] * np.asarray(queries, np.float64))
    mass = np.bincount(inverse, weights, len(rows))
    audience = map_audience(_unit(summed), mapping)
    share = (mass / (mass + shrinkage))[:, None] if shrinkage > 0 else np.ones((len(rows), 1))
    target = _unit(share * audience + (1.0 - share) * _unit(np.asarray(priors, np.float64)[rows]))
    out[rows] = np.linalg.norm(out[rows], axis=1, keepdims=True) * target
    return out.astype(np.float32), rows


def vocabulary_rows(item_ids, index: dict) -> np.ndarray:
    """Vocabulary indices of item ids, 0 for ids outside the catalog (one hash lookup per row, no Python loop).

    Args:
        item_ids: array-like of str. [n] item ids.
        index: dict str -> int. catalog vocabulary.

    Returns:
        np.ndarray int64. [n].
    """
    values = pd.Series(np.asarray(item_ids, dtype=object))
    if not len(values) or not index:
        return np.zeros(len(values), np.int64)
    return values.map(index).fillna(0).to_numpy(np.int64)


def user_first_rows(users: np.ndarray) -> np.ndarray:
    """Each row's user's first row, in a log sorted by user. np.ndarray int64 [R] (empty for an empty log)."""
    users = np.asarray(users, dtype=object)
    if not len(users):
        return np.zeros(0, np.int64)
    new_user = np.concatenate([[True], users[1:] != users[:-1]])
    return np.maximum.accumulate(np.where(new_user, np.arange(len(users)), 0))


def sorted_log(log, index: dict):
    """The log sorted by user then time, with each row's vocabulary index.

    Args:
        log: pd.DataFrame. user_id, item_id, timestamp.
        index: dict str -> int. the catalog vocabulary.

    Returns:
        tuple (pd.DataFrame sorted, str ids; np.ndarray int64 [R] vocabulary indices, 0 outside the catalog).
    """
    log = log[["user_id", "item_id", "timestamp"]].copy()
    log["user_id"] = log["user_id"].astype(str)
    log["item_id"] = log["item_id"].astype(str)
    log = log.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    rows = vocabulary_rows(log["item_id"].to_numpy(dtype=object), index)
    return log, rows


def map_fit_rows(rows: np.ndarray, stamps: np.ndarray, candidates: np.ndarray, max_items: Optional[int] = None,
                 per_item: int = MAP_ROWS_PER_ITEM) -> np.ndarray:
    """The log rows the audience map is fitted on: the newest `per_item` rows of each of the
    `max_items` candidate items with the most candidate rows (ties: the lower vocabulary index).

    Args:
        rows: np.ndarray int. [n] each log row's vocabulary index.
        stamps: np.ndarray int. [n] each row's timestamp.
        candidates: np.ndarray bool. [n] rows that may serve (warm items' rows that are not folded in).
        max_items: int or None. most items kept (None: `MAP_MAX_ITEMS`).
        per_item: int. newest rows kept per item (ties in time: the earlier log row first).

    Returns:
        np.ndarray bool. [n] the chosen rows.
    """
    max_items = MAP_MAX_ITEMS if max_items is None else int(max_items)
    chosen = np.zeros(len(rows), bool)
    if not candidates.any():
        return chosen
    rows = np.asarray(rows, np.int64)
    counts = np.bincount(rows[candidates])
    logged = np.flatnonzero(counts)
    top = logged[np.lexsort((logged, -counts[logged]))[:max_items]]
    keep = candidates & np.isin(rows, top)
    frame = pd.DataFrame({"item": rows[keep], "time": np.asarray(stamps)[keep], "row": np.flatnonzero(keep)})
    newest = frame.sort_values(["item", "time"], kind="stable").groupby("item").tail(per_item)
    chosen[newest["row"].to_numpy()] = True
    return chosen


def history_rows(log: pd.DataFrame, index: dict, max_history: int, select: np.ndarray):
    """Each selected log row's history: its user's earlier rows, newest `max_history` known items.

    Vectorised: O(len(log)) to index the log, then O(max_history) per selected row (no loop over a
    user's earlier rows).

    Args:
        log: pd.DataFrame. user_id, item_id, timestamp, sorted by user then time (stable).
        index: dict str -> int. catalog vocabulary (items outside it are left out of histories).
        max_history: int. items kept (the user tower reads at most this many known ones).
        select: np.ndarray bool. [len(log)] the rows whose history is wanted.

    Returns:
        tuple (history int32 [n, max_history] oldest first, 0-padded at the end; timestamps int64 alike).
    """
    items = vocabulary_rows(log["item_id"].to_numpy(dtype=object), index)
    stamps = log["timestamp"].to_numpy(np.int64)
    users = log["user_id"].to_numpy(dtype=object)
    chosen = np.flatnonzero(select)
    history = np.zeros((len(chosen), max_history), np.int32)
    times = np.zeros((len(chosen), max_history), np.int64)
    if not len(chosen) or max_history <= 0:
        return history, times
    starts = user_first_rows(users)
    known = np.flatnonzero(items > 0)  # log rows of catalog items, in log order
    known_before = np.concatenate([[0], np.cumsum(items > 0)])  # known rows in log[:r]
    end = known_before[chosen]  # known rows before the selected row ...
    begin = np.maximum(known_before[starts[chosen]], end - max_history)  # ... from its user's first, at most H
    offsets = begin[:, None] + np.arange(max_history)[None, :]  # [n, H] positions in `known`
    valid = offsets < end[:, None]
    source = known[np.where(valid, offsets, 0)] if len(known) else np.zeros(offsets.shape, np.int64)
    history[valid] = items[source[valid]]
    times[valid] = stamps[source[valid]]
    return history, times


_TRACED = weakref.WeakKeyDictionary()
"""`user_queries`' traced call of each user tower: a tower shared by the fold-in and the popularity
calibration (`update_catalog`) is traced once. Kept outside the tower, so that an export of it holds
no extra function."""


def user_queries(users, history: np.ndarray, times: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """A frozen user tower's queries for many histories, as one traced graph over fixed-size batches.

    In a graph the tower runs about 3x faster per batch than eagerly; the last batch is padded
    with empty histories so that one trace serves every batch, and every later call with the
    same tower and batch size reuses it (the tower's variables are read when it runs, so a
    table assigned in between is seen).

    Args:
        users: the user tower to run in inference (`UserTower.for_export()`).
        history: np.ndarray int32. [n, H] vocabulary indices, 0-padded.
        times: np.ndarray int64. [n, H] their timestamps.
        batch_size: int. histories per call.

    Returns:
        np.ndarray float32. [n, D] the queries (an item-bias model's end with its constant 1).
    """
    import tensorflow as tf

    if not len(history):  # no histories: the caller still needs the queries' width
        return user_queries(users, np.zeros((1, history.shape[1]), np.int32),
                            np.zeros((1, history.shape[1]), np.int64))[:0]
    embed = _TRACED.get(users)
    if embed is None:
        embed = _TRACED[users] = tf.function(lambda h, t: users(h, t, training=False), autograph=False)
    size = min(batch_size, len(history))
    parts = []
    for start in range(0, len(history), size):
        rows = len(history[start:start + size])
        pad = ((0, size - rows), (0, 0))
        got = embed(tf.constant(np.pad(history[start:start + size], pad)),
                    tf.constant(np.pad(times[start:start + size], pad))).numpy()
        parts.append(got[:rows])
    return np.concatenate(parts)


def fold_in(model, item_ids, log: pd.DataFrame, since: Optional[int] = None, shrinkage: float = DEFAULT_SHRINKAGE,
            text_prior: bool = True, half_life_days: Optional[float] = None, scope: str = "new",
            warm_items=None, batch_size: int = 512, audience_map: str = "linear", users=None) -> FoldIn:
    """Folds the log's interactions into the item vectors of a (grown, frozen) model.

    Args:
        model: TwoTowerModel. the model on the update's catalog (its item tower is read, its
            user tower run in inference; nothing is trained).
        item_ids: np.ndarray of str. [C+1] the catalog's vocabulary (index 0 padding).
        log: pd.DataFrame. user_id, item_id, timestamp (Unix seconds): every row makes histories.
        since: int or None. only rows at or after it are folded in (earlier rows still make histories).
        shrinkage: float. k of a = n / (n + k); 0: the audience alone.
        text_prior: bool. shrink toward the item's current vector (True) or the no-ID vector.
        half_life_days: float or None. weigh each interaction by 0.5 ** (age / half-life), age
            counted from the newest log row; None: equal weights.
        scope: str. `new`: items without a trained ID embedding (`warm_items` False); `all`: every item.
        warm_items: np.ndarray bool or None. [C+1]; None: the item tower's (all warm if it has none).
        batch_size: int. histories per user-tower call.
        audience_map: str. `linear`: map the takers' centroid into the item space with the ridge map fitted
            on the log's known items (module docstring); `none`: the centroid as it is.
        users: the user tower to run (`model.user_tower.for_export()`, made here when None); with the
            model's current item representations.

    Returns:
        FoldIn.
    """
    import tensorflow as tf

    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if audience_map not in MAPS:
        raise ValueError(f"audience_map must be one of {', '.join(MAPS)}, got {audience_map!r}")
    if half_life_days is not None and half_life_days <= 0:
        raise ValueError(f"half_life_days must be > 0, got {half_life_days}")
    tower = model.item_tower
    everything = tf.range(tower.num_items, dtype=tf.int32)
    representations = tower.representation(everything, training=False).numpy()
    width = representations.shape[1]
    if warm_items is None:
        warm_items = tower.warm_items if tower.warm_items is not None else np.ones(tower.num_items, bool)
    warm_items = np.asarray(warm_items, bool)
    index = {item: i for i, item in enumerate(np.asarray(item_ids, dtype=object)) if i > 0}
    log, rows = sorted_log(log, index)
    stamps = log["timestamp"].to_numpy(np.int64)
    outside = rows == 0
    in_window = np.ones(len(log), bool) if since is None else stamps >= int(since)
    in_scope = ~outside & (np.ones(len(log), bool) if scope == "all" else ~warm_items[rows])
    use = in_window & in_scope
    # The map's rows: the newest MAP_ROWS_PER_ITEM rows of each of the (at most MAP_MAX_ITEMS) warm
    # items with the most log rows that are not folded in (ties: the lower vocabulary index).
    calibrate = np.zeros(len(log), bool)
    if audience_map == "linear":
        calibrate = map_fit_rows(rows, stamps, ~outside & warm_items[rows] & ~use)
    history, times = history_rows(log, index, model.user_tower.max_history, use | calibrate)
    # an item-bias model's users end with a constant 1
    users = model.user_tower.for_export() if users is None else users
    all_queries = user_queries(users, history, times, batch_size)[:, :width]
    has_history = (history > 0).any(axis=1)  # no known earlier item: the user tower says nothing about them
    chosen = np.flatnonzero(use | calibrate)
    is_fold = use[chosen]
    empty = ~has_history[is_fold]
    used_items, queries = rows[chosen[is_fold]][~empty], all_queries[is_fold][~empty]
    final = tower(everything, training=False).numpy()[:, :width]
    mapping, map_items, map_r2 = None, 0, None
    if audience_map == "linear":
        keep = ~is_fold & has_history
        map_rows, map_queries = rows[chosen[keep]], all_queries[keep]
        items_of, inverse = np.unique(map_rows, return_inverse=True)
        enough = np.bincount(inverse, minlength=len(items_of)) >= MAP_MIN_ROWS
        if enough.sum() > width + 1:  # more items than unknowns per output coordinate
            summed = np.zeros((len(items_of), width))
            np.add.at(summed, inverse, map_queries.astype(np.float64))
            centroids, targets = _unit(summed[enough]), _unit(final[items_of[enough]].astype(np.float64))
            mapping = fit_audience_map(centroids, targets)
            residual = map_audience(centroids, mapping) - targets
            map_items = int(enough.sum())
            map_r2 = float(1.0 - (residual ** 2).sum() / ((targets - targets.mean(axis=0)) ** 2).sum())
    weights = np.ones(len(used_items))
    if half_life_days is not None and len(used_items):
        ages = stamps.max() - stamps[use][~empty]
        weights = 0.5 ** (ages / (half_life_days * 86400.0))
    if text_prior:
        priors = final
    else:
        no_id = tower.no_id_embedding
        vector = np.zeros(width, np.float32) if no_id is None else no_id.numpy() * 1.0
        priors = np.tile(vector, (tower.num_items, 1))
    folded, folded_rows = fold_in_vectors(representations, priors, queries, used_items, weights, shrinkage,
                                          mapping)
    if not text_prior:  # no text: an item without log interactions is its prior alone (a = 0), the no-ID vector
        unlogged = np.flatnonzero(~warm_items)
        unlogged = unlogged[(unlogged > 0) & ~np.isin(unlogged, folded_rows)]
        folded[unlogged] = (np.linalg.norm(folded[unlogged], axis=1, keepdims=True)
                            * _unit(priors[unlogged].astype(np.float64))).astype(np.float32)
        folded_rows = np.union1d(folded_rows, unlogged).astype(np.int64)
    counts = np.bincount(used_items, minlength=tower.num_items)[folded_rows].astype(np.int64)
    return FoldIn(representations=folded, rows=folded_rows, interactions=counts, log_rows=int(len(log)),
                  used_rows=int(len(used_items)), outside_catalog=int((outside & in_window).sum()),
                  outside_catalog_items=int(log.loc[outside & in_window, "item_id"].nunique()),
                  out_of_scope=int((in_window & ~outside & ~in_scope).sum()), no_history=int(empty.sum()),
                  shrinkage=float(shrinkage),
                  text_prior=bool(text_prior), half_life_days=half_life_days, scope=scope,
                  audience_map=audience_map if mapping is not None else "none", map_items=map_items,
                  map_fit_r2=map_r2)
