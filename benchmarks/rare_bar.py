"""How far issue 30's rare-item bar is from what the test split can show: no training, the stored ranks only.

The bar: on test targets with 1-19 training interactions (`quality_candidates.RARE`, 94 of the 943
test users), a candidate's NDCG@10 at least 1.25x that of item IDs alone
(`no-history-negatives-id-only`) over the same seeds, with the paired bootstrap interval's lower
end above 1 (`recency_ablation.paired`: each user's NDCG averaged over the seeds, the users
resampled). The test users are the same for every seed, so more seeds shrink seed noise only;
the 94 users' sampling noise stays.

From `benchmarks/results/quality_candidates.json` this writes, for the rare slice:

- `candidates`: every variant with at least `--min-seeds` seeds on the same seeds as IDs alone: its
  ratio to IDs alone, the interval, the hits (users whose target is in the top 10, averaged over
  seeds) and `ratio_for_lower_end_1`, the ratio at which an interval of the same relative spread
  would start at 1 (ratio / lower end).
- `oracle`: per user, the better of a candidate and IDs alone (seed-averaged NDCG), against IDs
  alone: what a fusion that kept the best of both models, user by user, would score at most.
- `extra_hits_needed`: a best case for the spread. A candidate that ranks every rare target
  exactly as IDs alone does, plus m more rare users hit at rank `--extra-rank` on every seed: the
  smallest m for a ratio of 1.25, and the smallest m for an interval above 1 at 1.25x or more.

    python benchmarks/rare_bar.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tfrec_lm  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from _common import RESULTS, write_result  # noqa: E402
from quality_candidates import RARE, test_target_counts  # noqa: E402
from recency_ablation import per_user_ndcg, ratio_interval, run_key  # noqa: E402

ID_ONLY = "no-history-negatives-id-only"
BAR = 1.25


def seed_mean(runs: dict, variant: str, seeds) -> np.ndarray:
    """[n_test] each test user's NDCG@10 averaged over `seeds`."""
    return np.mean([per_user_ndcg(runs[run_key(variant, seed)]) for seed in seeds], axis=0)


def interval(a: np.ndarray, b: np.ndarray, samples: int, seed: int = 0) -> list:
    """95% bootstrap interval of mean(a) / mean(b) over users, as `recency_ablation.paired` computes it."""
    return ratio_interval(a, b, np.random.default_rng(seed), samples)


def extra_hits_needed(base: np.ndarray, rank: int, samples: int) -> dict:
    """The fewest more hits (at 0-based `rank`, on users `base` misses) for 1.25x, and for an interval above 1."""
    misses = np.flatnonzero(base == 0)
    gain = 1.0 / np.log2(rank + 2.0)
    out = {"rank": rank, "for_ratio_1_25": None, "for_lower_end_above_1": None}
    for m in range(1, len(misses) + 1):
        better = base.copy()
        better[misses[:m]] = gain
        ratio = better.mean() / base.mean()
        if out["for_ratio_1_25"] is None and ratio >= BAR:
            out["for_ratio_1_25"] = m
        if ratio >= BAR and interval(better, base, samples)[0] > 1.0:
            out["for_lower_end_above_1"] = m
            out["ndcg_at_10_then"] = float(better.mean())
            break
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-seeds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--extra-rank", type=int, default=4, help="0-based rank of each added hit (4: NDCG 0.39)")
    args = parser.parse_args(argv)
    runs = json.loads((RESULTS / "quality_candidates.json").read_text())["runs"]
    counts = np.asarray(test_target_counts())
    rare = np.flatnonzero((counts >= RARE[0]) & (counts <= RARE[1]))
    seeds_of: dict = {}
    for run in runs.values():
        if "test_ranks" in run:
            seeds_of.setdefault(run["variant"], set()).add(run["config"]["seed"])
    id_seeds = seeds_of[ID_ONLY]
    candidates, oracle = {}, {}
    for variant, seeds in sorted(seeds_of.items()):
        shared = sorted(seeds & id_seeds)
        if variant == ID_ONLY or len(shared) < args.min_seeds:
            continue
        a, b = seed_mean(runs, variant, shared)[rare], seed_mean(runs, ID_ONLY, shared)[rare]
        hits = np.mean([(np.asarray(runs[run_key(variant, s)]["test_ranks"])[rare] < 10).sum() for s in shared])
        id_hits = np.mean([(np.asarray(runs[run_key(ID_ONLY, s)]["test_ranks"])[rare] < 10).sum() for s in shared])
        low, high = interval(a, b, args.samples)
        ratio = float(a.mean() / b.mean())
        candidates[variant] = {"seeds": shared, "ndcg_at_10": float(a.mean()), "id_only_ndcg_at_10": float(b.mean()),
                               "ratio": ratio, "ratio_95ci": [low, high], "hits": float(hits),
                               "id_only_hits": float(id_hits),
                               "ratio_for_lower_end_1": ratio / low if low > 0 else None}
        best = np.maximum(a, b)
        oracle[variant] = {"ndcg_at_10": float(best.mean()), "ratio": float(best.mean() / b.mean()),
                           "ratio_95ci": interval(best, b, args.samples)}
    base = seed_mean(runs, ID_ONLY, sorted(id_seeds))[rare]
    result = {"rare_targets": RARE, "users": int(len(rare)), "bar": BAR,
              "id_only_seeds": sorted(id_seeds), "id_only_ndcg_at_10": float(base.mean()),
              "candidates": candidates, "oracle": oracle,
              "extra_hits_needed": extra_hits_needed(base, args.extra_rank, args.samples)}
    path = write_result("rare_bar", result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("candidates", "oracle")}, indent=1))
    for variant, row in candidates.items():
        print(f"{variant:40s} {row['ndcg_at_10']:.4f} {row['ratio']:.3f} ({row['ratio_95ci'][0]:.3f}-"
              f"{row['ratio_95ci'][1]:.3f}) hits {row['hits']:.1f}/{row['id_only_hits']:.1f} "
              f"needs {row['ratio_for_lower_end_1'] or float('nan'):.2f}x; oracle {oracle[variant]['ratio']:.3f} "
              f"({oracle[variant]['ratio_95ci'][0]:.3f}-{oracle[variant]['ratio_95ci'][1]:.3f})")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
