"""SPEC §2 refresh protocol on MovieLens-100K: stale / refreshed / retrained, scored on E.

T1 and T2 are the 70th and 85th percentiles of all timestamps. E is every interaction at
or after T2, with its user's whole prior history (an empty history gets the popularity
fallback). Three models, all through the one training function exactly as a user runs
them (`python -m tfrec_lm.train`, with and without `--warm-start/--since`):

- stale: trained on the interactions before T1;
- refreshed: the stale checkpoint warm-started and fine-tuned on the targets in [T1, T2)
  (`--warm-start <stale run> --since T1` over the data before T2);
- retrained: trained from scratch on everything before T2.

Weights stay fixed during E. Reported: NDCG@10 / HR@10 (and @20) on all of E and on the
targets with a non-empty history, the wall time of each training call, and the ratios
the issue asks for (refreshed/retrained NDCG@10, refreshed/retrained wall time).
Output: `benchmarks/results/refresh.json`.

    python benchmarks/refresh.py
    python benchmarks/refresh.py --set time_features=false   # another model config
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
from _common import parse_sets, write_result  # noqa: E402


def before(dataset, cutoff: float):
    """The dataset with the interactions strictly before `cutoff` (the catalog unchanged)."""
    from tfrec_lm.data.schema import Dataset

    kept = dataset.interactions[dataset.interactions["timestamp"] < cutoff].reset_index(drop=True)
    return Dataset(name=f"{dataset.name}<{int(cutoff)}", interactions=kept, items=dataset.items,
                   reports=dataset.reports)


def evaluate_on_e(result, evaluation) -> dict:
    """SPEC refresh metrics of a trained model on E (popularity for empty histories)."""
    from tfrec_lm.evaluation.metrics import full_catalog_ranks, sliced_metrics
    from tfrec_lm.evaluation.popularity import popularity_scores
    from tfrec_lm.training import score_catalog

    scores = score_catalog(result.model, evaluation)
    empty = ~(evaluation.history > 0).any(axis=1)
    scores[empty] = popularity_scores(result.counts)
    ranks = full_catalog_ranks(scores, evaluation.target, evaluation.exclude)
    return sliced_metrics(ranks, {"all": np.ones(len(ranks), bool), "with_history": ~empty, "empty_history": empty})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config changes on top of the CPU preset, for all three models")
    parser.add_argument("--q1", type=float, default=70.0)
    parser.add_argument("--q2", type=float, default=85.0)
    parser.add_argument("--workdir", default=None, help="where runs go (default: a temp dir)")
    args = parser.parse_args(argv)

    from tfrec_lm.config import PRESETS, TrainConfig
    from tfrec_lm.data.split import build_sequences, build_vocab, refresh_split
    from tfrec_lm.training import load_training_data, pretrained_encoder_factory, train

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tfrec_lm_refresh_"))
    base = TrainConfig.from_dict({**PRESETS["cpu"], **parse_sets(args.set), "export": False})
    dataset = load_training_data(base)
    vocab = build_vocab(dataset.items)
    split = refresh_split(build_sequences(dataset, vocab), base.max_history, q1=args.q1, q2=args.q2)
    factory = pretrained_encoder_factory(base.encoder)
    t1, t2 = split.t1, split.t2
    plans = {
        "stale": (before(dataset, t1), {}),
        "refreshed": (before(dataset, t2), {"warm_start": str(workdir / "stale"), "since": int(np.ceil(t1))}),
        "retrained": (before(dataset, t2), {}),
    }
    models = {}
    for name, (data, changes) in plans.items():
        config = base.replace(output_dir=str(workdir / name), **changes)
        start = time.monotonic()
        result = train(config, dataset=data, encoder_factory=factory, verbose=2)
        wall = time.monotonic() - start
        models[name] = {
            "config": config.to_dict(),
            "interactions": len(data.interactions),
            "train_examples": int(np.sum(result.split.train.target_timestamp >= config.since))
            if config.since is not None else len(result.split.train),
            "wall_seconds": wall,
            "fit_seconds": result.train_seconds,
            "epochs_run": len(result.validation_ndcg),
            "validation_ndcg_at_10": result.validation_ndcg,
            "E": evaluate_on_e(result, split.evaluation),
        }
        e = models[name]["E"]
        print(f"{name}: E NDCG@10 {e['all']['NDCG@10']:.4f} (with history {e['with_history']['NDCG@10']:.4f}), "
              f"HR@10 {e['all']['HR@10']:.4f}; wall {wall:.0f} s", flush=True)

    ndcg = {name: models[name]["E"]["all"]["NDCG@10"] for name in models}
    payload = {
        "protocol": {"q1": args.q1, "q2": args.q2, "t1": t1, "t2": t2, "E_targets": len(split.evaluation.target),
                     "E_empty_history": int(np.sum(~(split.evaluation.history > 0).any(axis=1)))},
        "models": models,
        "ratios": {
            "refreshed_over_stale_ndcg_at_10": ndcg["refreshed"] / ndcg["stale"],
            "refreshed_over_retrained_ndcg_at_10": ndcg["refreshed"] / ndcg["retrained"],
            "refreshed_over_retrained_wall": models["refreshed"]["wall_seconds"] / models["retrained"]["wall_seconds"],
        },
    }
    path = write_result("refresh", payload)
    print({k: round(v, 4) for k, v in payload["ratios"].items()}, "->", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
