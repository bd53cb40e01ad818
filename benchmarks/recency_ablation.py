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
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

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


def summarise(runs: dict) -> dict:
    """NDCG@10 per slice of each variant and its ratio to the reference (in-memory and export)."""
    table = {}
    reference = runs.get(REFERENCE)
    for name, run in runs.items():
        row = {}
        for source in ("model", "export"):
            for slice_name in SLICES:
                value = run["test"][source][slice_name]["NDCG@10"]
                row[f"{source}_{slice_name}_ndcg_at_10"] = value
                if reference is not None:
                    row[f"{source}_{slice_name}_vs_{REFERENCE}"] = value / reference["test"][source][slice_name]["NDCG@10"]
        row["best_validation_ndcg_at_10"] = max(run["validation_ndcg_at_10"])
        row["wall_seconds"] = run["wall_seconds"]
        table[name] = row
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--workdir", default=None, help="where runs and exports go (default: a temp dir)")
    parser.add_argument("--fresh", action="store_true", help="drop the variants of an earlier results file")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tfrec_lm_recency_"))
    runs = {}
    previous = results_dir() / "recency_ablation.json"
    if previous.is_file() and not args.fresh:
        runs = {name: run for name, run in json.loads(previous.read_text())["runs"].items()
                if name in VARIANTS and name not in args.variant}
    for name in args.variant:
        runs[name] = run_variant(name, VARIANTS[name], workdir)
        path = write_result("recency_ablation", {"reference": REFERENCE, "variants": VARIANTS,
                                                 "summary": summarise(runs), "runs": runs})
        test = runs[name]["test"]["export"]
        print(f"{name}: export NDCG@10 all {test['all']['NDCG@10']:.4f}, migrating {test['migrating']['NDCG@10']:.4f}, "
              f"stable {test['stable']['NDCG@10']:.4f}; wall {runs[name]['wall_seconds']:.0f} s -> {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
