"""A recency-weighted popularity offset read from the interaction log (issue 29): no training step runs.

A model trained before T1 knows what was popular before T1. The log knows what is popular
now. The offset adds, to every item's score for every user,

    o_i = beta * log(1 + m_i)          m_i = sum_r 0.5 ** (age_r / half-life)

over the log rows r of item i (age counted from the newest log row), so an item taken by
many users this week moves up for everyone, and a new item with log interactions competes
with the known items it resembles. In the export it is one more column of the item
embeddings (o_i) and of the user queries (a constant 1): ScaNN and `rank` add it as part of
the dot product (`ServingModule(item_offsets=...)`).

beta is chosen on the log itself: the weekly protocol is replayed on the log rows that the
run never trained on (after its data's last timestamp, `trained_until`). Each such row is a
target, its user's earlier log rows its history; the rows are cut into weeks, and a week's
targets are scored with the offset of the rows before that week, as the update's own week
will be. At most `MAX_CALIBRATION_TARGETS` targets are scored (a seeded random subset).
The beta of `SCALE_GRID` with the most hits at 10 (history excluded) wins, the smaller on a
tie; beta = 0 is in the grid, so an offset that does not help is not used. With fewer than
`MIN_CALIBRATION_TARGETS` unseen rows (the first update after training) the log's newest
`CALIBRATION_DAYS` are the targets instead, though the run trained on them: its beta comes
out small there (0.01–0.04 on MovieLens-100K at T1, three seeds). The item vectors scored are the update's
(a fold-in read the same rows: a folded item scores its own takers a little too well).

Then, with beta fixed, the same targets choose gamma (`NEW_ITEM_GRID`, from 0 down, ties to
the one nearer 0), an offset added to every item without a trained ID embedding: a new item
in a top 10 takes a known item's slot, and gamma is the price the log says that slot is
worth. It is part of the same column (`o_i = beta log(1 + m_i) + gamma [i is new]`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

DEFAULT_HALF_LIFE_DAYS = 7.0
"""The offset's half-life: last week's interactions count half as much as today's."""
CALIBRATION_DAYS = 7.0
SCALE_GRID = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.12, 0.16)
"""Candidate betas, in score units (a cosine): 0.06 moves an item with 20 recent interactions up by 0.18."""
NEW_ITEM_GRID = (0.0, -0.02, -0.04, -0.06, -0.08, -0.1, -0.15)
"""Candidate gammas, searched after beta: how far every item without a trained ID embedding moves down."""
MAX_CALIBRATION_TARGETS = 5000
MIN_CALIBRATION_TARGETS = 500
CALIBRATION_SEED = 0
MAX_SCORE_ELEMENTS = 2 ** 26
"""`hits_per_scale` scores every scale of a batch at once: at most this many [queries x scales x items] scores."""
DAY = 86400.0


@dataclasses.dataclass
class PopularityOffset:
    """The offset an update serves, and how its scale was chosen.

    Attributes:
        offsets: np.ndarray float32. [C+1] each item's score offset (0 for padding).
        scale: float. beta.
        half_life_days: float. the recency weighting.
        chosen: str. `calibrated` (on the replayed weeks), `given` (a fixed beta) or `off`.
        calibration: dict or None. the replayed span (`start`, `end`, `targets`, `weeks`) and hits at 10
            per beta (`hits`) and per new-item offset (`new_item_hits`).
        new_item_offset: float. gamma, added to the score of every item without a trained ID embedding.
        new_item_chosen: str. `calibrated`, `given` or `off`.
    """

    offsets: np.ndarray
    scale: float
    half_life_days: float
    chosen: str
    calibration: Optional[dict] = None
    new_item_offset: float = 0.0
    new_item_chosen: str = "off"

    def summary(self) -> dict:
        """The manifest's record (no vectors). dict."""
        return {"scale": self.scale, "half_life_days": self.half_life_days, "chosen": self.chosen,
                "new_item_offset": self.new_item_offset, "new_item_chosen": self.new_item_chosen,
                "calibration": self.calibration}


def recent_mass(items: np.ndarray, stamps: np.ndarray, now: float, half_life_days: float,
                num_items: int) -> np.ndarray:
    """Each item's recency-weighted interaction count at `now` (rows at or after `now` left out).

    Args:
        items: np.ndarray int. [R] vocabulary index of each log row (0: outside the catalog, ignored).
        stamps: np.ndarray int64. [R] Unix seconds.
        now: float. the time the weights are counted from.
        half_life_days: float. > 0.
        num_items: int. C+1.

    Returns:
        np.ndarray float64. [C+1] m_i; 0 for padding.
    """
    if not half_life_days > 0:
        raise ValueError(f"half_life_days must be > 0, got {half_life_days}")
    before = (np.asarray(stamps) < now) & (np.asarray(items) > 0)
    ages = (now - np.asarray(stamps, np.float64)[before]) / DAY
    mass = np.bincount(np.asarray(items, np.int64)[before], 0.5 ** (ages / half_life_days), num_items)
    mass[0] = 0.0
    return mass


def offsets_of(mass: np.ndarray, scale: float) -> np.ndarray:
    """beta * log(1 + m). np.ndarray float32 [C+1]."""
    out = (float(scale) * np.log1p(np.asarray(mass, np.float64))).astype(np.float32)
    out[0] = 0.0
    return out


def hits_per_scale(queries: np.ndarray, embeddings: np.ndarray, offsets: np.ndarray, targets: np.ndarray,
                   exclude: list, scales, k: int = 10, servable: Optional[np.ndarray] = None,
                   batch_size: int = 256, base: Optional[np.ndarray] = None) -> np.ndarray:
    """Hits at k of `queries . embeddings + base + beta * offsets` for each beta, exactly, history excluded.

    A target is a hit when fewer than k eligible items score above it; the catalog is scored
    in batches of queries, every scale at once, so memory is batch x scales x catalog.

    Args:
        queries: np.ndarray float32. [n, D] user queries.
        embeddings: np.ndarray float32. [C+1, D] item vectors (row 0 padding).
        offsets: np.ndarray float32. [C+1] log(1 + m) per item (multiplied by each beta).
        targets: np.ndarray int. [n] the item each query took.
        exclude: list of np.ndarray int. per query, the items it may not be shown (its history).
        scales: sequence of float. the betas.
        k: int. the cut-off.
        servable: np.ndarray bool or None. [C+1] items that can be recommended (None: 1..C).
        batch_size: int. queries per batch (fewer where batch x scales x catalog exceeds `MAX_SCORE_ELEMENTS`).
        base: np.ndarray float32 or None. [C+1] a fixed offset added to every score.

    Returns:
        np.ndarray int64. [len(scales)] hits.
    """
    import tensorflow as tf

    eligible = np.ones(len(embeddings), bool) if servable is None else np.asarray(servable, bool).copy()
    eligible[0] = False
    items = tf.constant(np.asarray(embeddings, np.float32))
    offsets = tf.constant(np.asarray(offsets, np.float32))
    base = tf.zeros([len(embeddings)]) if base is None else tf.constant(np.asarray(base, np.float32))
    hits = np.zeros(len(scales), np.int64)
    betas = tf.constant(np.asarray(scales, np.float32))
    batch_size = max(1, min(int(batch_size), MAX_SCORE_ELEMENTS // max(len(scales) * len(embeddings), 1)))
    for start in range(0, len(queries), batch_size):
        batch = slice(start, start + batch_size)
        rows = len(targets[batch])
        mask = np.tile(eligible, (rows, 1))
        for a, excluded in enumerate(exclude[batch]):
            mask[a, excluded] = False
        mask = tf.constant(mask)
        scores = tf.matmul(tf.constant(np.asarray(queries[batch], np.float32)), items, transpose_b=True) + base
        target = tf.constant(np.asarray(targets[batch], np.int32))
        shifted = scores[:, None, :] + betas[None, :, None] * offsets[None, None, :]  # [B, S, C]: every beta
        own = tf.gather(shifted, target, axis=2, batch_dims=1)  # [B, S]
        above = tf.reduce_sum(tf.cast(tf.logical_and(mask[:, None, :], shifted > own[..., None]), tf.int32), axis=2)
        valid = tf.gather(mask, target, batch_dims=1)  # a target in the history can never be shown
        hits += tf.reduce_sum(tf.cast(tf.logical_and(valid[:, None], above < k), tf.int64), axis=0).numpy()
    return hits


def calibration_rows(users: np.ndarray, stamps: np.ndarray, items: np.ndarray, start: float,
                     max_targets: int = MAX_CALIBRATION_TARGETS, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """The held-out targets: log rows at or after `start` on catalog items whose user has an earlier catalog row.

    Args:
        users: np.ndarray. [R] user of each row, the log sorted by user then time.
        stamps: np.ndarray int64. [R].
        items: np.ndarray int. [R] vocabulary indices (0 outside the catalog).
        start: float. the first second of the held-out week.
        max_targets: int. a random subset (seeded) when there are more.
        seed: int. the subset's seed.

    Returns:
        np.ndarray int64. row numbers, increasing.
    """
    if not len(users):
        return np.zeros(0, np.int64)
    new_user = np.concatenate([[True], users[1:] != users[:-1]])
    known = (items > 0).astype(np.int64)
    group = np.cumsum(new_user) - 1
    earlier = np.cumsum(known) - known  # catalog rows before this one, all users
    first_of_user = np.flatnonzero(new_user)
    earlier_of_user = earlier - earlier[first_of_user][group]
    rows = np.flatnonzero((np.asarray(stamps) >= start) & (items > 0) & (earlier_of_user > 0))
    if len(rows) > max_targets:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_targets, replace=False))
    return rows


def weekly_hits(queries: np.ndarray, embeddings: np.ndarray, rows: np.ndarray, stamps: np.ndarray,
                targets: np.ndarray, exclude: list, start: float, half_life_days: float, scales,
                servable: Optional[np.ndarray] = None, k: int = 10, new_items: Optional[np.ndarray] = None,
                beta: float = 0.0) -> tuple[np.ndarray, int]:
    """Hits at 10 per scale of the weekly protocol replayed from `start`: each target scored with the
    offset of the log rows before its week (`CALIBRATION_DAYS` long, counted from `start`).

    Without `new_items` the scales are betas of that offset; with it they are gammas of a
    `new_items` indicator, added to `beta` times that offset.

    Args:
        queries: np.ndarray float32. [n, D] each target's query.
        embeddings: np.ndarray float32. [C+1, D] item vectors.
        rows: np.ndarray int. [R] vocabulary index of every log row.
        stamps: np.ndarray int64. [R] their timestamps.
        targets: np.ndarray int. [n] the targets' log rows.
        exclude: list of np.ndarray int. [n] each target's history items.
        start: float. the first week's start.
        half_life_days: float. the offset's recency weighting.
        scales: sequence of float. the betas.
        servable: np.ndarray bool or None. [C+1].
        k: int. the cut-off.
        new_items: np.ndarray bool or None. [C+1] the items a gamma moves.
        beta: float. the popularity scale held fixed while gammas are searched.

    Returns:
        tuple (np.ndarray int64 [len(scales)] hits; int the weeks replayed).
    """
    week_of = np.floor((stamps[targets] - start) / (CALIBRATION_DAYS * DAY)).astype(np.int64)
    hits = np.zeros(len(scales), np.int64)
    for week in np.unique(week_of):
        part = np.flatnonzero(week_of == week)
        before = np.log1p(recent_mass(rows, stamps, start + week * CALIBRATION_DAYS * DAY, half_life_days,
                                      len(embeddings)))
        offsets, base = (before, None) if new_items is None else (np.asarray(new_items, np.float32), beta * before)
        hits += hits_per_scale(queries[part], embeddings, offsets, rows[targets[part]], [exclude[i] for i in part],
                               scales, k=k, servable=servable, base=base)
    return hits, int(len(np.unique(week_of)))


def popularity_offset(model, item_ids, log, representations: Optional[np.ndarray] = None, scale="auto",
                      half_life_days: float = DEFAULT_HALF_LIFE_DAYS, servable: Optional[np.ndarray] = None,
                      trained_until: Optional[float] = None, new_items: Optional[np.ndarray] = None,
                      new_item_offset=0.0, batch_size: int = 512, users=None):
    """The offset of a (grown, frozen) model from a log, its scales chosen on log rows the run never trained on.

    Args:
        model: TwoTowerModel. the model on the update's catalog (inference only).
        item_ids: np.ndarray of str. [C+1] its vocabulary (index 0 padding).
        log: pd.DataFrame. user_id, item_id, timestamp (Unix seconds).
        representations: np.ndarray float32 or None. [C+1, D] item representations to score with (a
            fold-in's); None: the item tower's.
        scale: str or float. beta: `auto` (calibrated) or a fixed beta >= 0.
        half_life_days: float. the recency weighting.
        servable: np.ndarray bool or None. [C+1] items that can be recommended.
        trained_until: float or None. the last timestamp of the run's training data (None: unknown,
            the newest week is used).
        new_items: np.ndarray bool or None. [C+1] items without a trained ID embedding (what gamma moves).
        new_item_offset: str or float. gamma: `auto` (calibrated after beta, on the same targets) or a
            fixed number added to the score of every `new_items` item (0: none).
        batch_size: int. histories per user-tower call.
        users: the user tower to run (`model.user_tower.for_export()`, made here when None; the fold-in's,
            so that it is traced once); `representations` are assigned to its table.

    Returns:
        tuple (PopularityOffset; np.ndarray int64 the calibration targets' rows of the sorted log (empty:
            none); pd.DataFrame the sorted log, `sorted_log`).
    """
    import tensorflow as tf

    from tfrec_lm.catalog.fold_in import history_rows, sorted_log, user_first_rows, user_queries

    for name, value, low in (("popularity scale", scale, 0.0), ("new-item offset", new_item_offset, -np.inf)):
        if value != "auto" and (not np.isfinite(float(value)) or float(value) < low):
            raise ValueError(f"the {name} must be auto or a number{' >= 0' if low == 0 else ''}, got {value}")
    index = {item: i for i, item in enumerate(np.asarray(item_ids, dtype=object)) if i > 0}
    frame, rows = sorted_log(log, index)
    stamps = frame["timestamp"].to_numpy(np.int64)
    users_of = frame["user_id"].to_numpy(dtype=object)
    num_items = len(item_ids)
    new_items = np.zeros(num_items, bool) if new_items is None else np.asarray(new_items, bool)
    now = float(stamps.max()) + 1.0
    mass = recent_mass(rows, stamps, now, half_life_days, num_items)
    start, unseen = now - CALIBRATION_DAYS * DAY, False
    if trained_until is not None and float(trained_until) + 1 < start:
        after = calibration_rows(users_of, stamps, rows, float(trained_until) + 1, max_targets=len(frame))
        if len(after) >= MIN_CALIBRATION_TARGETS:
            start, unseen = float(trained_until) + 1, True
    chosen_rows = calibration_rows(users_of, stamps, rows, start)
    window = {"start": start, "end": now, "unseen_by_training": unseen, "targets": int(len(chosen_rows))}

    def result(beta, gamma, calibration):
        offsets = offsets_of(mass, beta) + np.where(new_items, np.float32(gamma), np.float32(0.0))
        offsets[0] = 0.0
        how = {True: "calibrated", False: "given"}
        return (PopularityOffset(offsets.astype(np.float32), float(beta), float(half_life_days),
                                 how[scale == "auto"] if beta else "off", calibration, float(gamma),
                                 how[new_item_offset == "auto"] if gamma else "off"), chosen_rows, frame)

    fixed_beta = None if scale == "auto" else float(scale)
    fixed_gamma = None if new_item_offset == "auto" or not new_items.any() else float(new_item_offset)
    if fixed_beta is not None and (fixed_gamma is not None or not new_items.any()):
        return result(fixed_beta, fixed_gamma or 0.0, None)
    if not len(chosen_rows):
        return result(fixed_beta or 0.0, fixed_gamma or 0.0, {**window, "hits": {}})
    select = np.zeros(len(frame), bool)
    select[chosen_rows] = True
    history, times = history_rows(frame, index, model.user_tower.max_history, select)
    everything = tf.range(num_items, dtype=tf.int32)
    tower = model.item_tower
    reps = tower.representation(everything, training=False) if representations is None else tf.constant(
        np.asarray(representations, np.float32))
    embeddings = tower.finalize(reps, everything).numpy()
    users = model.user_tower.for_export() if users is None else users
    if representations is not None and hasattr(users, "item_representations"):
        users.item_representations.assign(np.asarray(representations, np.float32))
    queries = user_queries(users, history, times, batch_size)
    user_starts = user_first_rows(users_of)
    exclude = [rows[user_starts[r]:r] for r in chosen_rows]
    replay = dict(queries=queries, embeddings=embeddings, rows=rows, stamps=stamps, targets=chosen_rows,
                  exclude=exclude, start=start, half_life_days=half_life_days, servable=servable)
    calibration = {**window}
    beta = fixed_beta
    if beta is None:
        hits, calibration["weeks"] = weekly_hits(scales=SCALE_GRID, **replay)
        beta = float(SCALE_GRID[int(np.flatnonzero(hits == hits.max())[0])])  # increasing grid: ties to the smaller
        calibration["hits"] = {str(s): int(h) for s, h in zip(SCALE_GRID, hits)}
    gamma = fixed_gamma if fixed_gamma is not None else (None if new_items.any() else 0.0)
    if gamma is None:
        hits, calibration["weeks"] = weekly_hits(scales=NEW_ITEM_GRID, new_items=new_items, beta=beta, **replay)
        gamma = float(NEW_ITEM_GRID[int(np.flatnonzero(hits == hits.max())[0])])  # from 0 down: ties to the nearer
        calibration["new_item_hits"] = {str(s): int(h) for s, h in zip(NEW_ITEM_GRID, hits)}
    return result(beta, gamma, calibration)
