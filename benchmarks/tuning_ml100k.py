"""KerasTuner search on MovieLens-100K within a stated budget, against the untuned default.

Runs `python -m tuning.search` (the same `train()` as the CLI) over the knobs that are
cheap on a CPU (learning rate, softmax temperature, dropout, embedding width, weight
decay) with the encoder frozen, then writes the best validation NDCG@10 beside the
untuned default's, measured by `benchmarks/ml100k.py --variant default` in the same
session (its JSON), to `benchmarks/results/tuning_ml100k.json`.

    python benchmarks/tuning_ml100k.py --budget-minutes 30 --max-trials 3

`--space KNOB=VALUES` (repeatable) replaces the default space below, `--output` names the
JSON (`tuning_ml100k` by default), and `--reference` may also be a
`quality_candidates.json`, whose seed-42 `default` run is then the reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import tfrec_lm  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from _common import RESULTS, write_result  # noqa: E402

SPACE = ["learning_rate=0.001,0.002", "temperature=0.05,0.07,0.1", "dropout=0.2,0.3",
         "embedding_dim=64,128", "weight_decay=0.0001,0.001"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-minutes", type=float, default=30)
    parser.add_argument("--max-trials", type=int, default=3)
    parser.add_argument("--strategy", default="random", choices=("random", "bayesian", "hyperband"))
    parser.add_argument("--directory", default="tuning_runs")
    parser.add_argument("--reference", default=str(RESULTS / "ml100k_default.json"),
                        help="the untuned default's benchmark JSON (benchmarks/ml100k.py --variant default, "
                             "or quality_candidates.json: its seed-42 `default` run)")
    parser.add_argument("--space", action="append", default=None, metavar="KNOB=VALUES",
                        help="a knob and its values (`a,b,c` or `MIN..MAX[:log]`), repeatable; replaces the "
                             f"default space {SPACE}")
    parser.add_argument("--output", default="tuning_ml100k", help="result name under benchmarks/results/")
    parser.add_argument("--initial-points", type=int, default=None, help="bayesian: random trials first")
    parser.add_argument("--report-only", action="store_true",
                        help="run no trial: write the JSON from the search already in --directory (one that was "
                             "stopped before its budget); its wall time is then the trials' own")
    args = parser.parse_args(argv)

    from tuning.search import main as search

    reference = json.loads(Path(args.reference).read_text())
    reference = reference["runs"]["default"] if "runs" in reference else reference
    default_val = max(reference["validation_ndcg_at_10"])
    space = args.space or SPACE
    # The first search's folder name is kept, so that it still resumes.
    project = f"ml100k_bench_{args.strategy}" if args.output == "tuning_ml100k" else f"{args.output}_{args.strategy}"
    command = ["--strategy", args.strategy, "--max-trials", str(args.max_trials),
               "--budget-minutes", str(args.budget_minutes), "--directory", args.directory,
               "--project-name", project, "--set", "finetune=frozen",
               "--tune", ",".join(entry.split("=", 1)[0] for entry in space), "--seed", "7"]
    if args.initial_points is not None:
        command += ["--initial-points", str(args.initial_points)]
    for entry in space:
        command += ["--space", entry]
    start = time.monotonic()
    code = 0 if args.report_only else search(command)
    wall = None if args.report_only else time.monotonic() - start
    if code:
        return code
    from tuning.results import best_trial, trial_rows
    from tuning.search import base_config_from_args, build_parser, hypermodel_from_args, tuner_from_args

    parsed = build_parser().parse_args(command)
    tuner = tuner_from_args(parsed, hypermodel_from_args(parsed))
    best = best_trial(tuner)
    rows = [row.__dict__ for row in trial_rows(tuner)]
    best_val = float(best.score)
    payload = {
        "budget_minutes": args.budget_minutes, "max_trials": args.max_trials, "strategy": args.strategy,
        "search_space": space, "search_wall_seconds": wall, "stopped_early": args.report_only, "trials": rows,
        "best_validation_ndcg_at_10": best_val, "best_hyperparameters": best.hyperparameters.values,
        "default_validation_ndcg_at_10": default_val, "default_reference": args.reference,
        "base_config": base_config_from_args(parsed).to_dict(),
        "best_beats_default": best_val > default_val,
    }
    path = write_result(args.output, payload)
    print(f"best validation NDCG@10 {best_val:.4f} vs untuned default {default_val:.4f} "
          f"({len(rows)} trials of at most {args.max_trials}, budget {args.budget_minutes} min"
          + (")" if wall is None else f", {wall / 60:.1f} min)") + f" -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
