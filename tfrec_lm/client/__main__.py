"""`python -m tfrec_lm.client`: query a TF Serving (or `python -m tfrec_lm.serve`) server.

    python -m tfrec_lm.client recommend --user-history 50,172,133 --server localhost:8501 \
        [--protocol rest|grpc] [--model-name tfrec_lm] [--signature serving_default]
    python -m tfrec_lm.client rank --user-history 50,172 --candidates 1,2,3
    python -m tfrec_lm.client explain --user-history 50,172,133 [--catalog exports/tfrec_lm/3]
    python -m tfrec_lm.client status | metadata

Titles: `--catalog` (an export version folder, its model folder, a run folder, or a catalog or
items file) adds each item's title beside its id; the SavedModel itself answers ids only.
`rank` answers give candidates the model does not know (or has retired) a null score and
predicted rating and list them in `unknown_item_ids`.

History timestamps: `--timestamps` (Unix seconds or ISO dates, one per history item);
without it the newest item is `--now` (default: the current time) and each older one
`--timestamp-spacing` seconds (default 60) earlier.

Exit code 2 and one line on stderr when the server did not answer (`ClientError`) or the
arguments are refused.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from tfrec_lm.client.batching import rank, recommend
from tfrec_lm.client.common import DEFAULT_MODEL, DEFAULT_SIGNATURE
from tfrec_lm.client.factory import make_client
from tfrec_lm.client.timestamps import parse_timestamps
from tfrec_lm.protocol import DEFAULT_SPACING_S, spaced_timestamps
from tfrec_lm.client.errors import ClientError, ServingRequestError
from tfrec_lm.client.titles import read_titles
from tfrec_lm.errors import DataError
from tfrec_lm.protocol import UNKNOWN_ITEM_IDS

def _id_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


def _count(minimum: int):
    """argparse type: an integer of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text!r}")
        return value

    return parse


def _time_list(text: str) -> list[int]:
    """argparse type: comma-separated times (Unix seconds or ISO dates)."""
    try:
        return parse_timestamps(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _time(text: str) -> int:
    """argparse type: one time (Unix seconds or an ISO date)."""
    values = _time_list(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one time, got {text!r}")
    return values[0]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfrec_lm.client",
                                     description="Query a TF Serving (or tfrec_lm.serve) server.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", help="host:port (default localhost:8501 for rest, localhost:8500 for grpc)")
    common.add_argument("--protocol", choices=("rest", "grpc"), default="rest")
    common.add_argument("--model-name", default=DEFAULT_MODEL)
    common.add_argument("--version", type=int, help="a specific model version (default: the newest served)")
    common.add_argument("--timeout", type=_positive_seconds, default=10.0, help="seconds per request (default 10)")
    common.add_argument("--retries", type=_count(0), default=3,
                        help="retries on transient errors (default 3; gRPC: at most 4)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    users = argparse.ArgumentParser(add_help=False)
    users.add_argument("--user-history", action="append", type=_id_list, default=[],
                       help="comma-separated item ids, oldest first; repeat for more users")
    users.add_argument("--timestamps", action="append", type=_time_list,
                       help="comma-separated times of one --user-history's items, oldest first, each Unix seconds "
                            "or an ISO date (1998-03-01, 1998-03-01T12:00:00); repeat in the --user-history order. "
                            "Default: the newest item at --now, each older one --timestamp-spacing seconds earlier")
    users.add_argument("--timestamp-spacing", type=_count(0), default=DEFAULT_SPACING_S,
                       help=f"seconds between history items without --timestamps (default {DEFAULT_SPACING_S})")
    users.add_argument("--now", type=_time,
                       help="time of each history's newest item without --timestamps, Unix seconds or an ISO date "
                            "(default: the current time)")
    users.add_argument("--users-file", help="a file with one user a line: comma-separated item ids, oldest first")
    users.add_argument("--batch-size", type=_count(1), default=64, help="users per request (default 64)")
    users.add_argument("--format", choices=("columnar", "row"), default="columnar",
                       help="REST body: columnar `inputs` (default) or row `instances`")
    users.add_argument("--catalog", help="titles to show beside the ids: a version folder of the export (its "
                       "assets.extra/tfrec_lm_catalog.parquet), the model folder (--version's, else the newest "
                       "version's), a run folder, or a catalog or items file with item_id and title columns")
    commands = parser.add_subparsers(dest="command", required=True)
    recommend_cmd = commands.add_parser("recommend", parents=[common, users], help="top-K items per user")
    recommend_cmd.add_argument("--signature", default=DEFAULT_SIGNATURE)
    rank_cmd = commands.add_parser("rank", parents=[common, users], help="scores of given candidates")
    rank_cmd.add_argument("--candidates", action="append", type=_id_list, required=True,
                          help="comma-separated candidate ids; one per user, or one for all users")
    rank_cmd.add_argument("--signature", default="rank")
    explain_cmd = commands.add_parser("explain", parents=[common, users],
                                      help="top-K items per user, each with the history item that most supports it")
    explain_cmd.add_argument("--signature", default="explain")
    commands.add_parser("status", parents=[common], help="model version status")
    commands.add_parser("metadata", parents=[common], help="signature definitions")
    return parser


def _read_users(args, parser) -> list[list[str]]:
    histories = list(args.user_history)
    if args.users_file:
        try:
            with open(args.users_file, encoding="utf-8") as handle:
                histories += [_id_list(line) for line in handle if line.strip()]
        except OSError as error:
            parser.error(f"--users-file {args.users_file}: {error.strerror or error}")
    if not histories:
        parser.error("give at least one --user-history (or --users-file)")
    return histories


def _timestamps(args, histories, parser) -> list[list[int]]:
    """The given `--timestamps`, checked against the histories, or `spaced_timestamps`."""
    if args.timestamps is None:
        return spaced_timestamps(histories, args.now, args.timestamp_spacing)
    if len(args.timestamps) != len(histories):
        parser.error(f"{len(histories)} users but {len(args.timestamps)} --timestamps")
    for user, (history, stamps) in enumerate(zip(histories, args.timestamps)):
        if len(stamps) != len(history):
            parser.error(f"user {user + 1} has {len(history)} history items but its --timestamps has "
                         f"{len(stamps)} values")
    return args.timestamps


# (ids field, titles field) of the answers, in the order the table shows them.
TITLED = (("item_ids", "titles"), ("candidate", "titles"), ("because_item_ids", "because_titles"))


def _add_titles(row: dict, titles: dict) -> dict:
    """`row` with a titles list beside each list of ids (None where the catalog has no title)."""
    out = {}
    for name, value in row.items():
        out[name] = value
        for ids, titled in TITLED:
            if name == ids:
                out[titled] = [titles.get(str(item)) if str(item) else None for item in value]
    return out


COLUMN_ORDER = ("item_ids", "candidate", "titles", "scores", "predicted_ratings", "because_item_ids", "because_titles",
                "because_similarity")


def _print_table(payload, stream) -> None:
    for user, row in enumerate(payload):
        print(f"user {user + 1} (history: {','.join(row['history']) or '-'})", file=stream)
        ids_field = "item_ids" if "item_ids" in row else "candidate"
        per_item = [n for n in row if n not in ("history", "history_timestamps", UNKNOWN_ITEM_IDS)
                    and isinstance(row[n], list) and len(row[n]) == len(row[ids_field])]
        columns = [n for n in COLUMN_ORDER if n in per_item] + sorted(n for n in per_item if n not in COLUMN_ORDER)
        header = (["rank"] if ids_field == "item_ids" else []) + [_header(n) for n in columns]
        print("  " + "\t".join(header), file=stream)
        for i in range(len(row[ids_field])):
            cells = ([str(i + 1)] if ids_field == "item_ids" else []) + [_fmt(row[n][i]) for n in columns]
            print("  " + "\t".join(cells), file=stream)
        if row.get(UNKNOWN_ITEM_IDS):
            print(f"  unknown to the model (no score): {','.join(row[UNKNOWN_ITEM_IDS])}", file=stream)


def _header(name: str) -> str:
    return {"item_ids": "item_id", "candidate": "item_id", "titles": "title", "scores": "score",
            "because_item_ids": "because_item_id", "because_titles": "because_title",
            "because_similarity": "similarity", "predicted_ratings": "predicted_rating"}.get(name, name)


def _fmt(value) -> str:
    if value is None:
        return "unknown"
    if value == "":
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def main(argv=None, stream=None) -> int:
    stream = stream or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    options = dict(model_name=args.model_name, version=args.version, timeout=args.timeout, retries=args.retries)
    if args.protocol == "rest" and getattr(args, "format", None):
        options["request_format"] = args.format
    titles = {}
    if args.command not in ("status", "metadata"):
        histories = _read_users(args, parser)
        timestamps = _timestamps(args, histories, parser)
        if args.command == "rank":
            candidates = args.candidates
            if len(candidates) == 1:
                candidates = candidates * len(histories)
            if len(candidates) != len(histories):
                parser.error(f"{len(histories)} users but {len(candidates)} --candidates lists")
        if args.catalog:
            try:
                titles = read_titles(args.catalog, args.version)
            except DataError as error:
                parser.error(str(error))
    try:
        client = make_client(args.protocol, args.server, **options)
        with client:
            if args.command in ("status", "metadata"):
                answer = client.model_status() if args.command == "status" else client.metadata()
                print(json.dumps(answer, indent=2), file=stream)
                return 0
            if args.command in ("recommend", "explain"):
                answers = recommend(client, histories, timestamps, args.batch_size, args.signature)
                payload = [{"history": h, "history_timestamps": t, "item_ids": a.item_ids, "scores": a.scores,
                            **a.extra} for h, t, a in zip(histories, timestamps, answers)]
            else:
                answers = rank(client, histories, candidates, timestamps, args.batch_size, args.signature)
                payload = [{"history": h, "history_timestamps": t, "candidate": c, **a}
                           for h, t, c, a in zip(histories, timestamps, candidates, answers)]
    except ServingRequestError as error:
        if args.command == "explain" and "not found in signature def" in error.message:
            print(f"error: the served model has no '{args.signature}' signature (exported before explanations, "
                  f"or not by tfrec_lm): {error}", file=sys.stderr)
        else:
            print(f"error: {error}", file=sys.stderr)
        return 2
    except ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if titles:
        payload = [_add_titles(row, titles) for row in payload]
    if args.json:
        print(json.dumps(payload, indent=2), file=stream)
    else:
        _print_table(payload, stream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
