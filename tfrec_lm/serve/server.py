"""`LocalServer`: the version manager, the gRPC services and the REST API together."""

from __future__ import annotations

import dataclasses
import logging

from tfrec_lm.scann_ops import load_scann_ops
from tfrec_lm.serve.manager import ModelConfig, ModelManager, Servable
from tfrec_lm.serve.tensors import Limits, tensor_proto_to_array

logger = logging.getLogger(__name__)

# A request body / gRPC message this large already decodes to more values than the
# default Limits allow (128 users x (2 x 512 history + 1000 candidates) is ~5 MB of JSON
# with 10-digit ids); the JSON parser holds ~9x the body in Python objects before the
# shapes can be checked (150 MB for 16 MiB of short ids, measured), so the body limit is
# what bounds that stage.
DEFAULT_REST_API_MAX_BODY_BYTES = 16 << 20
DEFAULT_GRPC_MAX_MESSAGE_BYTES = 16 << 20


@dataclasses.dataclass
class ServerOptions:
    """Options of `LocalServer` (the `python -m tfrec_lm.serve` flags).

    Ports: an int binds it (0 picks a free one, see `LocalServer.grpc_port` /
    `rest_port`); None turns the protocol off. The per-request limits are `limits`
    (rows, history length, candidates), `rest_api_max_body_bytes` and
    `grpc_max_message_bytes`; their defaults are the CLI's (serving/README.md lists them).
    `rest_api_mark_unknown_items` makes REST `rank` answers mark unknown candidates
    (`tfrec_lm.serve.rest.RestApi`); off, the answers are TF Serving's.
    """

    grpc_port: int | None = 8500
    grpc_host: str = "127.0.0.1"
    rest_api_port: int | None = 8501
    rest_api_host: str = "127.0.0.1"
    rest_api_num_threads: int = 4
    rest_api_timeout_in_ms: int = 30_000
    grpc_max_threads: int = 8
    file_system_poll_wait_seconds: float = 1.0
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    limits: Limits = dataclasses.field(default_factory=Limits)
    rest_api_max_body_bytes: int = DEFAULT_REST_API_MAX_BODY_BYTES
    grpc_max_message_bytes: int = DEFAULT_GRPC_MAX_MESSAGE_BYTES
    load_scann_ops: bool = True
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    rest_api_mark_unknown_items: bool = False


class LocalServer:
    """A development stand-in for TensorFlow Serving (use the real binary in production).

    Args:
        models: list of ModelConfig.
        options: ServerOptions.

    Use as a context manager, or `start()` / `stop()`. `start()` returns after the first
    poll of the base paths has loaded what is there and both ports are bound.
    """

    def __init__(self, models, options: ServerOptions | None = None):
        self.options = options or ServerOptions()
        self.models = list(models)
        self.manager = ModelManager(self.models, poll_wait_seconds=self.options.file_system_poll_wait_seconds,
                                    max_num_load_retries=self.options.max_num_load_retries,
                                    load_retry_interval_s=max(0, self.options.load_retry_interval_micros) / 1e6,
                                    loader=Servable, warm_up=self._warm_up)
        self.grpc_port = None
        self.rest_port = None
        self._grpc = None
        self._rest = None

    def _warm_up(self, servable) -> None:
        count = servable.warm_up(tensor_proto_to_array)
        if count:
            logger.info("warmed up %s version %d with %d requests", servable.name, servable.version, count)

    def start(self) -> "LocalServer":
        options = self.options
        _configure_threads(options)
        if options.load_scann_ops:
            load_scann_ops(required=False)
        self.manager.start()
        try:
            if options.grpc_port is not None:
                from tfrec_lm.serve.grpc_service import make_grpc_server

                self._grpc, self.grpc_port = make_grpc_server(self.manager, options.limits, options.grpc_host,
                                                              options.grpc_port, options.grpc_max_threads,
                                                              options.grpc_max_message_bytes)
                self._grpc.start()
                logger.info("gRPC at %s:%d", options.grpc_host, self.grpc_port)
            if options.rest_api_port is not None:
                from tfrec_lm.serve.rest import RestApi, RestServer

                api = RestApi(self.manager, options.limits, options.rest_api_mark_unknown_items)
                self._rest = RestServer(api, options.rest_api_host,
                                        options.rest_api_port, options.rest_api_num_threads,
                                        options.rest_api_timeout_in_ms / 1000.0, options.rest_api_max_body_bytes)
                self._rest.start()
                self.rest_port = self._rest.port
                logger.info("REST at http://%s:%d", options.rest_api_host, self.rest_port)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        if self._rest is not None:
            self._rest.stop()
            self._rest = None
        if self._grpc is not None:
            self._grpc.stop(grace_s).wait(grace_s + 1)
            self._grpc = None
        self.manager.stop()

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def rest_url(self) -> str:
        return f"http://{_url_host(self.options.rest_api_host)}:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"{_url_host(self.options.grpc_host)}:{self.grpc_port}"


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


_THREADS_CONFIGURED = False


def _configure_threads(options: ServerOptions) -> None:
    global _THREADS_CONFIGURED
    if _THREADS_CONFIGURED or not (options.tensorflow_intra_op_parallelism or options.tensorflow_inter_op_parallelism):
        return
    import tensorflow as tf

    try:
        if options.tensorflow_intra_op_parallelism:
            tf.config.threading.set_intra_op_parallelism_threads(options.tensorflow_intra_op_parallelism)
        if options.tensorflow_inter_op_parallelism:
            tf.config.threading.set_inter_op_parallelism_threads(options.tensorflow_inter_op_parallelism)
        _THREADS_CONFIGURED = True
    except RuntimeError as error:  # TensorFlow's runtime already started in this process
        logger.warning("could not set TensorFlow thread pools: %s", error)


__all__ = ["LocalServer", "ServerOptions", "ModelConfig", "Limits"]
