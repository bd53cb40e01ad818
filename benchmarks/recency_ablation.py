"""Interest-migration ablations on MovieLens-100K (SPEC §2): recency features, long/short split, H.

Every variant is the item-sequence model of the CPU preset with one set of changes,
trained by the one training function and scored on the SPEC test targets (all /
migrating / stable users). The reference is `no-recency`: the same tower with every
piece of recency information removed (no position embedding, no item ages: an
order-free set transformer). Output: `benchmarks/results/recency_ablation.json`,
rewritten after every variant so a long run keeps what it finished; variants already in
that file and not run again are kept (`--fresh` starts a new file).

    python benchmarks/recency_ablation.py                       # every variant
    python benchmarks/recency_ablation.py --variant no-recency time-long-short
    python benchmarks/recency_ablation.py --variant no-recency positions time --seeds 42 1 2

With several seeds the `paired` section compares variants user by user (mean over seeds,
bootstrap interval over test users), since single runs differ by about 0.01 NDCG@10.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tfrec_lm  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from _common import results_dir, write_result  # noqa: E402
from ml100k import run_variant  # noqa: E402

REFERENCE = "no-recency"
VARIANTS = {
    # Every variant spells out its recency options, so the table does not move with the defaults.
    "no-recency": {"sequence_pooling": "mean", "time_features": False, "long_short": False},
    "positions": {"time_features": False, "long_short": False},  # the issue-2 model
    "time": {"time_features": True, "long_short": False},
    "time-long-short": {"time_features": True, "long_short": True, "short_window": 10},
    "long-short": {"time_features": False, "long_short": True, "short_window": 10},
    "time-h20": {"time_features": True, "long_short": False, "max_history": 20},
    "time-h100": {"time_features": True, "long_short": False, "max_history": 100},
    "bag": {"sequence_pooling": "bag", "time_features": False, "long_short": False},
}
SLICES = ("all", "migrating", "stable")
DEFAULT_SEED = 42  # the preset's seed; runs with it keep the plain variant name as their key
# Paired comparisons written to the JSON: the chosen model against the recency-free tower
# and against the issue-2 model (positions only).
COMPARISONS = ("time:no-recency", "time:positions", "positions:no-recency")


def run_key(name: str, seed: int) -> str:
    return name if seed == DEFAULT_SEED else f"{name}@seed{seed}"


def per_user_ndcg(run: dict) -> np.ndarray:
    """[users] NDCG@10 of each test user (one leave-one-out target each) from the model's ranks."""
    from tfrec_lm.evaluation.metrics import ndcg_per_row

    return ndcg_per_row(run["test_ranks"], 10)


def summarise(runs: dict) -> dict:
    """NDCG@10 per slice of each run and its ratio to the reference's run with the same seed."""
    table = {}
    for key, run in runs.items():
        reference = runs.get(run_key(REFERENCE, run["config"]["seed"]))
        row = {}
        for source in ("model", "export"):
            for slice_name in SLICES:
                value = run["test"][source][slice_name]["NDCG@10"]
                row[f"{source}_{slice_name}_ndcg_at_10"] = value
                if reference is not None:
                    row[f"{source}_{slice_name}_vs_{REFERENCE}"] = value / reference["test"][source][slice_name]["NDCG@10"]
        row["best_validation_ndcg_at_10"] = max(run["validation_ndcg_at_10"])
        row["wall_seconds"] = run["wall_seconds"]
        table[key] = row
    return table


def ratio_interval(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, samples: int = 2000) -> list:
    """95% bootstrap interval of mean(a) / mean(b) that resamples users (the rows of both, paired).

    Args:
        a: np.ndarray. [users] the variant's per-user metric.
        b: np.ndarray. [users] the baseline's, the same users.
        rng: np.random.Generator. draws `samples` resamples of the users.
        samples: int. resamples.

    Returns:
        list of two floats. the 2.5% and 97.5% quantiles of the resampled ratio.
    """
    draws = rng.integers(0, len(a), size=(samples, len(a)))
    ratios = a[draws].mean(axis=1) / np.maximum(b[draws].mean(axis=1), 1e-12)
    return [float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))]


def paired(runs: dict, variant: str, baseline: str, samples: int = 2000, extra_slices: dict | None = None) -> dict:
    """`variant` against `baseline` over the seeds both ran, user by user.

    Per slice: the mean NDCG@10 over seeds of each, their ratio, and a 95% bootstrap
    interval of the ratio that resamples test users (each user's NDCG averaged over the
    seeds first, so seed noise and user sampling noise are both in it). Runs written
    before per-user ranks were recorded are skipped. `extra_slices` (name -> test-user
    indices) are compared the same way after `SLICES`.
    """
    seeds = sorted({run["config"]["seed"] for key, run in runs.items() if run["variant"] == variant and "test_ranks" in run}
                   & {run["config"]["seed"] for key, run in runs.items() if run["variant"] == baseline and "test_ranks" in run})
    if not seeds:
        return {}
    per_seed_a = [per_user_ndcg(runs[run_key(variant, s)]) for s in seeds]
    per_seed_b = [per_user_ndcg(runs[run_key(baseline, s)]) for s in seeds]
    a, b = np.mean(per_seed_a, axis=0), np.mean(per_seed_b, axis=0)
    members = runs[run_key(variant, seeds[0])]["test_slices"]
    rng = np.random.default_rng(0)
    out = {"seeds": seeds}
    for slice_name, idx in [*((name, members[name]) for name in SLICES), *(extra_slices or {}).items()]:
        idx = np.asarray(idx)
        per_seed = [float(x[idx].mean() / y[idx].mean()) for x, y in zip(per_seed_a, per_seed_b)]
        out[slice_name] = {
            f"{variant}_ndcg_at_10": float(a[idx].mean()),
            f"{baseline}_ndcg_at_10": float(b[idx].mean()),
            "ratio": float(a[idx].mean() / b[idx].mean()),
            "ratio_per_seed": per_seed,
            "ratio_95ci": ratio_interval(a[idx], b[idx], rng, samples),
            "users": int(len(idx)),
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[DEFAULT_SEED],
                        help="run every variant with each seed (the comparisons pair runs by seed)")
    parser.add_argument("--compare", nargs="*", default=list(COMPARISONS), metavar="VARIANT:BASELINE",
                        help="paired comparisons to write (variant:baseline)")
    parser.add_argument("--workdir", default=None, help="where runs and exports go (default: a temp dir)")
    parser.add_argument("--fresh", action="store_true", help="drop the runs of an earlier results file")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tfrec_lm_recency_"))
    todo = [(name, seed) for seed in args.seeds for name in args.variant]
    runs = {}
    previous = results_dir() / "recency_ablation.json"
    if previous.is_file() and not args.fresh:
        redo = {run_key(name, seed) for name, seed in todo}
        runs = {key: run for key, run in json.loads(previous.read_text())["runs"].items()
                if run.get("variant") in VARIANTS and key not in redo}
    for name, seed in todo:
        key = run_key(name, seed)
        runs[key] = run_variant(key.replace("@", "_"), {**VARIANTS[name], "seed": seed}, workdir)
        runs[key]["variant"] = name
        comparisons = {}
        for spec in args.compare:
            variant, _, baseline = spec.partition(":")
            result = paired(runs, variant, baseline)
            if result:
                comparisons[spec] = result
        path = write_result("recency_ablation", {"reference": REFERENCE, "variants": VARIANTS,
                                                 "summary": summarise(runs), "paired": comparisons, "runs": runs})
        test = runs[key]["test"]["export"]
        print(f"{key}: export NDCG@10 all {test['all']['NDCG@10']:.4f}, migrating {test['migrating']['NDCG@10']:.4f}, "
              f"stable {test['stable']['NDCG@10']:.4f}; wall {runs[key]['wall_seconds']:.0f} s -> {path}", flush=True)
        for spec, result in comparisons.items():
            print(f"  {spec}: migrating x{result['migrating']['ratio']:.3f} {result['migrating']['ratio_95ci']}, "
                  f"stable x{result['stable']['ratio']:.3f} over seeds {result['seeds']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
