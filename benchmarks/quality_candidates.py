"""Why the model loses to the SASRec reference (issue 15 item 2): one change at a time, over seeds.

Every candidate is the default model (the CPU preset) with one set of option changes,
trained by the one training function on MovieLens-100K and scored on the SPEC §2 test
targets, each seed a run. `paired` compares every candidate user by user with the
default and with the in-harness SASRec reference (`benchmarks/results/sasrec.json`, the
same split and metrics; and with that reference trained without history negatives,
`sasrec_no_history_negatives.json`) over the seeds both ran: mean NDCG@10 over seeds per slice (all /
migrating / stable), their ratio and a 95% bootstrap interval over test users
(`recency_ablation.paired`). `ndcg_by_target_count`: each variant's (and SASRec's) mean
NDCG@10 by how many training interactions the test target has; each new run also records
the norms of its items' text and ID parts (`ml100k.item_parts`). Output:
`benchmarks/results/quality_candidates.json`, rewritten after every run; runs already
there and not run again are kept.

    python benchmarks/quality_candidates.py --candidate default no-rating-loss --seeds 42 1 2
    python benchmarks/quality_candidates.py --list
    python benchmarks/quality_candidates.py --candidate --merge other/quality_candidates.json  # no run

Each candidate spells out only what it changes; `default` is the preset as shipped, so
its runs move with the default (the file records each run's whole config).
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
from _common import RESULTS, results_dir, write_result  # noqa: E402
from ml100k import count_bucket_names, ndcg_by_target_count, run_variant  # noqa: E402
from recency_ablation import paired, run_key  # noqa: E402

# The defaults before issue 15 changed them (session 7). Candidates measured against those
# spell them out, so every candidate stays the run it was.
PREVIOUS_DEFAULT = {"learning_rate": 1e-3, "batch_size": 256, "temperature": 0.05, "dropout": 0.2,
                    "id_dropout": 0.25, "epochs": 10, "patience": 2, "lr_decay": "constant",
                    "keep_weights": "best"}
# The session-7 default's learning rate was constant and it kept the best validation epoch
# (session 8 made the rate decay and keeps the last epoch); the candidates measured on that
# default spell both out.
CONSTANT = {"lr_decay": "constant", "keep_weights": "best"}
TUNED = {"learning_rate": 0.001485587596644577, "batch_size": 128, "temperature": 0.10025382307989233,
         "dropout": 0.1, "item_fusion": "sum"}

# Candidates measured before session 13, each with its query's history among its softmax
# negatives (the default until then): `EARLIER` spells out only their own changes and
# `CANDIDATES` adds `history_negatives` to every one, so each stays the run it was.
EARLIER = {
    # ... keeping the best validation epoch (patience 3) instead
    "keep-best": {"keep_weights": "best"},
    # ... with the constant learning rate of session 7 (the newest-query encoder step)
    "constant-lr": CONSTANT,
    # ... with patience 2 (the earlier default's): `tuned` without issue 12's ID dropout, what
    # cold-item training cost the tuned model; and also at most 8 epochs (the 5-minute budget)
    "patience-2": {**CONSTANT, "patience": 2},
    "default-8-epochs": {**CONSTANT, "patience": 2, "epochs": 8},
    "previous-default": PREVIOUS_DEFAULT,
    # the rating head's squared error shares the towers with retrieval
    "no-rating-loss": {**PREVIOUS_DEFAULT, "ranking_weight": 0.0},
    # SASRec trains a fixed 6 epochs; ours stops after 2 epochs without a validation gain
    "patience-4": {**PREVIOUS_DEFAULT, "patience": 4, "epochs": 12},
    # SASRec scores raw dot products; ours L2-normalises and divides by 0.05
    "temperature-0.1": {**PREVIOUS_DEFAULT, "temperature": 0.1},
    "temperature-0.02": {**PREVIOUS_DEFAULT, "temperature": 0.02},
    "temperature-0.2": {**PREVIOUS_DEFAULT, "temperature": 0.2},
    # SASRec's score: raw dot products of unnormalised embeddings (norms may carry popularity)
    "dot": {**PREVIOUS_DEFAULT, "similarity": "dot", "temperature": 1.0},
    # SASRec takes twice the steps per epoch (batch 128)
    "batch-128": {**PREVIOUS_DEFAULT, "batch_size": 128},
    # the cost of issue 12's ID dropout on warm items
    "id-dropout-0": {**PREVIOUS_DEFAULT, "id_dropout": 0.0},
    # our architecture without the language model: does the text help or hurt, and where?
    "id-only": {**PREVIOUS_DEFAULT, "item_text": False},
    # the projected text vector is ~7x the ID embedding's norm after training: items are their text
    "balanced-fusion": {**PREVIOUS_DEFAULT, "item_fusion": "balanced"},
    # ... or let the IDs learn faster than the shared text projection
    "id-lr-10": {**PREVIOUS_DEFAULT, "id_lr_multiplier": 10.0},
    # popularity as a learned per-item logit bias (initialised at the log prior), not a direction
    "item-bias": {**PREVIOUS_DEFAULT, "item_bias": True},
    # the best trial of the Bayesian search when confirmation began (tuning_quality.json, trial 4)
    "tuned": {**PREVIOUS_DEFAULT, **TUNED},
    # the default (at most 8 epochs) with item IDs alone (no text): the language model's share of it
    "id-only-now": {**CONSTANT, "patience": 2, "epochs": 8, "item_text": False},
    # issue 15 item 3: the item encoder's top layer tuned on co-consumed item texts before training
    "text-tuning-300": {**PREVIOUS_DEFAULT, "text_tuning_steps": 300},
    "text-tuning-300-now": {**CONSTANT, "patience": 2, "epochs": 8, "text_tuning_steps": 300},
    # on the new default (with patience 2, as they ran): more room for the ID embeddings,
    # popularity as a bias, a second transformer block, a longer history
    "emb-128": {**CONSTANT, "patience": 2, "embedding_dim": 128},
    "item-bias-now": {**CONSTANT, "patience": 2, "item_bias": True},
    "blocks-2": {**CONSTANT, "patience": 2, "num_blocks": 2},
    "history-100": {**CONSTANT, "patience": 2, "max_history": 100},
    "dropout-0.1": {**PREVIOUS_DEFAULT, "dropout": 0.1},
    "lr-3e-3": {**PREVIOUS_DEFAULT, "learning_rate": 3e-3},
    # session 8: the faster encoder step leaves room for more epochs (validation still rose at 10)
    "epochs-20": {**CONSTANT, "epochs": 20},
    # ... and a learning rate that decays to 0 along a cosine over the run (`keep-best` since)
    "cosine-20": {"epochs": 20, "lr_decay": "cosine", "keep_weights": "best"},
    "cosine-emb-128": {"lr_decay": "cosine", "embedding_dim": 128, "keep_weights": "best"},
    # (`keep-last`, the cosine's last epoch instead of the best on a noisy validation, is
    # `default` since: its runs are the default's)
    # a longer cosine, the last epoch kept
    "epochs-15": {"epochs": 15},
    # a decaying rate may start higher; a sharper softmax
    "cosine-lr-3e-3": {"learning_rate": 3e-3},
    "cosine-temperature-0.07": {"temperature": 0.07},
    # session 9, on the cosine default: SASRec's second block, a longer history, more dropout
    "cosine-blocks-2": {"num_blocks": 2},
    "cosine-history-100": {"max_history": 100},
    "cosine-dropout-0.2": {"dropout": 0.2},
    # wider embeddings (cosine-emb-128 gained on seed 42 but took too long) with half the steps
    "cosine-emb-128-batch-256": {"embedding_dim": 128, "batch_size": 256},
    # the rating loss on the cosine default
    "cosine-no-rating-loss": {"ranking_weight": 0.0},
    # session 11: ID embeddings that move faster than the shared text projection (the tail,
    # where SASRec leads, is where the ID part has to separate items with similar texts)
    "cosine-id-lr-3": {"id_lr_multiplier": 3.0},
    # session 12: either side of 3, to see whether 3 sits on a slope
    "cosine-id-lr-2": {"id_lr_multiplier": 2.0},
    "cosine-id-lr-5": {"id_lr_multiplier": 5.0},
    # ... and the plateau's 2 with the longer cosine of `epochs-15` (each ahead of the default
    # alone, within noise)
    "cosine-id-lr-2-epochs-15": {"id_lr_multiplier": 2.0, "epochs": 15},
    # session 12, item 3 over three seeds: the encoder's top layer tuned on co-consumed item
    # texts before training (screened on one seed of the session-6 default only)
    "cosine-text-tuning-300": {"text_tuning_steps": 300},
}
CANDIDATES = {
    # the preset as shipped now: TUNED with ID dropout 0, a cosine learning-rate decay over 10
    # epochs, the last epoch kept and (session 13) each query's own history out of its softmax
    # negatives (the evaluation and the served top-k never rank them; the softmax pushed down
    # the items most like the next one). Its first runs were made as `cosine-no-history-negatives`.
    "default": {},
    # the default of sessions 10 to 12 (its runs were `default` until session 13)
    "default-s12": {"history_negatives": True},
    **{name: {"history_negatives": True, **changes} for name, changes in EARLIER.items()},
    # session 13: the new default with session 12's faster ID embeddings (a plateau at 2-3 alone,
    # within noise)
    "cosine-no-history-negatives-id-lr-2": {"history_negatives": False, "id_lr_multiplier": 2.0},
    # ... with the softmax's temperature either side of the searched 0.1 (searched with history
    # negatives: without them the softmax has fewer near-misses to separate)
    "no-history-negatives-temperature-0.07": {"history_negatives": False, "temperature": 0.07},
    "no-history-negatives-temperature-0.15": {"history_negatives": False, "temperature": 0.15},
    # ... without the language model (item IDs alone): the text's share of the new default
    "no-history-negatives-id-only": {"history_negatives": False, "item_text": False},
    # ... with the encoder's top layer tuned on co-consumed item texts first (item 3 on the new default)
    "no-history-negatives-text-tuning-300": {"history_negatives": False, "text_tuning_steps": 300},
    # issue 30: rare items, where item IDs alone lead (1-19 interactions: 0.046 vs 0.027), take their ID
    # part mostly from their text neighbours' trained IDs, in training too: a * own + (1 - a) * mix,
    # a = n / (n + 10)
    "evidence-fusion": {"item_fusion": "evidence"},
    # issue 30: the text part scaled by a learned gate on log(1 + n), g = sigmoid(a log(1 + n) + b) from a = 0,
    # b = 4 (it learned the other way: g = 0.85 at n = 1, 0.51 at 10, 0.11 at 100, popular items drop their text)
    "gated-fusion": {"item_fusion": "gated"},
    # issue 30 item 2: the frozen text vectors spread apart before the projection (BERT-whitening, Su et
    # al. 2021): centred on the training items' mean, and whitened to their identity covariance
    "text-whiten": {"text_whitening": "whiten"},
    "text-center": {"text_whitening": "center"},
    # issue 30 item 1: rare items lose to popular look-alikes; the training softmax's logits get
    # + tau * log p (the item's smoothed share of training targets), served scores not
    "logit-adjust-0.5": {"logit_adjustment": 0.5},
    "logit-adjust-1.0": {"logit_adjustment": 1.0},
    # the two together, the adjustment halved: logit-adjust-0.5 matched IDs alone on the rare targets but lost
    # 8% overall (the 200+ bucket); the gate gained overall and on migrating users
    "gated-logit-adjust-0.25": {"item_fusion": "gated", "logit_adjustment": 0.25},
    # issue 30 item 5: low-rank adapters (r = 8, scale 1) on the query/key/value/output projections of the
    # item encoder's top 2 layers, trained inside the recommender over cached layer-4 states; the catalog
    # softmax's negatives come from a table of adapted vectors refreshed every 50 steps, each step's positives
    # recomputed with gradient, with 128 drawn negatives (BUILD_NOTES "Issue 30: --finetune lora": about
    # 0.66 s a step on the 2-core CPU, 11x the frozen step, so a seed takes about 90 minutes there)
    "lora": {"finetune": "lora"},
    "lora-r4": {"finetune": "lora", "lora_rank": 4},
    # ... with the update scaled by 1/8 (alpha 1): level with frozen after a 60-step check where scale 1 was not
    "lora-alpha-1": {"finetune": "lora", "lora_alpha": 1.0},
    # ... on the top layer alone (0.26 s a step, about 36 minutes a seed on the 2-core CPU)
    "lora-top1-alpha-1": {"finetune": "lora", "lora_alpha": 1.0, "trainable_layers": 1},
}
# Runs kept under another name because the code they ran changed; not runnable any more.
RETIRED = {
    "default-s7": "the default of session 7 (6da9cc7): the same options, before the SequenceEncoder computed only "
                  "the newest position's query in its last block (8513e93); the same function, but its dropout "
                  "drew masks over every position, so each seed's numbers differ",
    "default-s8": "the default of sessions 8 and 9 (4544252): the same training, but outside training cold items "
                  "(the 4 items without a training target) were placed by their text and the no-ID vector, before "
                  "--cold-neighbours 5 --cold-popularity 2 (session 10) gave them their text neighbours' IDs",
}
BASELINES = ("default", "default-s12", "previous-default", "no-history-negatives-id-only")
"""Every candidate is compared with these (the last: item IDs alone, the text's share, issue 30)."""
RARE = (1, 19)
"""Issue 30's rare targets: test targets with 1-19 training interactions, a slice (`rare`) of every comparison."""
# The SASRec reference (`sasrec.json`) and the same reference trained without its history
# negatives (`sasrec_no_history_negatives.json`, `sasrec.py --no-history-negatives`), where present.
REFERENCES = {"sasrec": "sasrec.json", "sasrec-no-history-negatives": "sasrec_no_history_negatives.json"}


def test_target_counts():
    """Training interactions of each SPEC §2 test target (the CPU preset's split). [n_test]."""
    from tfrec_lm.config import PRESETS, TrainConfig
    from tfrec_lm.data.prepare import prepare_data

    data = prepare_data(TrainConfig.from_dict(PRESETS["cpu"]))
    return data.counts[data.split.test.target]


def by_target_count(runs: dict, target_counts) -> dict:
    """Mean NDCG@10 over each variant's seeds, per bucket of the test target's training interactions.

    Where SASRec's advantage lies: `ml100k.ndcg_by_target_count` of every run's test ranks.

    Returns:
        dict. variant -> {"seeds": n, bucket name -> mean NDCG@10}.
    """
    table: dict = {}
    for run in runs.values():
        buckets = ndcg_by_target_count(run["test_ranks"], target_counts)
        row = table.setdefault(run["variant"], {"seeds": 0, **{name: 0.0 for name in count_bucket_names()}})
        row["seeds"] += 1
        for name in count_bucket_names():
            row[name] += buckets[name]["NDCG@10"] or 0.0
    for row in table.values():
        for name in count_bucket_names():
            row[name] /= row["seeds"]
    return table


def summarize(runs: dict, reference: dict, target_counts) -> dict:
    """The output file's content: `paired` (every variant against the default and SASRec over the
    seeds both ran), `ndcg_by_target_count` and the runs."""
    everything = {**runs, **reference}
    counts = np.asarray(target_counts)
    rare = {"rare": np.flatnonzero((counts >= RARE[0]) & (counts <= RARE[1]))}
    comparisons = {}
    for variant in sorted({run["variant"] for run in runs.values()}):
        for baseline in (*BASELINES, *REFERENCES):
            if variant != baseline:
                result = paired(everything, variant, baseline, extra_slices=rare)
                if result:
                    comparisons[f"{variant}:{baseline}"] = result
    return {"candidates": CANDIDATES, "retired": RETIRED, "paired": comparisons,
            "ndcg_by_target_count": by_target_count(everything, target_counts), "runs": runs}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidate", nargs="*", default=["default"], choices=list(CANDIDATES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 1, 2])
    parser.add_argument("--list", action="store_true", help="print the candidates and exit")
    parser.add_argument("--workdir", default=None, help="where runs and exports go (default: a temp dir)")
    parser.add_argument("--merge", nargs="+", default=[], metavar="JSON",
                        help="first add the runs of other quality_candidates.json files (runs made elsewhere, "
                             "e.g. in parallel); theirs win on a key both have")
    args = parser.parse_args(argv)
    if args.list:
        for name, changes in CANDIDATES.items():
            print(f"{name}: {changes}")
        return 0
    # (a merge alone runs nothing and leaves no empty temp dir behind)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tfrec_lm_quality_")) if args.candidate else None
    previous = results_dir() / "quality_candidates.json"
    runs = json.loads(previous.read_text())["runs"] if previous.is_file() else {}
    for other in args.merge:
        runs.update(json.loads(Path(other).read_text())["runs"])
    reference = {}
    for name in REFERENCES.values():
        if (RESULTS / name).is_file():
            reference.update(json.loads((RESULTS / name).read_text())["runs"])
    target_counts = test_target_counts()
    summary = summarize(runs, reference, target_counts)
    path = write_result("quality_candidates", summary)
    for seed in args.seeds:
        for name in args.candidate:
            key = run_key(name, seed)
            runs[key] = run_variant(f"{name}_seed{seed}", {**CANDIDATES[name], "seed": seed}, workdir)
            runs[key]["variant"] = name
            summary = summarize(runs, reference, target_counts)
            path = write_result("quality_candidates", summary)
            test = runs[key]["test"]["model"]
            print(f"{key}: NDCG@10 all {test['all']['NDCG@10']:.4f}, migrating {test['migrating']['NDCG@10']:.4f}, "
                  f"stable {test['stable']['NDCG@10']:.4f}; wall {runs[key]['wall_seconds']:.0f} s -> {path}", flush=True)
    for spec, result in sorted(summary["paired"].items()):
        print(f"{spec} over seeds {result['seeds']}: " + ", ".join(
            f"{s} x{result[s]['ratio']:.3f} [{result[s]['ratio_95ci'][0]:.3f}, {result[s]['ratio_95ci'][1]:.3f}]"
            for s in ("all", "migrating", "stable")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
