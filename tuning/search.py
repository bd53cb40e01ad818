"""`python -m tuning.search`: KerasTuner search over tfrec_lm's training options.

Every trial calls `tfrec_lm.training.train` (what `python -m tfrec_lm.train` runs) and is
scored by validation NDCG@10 (SPEC §2: full catalog, history excluded; never test).

    python -m tuning.search --strategy bayesian --max-trials 20 --budget-minutes 60 \\
        --directory tuning_runs --project-name ml100k --preset cpu --set finetune=frozen
    python -m tfrec_lm.train --config tuning_runs/ml100k/best_config.yaml

Rerunning the same command resumes the search in `<directory>/<project-name>`: finished
trials are kept, an interrupted trial is run again. `--overwrite` starts afresh.
Base options: defaults < `--preset` < `--config FILE` < `--set KEY=VALUE` (a `--set`
knob leaves the search space).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from tfrec_lm.config import PRESETS, TrainConfig, parse_bool, resolve_config
from tfrec_lm.data.schema import data_report, write_bad_rows
from tfrec_lm.errors import AssetError, ConfigError, DataError

from tuning.hypermodel import DEFAULT_SPACE, Range
from tuning.tuner import STRATEGIES

_CHOICES = {field.name: field.metadata["choices"] for field in dataclasses.fields(TrainConfig)
            if "choices" in field.metadata}
"""Each option with named choices, and them."""


def parse_value(text: str, knob: str = ""):
    """A command-line value: bool, None, int, float or string (`1e-3` is a float).

    Args:
        text: str. the value as typed.
        knob: str. the option it is for: a value among that option's choices stays the string
            (`text_whitening=none` is the choice `none`, not None).
    """
    choices = _CHOICES.get(knob, ())
    if text.strip() in choices:
        return text.strip()
    try:
        return parse_bool(text, digits=False)
    except ValueError:
        pass
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip().replace("-", "_"), value


def parse_space(text: str, knob: str = ""):
    """`v1,v2,...` -> list of choices; `MIN..MAX[:log]` -> Range (`knob`: as for `parse_value`)."""
    if ".." in text:
        bounds, _, sampling = text.partition(":")
        low, high = (parse_value(v, knob) for v in bounds.split("..", 1))
        return Range(low, high, sampling=sampling or "linear")
    return [parse_value(v, knob) for v in text.split(",") if v.strip()]


def _describe_space() -> str:
    def show(entry):
        if isinstance(entry, Range):
            return f"{entry.min}..{entry.max}" + (f":{entry.sampling}" if entry.sampling != "linear" else "")
        return ",".join(str(v) for v in entry)

    return "; ".join(f"{name}={show(entry)}" for name, entry in DEFAULT_SPACE.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tuning.search",
        description="Hyperparameter search (KerasTuner) over tfrec_lm's training options; objective: "
                    "validation NDCG@10 over the full catalog (max).",
        epilog=f"Knobs and default space: {_describe_space()}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--strategy", choices=STRATEGIES, default="bayesian",
                        help="KerasTuner search (default %(default)s)")
    parser.add_argument("--max-trials", type=int, default=20,
                        help="trials in the whole project (resumed ones count); for hyperband a cap "
                             "on top of its own schedule (0: no cap); default %(default)s")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="stop starting new trials after this many minutes of this run")
    parser.add_argument("--directory", default="tuning_runs", help="results folder (default %(default)s)")
    parser.add_argument("--project-name", default="ml100k",
                        help="search name, a subfolder of --directory (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="discard an existing search of this name")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                        help="base option set (default %(default)s)")
    parser.add_argument("--config", help="base YAML/JSON config (keys of `python -m tfrec_lm.train`)")
    parser.add_argument("--set", dest="set_values", action="append", type=_key_value, default=[],
                        metavar="KEY=VALUE", help="pin a training option (a knob so pinned is not tuned)")
    parser.add_argument("--space", dest="space_values", action="append", type=_key_value, default=[],
                        metavar="KNOB=V1,V2|MIN..MAX[:log]", help="narrow a knob's choices or range")
    parser.add_argument("--tune", help="comma-separated knobs to tune (default: all); others keep the base value")
    parser.add_argument("--seed", type=int, default=1, help="search seed (default %(default)s)")
    parser.add_argument("--initial-points", type=int, default=None,
                        help="bayesian: random trials before the Gaussian process (default max(2, max-trials/4))")
    parser.add_argument("--max-epochs", type=int, default=None,
                        help="hyperband: most epochs of a trial (default: the base config's epochs)")
    parser.add_argument("--factor", type=int, default=3, help="hyperband: reduction factor (default %(default)s)")
    parser.add_argument("--hyperband-iterations", type=int, default=1,
                        help="hyperband: iterations (default %(default)s)")
    parser.add_argument("--best-config", default=None,
                        help="where to write the best config (default <directory>/<project-name>/best_config.yaml)")
    parser.add_argument("--export-best", action="store_true",
                        help="retrain the best config with export on (same train()) and export it")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep every trial's weight checkpoints")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    return parser


def base_config_from_args(args) -> TrainConfig:
    return resolve_config(args.preset, args.config)


def hypermodel_from_args(args):
    from tuning.hypermodel import RecommenderHyperModel

    fixed = {key: parse_value(value, key) for key, value in args.set_values}
    space = {key: parse_space(value, key) for key, value in args.space_values}
    tune = [k.strip().replace("-", "_") for k in args.tune.split(",") if k.strip()] if args.tune else None
    return RecommenderHyperModel(base_config_from_args(args), fixed=fixed, space=space, tune=tune)


def tuner_from_args(args, hypermodel):
    from tuning.tuner import make_tuner

    kwargs = dict(directory=args.directory, project_name=args.project_name, overwrite=args.overwrite,
                  seed=args.seed, budget_minutes=args.budget_minutes, keep_checkpoints=args.keep_checkpoints)
    if args.strategy == "hyperband":
        kwargs.update(max_trials=args.max_trials or None, max_epochs=args.max_epochs, factor=args.factor,
                      hyperband_iterations=args.hyperband_iterations)
    else:
        kwargs["max_trials"] = args.max_trials
        if args.strategy == "bayesian":
            kwargs["num_initial_points"] = args.initial_points or max(2, args.max_trials // 4)
    return make_tuner(args.strategy, hypermodel, **kwargs)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")

    try:
        if args.strategy != "hyperband" and args.max_trials < 1:
            raise ConfigError(f"--max-trials must be >= 1 for {args.strategy}")
        hypermodel = hypermodel_from_args(args)
        tuner = tuner_from_args(args, hypermodel)
        from tfrec_lm.data.prepare import load_training_data

        dataset = load_training_data(hypermodel.base)
    except (ConfigError, DataError, AssetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    from tfrec_lm.training import train
    from tuning.results import best_config, best_trial, format_trials_table, trial_rows, write_config

    project = Path(tuner.project_dir)
    if any(r.n_bad for r in dataset.reports):  # every trial trains on these rows: the report once, here
        listing = write_bad_rows(dataset.reports, project / "bad_rows.csv")
        print(data_report(dataclasses.replace(dataset, bad_rows_path=listing)))
    done = sum(1 for t in tuner.oracle.trials.values() if t.status == "COMPLETED")
    print(f"search: {args.strategy}, {len(hypermodel.space)} knobs tuned ({', '.join(hypermodel.space)}); "
          f"results in {project}" + (f"; resuming after {done} completed trial(s)" if done else ""), flush=True)
    print(f"TensorBoard HParams: tensorboard --logdir {tuner.tensorboard_dir}", flush=True)
    try:
        # verbose 2: KerasTuner's per-trial display and one line per epoch from Keras.
        tuner.search(dataset=dataset, verbose=2)
    except KeyboardInterrupt:
        print(f"\ninterrupted: rerun the same command to resume from {project}", file=sys.stderr)
        return 130
    if tuner.changed_settings:
        print(f"\nnote: this run's settings differ from those the search started with: "
              f"{', '.join(tuner.changed_settings)} (see {project / 'search_settings.yaml'})")
    if tuner.budget_spent:
        print(f"\ntime budget of {args.budget_minutes} minutes spent: no further trial started")

    best = best_trial(tuner)
    print("\ntrials (objective: validation NDCG@10, full catalog; * = best)")
    print(format_trials_table(trial_rows(tuner), best_id=best.trial_id if best else None))
    if best is None:
        print("\nno trial completed: no best config", file=sys.stderr)
        return 1
    config = best_config(tuner)
    path = Path(args.best_config) if args.best_config else project / "best_config.yaml"
    write_config(config, path, comment=(
        f"Best of KerasTuner search {project} ({args.strategy}): trial {best.trial_id}, "
        f"validation NDCG@10 {best.score:.4f}.\nTrain it: python -m tfrec_lm.train --config {path}"))
    print(f"\nbest: trial {best.trial_id}, validation NDCG@10 {best.score:.4f}")
    print(f"best config: {path}  (python -m tfrec_lm.train --config {path})")
    if args.export_best:
        print("\nretraining the best config with export on ...", flush=True)
        result = train(config.replace(export=True), dataset=dataset, verbose=2)
        from tfrec_lm.evaluation.metrics import format_table

        print(format_table({"best config": result.metrics["model"], "most-popular": result.metrics["most_popular"]},
                           metrics=("HR@10", "NDCG@10", "MRR@10")))
        print(f"export: {result.export_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
