"""Training at scale: memory and time of the whole `python -m tfrec_lm.train` run as the data grows.

For each `--sizes` interaction count, a MovieLens-20M-shaped synthetic data set
(`tfrec_lm.data.synthetic_scale`: Zipf-like item popularity, users with sessions over
years, items with titles, years and genres; written once under `--data-dir` as Parquet
shards plus `items.parquet`) is trained on by the CLI in a fresh process:

    python -m tfrec_lm.train --data files --interactions <shards> --items <items> \\
        --epochs 1 --steps-per-epoch <--steps> --output-dir ... --export-base ...

so the numbers are those of the product's own command: data loading and the SPEC §2
split, the model (item texts encoded by the frozen encoder, or read from the text-vector
cache), `--steps` training steps, the validation of every user, the full-catalog test
evaluation of every user, the export (ScaNN) and the export's own evaluation. From the
run's `metrics.json` (`stages`: seconds and the process's peak RSS after each stage) it
reports per size: peak RSS, data-preparation seconds, training examples/s (the fit stage
less its validation scoring), validation and test evaluation seconds, export seconds,
the test metrics; and the ratios of each to the smallest size beside the ratio of the
interaction counts, which show how each grows.

    python benchmarks/scale.py                                  # 1 M, 5 M and 20 M interactions
    python benchmarks/scale.py --sizes 1000000 --steps 20       # a smoke run

Output: `benchmarks/results/scale.json` (`--output` renames it). The machine should be
otherwise idle: the seconds are wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def ensure_data(data_dir: Path, size: int, shards: int, seed: int) -> Path:
    """The synthetic data set of `size` interactions under `data_dir` (written when absent)."""
    from tfrec_lm.data.synthetic_scale import write_synthetic_scale

    directory = data_dir / f"scale-{size}-seed{seed}"
    if not (directory / "manifest.json").is_file():
        write_synthetic_scale(directory, size, shards=shards, seed=seed, overwrite=True)
    return directory


def run_size(directory: Path, work: Path, steps: int, batch_size: int | None, extra: list[str]) -> dict:
    """One CLI training run on `directory`'s data; its stages from metrics.json."""
    manifest = json.loads((directory / "manifest.json").read_text())
    run_dir, export_base = work / "run", work / "exports"
    command = [sys.executable, "-m", "tfrec_lm.train", "--data", "files",
               "--interactions", str(directory / "interactions"), "--items", str(directory / "items.parquet"),
               "--epochs", "1", "--steps-per-epoch", str(steps), "--output-dir", str(run_dir),
               "--export-base", str(export_base), *(["--batch-size", str(batch_size)] if batch_size else []), *extra]
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"training on {directory} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    stages = metrics["stages"]
    batch = metrics["config"]["batch_size"]
    train_seconds = stages["fit"]["seconds"] - metrics["validation_scoring_seconds"]
    return {
        "interactions": manifest["interactions"],
        "users": manifest["users"],
        "items": manifest["items"],
        "train_examples": metrics["train_examples"],
        "steps": steps,
        "batch_size": batch,
        "wall_seconds": wall,
        "peak_rss_bytes": max(stage["peak_rss_bytes"] for stage in stages.values()),
        "stages": stages,
        "data_seconds": stages["data"]["seconds"],
        "model_seconds": stages["model"]["seconds"],
        "training_examples_per_second": steps * batch / train_seconds,
        "validation_seconds": metrics["validation_scoring_seconds"],
        "test_evaluation_seconds": stages["evaluation"]["seconds"],
        "export_seconds": stages["export"]["seconds"],
        "test": {"model": metrics["test"]["model"]["all"], "most_popular": metrics["test"]["most_popular"]["all"]},
    }


def growth(results: list[dict]) -> dict:
    """Each size's measures over the smallest size's, beside the ratio of interactions."""
    base = results[0]
    keys = ("peak_rss_bytes", "data_seconds", "validation_seconds", "test_evaluation_seconds", "export_seconds",
            "training_examples_per_second")
    return {str(r["interactions"]): {"interactions": r["interactions"] / base["interactions"],
                                     **{k: r[k] / base[k] for k in keys}} for r in results}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000],
                        help="interactions per data set")
    parser.add_argument("--steps", type=int, default=100, help="training steps (--steps-per-epoch, one epoch)")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch (default: the CLI's)")
    parser.add_argument("--shards", type=int, default=8, help="Parquet shards per data set")
    parser.add_argument("--seed", type=int, default=0, help="data generator seed")
    parser.add_argument("--data-dir", default=str(Path.home() / ".cache" / "tfrec_lm" / "scale-data"),
                        help="where the synthetic data sets are kept between runs")
    parser.add_argument("--work-dir", default=None, help="run outputs (default: a temporary folder, removed)")
    parser.add_argument("--output", default="scale", help="result name under benchmarks/results/")
    parser.add_argument("extra", nargs="*", help="more `tfrec_lm.train` options, after --")
    args = parser.parse_args(argv)
    import tempfile

    results = []
    with tempfile.TemporaryDirectory(prefix="tfrec_lm_scale_") as temporary:
        work_root = Path(args.work_dir or temporary)
        for size in sorted(args.sizes):
            started = time.monotonic()
            directory = ensure_data(Path(args.data_dir), size, args.shards, args.seed)
            generate_seconds = time.monotonic() - started
            result = run_size(directory, work_root / f"size-{size}", args.steps, args.batch_size, args.extra)
            result["generate_seconds"] = generate_seconds
            results.append(result)
            print(f"{size:>11,} interactions: peak RSS {result['peak_rss_bytes'] / 2**30:.2f} GiB, data "
                  f"{result['data_seconds']:.1f} s, {result['training_examples_per_second']:.0f} examples/s, "
                  f"validation {result['validation_seconds']:.1f} s, test {result['test_evaluation_seconds']:.1f} s, "
                  f"export {result['export_seconds']:.1f} s, wall {result['wall_seconds']:.0f} s", flush=True)
            write_result(args.output, {"settings": vars(args), "results": results, "growth": growth(results),
                                       "load_average": os.getloadavg()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
