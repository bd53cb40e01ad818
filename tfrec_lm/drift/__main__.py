"""Command line: ``python -m tfrec_lm.drift report|scores``.

    python -m tfrec_lm.drift report [--data ml-100k|files] [--interactions F] [--items F]
        [--out reports/drift] [--metrics runs/tfrec_lm/metrics.json]
        [--encoder all-MiniLM-L6-v2 | --no-encoder] [--users 4 | --user-ids 13,405]
    python -m tfrec_lm.drift scores [same data/encoder options] [--out scores.csv]

Exit code 0 on success, 2 on a data, asset, file or usage error (one ``error:`` line on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from tfrec_lm.data.schema import Dataset
from tfrec_lm.errors import AssetError, DataError
from tfrec_lm.drift.scores import NULL_QUANTILE, RECENT_ITEMS, WINDOW

DEFAULT_ENCODER = "all-MiniLM-L6-v2"


class _Parser(argparse.ArgumentParser):
    """Usage errors as one ``error:`` line and exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser.

    Returns:
        argparse.ArgumentParser. subcommands ``report`` and ``scores``.
    """
    parser = _Parser(prog="python -m tfrec_lm.drift",
                     description="Diagnose users' interest migration: scores, migration points, a report.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    common = _Parser(add_help=False)
    data = common.add_argument_group("data")
    data.add_argument("--data", choices=("ml-100k", "files"), default="ml-100k",
                      help="MovieLens-100K, or your own --interactions/--items files (default: ml-100k)")
    data.add_argument("--data-source", choices=("auto", "tfds", "recbole"), default="auto",
                      help="where ml-100k comes from, as in tfrec_lm.train (default: auto)")
    data.add_argument("--interactions", default=None, help="interactions file (CSV/TSV/Parquet/JSONL), with --data files")
    data.add_argument("--items", default=None, help="items file (item_id, text or title[/year/genres]), with --data files")
    data.add_argument("--strict", action="store_true", help="stop on rows that break the schema")
    enc = common.add_argument_group("scores")
    enc.add_argument("--encoder", default=DEFAULT_ENCODER,
                     help=f"text encoder of the embedding score: alias, folder or hub name (default: {DEFAULT_ENCODER})")
    enc.add_argument("--no-encoder", action="store_true", help="genre score only; no encoder is loaded")
    enc.add_argument("--max-item-tokens", type=int, default=32, help="word pieces per item text (default: 32)")
    enc.add_argument("--window", type=int, default=WINDOW, help=f"trailing window of the migration points (default: {WINDOW})")
    enc.add_argument("--recent", type=int, default=RECENT_ITEMS, help=f"recent items of the scores (default: {RECENT_ITEMS})")
    enc.add_argument("--quantile", type=float, default=NULL_QUANTILE,
                     help=f"calibration quantile of the migration thresholds (default: {NULL_QUANTILE})")
    enc.add_argument("--verbose", action="store_true", help="log progress")

    rep = commands.add_parser("report", parents=[common], help="write report.md/report.html with PNG plots",
                              description="Write report.md, report.html, scores.csv and PNG plots to --out.")
    rep.add_argument("--out", default="reports/drift", help="output folder (default: reports/drift)")
    rep.add_argument("--metrics", default=None, help="metrics.json of python -m tfrec_lm.train: adds per-slice bars")
    rep.add_argument("--users", type=int, default=4, help="trajectories to draw (default: 4)")
    rep.add_argument("--user-ids", default=None, help="comma-separated user ids to draw instead of --users")

    sco = commands.add_parser("scores", parents=[common], help="write per-user scores and migration points as CSV",
                              description="Write one CSV row per user: scores, slice, migration points.")
    sco.add_argument("--out", default="scores.csv", help="CSV file (default: scores.csv)")
    return parser


def load_dataset(args: argparse.Namespace) -> Dataset:
    """The data the options name, read as ``python -m tfrec_lm.train`` reads it.

    Args:
        args: argparse.Namespace. parsed options (data, data_source, interactions, items, strict).

    Returns:
        Dataset.

    Raises:
        DataError: the options or the data are unusable.
        AssetError: the MovieLens-100K files cannot be fetched.
    """
    from tfrec_lm.data.prepare import load_dataset as read_dataset

    return read_dataset(args.data, args.data_source, args.interactions, args.items, strict=args.strict,
                        progress=False)


def _print_data_report(dataset: Dataset, bad_rows_path: Path) -> None:
    """Prints the data's bad rows (the first few per file) once, and writes every one to `bad_rows_path`."""
    from tfrec_lm.data.schema import data_report, write_bad_rows

    if any(r.n_bad for r in dataset.reports):
        dataset = dataclasses.replace(dataset, bad_rows_path=write_bad_rows(dataset.reports, bad_rows_path))
        print(data_report(dataset))


def _summary(stats: dict) -> list[str]:
    lines = []
    for kind in ("genre", "embedding"):
        if kind in stats:
            s = stats[kind]
            lines.append(f"{kind:9s} score: mean {s['mean']:.3f}, median {s['median']:.3f}, "
                         f"q90 {s['q90']:.3f}; migration point for {100 * s['with_point']:.1f}% of users, "
                         f"{100 * s['shuffled_with_point']:.1f}% of their histories shuffled in time "
                         f"(threshold {s['threshold']:.3f})")
    if "correlation" in stats:
        c = stats["correlation"]["genre~embedding"]
        lines.append(f"genre~embedding: Pearson {c['pearson']:.3f}, Spearman {c['spearman']:.3f}, "
                     f"migrating-third agreement {100 * c['slice_agreement']:.0f}%")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Runs the command line.

    Args:
        argv: list[str] | None. arguments without the program name; None means sys.argv[1:].

    Returns:
        int. 0 on success, 2 on an error.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2, its error line already written)
        return int(stop.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        if args.window < 1 or args.recent < 1 or not 0 < args.quantile < 1:
            raise DataError("--window and --recent must be >= 1, --quantile in (0, 1)")
        if args.command == "report" and args.metrics:
            from tfrec_lm.drift.report import load_metrics

            load_metrics(args.metrics)  # fail before the slow part
        dataset = load_dataset(args)
        _print_data_report(dataset, Path(args.out) / "bad_rows.csv" if args.command == "report"
                           else Path(args.out).with_suffix(".bad_rows.csv"))
        from tfrec_lm.drift.analysis import analyze

        encoder = None if args.no_encoder else args.encoder
        analysis = analyze(dataset, encoder=encoder, window=args.window, recent=args.recent,
                           quantile=args.quantile, max_item_tokens=args.max_item_tokens)
        if args.command == "scores":
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            analysis.frame().to_csv(out, index=False)
            print(f"scores: {out} ({len(analysis.sequences)} users)")
            for line in _summary(analysis.stats()):
                print(line)
            return 0
        from tfrec_lm.drift.report import report

        users = [u.strip() for u in args.user_ids.split(",") if u.strip()] if args.user_ids else args.users
        result = report(dataset, args.out, metrics_json=args.metrics, users=users, analysis=analysis)
        print(f"report: {result.markdown}")
        print(f"        {result.html}")
        for image in result.images:
            print(f"plot:   {image}")
        print(f"scores: {result.scores_csv}")
        for line in _summary(result.stats):
            print(line)
        return 0
    except (DataError, AssetError, OSError) as error:
        message = " ".join(str(error).split())
        print(f"error: {message}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        if error.name != "matplotlib" and not str(error.name).startswith("matplotlib."):
            raise
        print("error: the report needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
