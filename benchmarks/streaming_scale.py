"""Streaming at scale (issue 29): a catalog update's time and memory as the catalog and the log grow.

For each `--sizes` catalog size N (default 100 k, 300 k and 1 M items), each in its own
folder and fresh processes:

(a) Data. `tfrec_lm.data.synthetic_scale` with N + `--new` items and N interactions (so a
    log of 1 M rows at 1 M items): short texts ("The Silent Haunting (1995). Genres: Horror,
    Drama"), Zipf-Mandelbrot popularity (most items have no interaction at all), users
    shaped like MovieLens-20M (about 144 rows each), items released over time. Item ids
    are in release order, so the last `--new` items (10 k) are the newest: T1 is the first
    one's release. The training set is every log row before T1 (all on the first N items,
    since an item is only taken once released); the catalog is the first N items; the
    update adds the `--new` items (`new.csv`) and reads the whole log (`log.parquet`, N rows).
(b) Training, through the CLI in a fresh process:
        python -m tfrec_lm.train --data files --interactions train.parquet --items catalog.parquet \\
            --encoder <tiny BERT folder> --epochs 1 --steps-per-epoch <--steps> --index scann \\
            --cold-neighbours 0 --output-dir run --export-base exports
    The encoder is a TINY RANDOM BERT (`tfrec_lm.bert.tiny_bert`: 2 layers, width 32) with a
    WordPiece vocabulary of the generator's words, saved as a local folder with its
    tokenizer (`--encoder` takes a folder): all-MiniLM-L6-v2 cannot encode 1 M texts on a
    2-core CPU in a benchmark's time, and an update's cost is what is measured, not its
    quality. `--cold-neighbours 0` in training only: the in-library evaluation (validation,
    test) recomputes the cold items' neighbour table at every batch of users (BUILD_NOTES,
    "New items", left for later), which at 1 M items would be hours; the update below
    sets the default `--cold-neighbours 5` itself (an update may change it: no training).
(c) The update, as a fresh process:
        python -m tfrec_lm.catalog --run run --items new.csv --interactions log.parquet \\
            --publish always --cold-neighbours <--cold-neighbours>
    under `/usr/bin/time -v` (else a wrapper process reading `RUSAGE_CHILDREN`): its wall
    time and peak RSS, and the training process's. Then the same update of the same
    version (`--from-version 1`) with `--cold-neighbours 0`: the difference is what the
    cold items' neighbour table costs (O(cold x warm) in compute, computed once per update:
    `ItemTower.freeze_cold_ids`).

Reported per size: the counts (catalog, new items, log rows, training rows, warm and cold
items: an update's neighbour table is [cold x warm]), the training and update wall seconds
and peak RSS, the training run's stages (`metrics.json`), the fold-in's summary from the
new version's manifest, and each measure's ratio to the smallest size beside the ratio of
the sizes (and of cold x warm).

    python benchmarks/streaming_scale.py                          # 100 k, 300 k, 1 M items
    python benchmarks/streaming_scale.py --sizes 100000 --steps 5
    python benchmarks/streaming_scale.py --smoke                  # 2,000 and 4,000 items, 200 new

Output: `benchmarks/results/streaming_scale.json` (`--output` renames it; `--smoke` writes
`streaming_scale_smoke.json`). The machine should be otherwise idle: the seconds are wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TIME = Path("/usr/bin/time")
PARTS = ("train", "update", "update_cold_neighbours_0")  # the measured processes of a size
SMOKE = {"sizes": [2_000, 4_000], "new": 200, "steps": 3}
# A command's peak RSS without /usr/bin/time: a wrapper process whose only child is the command.
RUSAGE_WRAPPER = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
                  "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
                  "sys.exit(code)")


def child_env(cache: Path) -> dict:
    """The children's environment: this checkout first on the path, a text-vector cache of their own."""
    return {**os.environ, "TFREC_LM_CACHE": str(cache),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def measured(command: list[str], cwd: Path, env: dict, log: Path) -> dict:
    """Runs `command` in a fresh process; its wall seconds and peak RSS (stdout and stderr to `log`).

    Returns:
        dict. `wall_seconds`, `peak_rss_bytes`, `rss_source` (`/usr/bin/time -v` or `RUSAGE_CHILDREN`).

    Raises:
        SystemExit: the command failed (the log's tail in the message).
    """
    report = log.with_suffix(".rss")
    if TIME.is_file():
        wrapped, source = [str(TIME), "-v", "-o", str(report), *command], "/usr/bin/time -v"
    else:
        wrapped, source = [sys.executable, "-c", RUSAGE_WRAPPER, str(report), *command], "RUSAGE_CHILDREN"
    started = time.monotonic()
    with open(log, "w") as out:
        code = subprocess.call(wrapped, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall = time.monotonic() - started
    if code != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed ({code}); the end of {log}:\n"
                         f"{log.read_text()[-4000:]}")
    text = report.read_text()
    if source == "RUSAGE_CHILDREN":
        peak = int(text) * 1024  # kilobytes on Linux
    else:
        peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) * 1024
    return {"wall_seconds": wall, "peak_rss_bytes": peak, "rss_source": source}


def tiny_encoder(folder: Path) -> Path:
    """A tiny random BERT and a WordPiece tokenizer over the synthetic generator's words, saved in `folder`."""
    from tfrec_lm.bert import tiny_bert, tiny_tokenizer
    from tfrec_lm.data import synthetic_scale as synthetic

    if (folder / "config.json").is_file():
        return folder
    words = " ".join([*synthetic.GENRES, *synthetic.ADJECTIVES, *synthetic.PLACES, "the of and in genres",
                      *(noun for nouns in synthetic.GENRE_NOUNS.values() for noun in nouns)])
    tokenizer = tiny_tokenizer(re.findall(r"[a-z0-9]+", words.lower()), folder)
    tiny_bert(tokenizer.vocab_size, seed=0).save_pretrained(str(folder))
    return folder


def make_data(folder: Path, size: int, new: int, seed: int) -> dict:
    """The size's files (see the module docstring): catalog.parquet, new.csv, train.parquet, log.parquet.

    Returns:
        dict. counts, T1, the file paths and the generation seconds.
    """
    import pandas as pd

    from tfrec_lm.data.synthetic_scale import write_synthetic_scale

    started = time.monotonic()
    manifest = write_synthetic_scale(folder / "synthetic", size, items=size + new, shards=1, seed=seed,
                                     overwrite=True)
    items = pd.read_parquet(folder / "synthetic" / "items.parquet")
    items = items.iloc[items["item_id"].astype(int).argsort(kind="stable")].reset_index(drop=True)
    base, added = items.iloc[:size], items.iloc[size:]
    t1 = int(added["release_timestamp"].min())
    log = pd.read_parquet(folder / "synthetic" / "interactions")
    train = log[log["timestamp"].to_numpy() < t1]
    if train["item_id"].isin(set(added["item_id"])).any():
        raise SystemExit(f"size {size}: a new item has a row before T1 (the generator changed?)")
    paths = {name: folder / name for name in ("catalog.parquet", "new.csv", "train.parquet", "log.parquet")}
    base.drop(columns="release_timestamp").to_parquet(paths["catalog.parquet"], index=False)
    new_items = added.drop(columns="release_timestamp").copy()
    new_items["genres"] = ["|".join(genres) for genres in new_items["genres"]]
    new_items.to_csv(paths["new.csv"], index=False)
    train.to_parquet(paths["train.parquet"], index=False)
    log.to_parquet(paths["log.parquet"], index=False)
    shutil.rmtree(folder / "synthetic")
    on_new = int(log["item_id"].isin(set(added["item_id"])).sum())
    return {"catalog_items": int(len(base)), "new_items": int(len(added)), "log_rows": int(len(log)),
            "train_rows": int(len(train)), "log_rows_on_new_items": on_new,
            "log_rows_after_t1": int((log["timestamp"].to_numpy() >= t1).sum()), "users": int(manifest["users"]),
            "t1": t1, "paths": {name: str(path) for name, path in paths.items()},
            "generate_seconds": time.monotonic() - started}


def newest_manifest(export_base: Path) -> dict:
    """The manifest of the newest version under `export_base` (one model folder)."""
    versions = [path for path in export_base.glob("*/*") if path.name.isdigit()]
    newest = max(versions, key=lambda path: int(path.name))
    return json.loads((newest / "assets.extra" / "tfrec_lm.json").read_text())


def run_size(size: int, new: int, steps: int, seed: int, cold_neighbours: int, encoder: Path, work: Path,
             train_args: list[str], update_args: list[str]) -> dict:
    """(a), (b) and (c) for one catalog size; the measures."""
    from tfrec_lm.catalog.table import read_catalog
    from tfrec_lm.registry.layout import CATALOG_FILE

    work.mkdir(parents=True, exist_ok=True)
    data = make_data(work, size, new, seed)
    paths = data.pop("paths")
    env = child_env(work / "cache")
    run_dir, export_base = work / "run", work / "exports"
    train = [sys.executable, "-m", "tfrec_lm.train", "--data", "files", "--interactions", paths["train.parquet"],
             "--items", paths["catalog.parquet"], "--encoder", str(encoder), "--epochs", "1",
             "--steps-per-epoch", str(steps), "--index", "scann", "--cold-neighbours", "0",
             "--output-dir", str(run_dir), "--export-base", str(export_base), "--seed", str(seed), *train_args]
    training = measured(train, work, env, work / "train.log")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    catalog = read_catalog(run_dir / CATALOG_FILE)
    warm = int(catalog["warm"].sum())
    update = [sys.executable, "-m", "tfrec_lm.catalog", "--run", str(run_dir), "--items", paths["new.csv"],
              "--interactions", paths["log.parquet"], "--publish", "always", "--cold-neighbours",
              str(cold_neighbours), *update_args]
    updating = measured(update, work, env, work / "update.log")
    manifest = newest_manifest(export_base)
    # The same update from the same version without the neighbour table: what the table costs.
    plain = [*update[:update.index("--cold-neighbours")], "--cold-neighbours", "0", "--from-version", "1",
             *update_args]
    without = measured(plain, work, env, work / "update-cold-neighbours-0.log") if cold_neighbours else None
    cold = size + new - warm
    return {
        "size": size, **data, "warm_items": warm, "cold_items_after_update": cold, "cold_x_warm": cold * warm,
        "train": {**training, "steps": steps, "batch_size": metrics["config"]["batch_size"],
                  "stages": metrics.get("stages"), "train_examples": metrics.get("train_examples")},
        "update": {**updating, "cold_neighbours": cold_neighbours,
                   "catalog_update": {key: value for key, value in manifest.get("catalog_update", {}).items()
                                      if key not in ("added", "changed", "retired", "restored")}},
        "update_cold_neighbours_0": without,
    }


def growth(results: list[dict]) -> dict:
    """Each size's measures over the smallest size's, beside the ratio of the sizes and of cold x warm."""
    base = results[0]
    out = {}
    for r in results:
        out[str(r["size"])] = {
            "size": r["size"] / base["size"], "log_rows": r["log_rows"] / base["log_rows"],
            "cold_x_warm": r["cold_x_warm"] / max(base["cold_x_warm"], 1),
            **{f"{part}_{key}": r[part][key] / base[part][key] for part in PARTS
               if r.get(part) and base.get(part) for key in ("wall_seconds", "peak_rss_bytes")}}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000],
                        help="catalog sizes (items trained on; the log has as many rows)")
    parser.add_argument("--new", type=int, default=10_000, help="new items the update adds")
    parser.add_argument("--steps", type=int, default=20, help="training steps (--steps-per-epoch, one epoch)")
    parser.add_argument("--cold-neighbours", type=int, default=5,
                        help="the update's --cold-neighbours (default 5, the package's default)")
    parser.add_argument("--seed", type=int, default=0, help="data generator and training seed")
    parser.add_argument("--smoke", action="store_true",
                        help=f"sizes {SMOKE['sizes']}, {SMOKE['new']} new items, {SMOKE['steps']} steps "
                             "(unless given), result streaming_scale_smoke")
    parser.add_argument("--work-dir", default=None, help="data and run outputs (default: a temporary folder, "
                                                          "removed); each size in size-N/ with its logs")
    parser.add_argument("--output", default=None, help="result name under benchmarks/results/")
    parser.add_argument("--train-args", nargs="*", default=[], help="more `tfrec_lm.train` options")
    parser.add_argument("--update-args", nargs="*", default=[], help="more `tfrec_lm.catalog` options")
    args = parser.parse_args(argv)
    given = set(argv if argv is not None else sys.argv[1:])
    if args.smoke:
        args.sizes = args.sizes if "--sizes" in given else SMOKE["sizes"]
        args.new = args.new if "--new" in given else SMOKE["new"]
        args.steps = args.steps if "--steps" in given else SMOKE["steps"]
    output = args.output or ("streaming_scale_smoke" if args.smoke else "streaming_scale")

    results = []
    with tempfile.TemporaryDirectory(prefix="tfrec_lm_streaming_scale_") as temporary:
        root = Path(args.work_dir or temporary)
        encoder = tiny_encoder(root / "encoder")
        for size in sorted(args.sizes):
            result = run_size(size, args.new, args.steps, args.seed, args.cold_neighbours, encoder,
                              root / f"size-{size}", args.train_args, args.update_args)
            results.append(result)
            fold = result["update"]["catalog_update"].get("fold_in", {})
            print(f"{size:>9,} items, {result['log_rows']:,} log rows, {result['new_items']:,} new "
                  f"(warm {result['warm_items']:,}, cold {result['cold_items_after_update']:,}): "
                  f"train {result['train']['wall_seconds']:.1f} s / "
                  f"{result['train']['peak_rss_bytes'] / 2**30:.2f} GiB, "
                  f"update {result['update']['wall_seconds']:.1f} s / "
                  f"{result['update']['peak_rss_bytes'] / 2**30:.2f} GiB "
                  f"({fold.get('folded_items', 0)} items folded, map on {fold.get('map_items', 0)})"
                  + (f"; with --cold-neighbours 0 {result['update_cold_neighbours_0']['wall_seconds']:.1f} s / "
                     f"{result['update_cold_neighbours_0']['peak_rss_bytes'] / 2**30:.2f} GiB"
                     if result["update_cold_neighbours_0"] else ""), flush=True)
            write_result(output, {"settings": {**vars(args), "sizes": sorted(args.sizes)}, "results": results,
                                  "growth": growth(results), "load_average": os.getloadavg()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
