"""Interest-migration ablations on MovieLens-100K (SPEC §2): recency features, long/short split, H.

Every variant is the item-sequence model of the CPU preset with one set of changes,
trained by the one training function and scored on the SPEC test targets (all /
migrating / stable users). The reference is `no-recency`: the same tower with every
piece of recency information removed (no position embedding, no item ages: an
order-free set transformer). Output: `benchmarks/results/recency_ablation.json`,
rewritten after every variant so a long run keeps what it finished.

    python benchmarks/recency_ablation.py                       # every variant
    python benchmarks/recency_ablation.py --variant no-recency time-long-short
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tfrec_lm  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from _common import write_result  # noqa: E402
from ml100k import run_variant  # noqa: E402

REFERENCE = "no-recency"
VARIANTS = {
    "no-recency": {"sequence_pooling": "mean"},
    "positions": {},  # the issue-2 default: recency position embeddings only
    "time": {"time_features": True},
    "time-long-short": {"time_features": True, "long_short": True, "short_window": 10},
    "long-short": {"long_short": True, "short_window": 10},
    "time-long-short-h20": {"time_features": True, "long_short": True, "short_window": 10, "max_history": 20},
    "time-long-short-h100": {"time_features": True, "long_short": True, "short_window": 10, "max_history": 100},
    "bag": {"sequence_pooling": "bag"},
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
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tfrec_lm_recency_"))
    runs = {}
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
