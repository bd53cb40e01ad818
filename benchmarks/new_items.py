"""New items by text (SPEC §2 new-item protocol, issue 12): items that nobody interacted with.

Two ways new items arrive, both on MovieLens-100K, both scored through the exports'
`rank` signature over the whole catalog with each query's full history excluded:

- `held-out`: 10% of the items with at least 5 interactions lose every interaction
  (the catalog keeps them with their texts); the model is trained on the rest. For each
  user who interacted with a held-out item, the target is the first such interaction and
  the history everything before it. Reported: HR@10 of that target in the full catalog,
  HR@10 among the held-out items only, its median full-catalog rank, the share of users
  with a held-out item in their full-catalog top 10, and the run's warm test NDCG@10.
  Variants: the model before cold items (`--cold-items id`) and the cold-item model with
  each `--id-dropout` candidate. The candidate that ships is chosen on half of these users
  (`select`); the other half (`report`) is reported.
- `time`: T1 is the 70th percentile of timestamps; new items are those first interacted
  with at or after T1. Train on the interactions before T1 with the catalog known then;
  add the new items by their text with `tfrec_lm.catalog` (no training); evaluate every
  interaction at or after T1 given its user's full prior history (an empty history gets
  the popularity fallback). HR@10 / NDCG@10 for new-item and known-item targets, the share
  of users with a new item in their top 10 at their first query, against: the same export
  before the update, an ID-only model, most-popular before T1, and a model retrained on
  everything before T2 (85th percentile, the full catalog: it has seen the new items'
  interactions in [T1, T2)), compared on the targets at or after T2. Wall time of the
  catalog update against the retrain.
- `cold-grid`: no training: the default runs of `held-out` and `time` must be in `--workdir`;
  each `--cold-neighbours` x `--cold-popularity` setting is one catalog update
  of those runs, scored on both protocols (new-item HR@10 and warm quality); `--held-out-seed`
  and `--time-seed` pick the runs.
- `trade`: no training: the `time` part's runs of `--time-seed` must be in `--workdir`. What the
  new items in the top 10 cost the known-item targets, in hits, for the catalog update
  (default and `--cold-neighbours 0`) and for the model retrained before T2, each against the
  export before the update on the same queries (`exposure_trade`).
- `time-popularity`: no model is trained. On the `time` queries, a trending list (the items
  most interacted with in the `--window-days` before each query, history excluded; it sees
  the new items' own interactions, which a catalog update at T1 cannot), and how
  concentrated the new-item targets are on a few items.
- `warm`: the default against the model before cold items (`--cold-items id`) on the SPEC
  leave-one-out split, over `--seeds`, paired by user (bootstrap over test users).

Output: `benchmarks/results/new_items.json`, one key per part (a part run again replaces
its key; the others are kept).

    python benchmarks/new_items.py --parts held-out time time-popularity warm
    python benchmarks/new_items.py --parts cold-grid --workdir DIR   # DIR: the earlier parts' --workdir
    python benchmarks/new_items.py --parts trade --time-seed 42 --workdir DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tfrec_lm  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from _common import results_dir, write_result  # noqa: E402

RESULT = "new_items"
HELD_OUT_SHARE = 0.10
HELD_OUT_MIN_INTERACTIONS = 5
HISTORY_SENT = 100  # newest history ids sent per query (the model reads the newest max_history known ones)


def default_config(**changes):
    from tfrec_lm.config import PRESETS, TrainConfig

    return TrainConfig.from_dict({**PRESETS["cpu"], **changes})


def subset(dataset, interactions, items=None, name=None):
    """The dataset with other interactions (and optionally another catalog)."""
    return dataclasses.replace(dataset, name=name or dataset.name,
                               interactions=interactions.reset_index(drop=True),
                               items=dataset.items if items is None else items.reset_index(drop=True))


def train_run(config, data, workdir: Path, name: str) -> dict:
    """Trains and exports one model; returns its result, run dir, export and wall time."""
    from tfrec_lm.training import train

    config = config.replace(output_dir=str(workdir / name / "run"), export_base=str(workdir / name / "exports"),
                            export=True)
    start = time.monotonic()
    result = train(config, dataset=data, verbose=2)
    wall = time.monotonic() - start
    print(f"{name}: trained in {wall:.0f} s, test NDCG@10 {result.metrics['model']['all']['NDCG@10']:.4f}",
          flush=True)
    return {"config": config, "result": result, "run": Path(config.output_dir), "export": result.export_path,
            "wall_seconds": wall}


def export_scores(export_path, histories, timestamps, catalog_ids, batch_size: int = 64) -> np.ndarray:
    """Full-catalog scores from an export's `rank` signature.

    Args:
        export_path: Path. a SavedModel version directory.
        histories: list of np.ndarray of str. each query's history item ids, oldest first.
        timestamps: list of np.ndarray int64. matching timestamps.
        catalog_ids: np.ndarray of str. [C] the ids to score (unknown to the export: lowest score).
        batch_size: int. queries per call.

    Returns:
        np.ndarray float32. [n, C+1] scores, column 0 (padding) -inf; lowest float32 for ids the
            export does not know or has retired.
    """
    import tensorflow as tf

    from tfrec_lm.scann_ops import load_scann_ops
    from tfrec_lm.protocol import history_batch

    load_scann_ops()
    rank = tf.saved_model.load(str(export_path)).signatures["rank"]
    candidates = np.asarray(catalog_ids, dtype=object).astype(str)
    out = np.full((len(histories), len(candidates) + 1), -np.inf, np.float32)
    for start in range(0, len(histories), batch_size):
        rows = [h[-HISTORY_SENT:] for h in histories[start:start + batch_size]]
        stamps = [t[-HISTORY_SENT:] for t in timestamps[start:start + batch_size]]
        batch = history_batch(rows, stamps, lead_padding=False)
        got = rank(history_item_ids=tf.constant(batch["history_item_ids"].astype(str)),
                   history_timestamps=tf.constant(batch["history_timestamps"]),
                   candidate_item_ids=tf.constant(np.tile(candidates, (len(rows), 1))))["scores"]
        out[start:start + len(rows), 1:] = got.numpy()
    return out


def export_top10(export_path, queries: dict, vocab_ids, batch_size: int = 64) -> np.ndarray:
    """Each query's `serving_default` top 10 given its full history (so the export excludes all of it).

    Args:
        export_path: Path. a SavedModel version directory with K >= 10.
        queries: dict. from `queries_of`.
        vocab_ids: np.ndarray of str. [C+1] the full catalog (index 0 padding).
        batch_size: int. queries per call (grouped by history length to keep padding small).

    Returns:
        np.ndarray int64. [n, 10] vocabulary indices, best first; 0 for an id outside `vocab_ids`.
    """
    import tensorflow as tf

    from tfrec_lm.scann_ops import load_scann_ops
    from tfrec_lm.protocol import history_batch

    load_scann_ops()
    serve = tf.saved_model.load(str(export_path)).signatures["serving_default"]
    index = {item: i for i, item in enumerate(vocab_ids)}
    order = np.argsort([len(h) for h in queries["histories"]], kind="stable")
    top = np.zeros((len(order), 10), np.int64)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = history_batch([queries["histories"][r] for r in rows], [queries["stamps"][r] for r in rows],
                              lead_padding=False)
        got = serve(history_item_ids=tf.constant(batch["history_item_ids"].astype(str)),
                    history_timestamps=tf.constant(batch["history_timestamps"].astype(np.int64)))["item_ids"]
        top[rows] = [[index.get(i, 0) for i in row[:10]] for row in got.numpy().astype(str)]
    return top


def top10_ranks(top: np.ndarray, targets: np.ndarray) -> np.ndarray:
    from tfrec_lm.evaluation.metrics import ranks_from_topk

    return ranks_from_topk(top, targets)


def rank_metrics(ranks: np.ndarray) -> dict:
    from tfrec_lm.evaluation.metrics import ranking_metrics

    return {**ranking_metrics(ranks, ks=(10,)), "count": int(len(ranks))} if len(ranks) else {"count": 0}


def queries_of(dataset, vocab_ids, select) -> dict:
    """Evaluation queries: interactions chosen by `select`, each with its user's full prior history.

    Args:
        dataset: Dataset. all interactions.
        vocab_ids: np.ndarray of str. [C+1] the full catalog (index 0 padding).
        select: callable. `(user frame sorted by time) -> bool np.ndarray` of the rows that are targets.

    Returns:
        dict with `user`, `target` (vocabulary index), `time`, `histories` (ids), `stamps`, `exclude`
        (vocabulary indices of the history).
    """
    index = {item: i for i, item in enumerate(vocab_ids)}
    frame = dataset.interactions.sort_values(["user_id", "timestamp"], kind="stable")
    out = {"user": [], "target": [], "time": [], "histories": [], "stamps": [], "exclude": []}
    for user, rows in frame.groupby("user_id", sort=False):
        items = rows["item_id"].to_numpy(dtype=object)
        stamps = rows["timestamp"].to_numpy(np.int64)
        for position in np.flatnonzero(select(rows)):
            out["user"].append(user)
            out["target"].append(index[items[position]])
            out["time"].append(int(stamps[position]))
            out["histories"].append(items[:position])
            out["stamps"].append(stamps[:position])
            out["exclude"].append(np.array([index[i] for i in items[:position]], np.int64))
    out["target"] = np.asarray(out["target"], np.int64)
    out["user"] = np.asarray(out["user"], dtype=object)
    out["time"] = np.asarray(out["time"], np.int64)
    return out


def ranks_of(scores: np.ndarray, queries: dict) -> np.ndarray:
    from tfrec_lm.evaluation.metrics import full_catalog_ranks

    return full_catalog_ranks(scores, queries["target"], queries["exclude"])


def popular_top10(popularity: np.ndarray, queries: dict) -> np.ndarray:
    """The 10 most popular items of each query, its history excluded. [n, 10] vocabulary indices."""
    order = np.argsort(-popularity[1:], kind="stable") + 1
    top = np.zeros((len(queries["target"]), 10), np.int64)
    for row, excluded in enumerate(queries["exclude"]):
        top[row] = order[~np.isin(order, excluded)][:10]
    return top


def top10_has(scores: np.ndarray, queries: dict, members: np.ndarray) -> np.ndarray:
    """Whether each query's top 10 (history excluded) holds one of `members` (bool [C+1])."""
    scores = scores.copy()
    for row, excluded in enumerate(queries["exclude"]):
        scores[row, excluded] = -np.inf
    top = np.argpartition(-scores, 10, axis=1)[:, :10]
    return members[top].any(axis=1)


# ---------------------------------------------------------------- held-out items


def held_out_setup(dataset, seed: int) -> dict:
    """The held-out-items protocol's split: the held-out items, the training data without them, the
    queries (each user's first held-out interaction) and the `select` half of their users."""
    from tfrec_lm.data.split import build_vocab

    vocab = build_vocab(dataset.items)
    counts = dataset.interactions["item_id"].value_counts()
    eligible = np.sort(counts[counts >= HELD_OUT_MIN_INTERACTIONS].index.to_numpy(dtype=object))
    rng = np.random.default_rng(seed)
    held = set(rng.choice(eligible, size=int(round(HELD_OUT_SHARE * len(eligible))), replace=False))
    train_data = subset(dataset, dataset.interactions[~dataset.interactions["item_id"].isin(held)], name="ml-100k-held-out")

    def first_held(rows):
        hits = rows["item_id"].isin(held).to_numpy()
        chosen = np.zeros(len(rows), bool)
        if hits.any():
            chosen[np.argmax(hits)] = True
        return chosen

    queries = queries_of(dataset, vocab.ids, first_held)
    users = np.unique(queries["user"])
    halves = rng.permutation(users)
    select_users = set(halves[: len(users) // 2])
    return {"vocab": vocab, "held": held, "eligible": eligible, "train_data": train_data,
            "held_mask": np.isin(vocab.ids, list(held)), "queries": queries,
            "is_select": np.array([u in select_users for u in queries["user"]])}


def held_out_scores(export_path, setup: dict) -> dict:
    """The held-out protocol's metrics of one export, per half of the users (`select`, `report`, `all`).

    One pass of the export's `rank` over the full catalog: the target's full-catalog rank, its
    rank among the held-out items, and whether a held-out item is in the top 10 (history
    excluded throughout).
    """
    queries, held_mask, is_select = setup["queries"], setup["held_mask"], setup["is_select"]
    scores = export_scores(export_path, queries["histories"], queries["stamps"], setup["vocab"].ids[1:])
    ranks = ranks_of(scores, queries)
    among = scores.copy()
    among[:, ~held_mask] = -np.inf  # rank among the held-out items only
    ranks_new = ranks_of(among, queries)
    has_new = top10_has(scores, queries, held_mask)
    return {half: {"users": int(mask.sum()),
                   "full_catalog": rank_metrics(ranks[mask]),
                   "among_held_out": rank_metrics(ranks_new[mask]),
                   "median_full_catalog_rank": float(np.median(ranks[mask]) + 1),
                   "share_with_held_out_item_in_top10": float(has_new[mask].mean())}
            for half, mask in (("select", is_select), ("report", ~is_select), ("all", np.ones(len(ranks), bool)))}


def held_out_part(dataset, workdir: Path, dropouts, seed: int, tuning_steps=(), only=None, kept=None) -> dict:
    """The held-out-items protocol. `tuning_steps`: each also with `--text-tuning-steps N` (for
    every dropout); `only`: run just these variant names; `kept`: earlier results by variant
    name (same held-out seed), kept where not run again."""
    setup = held_out_setup(dataset, seed)
    vocab, held, eligible, train_data = setup["vocab"], setup["held"], setup["eligible"], setup["train_data"]
    queries = setup["queries"]
    # `default`: the shipped defaults as they are when the part runs (each row records its config)
    variants = {"default": {}, "cold-items-id": {"cold_items": "id"}, "cold-neighbours-0": {"cold_neighbours": 0}}
    variants.update({f"cold-items-text-id-dropout-{d:g}": {"cold_items": "text", "id_dropout": d} for d in dropouts})
    variants.update({f"cold-items-text-id-dropout-{d:g}-text-tuning-{n}": {
        "cold_items": "text", "id_dropout": d, "text_tuning_steps": n} for d in dropouts for n in tuning_steps})
    results = dict(kept or {})
    for name, changes in variants.items():
        if only and name not in only:
            continue
        run = train_run(default_config(**changes), train_data, workdir, f"held-out/{name}")
        row = {"config_changes": changes, "config": run["config"].to_dict(), "wall_seconds": run["wall_seconds"],
               "warm_test": run["result"].metrics["model"], "validation_ndcg_at_10": run["result"].validation_ndcg,
               **held_out_scores(run["export"], setup)}
        results[name] = row
        print(f"held-out {name}: full-catalog HR@10 {row['report']['full_catalog']['HR@10']:.4f}, among held-out "
              f"HR@10 {row['report']['among_held_out']['HR@10']:.4f}, median rank "
              f"{row['report']['median_full_catalog_rank']:.0f}, warm NDCG@10 "
              f"{row['warm_test']['all']['NDCG@10']:.4f}", flush=True)
    text = [n for n in results if n.startswith("cold-items-text-")]
    chosen = max(text, key=lambda n: results[n]["select"]["full_catalog"]["HR@10"]) if text else None
    return {"held_out_items": len(held), "eligible_items": len(eligible), "queries": len(queries["target"]),
            "seed": seed, "random_hr_at_10_full_catalog": 10 / (vocab.size - 1),
            "random_hr_at_10_among_held_out": 10 / len(held), "chosen_by_select_half": chosen, "variants": results}


# ---------------------------------------------------------------- time-based


def windowed_popular_top10(dataset, vocab_ids, queries: dict, window_seconds: int) -> np.ndarray:
    """Each query's 10 most interacted-with items in the `window_seconds` before its time, history excluded.

    Args:
        dataset: Dataset. all interactions (those strictly before a query's time and inside its window count).
        vocab_ids: np.ndarray of str. [C+1] the full catalog (index 0 padding).
        queries: dict. from `queries_of`; its `time` need not be sorted.
        window_seconds: int. the window's length.

    Returns:
        np.ndarray of int64. [n, 10] vocabulary indices (an item with no interaction in the window
        ranks after every item with one, in vocabulary order).
    """
    index = {item: i for i, item in enumerate(vocab_ids)}
    frame = dataset.interactions.sort_values("timestamp", kind="stable")
    stamps = frame["timestamp"].to_numpy(np.int64)
    items = np.array([index[i] for i in frame["item_id"]], np.int64)
    counts = np.zeros(len(vocab_ids), np.int64)
    top = np.zeros((len(queries["target"]), 10), np.int64)
    enter = leave = 0
    for row in np.argsort(queries["time"], kind="stable"):
        now = queries["time"][row]
        while enter < len(stamps) and stamps[enter] < now:
            counts[items[enter]] += 1
            enter += 1
        while leave < enter and stamps[leave] < now - window_seconds:
            counts[items[leave]] -= 1
            leave += 1
        order = np.argsort(-counts[1:], kind="stable") + 1
        top[row] = order[~np.isin(order, queries["exclude"][row])][:10]
    return top


def paired_hits(top_a: np.ndarray, top_b: np.ndarray, targets: np.ndarray, users: np.ndarray,
                samples: int = 2000) -> dict:
    """HR@10 of top-10 lists `a` against `b` on the same queries, with a bootstrap over users.

    Args:
        top_a, top_b: np.ndarray int. [n, 10] vocabulary indices of each query's lists.
        targets: np.ndarray int. [n] each query's target.
        users: np.ndarray. [n] each query's user (the unit resampled: a user's queries move together).
        samples: int. bootstrap draws.

    Returns:
        dict. `hr_a`, `hr_b`, their `ratio` and its 95% interval, `queries`, `users`.
    """
    if not len(targets):
        return {"queries": 0}
    hits_a = (top_a == targets[:, None]).any(axis=1).astype(np.float64)
    hits_b = (top_b == targets[:, None]).any(axis=1).astype(np.float64)
    names, user_index = np.unique(users, return_inverse=True)
    sum_a = np.bincount(user_index, hits_a, len(names))
    sum_b = np.bincount(user_index, hits_b, len(names))
    count = np.bincount(user_index, minlength=len(names)).astype(np.float64)
    draws = np.random.default_rng(0).integers(0, len(names), size=(samples, len(names)))
    ratios = sum_a[draws].sum(axis=1) / np.maximum(sum_b[draws].sum(axis=1), 1e-12)
    return {"hr_a": float(hits_a.mean()), "hr_b": float(hits_b.mean()),
            "ratio": float(hits_a.sum() / max(hits_b.sum(), 1e-12)),
            "ratio_95ci": [float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))],
            "queries": int(len(targets)), "users": int(len(names)), "mean_queries_per_user": float(count.mean())}


def time_setup(dataset, q1: float, q2: float) -> dict:
    """The time-based protocol's split, queries and a `report` of top-10 lists (shared by its parts)."""
    from tfrec_lm.data.split import build_vocab

    vocab = build_vocab(dataset.items)
    stamps = dataset.interactions["timestamp"]
    t1, t2 = float(np.percentile(stamps, q1)), float(np.percentile(stamps, q2))
    before_t1 = dataset.interactions[stamps < t1]
    known = set(before_t1["item_id"])
    new_ids = sorted(set(dataset.interactions["item_id"]) - known)
    queries = queries_of(dataset, vocab.ids, lambda rows: rows["timestamp"].to_numpy() >= t1)
    new_mask = np.isin(vocab.ids, new_ids)
    is_new = new_mask[queries["target"]]
    after_t2 = queries["time"] >= t2
    first_query = np.zeros(len(queries["user"]), bool)
    first_query[np.unique(queries["user"], return_index=True)[1]] = True

    def report(top) -> dict:
        """Metrics of top-10 lists [n, 10] (vocabulary indices)."""
        ranks = top10_ranks(top, queries["target"])
        has_new = new_mask[top].any(axis=1)
        out = {}
        for span, span_mask in (("from_t1", np.ones(len(ranks), bool)), ("from_t2", after_t2)):
            out[span] = {"all": rank_metrics(ranks[span_mask]), "new_item_targets": rank_metrics(ranks[span_mask & is_new]),
                         "known_item_targets": rank_metrics(ranks[span_mask & ~is_new]),
                         "share_of_users_with_a_new_item_in_top10_at_first_query":
                             float(has_new[span_mask & first_query].mean()) if (span_mask & first_query).any() else None,
                         "share_of_queries_with_a_new_item_in_top10": float(has_new[span_mask].mean())}
        return out

    return {"vocab": vocab, "t1": t1, "t2": t2, "before_t1": before_t1, "known": known, "new_ids": new_ids,
            "queries": queries, "is_new": is_new, "after_t2": after_t2, "report": report}


def popular_before_t1_top10(setup: dict) -> np.ndarray:
    """Each time-protocol query's 10 items most interacted with before T1 (history excluded). [n, 10]."""
    vocab = setup["vocab"]
    popularity = np.zeros(vocab.size, np.float32)
    counts = setup["before_t1"]["item_id"].value_counts()
    popularity[1:] = [counts.get(i, 0) for i in vocab.ids[1:]]
    popularity[1:][~np.isin(vocab.ids[1:], list(setup["known"]))] = np.finfo(np.float32).min  # unknown before T1
    popularity[0] = -np.inf
    return popular_top10(popularity, setup["queries"])


def time_part(dataset, workdir: Path, q1: float, q2: float, seed: int = 42) -> dict:
    from tfrec_lm.catalog.update import update_catalog

    setup = time_setup(dataset, q1, q2)
    vocab, t1, t2, queries, report = setup["vocab"], setup["t1"], setup["t2"], setup["queries"], setup["report"]
    before_t1, known, new_ids = setup["before_t1"], setup["known"], setup["new_ids"]
    is_new, after_t2 = setup["is_new"], setup["after_t2"]
    stamps = dataset.interactions["timestamp"]
    known_items = dataset.items[dataset.items["item_id"].isin(known)]
    data_t1 = subset(dataset, before_t1, items=known_items, name="ml-100k<T1")
    empty = np.array([len(h) == 0 for h in queries["histories"]])
    models = {}
    stale = train_run(default_config(seed=seed), data_t1, workdir, f"time-{seed}/before-t1")
    top_before = export_top10(stale["export"], queries, vocab.ids)
    models["before_update"] = {"wall_seconds": stale["wall_seconds"], **report(top_before)}
    items_path = items_csv(dataset.items[dataset.items["item_id"].isin(new_ids)],
                           workdir / f"time-{seed}" / "new_items.csv")
    update = update_catalog(stale["run"], items_path=items_path)
    top_after = export_top10(update.export_path, queries, vocab.ids)
    models["after_update"] = {"catalog_update_seconds": update.seconds, "encoded": update.encoded,
                              **report(top_after)}
    # The same run and items, new items placed by their text and the no-ID vector (the update before
    # `--cold-neighbours`): the update's own option, no training.
    plain = update_catalog(stale["run"], items_path=items_path, export_base=str(workdir / f"time-{seed}" / "plain"),
                           cold_neighbours=0)
    top_plain = export_top10(plain.export_path, queries, vocab.ids)
    models["after_update_cold_neighbours_0"] = report(top_plain)
    known_target = ~is_new  # (`known` is the set of item ids known before T1)
    paired = {"known_item_targets_after_update_vs_before": paired_hits(
                  top_after[known_target], top_before[known_target], queries["target"][known_target],
                  queries["user"][known_target]),
              "known_item_targets_cold_neighbours_0_vs_before": paired_hits(
                  top_plain[known_target], top_before[known_target], queries["target"][known_target],
                  queries["user"][known_target]),
              "new_item_targets_after_update_vs_cold_neighbours_0": paired_hits(
                  top_after[is_new], top_plain[is_new], queries["target"][is_new], queries["user"][is_new])}
    id_only = train_run(default_config(item_text=False, seed=seed), data_t1, workdir, f"time-{seed}/id-only-before-t1")
    models["id_only"] = {"wall_seconds": id_only["wall_seconds"],
                         **report(export_top10(id_only["export"], queries, vocab.ids))}
    models["most_popular_before_t1"] = report(popular_before_t1_top10(setup))
    before_t2 = subset(dataset, dataset.interactions[stamps < t2], name="ml-100k<T2")
    retrained = train_run(default_config(seed=seed), before_t2, workdir, f"time-{seed}/retrained-before-t2")
    retrained_report = report(export_top10(retrained["export"], queries, vocab.ids))
    retrained_report.pop("from_t1")  # it trained on [T1, T2): only the targets after T2 are fair
    models["retrained_before_t2"] = {"wall_seconds": retrained["wall_seconds"], **retrained_report}
    return {"seed": seed, "q1": q1, "q2": q2, "t1": t1, "t2": t2, "new_items": len(new_ids),
            "queries": int(len(queries["target"])),
            "new_item_queries": int(is_new.sum()), "queries_from_t2": int(after_t2.sum()),
            "new_item_queries_from_t2": int((is_new & after_t2).sum()), "empty_history_queries": int(empty.sum()),
            "random_hr_at_10": 10 / (vocab.size - 1),
            "catalog_update_over_retrain_wall": update.seconds / retrained["wall_seconds"],
            "models": models, "paired": paired}


def time_popularity_part(dataset, q1: float, q2: float, window_days: int) -> dict:
    """What popularity alone reaches on the time-based protocol's new-item targets (no model is trained).

    `trending` counts the interactions of the `window_days` before each query, so it has seen
    the new items' own interactions after T1, which a catalog update at T1 cannot: it is an
    upper reference of what a popularity signal refreshed from the interaction log would give.
    """
    setup = time_setup(dataset, q1, q2)
    targets = setup["queries"]["target"][setup["is_new"]]
    per_item = np.sort(np.bincount(targets))[::-1]
    top = windowed_popular_top10(dataset, setup["vocab"].ids, setup["queries"], window_days * 86400)
    return {"q1": q1, "q2": q2, "window_days": window_days, "new_items": len(setup["new_ids"]),
            "new_item_queries": int(setup["is_new"].sum()),
            "new_items_with_a_target": int((per_item > 0).sum()),
            "share_of_new_item_targets_on_the_most_targeted_new_item": float(per_item[0] / per_item.sum()),
            "share_of_new_item_targets_on_the_10_most_targeted_new_items": float(per_item[:10].sum() / per_item.sum()),
            "trending": setup["report"](top)}


# ---------------------------------------------------------------- cold-neighbour grid

COLD_GRID = ((0, 0.0), (5, 0.0), (5, 1.0), (3, 1.5), (5, 1.5), (3, 2.0), (5, 2.0), (10, 2.0), (20, 2.0),
             (10, 3.0), (20, 3.0), (50, 3.0), (200, 3.0), (200, 4.0))


def items_csv(items, path: Path) -> Path:
    """Writes catalog rows as a `tfrec_lm.catalog --items` file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    items.assign(genres=["|".join(g) for g in items["genres"]])[["item_id", "title", "year", "genres"]] \
        .to_csv(path, index=False)
    return path


def finished_run(workdir: Path, name: str) -> dict:
    """The run dir and export of an earlier part's finished run `workdir/name`.

    Raises:
        SystemExit: no finished run there.
    """
    run_dir = workdir / name / "run"
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        raise SystemExit(f"{run_dir} holds no finished run: run `--parts held-out time` with --workdir {workdir} "
                         "and the same --held-out-seed and --time-seed first")
    return {"run": run_dir, "export": Path(json.loads(metrics.read_text())["export_path"])}


def cold_grid_part(dataset, workdir: Path, q1: float, q2: float, held_out_seed: int, time_seed: int = 42) -> dict:
    """`--cold-neighbours` x `--cold-popularity` through the catalog command, on both protocols.

    No training: the default's run of each protocol must be in `workdir` (`finished_run`; the
    folders may be links to other parts' workdirs). Each setting is one `update_catalog` of
    that run. Time-based: the new items are added at T1. Held-out: the held-out items are sent
    again unchanged, which re-exports the run with the setting (they are already cold in its
    catalog). Reported per setting: HR@10 of the new- (held-out-) item targets, warm quality
    (time: known-item targets, paired with the export before the update; held-out: the SPEC
    leave-one-out test targets of the training data, through the export), and how often a
    new item is in a top 10.
    """
    from tfrec_lm.catalog.update import update_catalog

    split = time_setup(dataset, q1, q2)
    queries, known_target = split["queries"], ~split["is_new"]
    stale = finished_run(workdir, f"time-{time_seed}/before-t1")
    new_path = items_csv(dataset.items[dataset.items["item_id"].isin(split["new_ids"])], workdir / "grid" / "new.csv")
    top_before = export_top10(stale["export"], queries, split["vocab"].ids)
    held = held_out_setup(dataset, held_out_seed)
    run = finished_run(workdir, "held-out/default")
    held_path = items_csv(dataset.items[dataset.items["item_id"].isin(held["held"])], workdir / "grid" / "held.csv")
    warm_queries = queries_of(held["train_data"], held["vocab"].ids, lambda rows: np.arange(len(rows)) == len(rows) - 1)
    rows = {}
    for neighbours, power in COLD_GRID:
        name = f"neighbours-{neighbours}-power-{power:g}"
        options = {"cold_neighbours": neighbours, "cold_popularity": power}
        update = update_catalog(stale["run"], items_path=new_path, export_base=str(workdir / "grid" / "time" / name),
                                **options)
        top = export_top10(update.export_path, queries, split["vocab"].ids)
        span = split["report"](top)["from_t1"]
        update = update_catalog(run["run"], items_path=held_path, export_base=str(workdir / "grid" / "held" / name),
                                **options)
        held_scores = held_out_scores(update.export_path, held)
        warm_top = export_top10(update.export_path, warm_queries, held["vocab"].ids)
        rows[name] = {
            **options,
            "time": {"new_item_targets": span["new_item_targets"], "known_item_targets": span["known_item_targets"],
                     "share_of_queries_with_a_new_item_in_top10": span["share_of_queries_with_a_new_item_in_top10"],
                     "known_item_targets_vs_before_update": paired_hits(
                         top[known_target], top_before[known_target], queries["target"][known_target],
                         queries["user"][known_target])},
            # encoded 0: the held-out texts are the catalog's, nothing is re-encoded
            "held_out": {"encoded": update.encoded, **held_scores,
                         "warm_test": rank_metrics(top10_ranks(warm_top, warm_queries["target"]))},
        }
        print(f"cold grid {name}: time new HR@10 {span['new_item_targets']['HR@10']:.4f}, known "
              f"{span['known_item_targets']['HR@10']:.4f}; held-out select "
              f"{held_scores['select']['full_catalog']['HR@10']:.4f}, "
              f"report {held_scores['report']['full_catalog']['HR@10']:.4f}, "
              f"among held-out {held_scores['report']['among_held_out']['HR@10']:.4f}, "
              f"warm NDCG@10 {rows[name]['held_out']['warm_test']['NDCG@10']:.4f}", flush=True)
    return {"held_out_seed": held_out_seed, "time_seed": time_seed, "before_update_known_item_targets":
            split["report"](top_before)["from_t1"]["known_item_targets"], "settings": rows}


def exposure_trade(top: np.ndarray, top_before: np.ndarray, targets: np.ndarray, is_new: np.ndarray) -> dict:
    """What new items in the top 10 cost the known items, in hits, against a model without them.

    Every slot a new item takes in a query's top 10 is a slot a known item loses, so a known-item
    target can only fall out of the list (or move in through a changed history). This counts both
    sides on the same queries.

    Args:
        top, top_before: np.ndarray int. [n, 10] vocabulary indices: the model with new items, and
            the reference without them (the export before the update).
        targets: np.ndarray int. [n] each query's target.
        is_new: np.ndarray bool. [n] whether the target is a new item.

    Returns:
        dict. `new_item_hits`, `known_item_hits` and `known_item_hits_before`, `known_hits_lost`
        (before minus after), `known_hits_lost_per_new_hit` (None without a new hit) and
        `net_hits` (all hits, after minus before).
    """
    hits = (top == targets[:, None]).any(axis=1)
    hits_before = (top_before == targets[:, None]).any(axis=1)
    new_hits = int(hits[is_new].sum())
    lost = int(hits_before[~is_new].sum()) - int(hits[~is_new].sum())
    return {"new_item_hits": new_hits, "known_item_hits": int(hits[~is_new].sum()),
            "known_item_hits_before": int(hits_before[~is_new].sum()), "known_hits_lost": lost,
            "known_hits_lost_per_new_hit": lost / new_hits if new_hits else None,
            "net_hits": int(hits.sum()) - int(hits_before.sum())}


def trade_part(dataset, workdir: Path, q1: float, q2: float, time_seed: int = 42) -> dict:
    """The time protocol's exposure trade, from the runs `--parts time` left in `workdir` (no training).

    For the catalog update (the default and `--cold-neighbours 0`) from T1 and from T2, and for the
    issue's upper reference, the model retrained before T2 with the new items' interactions (from
    T2, the targets it did not train on): `exposure_trade` against the export before the update,
    and the known-item targets' HR@10 paired with it by user.
    """
    from tfrec_lm.catalog.update import update_catalog

    split = time_setup(dataset, q1, q2)
    queries, is_new, after_t2 = split["queries"], split["is_new"], split["after_t2"]
    stale = finished_run(workdir, f"time-{time_seed}/before-t1")
    retrained = finished_run(workdir, f"time-{time_seed}/retrained-before-t2")
    new_path = items_csv(dataset.items[dataset.items["item_id"].isin(split["new_ids"])],
                         workdir / "trade" / f"new-{time_seed}.csv")
    tops = {"before_update": export_top10(stale["export"], queries, split["vocab"].ids)}
    for name, options in (("after_update", {}), ("after_update_cold_neighbours_0", {"cold_neighbours": 0})):
        update = update_catalog(stale["run"], items_path=new_path,
                                export_base=str(workdir / "trade" / f"{time_seed}-{name}"), **options)
        tops[name] = export_top10(update.export_path, queries, split["vocab"].ids)
    tops["retrained_before_t2"] = export_top10(retrained["export"], queries, split["vocab"].ids)
    out = {"time_seed": time_seed}
    for span, mask in (("from_t1", np.ones(len(is_new), bool)), ("from_t2", after_t2)):
        rows = {}
        for name, top in tops.items():
            if name == "before_update" or (name == "retrained_before_t2" and span == "from_t1"):
                continue  # the retrained model trained on [T1, T2)
            known = mask & ~is_new
            rows[name] = {**exposure_trade(top[mask], tops["before_update"][mask], queries["target"][mask],
                                           is_new[mask]),
                          "known_item_targets_vs_before_update": paired_hits(
                              top[known], tops["before_update"][known], queries["target"][known],
                              queries["user"][known])}
            print(f"trade {span} {name}: {rows[name]['new_item_hits']} new-item hits, "
                  f"{rows[name]['known_hits_lost']} known-item hits lost, known HR@10 "
                  f"{rows[name]['known_item_targets_vs_before_update']['ratio']:.3f}x", flush=True)
        out[span] = rows
    return out


# ---------------------------------------------------------------- warm quality


def warm_part(workdir: Path, seeds) -> dict:
    from ml100k import run_variant
    from recency_ablation import paired

    runs = {}
    for seed in seeds:
        for name, changes in (("default", {}), ("cold-items-id", {"cold_items": "id"})):
            key = name if seed == 42 else f"{name}@seed{seed}"
            runs[key] = run_variant(f"warm_{name}_{seed}", {**changes, "seed": seed}, workdir)
            runs[key]["variant"] = name
            print(f"warm {key}: NDCG@10 {runs[key]['test']['model']['all']['NDCG@10']:.4f}", flush=True)
    for run in runs.values():
        run.pop("export_latency", None)
    return {"seeds": list(seeds), "paired": paired(runs, "default", "cold-items-id"),
            "runs": {key: {k: run[k] for k in ("variant", "config", "test", "validation_ndcg_at_10", "wall_seconds",
                                               "test_ranks", "test_slices")} for key, run in runs.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["held-out", "time", "time-popularity", "warm"],
                        choices=["held-out", "time", "time-popularity", "cold-grid", "trade", "warm"])
    parser.add_argument("--id-dropout", nargs="+", type=float, default=[0.0, 0.25],
                        help="held-out: --id-dropout candidates of the cold-item model")
    parser.add_argument("--held-out-seed", type=int, default=0)
    parser.add_argument("--text-tuning-steps", nargs="*", type=int, default=[],
                        help="held-out: also each --id-dropout candidate with --text-tuning-steps N")
    parser.add_argument("--only", nargs="*", default=None,
                        help="held-out: run only these variants; the file's other variants are kept")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 1], help="warm: training seeds")
    parser.add_argument("--time-seed", type=int, default=42,
                        help="time: the training seed (results of a seed other than 42 go to `time@seedN`)")
    parser.add_argument("--q1", type=float, default=70.0)
    parser.add_argument("--q2", type=float, default=85.0)
    parser.add_argument("--window-days", type=int, default=7, help="time-popularity: the trending window")
    parser.add_argument("--workdir", default=None, help="where runs and exports go (default: a temp dir)")
    args = parser.parse_args(argv)

    from tfrec_lm.data.prepare import load_training_data

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tfrec_lm_new_items_"))
    previous = results_dir() / f"{RESULT}.json"
    payload = {}
    if previous.is_file():
        payload = {k: v for k, v in json.loads(previous.read_text()).items()
                   if k.startswith(("held_out", "time", "cold_grid", "trade", "warm"))}
    dataset = load_training_data(default_config())
    for part in args.parts:
        if part == "held-out":
            key = "held_out" if args.held_out_seed == 0 else f"held_out@seed{args.held_out_seed}"
            before = payload.get(key, {})
            kept = before.get("variants") if args.only and before.get("seed") == args.held_out_seed else None
            payload[key] = held_out_part(dataset, workdir, args.id_dropout, args.held_out_seed,
                                                args.text_tuning_steps, args.only, kept)
        elif part == "time":
            key = "time" if args.time_seed == 42 else f"time@seed{args.time_seed}"
            payload[key] = time_part(dataset, workdir, args.q1, args.q2, args.time_seed)
        elif part == "cold-grid":
            key = ("cold_grid" if (args.held_out_seed, args.time_seed) == (0, 42)
                   else f"cold_grid@held-out-seed{args.held_out_seed}-time-seed{args.time_seed}")
            payload[key] = cold_grid_part(dataset, workdir, args.q1, args.q2, args.held_out_seed, args.time_seed)
        elif part == "trade":
            key = "trade" if args.time_seed == 42 else f"trade@seed{args.time_seed}"
            payload[key] = trade_part(dataset, workdir, args.q1, args.q2, args.time_seed)
        elif part == "time-popularity":
            payload["time_popularity"] = time_popularity_part(dataset, args.q1, args.q2, args.window_days)
        else:
            payload["warm"] = warm_part(workdir, args.seeds)
        path = write_result(RESULT, payload)
        print(f"{part} -> {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
