"""`python -m tfrec_lm.train`: train, evaluate and export a tfrec_lm recommender.

Option precedence: defaults < `--preset` < `--config FILE` < command-line flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
import typing

from tfrec_lm.console import keras_verbosity, quiet_native_warnings, quiet_third_party_logs
from tfrec_lm.config import (PRESETS, TIME_OPTIONS, TrainConfig, load_config_file, parse_time, refresh_base,
                             resolve_config, shape_conflicts)
from tfrec_lm.errors import AssetError, ConfigError, DataError
from tfrec_lm.registry.runs import RunFolder, fresh_run_dir


def _field_type(field: dataclasses.Field):
    hint = typing.get_type_hints(TrainConfig)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tfrec_lm.train",
        description="Train a BERT two-tower recommender (TFRS retrieval + ranking), evaluate it on the "
                    "SPEC protocol beside a most-popular baseline, and export a TF Serving SavedModel.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", help="YAML or JSON file of options (keys as below, with _ or -)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="named option set")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v info, with TensorFlow's C++ and transformers' own messages; -vv debug)")
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = _field_type(field)
        kwargs = {"dest": field.name, "default": argparse.SUPPRESS,
                  "help": f"{field.metadata['help']} (default: {getattr(defaults, field.name)})"}
        if field.name in TIME_OPTIONS:
            kind = parse_time
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            parser.add_argument(flag, type=kind, choices=field.metadata.get("choices"), **kwargs)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's options from the command line (`resolve_config`), with the two rules of a run folder:

    - a refresh (`--warm-start RUN`) starts from that run's recorded options, so only what
      a flag or `--config` names changes; a changed model-shape option is refused;
    - `--output-dir` left at its default gives a run of other options a folder of its own
      (`tfrec_lm.registry.runs.fresh_run_dir`), so it never lands over the main run.
    """
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    config = resolve_config(args.preset, args.config, flags)
    if config.warm_start:
        held = RunFolder(config.warm_start).recorded_options()
        if held:
            config = resolve_config(args.preset, args.config, flags, base=refresh_base(held))
            conflicts = shape_conflicts(config, held)
            if conflicts:
                raise ConfigError(f"--warm-start {config.warm_start} was trained with other model options "
                                  f"({', '.join(conflicts)}), and its checkpoint fits only its own: drop those "
                                  "flags (a refresh keeps the run's options unless told)")
    named = set(flags) | (set(load_config_file(args.config)) if args.config else set())
    if "output_dir" not in named:
        config = config.replace(output_dir=fresh_run_dir(config.output_dir, config.options()))
    return config


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if not args.verbose:
        quiet_third_party_logs()  # before TensorFlow is imported
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")

    try:
        config = config_from_args(args)
        from tfrec_lm.evaluation.metrics import baseline_verdicts, format_table
        from tfrec_lm.training import train

        if not args.verbose:
            quiet_native_warnings()

        print(f"training: user tower {config.user_tower}, encoder {config.encoder} ({config.finetune}), "
              f"negatives {config.negatives}; outputs in {config.output_dir}", flush=True)
        result = train(config, verbose=keras_verbosity(), command=shlex.join(["python", "-m", "tfrec_lm.train", *argv]))
    except (ConfigError, DataError, AssetError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from tfrec_lm.data.schema import data_report

    report = data_report(result.dataset)
    if report:
        print(report)
    print(f"\ntrained in {result.train_seconds:.0f} s; validation NDCG@10 by epoch: "
          + ", ".join(f"{v:.4f}" for v in result.validation_ndcg))
    print("\ntest metrics (SPEC §2: leave-one-out, full catalog, history excluded)")
    table = {"tfrec_lm": result.metrics["model"], "most-popular": result.metrics["most_popular"]}
    if "export" in result.metrics:
        table["export (serving_default)"] = result.metrics["export"]
    print(format_table(table, metrics=("HR@10", "NDCG@10", "MRR@10")))
    print("\n".join(["", *baseline_verdicts(table)]))
    print(f"\nmetrics: {config.output_dir}/metrics.json")
    if result.gate is not None:
        print(f"\n{result.gate.summary()}")
    if result.export_path:
        print(f"export:  {result.export_path}" + ("" if result.gate is None or result.gate.published
                                                  else "  (staging: not served)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
