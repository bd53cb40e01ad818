"""Local TF-Serving-compatible server for development: `python -m tfrec_lm.serve`.

    python -m tfrec_lm.serve --model_name=tfrec_lm --model_base_path=exports/tfrec_lm \
        [--port=8500] [--rest_api_port=8501] [--rest_api_host=127.0.0.1]

Same flags, paths and protocols as TensorFlow Serving's `tensorflow_model_server` (REST
`/v1/models/<name>[/versions/<v>]:predict` with `instances` or `inputs`, model status and
`/metadata`; gRPC `tensorflow.serving.PredictionService/Predict` and `GetModelMetadata`,
`ModelService/GetModelStatus`). Serves the newest integer version directory under the
base path, polls it every `--file_system_poll_wait_seconds` and swaps in a new version
once it is fully loaded, without dropping requests in flight. Binds 127.0.0.1 unless told
otherwise. ScaNN's ops are loaded first, so `--index scann` exports work.

This is a stand-in for development and tests. Production serving is the real
TensorFlow Serving binary: see `serving/README.md`.
"""

from __future__ import annotations

import tfrec_lm  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import argparse
import logging
import signal
import sys
import threading

logger = logging.getLogger("tfrec_lm.serve")


def _bool(text: str) -> bool:
    """argparse type of the true/false flags (`tfrec_lm.config.parse_bool`, 1/0 included)."""
    from tfrec_lm.config import parse_bool

    try:
        return parse_bool(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    from tfrec_lm.serve.server import DEFAULT_GRPC_MAX_MESSAGE_BYTES, DEFAULT_REST_API_MAX_BODY_BYTES
    from tfrec_lm.serve.tensors import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_CANDIDATES, DEFAULT_MAX_HISTORY_LENGTH

    p = argparse.ArgumentParser(
        prog="python -m tfrec_lm.serve",
        description="Local TF-Serving-compatible server (development stand-in; production: TF Serving).")
    p.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500; 0 picks a free port)")
    p.add_argument("--grpc_host", default="127.0.0.1", help="gRPC bind address (default 127.0.0.1)")
    p.add_argument("--rest_api_port", type=int, default=8501, help="REST port (default 8501; 0 turns REST off, "
                   "as in TF Serving)")
    p.add_argument("--rest_api_host", default="127.0.0.1", help="REST bind address (default 127.0.0.1)")
    p.add_argument("--rest_api_num_threads", type=int, default=4, help="REST worker threads (default 4)")
    p.add_argument("--rest_api_timeout_in_ms", type=int, default=30_000,
                   help="REST request deadline (default 30000); a request past it answers 504 and frees its "
                        "worker for the requests behind it")
    p.add_argument("--rest_api_max_body_bytes", type=int, default=DEFAULT_REST_API_MAX_BODY_BYTES,
                   help=f"largest REST request body, checked against Content-Length before the body is read "
                        f"(default {DEFAULT_REST_API_MAX_BODY_BYTES})")
    p.add_argument("--grpc_max_threads", type=int, default=8, help="gRPC worker threads (default 8)")
    p.add_argument("--grpc_max_message_bytes", type=int, default=DEFAULT_GRPC_MAX_MESSAGE_BYTES,
                   help=f"largest gRPC message (default {DEFAULT_GRPC_MAX_MESSAGE_BYTES}); larger ones get "
                        "gRPC's RESOURCE_EXHAUSTED")
    p.add_argument("--model_name", default="tfrec_lm", help="model name in URLs and ModelSpec (default tfrec_lm)")
    p.add_argument("--model_base_path", help="directory of integer version directories")
    p.add_argument("--model_config_file", help="TF Serving ModelServerConfig text proto (model_config_list); "
                   "if given, --model_name/--model_base_path are ignored")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                   help="seconds between polls for new versions (default 1 here; TF Serving's is 1 too); "
                        "0 or less: only the poll at start")
    p.add_argument("--max_num_load_retries", type=int, default=5,
                   help="retries of a version that fails to load, after the first attempt (default 5, as TF "
                        "Serving); the count restarts while the version's files keep changing")
    p.add_argument("--load_retry_interval_micros", type=int, default=60_000_000,
                   help="microseconds between a failed load and its retry (default 60000000, as TF Serving); "
                        "retries happen at the next poll after it")
    p.add_argument("--max_batch_size", type=int, default=DEFAULT_MAX_BATCH_SIZE,
                   help=f"most users (rows) per request (default {DEFAULT_MAX_BATCH_SIZE})")
    p.add_argument("--max_history_length", type=int, default=DEFAULT_MAX_HISTORY_LENGTH,
                   help=f"longest history per user (default {DEFAULT_MAX_HISTORY_LENGTH})")
    p.add_argument("--max_candidates", type=int, default=DEFAULT_MAX_CANDIDATES,
                   help=f"longest candidate list per user for `rank` (default {DEFAULT_MAX_CANDIDATES})")
    p.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0, help="0: TensorFlow's default")
    p.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0, help="0: TensorFlow's default")
    p.add_argument("--load_scann_ops", type=_bool, default=True,
                   help="load ScaNN's TensorFlow ops before any model (default true)")
    p.add_argument("--rest_api_mark_unknown_items", type=_bool, default=False,
                   help="REST `rank` answers: null score and predicted rating for candidates the model does not "
                        "know, listed in `unknown_item_ids` (default false: TF Serving's answer, the lowest "
                        "float32 score)")
    p.add_argument("--log_level", default="INFO", help="Python logging level (default INFO)")
    return p


def options_from_args(args):
    from tfrec_lm.serve.server import Limits, ServerOptions

    return ServerOptions(
        grpc_port=args.port,
        grpc_host=args.grpc_host,
        rest_api_port=args.rest_api_port or None,
        rest_api_host=args.rest_api_host,
        rest_api_num_threads=args.rest_api_num_threads,
        rest_api_timeout_in_ms=args.rest_api_timeout_in_ms,
        grpc_max_threads=args.grpc_max_threads,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        max_num_load_retries=args.max_num_load_retries,
        load_retry_interval_micros=args.load_retry_interval_micros,
        limits=Limits(args.max_batch_size, args.max_history_length, args.max_candidates),
        rest_api_max_body_bytes=args.rest_api_max_body_bytes,
        grpc_max_message_bytes=args.grpc_max_message_bytes,
        load_scann_ops=args.load_scann_ops,
        tensorflow_intra_op_parallelism=args.tensorflow_intra_op_parallelism,
        tensorflow_inter_op_parallelism=args.tensorflow_inter_op_parallelism,
        rest_api_mark_unknown_items=args.rest_api_mark_unknown_items,
    )


def models_from_args(args, parser):
    from tfrec_lm.serve.manager import ModelConfig, read_model_config_file

    if args.model_config_file:
        try:
            return read_model_config_file(args.model_config_file)
        except Exception as error:
            parser.error(f"--model_config_file {args.model_config_file}: {error}")
    if not args.model_base_path:
        parser.error("give --model_base_path (with --model_name) or --model_config_file")
    return [ModelConfig(name=args.model_name, base_path=args.model_base_path)]


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for limit in ("max_batch_size", "max_history_length", "max_candidates", "rest_api_max_body_bytes",
                  "grpc_max_message_bytes", "rest_api_num_threads", "grpc_max_threads", "rest_api_timeout_in_ms"):
        if getattr(args, limit) < 1:
            parser.error(f"--{limit} must be at least 1")
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    models = models_from_args(args, parser)

    from tfrec_lm.serve.server import LocalServer

    server = LocalServer(models, options_from_args(args))
    stop = threading.Event()

    def on_signal(signum, _frame):
        logger.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        server.start()
    except OSError as error:
        logger.error("could not start: %s", error)
        return 1
    for model in models:
        versions = server.manager.served_versions(model.name)
        logger.info("model %r from %s: serving versions %s", model.name, model.base_path, versions or "none yet")
    # One line a wrapper script can wait for.
    print(f"tfrec_lm.serve ready grpc={server.grpc_target if server.grpc_port else 'off'} "
          f"rest={server.rest_url if server.rest_port else 'off'}", flush=True)
    try:
        stop.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
