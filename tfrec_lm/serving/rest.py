"""TF Serving's REST API on tornado.

Paths (as in TF Serving's `http_rest_api_handler.cc`):

    POST /v1/models/<name>[/versions/<v> | /labels/<l>]:predict
    GET  /v1/models/<name>[/versions/<v> | /labels/<l>]            model status
    GET  /v1/models/<name>[/versions/<v> | /labels/<l>]/metadata   signature defs

Every failure answers `{"error": "<message>"}` with TF Serving's HTTP status for the
error code. Parsing, validation and the model run happen on a thread pool
(`--rest_api_num_threads`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
import threading
import urllib.parse

import grpc

from tfrec_lm.serving.errors import ServingError, invalid_argument
from tfrec_lm.serving.manager import ModelManager
from tfrec_lm.serving.tensors import Limits, decode_json_request, encode_json_response

logger = logging.getLogger(__name__)

_SPEC = r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?"
PREDICT_PATH = re.compile(_SPEC + r":(predict|classify|regress)", re.IGNORECASE)
STATUS_PATH = re.compile(_SPEC + r"(/metadata)?/?", re.IGNORECASE)

REASONS = {499: "Client Closed Request"}


def version_status_json(statuses) -> dict:
    return {"model_version_status": [
        {"version": str(s.version), "state": s.state,
         "status": {"error_code": s.error_code, "error_message": s.error_message}} for s in statuses]}


def metadata_json(servable) -> dict:
    from google.protobuf.json_format import MessageToDict

    return {
        "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
        "metadata": {"signature_def": MessageToDict(servable.signature_def_map, preserving_proto_field_name=True)},
    }


class RestApi:
    """The protocol logic, independent of the HTTP library: (method, path, body) -> (status, JSON bytes)."""

    def __init__(self, manager: ModelManager, limits: Limits):
        self.manager = manager
        self.limits = limits

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        try:
            status, payload = 200, self._route(method, urllib.parse.unquote(path), body)
        except ServingError as error:
            status, payload = error.http_status, {"error": error.message}
        except Exception as error:  # a bug, not the client's fault; the server keeps running
            logger.exception("REST %s %s failed", method, path)
            status, payload = 500, {"error": f"Internal: {type(error).__name__}: {error}"}
        return status, json.dumps(payload, separators=(",", ":")).encode("utf-8")

    def _route(self, method: str, path: str, body: bytes) -> dict:
        if method == "POST":
            match = PREDICT_PATH.fullmatch(path)
            if match:
                name, version, label, verb = match.groups()
                if verb.lower() != "predict":
                    raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                       f"{verb} is not served here: tfrec_lm signatures are predict signatures")
                return self._predict(name, _version(version), label, body)
        elif method == "GET":
            match = STATUS_PATH.fullmatch(path)
            if match:
                name, version, label, metadata = match.groups()
                if metadata:
                    return metadata_json(self.manager.get(name, _version(version), label))
                return version_status_json(self.manager.status(name, _version(version), label))
        raise invalid_argument(f"Malformed request: {method} {path}")

    def _predict(self, name, version, label, body: bytes) -> dict:
        servable = self.manager.get(name, version, label)  # this request runs on this version throughout
        signature_name, arrays, form = decode_json_request(body, servable.input_specs, self.limits)
        outputs = servable.run(servable.signature(signature_name), arrays)
        return encode_json_response(outputs, form)


def _version(text):
    return int(text) if text else None


class RestServer:
    """Serves a RestApi with tornado on its own event-loop thread.

    Args:
        api: RestApi.
        host: str. address to bind (127.0.0.1 by default everywhere in this project).
        port: int. 0 picks a free port (see `port` after `start`).
        num_threads: int. worker threads for parsing and model runs.
        timeout_s: float. per-request deadline; a slower request answers 504.
        max_body_bytes: int. largest accepted request body.
    """

    def __init__(self, api: RestApi, host: str = "127.0.0.1", port: int = 8501, num_threads: int = 4,
                 timeout_s: float = 30.0, max_body_bytes: int = 256 << 20):
        self.api, self.host, self.port = api, host, port
        self.timeout_s, self.max_body_bytes = timeout_s, max_body_bytes
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=num_threads,
                                                              thread_name_prefix="tfrec-lm-rest")
        self._loop = None
        self._thread = None
        self._http = None

    def start(self) -> None:
        import tornado.httpserver
        import tornado.netutil
        import tornado.web

        ready = threading.Event()
        failure = []

        def run():
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                app = tornado.web.Application([(r"/.*", _Handler, {"server": self})])
                sockets = tornado.netutil.bind_sockets(self.port, address=self.host)
                self.port = sockets[0].getsockname()[1]
                self._http = tornado.httpserver.HTTPServer(app, max_body_size=self.max_body_bytes,
                                                           idle_connection_timeout=60)
                self._http.add_sockets(sockets)
            except Exception as error:
                failure.append(error)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="tfrec-lm-rest-loop", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]

    def stop(self) -> None:
        if self._loop is None or not self._loop.is_running():
            self.executor.shutdown(wait=False)
            return

        async def close():
            self._http.stop()
            await self._http.close_all_connections()

        try:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        except Exception:
            logger.warning("REST server did not close its connections cleanly", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self.executor.shutdown(wait=True, cancel_futures=True)


try:
    import tornado.web as _web
except ImportError:  # pragma: no cover - tornado is a dependency of the server
    _web = None


if _web is not None:
    class _Handler(_web.RequestHandler):
        def initialize(self, server: RestServer):
            self.server = server

        def set_default_headers(self):
            self.set_header("Content-Type", "application/json")

        async def _dispatch(self, method: str):
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self.server.executor, self.server.api.handle, method,
                                          self.request.path, self.request.body)
            try:
                status, body = await asyncio.wait_for(future, self.server.timeout_s)
            except asyncio.TimeoutError:
                status = 504
                body = json.dumps({"error": f"Deadline exceeded: no answer within {self.server.timeout_s:g} s "
                                            "(--rest_api_timeout_in_ms)"}).encode()
            self.set_status(status, REASONS.get(status))
            self.finish(body)

        async def get(self):
            await self._dispatch("GET")

        async def post(self):
            await self._dispatch("POST")

        def write_error(self, status_code, **kwargs):
            self.finish(json.dumps({"error": self._reason or f"HTTP {status_code}"}))
