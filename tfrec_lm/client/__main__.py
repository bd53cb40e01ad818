"""`python -m tfrec_lm.client`: query a TF Serving (or `python -m tfrec_lm.serve`) server.

    python -m tfrec_lm.client recommend --user-history 50,172,133 --server localhost:8501 \
        [--protocol rest|grpc] [--model-name tfrec_lm] [--signature serving_default]
    python -m tfrec_lm.client rank --user-history 50,172 --candidates 1,2,3
    python -m tfrec_lm.client status | metadata

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

from tfrec_lm.client.batching import Recommendations, rank, recommend
from tfrec_lm.client.common import DEFAULT_MODEL, DEFAULT_SIGNATURE
from tfrec_lm.client.factory import make_client
from tfrec_lm.client.timestamps import DEFAULT_SPACING_S, parse_timestamps, spaced_timestamps
from tfrec_lm.client.errors import ClientError
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
    commands = parser.add_subparsers(dest="command", required=True)
    recommend_cmd = commands.add_parser("recommend", parents=[common, users], help="top-K items per user")
    recommend_cmd.add_argument("--signature", default=DEFAULT_SIGNATURE)
    rank_cmd = commands.add_parser("rank", parents=[common, users], help="scores of given candidates")
    rank_cmd.add_argument("--candidates", action="append", type=_id_list, required=True,
                          help="comma-separated candidate ids; one per user, or one for all users")
    rank_cmd.add_argument("--signature", default="rank")
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


def _print_table(histories, answers, stream) -> None:
    for user, (history, answer) in enumerate(zip(histories, answers)):
        print(f"user {user + 1} (history: {','.join(history) or '-'})", file=stream)
        if isinstance(answer, Recommendations):
            extra_names = sorted(answer.extra)
            header = ["rank", "item_id", "score"] + extra_names
            print("  " + "\t".join(header), file=stream)
            for i, (item, score) in enumerate(zip(answer.item_ids, answer.scores)):
                extras = [_fmt(answer.extra[n][i]) for n in extra_names]
                print("  " + "\t".join([str(i + 1), str(item), f"{score:.6g}"] + extras), file=stream)
        else:
            names = [n for n in answer if n not in ("candidate", UNKNOWN_ITEM_IDS)]
            print("  " + "\t".join(["item_id"] + names), file=stream)
            for i, item in enumerate(answer["candidate"]):
                print("  " + "\t".join([str(item)] + [_fmt(answer[n][i]) for n in names]), file=stream)
            if answer.get(UNKNOWN_ITEM_IDS):
                print(f"  unknown to the model (no score): {','.join(answer[UNKNOWN_ITEM_IDS])}", file=stream)


def _fmt(value) -> str:
    if value is None:
        return "unknown"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def main(argv=None, stream=None) -> int:
    stream = stream or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    options = dict(model_name=args.model_name, version=args.version, timeout=args.timeout, retries=args.retries)
    if args.protocol == "rest" and getattr(args, "format", None):
        options["request_format"] = args.format
    if args.command not in ("status", "metadata"):
        histories = _read_users(args, parser)
        timestamps = _timestamps(args, histories, parser)
        if args.command == "rank":
            candidates = args.candidates
            if len(candidates) == 1:
                candidates = candidates * len(histories)
            if len(candidates) != len(histories):
                parser.error(f"{len(histories)} users but {len(candidates)} --candidates lists")
    try:
        client = make_client(args.protocol, args.server, **options)
        with client:
            if args.command in ("status", "metadata"):
                answer = client.model_status() if args.command == "status" else client.metadata()
                print(json.dumps(answer, indent=2), file=stream)
                return 0
            if args.command == "recommend":
                answers = recommend(client, histories, timestamps, args.batch_size, args.signature)
                payload = [{"history": h, "history_timestamps": t, "item_ids": a.item_ids, "scores": a.scores,
                            **a.extra} for h, t, a in zip(histories, timestamps, answers)]
            else:
                answers = rank(client, histories, candidates, timestamps, args.batch_size, args.signature)
                answers = [{"candidate": c, **a} for c, a in zip(candidates, answers)]
                payload = [{"history": h, "history_timestamps": t, **a}
                           for h, t, a in zip(histories, timestamps, answers)]
    except ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(payload, indent=2), file=stream)
    else:
        _print_table(histories, answers, stream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
