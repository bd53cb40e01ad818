"""MovieLens-100K quality benchmark (SPEC §2) of named model variants.

Each variant runs the one training function (`tfrec_lm.training.train`) with the CPU
preset plus the variant's overrides, then reports the SPEC metrics (all / migrating /
stable users, plus test targets that are rare items), the metrics computed from the
export's `serving_default`, the most-popular baseline of the same split, wall times and
the single-user latency of the export. Output: `benchmarks/results/ml100k_<variant>.json`.

    python benchmarks/ml100k.py                      # the default model
    python benchmarks/ml100k.py --variant id-only text-only history-text
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tfrec_lm  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from _common import write_result  # noqa: E402

VARIANTS = {
    "default": {},
    "id-only": {"item_text": False},
    "text-only": {"item_ids": False},
    "history-text": {"user_tower": "history-text", "negatives": "in-batch", "batch_size": 32,
                     "history_tokens": 64, "time_budget_minutes": 6, "epochs": 1,
                     "max_train_examples": 2000, "learning_rate": 1e-3},
}
RARE_TARGET_MAX_COUNT = 10


def export_latency(export_path, requests: dict, repeats: int = 30) -> dict:
    """p50/p99 of `serving_default` on the loaded export, per named request (batch sizes differ)."""
    import tensorflow as tf

    from tfrec_lm.export import load_scann_ops

    load_scann_ops()
    serve = tf.saved_model.load(str(export_path)).signatures["serving_default"]
    out = {}
    for name, (request_ids, request_times) in requests.items():
        ids, times = tf.constant(request_ids), tf.constant(request_times)
        serve(history_item_ids=ids, history_timestamps=times)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            serve(history_item_ids=ids, history_timestamps=times)
            samples.append(time.perf_counter() - start)
        out[name] = {"p50_ms": 1000 * float(np.percentile(samples, 50)),
                     "p99_ms": 1000 * float(np.percentile(samples, 99)),
                     "batch": int(request_ids.shape[0]), "history_length": int(request_ids.shape[1]),
                     "repeats": repeats}
    return out


def run_variant(name: str, overrides: dict, workdir: Path) -> dict:
    from tfrec_lm.config import PRESETS, TrainConfig
    from tfrec_lm.evaluation.export_eval import history_requests
    from tfrec_lm.evaluation.metrics import full_catalog_ranks, sliced_metrics
    from tfrec_lm.evaluation.scoring import score_catalog
    from tfrec_lm.training import train

    config = TrainConfig.from_dict({**PRESETS["cpu"], **overrides, "output_dir": str(workdir / name / "run"),
                                    "export_base": str(workdir / name / "exports")})
    start = time.monotonic()
    result = train(config, verbose=2)
    wall = time.monotonic() - start
    test = result.split.test
    rare = result.counts[test.target] <= RARE_TARGET_MAX_COUNT
    ranks = full_catalog_ranks(score_catalog(result.model, test), test.target, test.exclude)
    by_target = sliced_metrics(ranks, {"rare_targets": rare, "frequent_targets": ~rare})
    from tfrec_lm.data.split import build_sequences

    sequences = build_sequences(result.dataset, result.vocab)
    histories = [sequences.items[u][:-1][-50:] for u in test.user_index]
    stamps = [sequences.timestamps[u][:-1][-50:] for u in test.user_index]
    user = int(np.argmax([len(h) >= 50 for h in histories]))
    one = history_requests([histories[user]], [stamps[user]], result.vocab.ids)
    batch = history_requests(histories[:64], stamps[:64], result.vocab.ids)
    return {
        "variant": name,
        "overrides": overrides,
        "config": config.to_dict(),
        "wall_seconds": wall,
        "train_seconds": result.train_seconds,
        "validation_ndcg_at_10": result.validation_ndcg,
        "test": result.metrics,
        "test_by_target_frequency": {"rare_max_train_count": RARE_TARGET_MAX_COUNT, **by_target},
        # Per test user (SPEC order): the target's 0-based full-catalog rank, and the slices'
        # members, so runs can be compared user by user (paired) after the fact.
        "test_ranks": ranks.astype(int).tolist(),
        "test_slices": {name: np.flatnonzero(mask).tolist() for name, mask in result.slices.items()},
        "export_latency": export_latency(result.export_path, {
            "one_user_50_items": (one[0].astype(str), one[1]),
            "batch_64_users_up_to_50_items": (batch[0].astype(str), batch[1])}),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", nargs="+", default=["default"], choices=sorted(VARIANTS))
    parser.add_argument("--workdir", default=None, help="where runs and exports go (default: a temp dir)")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tfrec_lm_bench_"))
    for name in args.variant:
        payload = run_variant(name, VARIANTS[name], workdir)
        path = write_result(f"ml100k_{name}", payload)
        test = payload["test"]
        print(f"{name}: test NDCG@10 {test['model']['all']['NDCG@10']:.4f} (export "
              f"{test.get('export', {}).get('all', {}).get('NDCG@10', float('nan')):.4f}), migrating "
              f"{test['model']['migrating']['NDCG@10']:.4f}, stable {test['model']['stable']['NDCG@10']:.4f}, "
              f"most-popular {test['most_popular']['all']['NDCG@10']:.4f}; wall {payload['wall_seconds']:.0f} s "
              f"-> {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
