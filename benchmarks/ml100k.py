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
    # issue 30: each ID embedding shrunk toward its text neighbours' by n / (n + 10) (unmeasured)
    "evidence": {"item_fusion": "evidence"},
    "history-text": {"user_tower": "history-text", "negatives": "in-batch", "batch_size": 32,
                     "history_tokens": 64, "time_budget_minutes": 6, "epochs": 1,
                     "max_train_examples": 2000, "learning_rate": 1e-3},
}
RARE_TARGET_MAX_COUNT = 10
# Lower edges of the popularity buckets (training interactions of an item) that
# `item_parts` and `ndcg_by_target_count` report on.
COUNT_BUCKETS = (1, 20, 50, 100, 200)


def count_bucket_names() -> list:
    edges = [*COUNT_BUCKETS, None]
    return [f"{lo}-{hi - 1}" if hi else f"{lo}+" for lo, hi in zip(edges[:-1], edges[1:])]


def count_buckets(counts: np.ndarray) -> np.ndarray:
    """Bucket index (0 = `COUNT_BUCKETS[0]`..., -1 below it) of each training count."""
    return np.searchsorted(np.asarray(COUNT_BUCKETS), np.asarray(counts), side="right") - 1


def ndcg_by_target_count(ranks, target_counts) -> dict:
    """NDCG@10 of test targets grouped by their training interactions.

    Args:
        ranks: array of int. [n] 0-based full-catalog rank of each test target.
        target_counts: array of int. [n] training interactions of each test target.

    Returns:
        dict. bucket name -> {"NDCG@10", "count"}.
    """
    ranks = np.asarray(ranks)
    gains = np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0)
    buckets = count_buckets(target_counts)
    return {name: {"NDCG@10": float(gains[buckets == b].mean()) if (buckets == b).any() else None,
                   "count": int((buckets == b).sum())}
            for b, name in enumerate(count_bucket_names())}


def item_parts(model, counts) -> dict | None:
    """How much of each item's embedding is its text and how much its ID, by popularity.

    Per bucket of training interactions: the mean norm of the (projected) text part and of
    the ID part of the item representation, and the mean cosine between the text part and
    the whole (1: the item is its text). With `--item-fusion gated` the text part is the
    gated one (times `ItemTower.text_gate`). None for a tower without both parts.

    Args:
        model: TwoTowerModel. a trained model.
        counts: np.ndarray. [C+1] training interactions per item.
    """
    import tensorflow as tf

    tower = model.item_tower
    if not (tower.use_text and tower.id_embedding is not None):
        return None
    items = tf.range(1, tower.num_items)
    text, ids = tower.text_part(items).numpy(), tower.id_part(items).numpy()
    text = text * tower.text_gate(items).numpy()[:, None]  # 1 but under --item-fusion gated
    whole = text + ids
    cosine = np.sum(text * whole, 1) / np.maximum(np.linalg.norm(text, axis=1) * np.linalg.norm(whole, axis=1), 1e-12)
    buckets = count_buckets(np.asarray(counts)[1:])
    out = {}
    for b, name in enumerate(count_bucket_names()):
        chosen = buckets == b
        if chosen.any():
            out[name] = {"items": int(chosen.sum()),
                         "text_norm": float(np.linalg.norm(text[chosen], axis=1).mean()),
                         "id_norm": float(np.linalg.norm(ids[chosen], axis=1).mean()),
                         "cosine_text_item": float(cosine[chosen].mean())}
    return out


def export_latency(export_path, requests: dict, repeats: int = 30) -> dict:
    """p50/p99 of `serving_default` on the loaded export, per named request (batch sizes differ)."""
    import tensorflow as tf

    from tfrec_lm.scann_ops import load_scann_ops

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
    gate = result.model.item_tower.fusion_gate()  # --item-fusion gated's a, b and g (None otherwise)
    return {
        "variant": name,
        "overrides": overrides,
        "config": config.to_dict(),
        "wall_seconds": wall,
        "train_seconds": result.train_seconds,
        "validation_ndcg_at_10": result.validation_ndcg,
        "test": result.metrics,
        "test_by_target_frequency": {"rare_max_train_count": RARE_TARGET_MAX_COUNT, **by_target},
        "test_ndcg_by_target_count": ndcg_by_target_count(ranks, result.counts[test.target]),
        "item_parts": item_parts(result.model, result.counts),
        # --text-whitening: the training items' mean pairwise text cosine, as cached and as projected
        **({} if result.model.item_tower.text_mean is None else dict(zip(
            ("text_cosine_before", "text_cosine_after"), result.model.item_tower.text_cosines()))),
        # --item-fusion gated: the learned a, b and the gate at 1, 10 and 100 training interactions
        **({} if gate is None else {"fusion_gate": gate}),
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
