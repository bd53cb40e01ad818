"""The streaming protocol (SPEC §2 "Streaming protocol", issue 29) on MovieLens-100K.

T1 is the 70th percentile of timestamps. One model is trained on the interactions before
T1 (the default config, the catalog known then). After T1, weekly windows [s, s + 7 days);
before each window one update, which reads the catalog at the window's end (every item
first interacted with before then) and the log of every interaction before s. Every
interaction in the window is a target, its history every earlier interaction of its user
with real timestamps (an empty history is skipped and counted), ranked through the
export's `serving_default` (history excluded) over the updated catalog.

Variants:
- `stale`: the T1 export, never updated;
- `text_only`: today's catalog update (`update_catalog` with the window's catalog, no log);
- `trending`: the 10 items most interacted with in the 7 days before s, history excluded;
- `fold_in`: the default update reading the log (`--interactions`): new items folded in from
  the frozen user tower's queries, shrunk toward their text-based vector, and the
  recency-weighted popularity offset and the new-item offset, their scales chosen by
  replaying the weekly protocol on the log rows the run never trained on;
- `fold_in_no_text`: the same with the text prior off (`--no-fold-in-text-prior`: every new
  item starts from the no-ID vector, so the update reads no text at all);
- `fold_in_no_offset`: the fold-in without either offset (`--popularity-offset off
  --new-item-offset off`);
- `retrained`: an upper reference, the default config retrained from scratch on every
  interaction before s (the window's catalog; its new items cold), before the first, the
  middle and the last window only;
- with `--extra`: `fold_in_centroid` (`--fold-in-map none`) and `fold_in_cold0`
  (`--cold-neighbours 0`), measured in the first pass (BUILD_NOTES, "Issue 29"), and
  `fold_in_no_new_item_offset` (`--new-item-offset off`: the popularity offset alone).

Reported per variant, per window and overall: HR@10, NDCG@10 and hits on all, known-item
and new-item targets (new split by 0, 1-2, 3+ log interactions of the target item at update
time), and the share of lists showing a new item; paired bootstrap over users of each
variant's hits against `stale`, fold-in with against without the text prior (new-item targets,
those with at most 2 log interactions), and the fold-in against the retrained reference on
its windows. Every update is published (`publish="always"`).

    python benchmarks/streaming.py --seeds 42 1 2 --extra fold_in_cold0 fold_in_no_new_item_offset
                                                       # writes benchmarks/results/streaming.json
    python benchmarks/streaming.py --smoke             # synthetic data, tiny model: checks the code only
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tfrec_lm  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from _common import write_result  # noqa: E402

RESULT = "streaming"
WEEK = 7 * 86400
BASE_VARIANTS = ("stale", "text_only", "trending", "fold_in", "fold_in_no_text", "fold_in_no_offset", "retrained")
EXTRA_VARIANTS = ("fold_in_centroid", "fold_in_cold0", "fold_in_no_new_item_offset")


def stream_setup(dataset, q1: float = 70.0, window_seconds: int = WEEK, max_windows=None) -> dict:
    """T1, the windows, every target with its history, and which items are new."""
    from new_items import queries_of
    from tfrec_lm.data.split import build_vocab

    vocab = build_vocab(dataset.items)
    interactions = dataset.interactions
    stamps = interactions["timestamp"].to_numpy(np.int64)
    t1 = float(np.percentile(stamps, q1))
    starts = np.arange(t1, stamps.max() + 1, window_seconds)
    if max_windows is not None:
        starts = starts[:max_windows]
    first_seen = interactions.groupby("item_id")["timestamp"].min()
    known_ids = set(first_seen.index[first_seen < t1])
    queries = queries_of(dataset, vocab.ids, lambda rows: rows["timestamp"].to_numpy() >= t1)
    window = np.searchsorted(starts, queries["time"], side="right") - 1
    window[queries["time"] >= starts[-1] + window_seconds] = -1
    empty = np.array([len(h) == 0 for h in queries["histories"]])
    first = np.array([first_seen.get(i, np.inf) for i in vocab.ids], np.float64)
    first[0] = np.inf
    return {"vocab": vocab, "t1": t1, "starts": starts, "window_seconds": window_seconds, "queries": queries,
            "window": window, "empty": empty, "known_ids": known_ids, "first_seen": first,
            "is_new_item": np.isin(vocab.ids, sorted(set(first_seen.index) - known_ids))}


def select(queries: dict, mask: np.ndarray) -> dict:
    """The queries where `mask` holds (every per-query field)."""
    rows = np.flatnonzero(mask)
    return {key: (value[rows] if isinstance(value, np.ndarray) else [value[r] for r in rows])
            for key, value in queries.items()}


def trending_top10(dataset, vocab_ids, queries: dict, start: float, seconds: int = WEEK) -> np.ndarray:
    """The 10 items most interacted with in [start - seconds, start), each query's history excluded."""
    from new_items import popular_top10

    stamps = dataset.interactions["timestamp"].to_numpy(np.int64)
    recent = dataset.interactions[(stamps >= start - seconds) & (stamps < start)]
    counts = recent["item_id"].value_counts()
    popularity = np.array([-np.inf] + [float(counts.get(i, 0)) for i in vocab_ids[1:]], np.float64)
    return popular_top10(popularity, queries)


def slice_metrics(top: np.ndarray, targets: np.ndarray, is_new_item: np.ndarray, row_counts: np.ndarray) -> dict:
    """HR@10, NDCG@10 and hits on all / known / new (0, 1-2, 3+ log interactions) targets; new-item share.

    Args:
        top: np.ndarray int. [n, 10] vocabulary indices.
        targets: np.ndarray int. [n] target items.
        is_new_item: np.ndarray bool. [C+1] items first seen at or after T1.
        row_counts: np.ndarray int. [n] the target item's interactions in the log at its update.
    """
    from tfrec_lm.evaluation.metrics import ndcg_per_row, ranks_from_topk

    ranks = ranks_from_topk(top, targets)
    hit = ranks <= 10
    ndcg = ndcg_per_row(ranks, 10)
    new = is_new_item[targets]
    count = np.asarray(row_counts)
    slices = {"all": np.ones(len(targets), bool), "known_item": ~new, "new_item": new,
              "new_item_0_in_log": new & (count == 0), "new_item_1_2_in_log": new & (count >= 1) & (count <= 2),
              "new_item_3plus_in_log": new & (count >= 3)}
    out = {}
    for name, mask in slices.items():
        n = int(mask.sum())
        out[name] = {"targets": n, "hits": int(hit[mask].sum()),
                     "HR@10": float(hit[mask].mean()) if n else None,
                     "NDCG@10": float(ndcg[mask].mean()) if n else None}
    out["share_of_lists_with_a_new_item"] = float(is_new_item[top].any(axis=1).mean()) if len(top) else None
    return out


def items_file(dataset, ids, path: Path) -> Path:
    from new_items import items_csv

    return items_csv(dataset.items[dataset.items["item_id"].isin(ids)], path)


def retrain_windows(count: int) -> list:
    """The windows the retrained reference runs before: the first, the middle and the last."""
    return sorted({0, count // 2, count - 1}) if count else []


def run_seed(dataset, setup: dict, config, workdir: Path, seed: int, encoder_factory=None,
             shrinkage=None, variants=BASE_VARIANTS) -> dict:
    """One training seed: the T1 model, then each window's updates and every variant's top 10."""
    from new_items import export_top10
    from tfrec_lm.catalog.update import update_catalog
    from tfrec_lm.training import train

    vocab, queries, starts, seconds = setup["vocab"], setup["queries"], setup["starts"], setup["window_seconds"]
    interactions = dataset.interactions
    stamps = interactions["timestamp"].to_numpy(np.int64)
    t1 = setup["t1"]
    known_items = dataset.items[dataset.items["item_id"].isin(setup["known_ids"])].reset_index(drop=True)
    data_t1 = dataclasses.replace(dataset, name=f"{dataset.name}<T1", items=known_items,
                                  interactions=interactions[stamps < t1].reset_index(drop=True))
    root = workdir / f"seed-{seed}"
    config = config.replace(seed=seed, output_dir=str(root / "run"), export_base=str(root / "exports"), export=True)
    began = time.monotonic()
    trained = train(config, dataset=data_t1, encoder_factory=encoder_factory, verbose=0)
    train_seconds = time.monotonic() - began
    print(f"seed {seed}: T1 model {'reused' if trained.reused else 'trained'} in {train_seconds:.0f} s", flush=True)
    usable = (setup["window"] >= 0) & ~setup["empty"]
    n = len(queries["target"])
    tops = {name: np.zeros((n, 10), np.int64) for name in variants}
    log_counts_of_query = np.zeros(n, np.int64)
    tops["stale"][usable] = export_top10(trained.export_path, select(queries, usable), vocab.ids)
    updates = [name for name in variants if name not in ("stale", "trending", "retrained")]
    seconds_of = {name: [] for name in updates}
    retrain_at = retrain_windows(len(starts)) if "retrained" in variants else []
    retrained_rows = np.zeros(n, bool)
    retrain_seconds = {}
    windows = []
    log_counts = np.zeros((len(starts), vocab.size), np.int64)
    for j, start in enumerate(starts):
        rows = usable & (setup["window"] == j)
        if not rows.any():
            windows.append({"start": float(start), "targets": 0})
            continue
        in_window = select(queries, rows)
        end = start + seconds
        new_ids = vocab.ids[(setup["first_seen"] < end) & setup["is_new_item"]]
        log = interactions[stamps < start]
        counts = log["item_id"].value_counts()
        log_counts[j] = [0] + [int(counts.get(i, 0)) for i in vocab.ids[1:]]
        items_path = items_file(dataset, new_ids, root / f"w{j:02d}" / "items.csv") if len(new_ids) else None
        logged = {"interactions": log, "fold_in_shrinkage": shrinkage}
        options = {"text_only": {}, "fold_in": logged,
                   "fold_in_no_text": {**logged, "fold_in_text_prior": False},
                   "fold_in_no_offset": {**logged, "popularity": "off", "new_item_offset": "off"},
                   "fold_in_centroid": {**logged, "fold_in_map": "none"},
                   "fold_in_cold0": {**logged, "cold_neighbours": 0},
                   "fold_in_no_new_item_offset": {**logged, "new_item_offset": "off"}}
        folded, offsets = {}, {}
        for name in updates:
            if not len(new_ids) and name == "text_only":  # nothing to add: the update is the stale export
                tops[name][rows] = tops["stale"][rows]
                continue
            update = update_catalog(config.output_dir,
                                    items_path=items_path if len(new_ids) else None, export_base=str(root / f"w{j:02d}" / name),
                                    publish="always", encoder_factory=encoder_factory, **options[name])
            seconds_of[name].append(update.seconds)
            tops[name][rows] = export_top10(update.export_path, in_window, vocab.ids)
            if update.fold_in is not None:
                folded[name] = update.fold_in.summary()
            if update.popularity is not None:
                offsets[name] = update.popularity.summary()
        if j in retrain_at:
            catalog = dataset.items[dataset.items["item_id"].isin(set(setup["known_ids"]) | set(new_ids))]
            data_s = dataclasses.replace(dataset, name=f"{dataset.name}<w{j}", items=catalog.reset_index(drop=True),
                                         interactions=log.reset_index(drop=True))
            began = time.monotonic()
            again = train(config.replace(output_dir=str(root / f"retrained-w{j:02d}"),
                                         export_base=str(root / f"retrained-w{j:02d}-exports")),
                          dataset=data_s, encoder_factory=encoder_factory, verbose=0)
            retrain_seconds[str(j)] = time.monotonic() - began
            tops["retrained"][rows] = export_top10(again.export_path, in_window, vocab.ids)
            retrained_rows |= rows
        tops["trending"][rows] = trending_top10(dataset, vocab.ids, in_window, start, WEEK)
        log_counts_of_query[rows] = log_counts[j][queries["target"][rows]]
        shown = [name for name in variants if name != "retrained" or j in retrain_at]
        windows.append({"start": float(start), "targets": int(rows.sum()), "new_items_in_catalog": int(len(new_ids)),
                        "fold_in": folded.get("fold_in"), "popularity_offset": offsets.get("fold_in"),
                        "variants": {name: slice_metrics(tops[name][rows], queries["target"][rows],
                                                         setup["is_new_item"], log_counts_of_query[rows])
                                     for name in shown}})
        print(f"seed {seed} window {j}: {int(rows.sum())} targets, HR@10 "
              + ", ".join(f"{name} {windows[-1]['variants'][name]['all']['HR@10']:.4f}" for name in shown)
              + (f"; offset {offsets['fold_in']['scale']:g} {offsets['fold_in']['new_item_offset']:+g}"
                 if "fold_in" in offsets else ""), flush=True)
    return {"seed": seed, "train_seconds": train_seconds, "usable": usable, "tops": tops,
            "log_counts": log_counts_of_query, "windows": windows, "retrained_rows": retrained_rows,
            "retrain_seconds": retrain_seconds, "variants": variants,
            "update_seconds": {name: {"mean": float(np.mean(v)) if v else None, "each": v}
                               for name, v in seconds_of.items()}}


def overall(setup: dict, result: dict) -> dict:
    """Every variant's metrics over all windows (each target's log count taken at its window's update).

    `retrained` covers only its windows, and so does `fold_in_on_retrained_windows` beside it.
    """
    usable = result["usable"]
    targets = setup["queries"]["target"]
    out = {}
    for name in result["variants"]:
        rows = usable & result["retrained_rows"] if name == "retrained" else usable
        out[name] = slice_metrics(result["tops"][name][rows], targets[rows], setup["is_new_item"],
                                  result["log_counts"][rows])
    if "retrained" in result["variants"]:
        rows = usable & result["retrained_rows"]
        out["fold_in_on_retrained_windows"] = slice_metrics(result["tops"]["fold_in"][rows], targets[rows],
                                                            setup["is_new_item"], result["log_counts"][rows])
    return out


def paired(setup: dict, results: list) -> dict:
    """Hits ratios with a bootstrap over users (a user's targets of every seed move together)."""
    from new_items import paired_hits

    def gather(name, mask_of):
        tops, targets, users = [], [], []
        for result in results:
            usable = result["usable"]
            mask = usable & mask_of(result)
            tops.append(result["tops"][name][mask])
            targets.append(setup["queries"]["target"][mask])
            users.append(setup["queries"]["user"][mask])
        return np.concatenate(tops), np.concatenate(targets), np.concatenate(users)

    is_new = setup["is_new_item"][setup["queries"]["target"]]
    masks = {"all": lambda r: np.ones(len(is_new), bool), "known_item": lambda r: ~is_new,
             "new_item": lambda r: is_new, "new_item_at_most_2_in_log": lambda r: is_new & (r["log_counts"] <= 2)}
    variants = results[0]["variants"]
    out = {}
    for name in variants:
        if name in ("stale", "retrained"):
            continue
        out[f"{name}_vs_stale"] = {}
        for slice_name, mask_of in masks.items():
            top_a, targets, users = gather(name, mask_of)
            top_b, _, _ = gather("stale", mask_of)
            out[f"{name}_vs_stale"][slice_name] = paired_hits(top_a, top_b, targets, users)
    for other in ("fold_in_no_text", "fold_in_no_offset", "trending"):
        if other not in variants:
            continue
        out[f"fold_in_vs_{other}"] = {}
        for slice_name in ("new_item", "new_item_at_most_2_in_log", "all"):
            top_a, targets, users = gather("fold_in", masks[slice_name])
            top_b, _, _ = gather(other, masks[slice_name])
            out[f"fold_in_vs_{other}"][slice_name] = paired_hits(top_a, top_b, targets, users)
    if "retrained" in variants:
        out["fold_in_vs_retrained"], out["stale_vs_retrained"] = {}, {}
        for slice_name in ("all", "known_item", "new_item"):
            on_windows = (lambda m: lambda r: m(r) & r["retrained_rows"])(masks[slice_name])
            top_r, targets, users = gather("retrained", on_windows)
            for name in ("fold_in", "stale"):
                top_a, _, _ = gather(name, on_windows)
                out[f"{name}_vs_retrained"][slice_name] = paired_hits(top_a, top_r, targets, users)
    return out


def run(dataset, config, workdir: Path, seeds, encoder_factory=None, window_seconds: int = WEEK, max_windows=None,
        shrinkage=None, variants=BASE_VARIANTS) -> dict:
    """The whole protocol over `seeds`: the payload written to JSON."""
    from tfrec_lm.catalog.fold_in import DEFAULT_SHRINKAGE
    from tfrec_lm.catalog.popularity import DEFAULT_HALF_LIFE_DAYS, SCALE_GRID

    setup = stream_setup(dataset, window_seconds=window_seconds, max_windows=max_windows)
    results = [run_seed(dataset, setup, config, workdir, seed, encoder_factory, shrinkage, variants)
               for seed in seeds]
    usable = results[0]["usable"]
    return {
        "protocol": {"t1": setup["t1"], "window_seconds": window_seconds, "windows": int(len(setup["starts"])),
                     "targets": int(usable.sum()), "empty_history_skipped": int(((setup["window"] >= 0)
                                                                                 & setup["empty"]).sum()),
                     "new_item_targets": int(setup["is_new_item"][setup["queries"]["target"][usable]].sum()),
                     "fold_in_shrinkage": DEFAULT_SHRINKAGE if shrinkage is None else shrinkage,
                     "popularity_half_life_days": DEFAULT_HALF_LIFE_DAYS, "popularity_scale_grid": list(SCALE_GRID),
                     "retrained_windows": retrain_windows(len(setup["starts"])) if "retrained" in variants else []},
        "seeds": {str(r["seed"]): {"train_seconds": r["train_seconds"], "retrain_seconds": r["retrain_seconds"],
                                   "update_seconds": r["update_seconds"],
                                   "update_over_train_wall": {name: (v["mean"] / r["train_seconds"]
                                                                     if v["mean"] is not None else None)
                                                              for name, v in r["update_seconds"].items()},
                                   "overall": overall(setup, r), "windows": r["windows"]} for r in results},
        "paired": paired(setup, results),
        "fold_in_per_window": {str(r["seed"]): [w.get("fold_in") for w in r["windows"]] for r in results},
        "popularity_offset_per_window": {str(r["seed"]): [w.get("popularity_offset") for w in r["windows"]]
                                         for r in results},
    }


def smoke_dataset(num_users: int = 60):
    """Synthetic users (`synthetic_migration`) with new items: 6 items lose their interactions before T1."""
    from tfrec_lm.data.synthetic import synthetic_migration

    dataset, _ = synthetic_migration(num_users=num_users)
    frame = dataset.interactions
    t1 = np.percentile(frame["timestamp"], 70)
    late = frame.loc[frame["timestamp"] >= t1, "item_id"].value_counts().index[:6]
    kept = frame[~(frame["item_id"].isin(late) & (frame["timestamp"] < t1))].reset_index(drop=True)
    return dataclasses.replace(dataset, interactions=kept)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--workdir", default=None, help="where runs and exports go (default: a temp dir)")
    parser.add_argument("--fold-in-shrinkage", type=float, default=None)
    parser.add_argument("--extra", nargs="*", choices=EXTRA_VARIANTS, default=[],
                        help="more variants (measured in the first pass)")
    parser.add_argument("--only", nargs="+", choices=BASE_VARIANTS[1:] + EXTRA_VARIANTS,
                        help="just these variants beside stale (a rerun of some; runs already in --workdir are reused)")
    parser.add_argument("--output", default=RESULT, help="the result's name under benchmarks/results/")
    parser.add_argument("--smoke", action="store_true",
                        help="synthetic data, the tiny preset, two windows: checks the code, its numbers mean nothing")
    args = parser.parse_args(argv)

    from tfrec_lm.config import PRESETS, TrainConfig

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tfrec_lm_streaming_"))
    variants = BASE_VARIANTS + tuple(args.extra) if not args.only else ("stale", *args.only)
    if args.smoke:
        dataset = smoke_dataset()
        config = TrainConfig.from_dict({**PRESETS["tiny"], "index": "brute-force"})
        stamps = dataset.interactions["timestamp"]
        seconds = int((stamps.max() - np.percentile(stamps, 70)) / 2) + 1
        payload = run(dataset, config, workdir, args.seeds[:1], window_seconds=seconds, max_windows=2,
                      shrinkage=args.fold_in_shrinkage, variants=variants)
        print({name: v["all"]["HR@10"] for name, v in payload["seeds"][str(args.seeds[0])]["overall"].items()})
        return 0
    from tfrec_lm.data.prepare import load_training_data

    config = TrainConfig.from_dict(PRESETS["cpu"])
    dataset = load_training_data(config)
    payload = run(dataset, config, workdir, args.seeds, shrinkage=args.fold_in_shrinkage, variants=variants)
    path = write_result(args.output, {"command": " ".join(["python", "benchmarks/streaming.py", *(argv or sys.argv[1:])]),
                                 **payload})
    print(f"-> {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
