"""TF Serving's REST API on tornado.

Paths (as in TF Serving's `http_rest_api_handler.cc`):

    POST /v1/models/<name>[/versions/<v> | /labels/<l>]:predict
    GET  /v1/models/<name>[/versions/<v> | /labels/<l>]            model status
    GET  /v1/models/<name>[/versions/<v> | /labels/<l>]/metadata   signature defs

Every failure answers `{"error": "<message>"}` with TF Serving's HTTP status for the
error code. Parsing, validation and the model run happen on worker threads, never on the
event loop: `--rest_api_num_threads` requests run at once.

Per-request bounds: a body over `--rest_api_max_body_bytes` is refused from its
Content-Length header, before it is read (or, without one, as soon as the bytes received
pass the limit); the decoded tensors are bounded by `Limits`, checked on the declared
shapes before any array is built. A request that passes `--rest_api_timeout_in_ms`
answers 504 at once *and gives its worker slot to the next request*: Python cannot stop
the run, so it finishes on a spare thread (at most `--rest_api_num_threads` such runs at a
time, beyond which a timed-out run keeps its slot until it ends), and its answer is
dropped. A request still parsing when its deadline passes does not start the model.

Refused from the headers alone, before any body is read: a URL over `MAX_URL_BYTES`
answers 414 (tornado reads up to `MAX_HEADER_BYTES` of request line and headers; past
that it closes the connection without an answer), and a POST whose `Content-Type` is not
`application/json` (parameters such as `; charset=utf-8` allowed) answers 415, so a
browser page on another origin cannot run the model with a "simple" `text/plain` or form
POST, which browsers send without a CORS preflight. Quoted parts of a request (model
names, labels, paths) are cut to 100 characters in error messages (`errors.echo`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
import threading
import time
import urllib.parse

import grpc
import numpy as np

from tfrec_lm.protocol import UNKNOWN_ITEM_IDS, mark_unknown_candidates
from tfrec_lm.serve.errors import ServingError, deadline_exceeded, echo, internal_error, invalid_argument
from tfrec_lm.serve.manager import ModelManager
from tfrec_lm.serve.tensors import Limits, decode_json_request, encode_json_response

logger = logging.getLogger(__name__)

_SPEC = r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?"
PREDICT_PATH = re.compile(_SPEC + r":(predict|classify|regress)", re.IGNORECASE)
STATUS_PATH = re.compile(_SPEC + r"(/metadata)?/?", re.IGNORECASE)

REASONS = {499: "Client Closed Request"}

# The longest URL answered (the request line's target, percent-encoding included). Model
# names, versions and labels are short; 64 KiB is tornado's whole default header limit.
MAX_URL_BYTES = 64 << 10
# What tornado reads of request line and headers before it gives up on a request (its
# default is MAX_URL_BYTES): room for a too-long URL to be answered 414 instead of dropped.
MAX_HEADER_BYTES = 1 << 20
JSON_MEDIA_TYPE = "application/json"


def is_json_content_type(value: str | None) -> bool:
    """Whether a Content-Type header names JSON.

    Args:
        value: str or None. the header's value (None: no header).

    Returns:
        bool. True for `application/json`, in any case, with or without parameters.
    """
    return value is not None and value.split(";", 1)[0].strip().lower() == JSON_MEDIA_TYPE


def url_too_long(size: int, limit: int = MAX_URL_BYTES) -> bytes:
    """The 414 answer's body. bytes."""
    return json.dumps({"error": f"the request URL has {size} bytes, more than the {limit} this server reads; "
                                f"model names, versions and labels are short"}).encode()


def not_json(value: str | None) -> bytes:
    """The 415 answer's body. bytes."""
    got = "no Content-Type header" if value is None else f"Content-Type {echo(value)!r}"
    return json.dumps({"error": f"POST bodies must be JSON sent with Content-Type: {JSON_MEDIA_TYPE} "
                                f"(got {got})"}).encode()


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


def mark_unknown_json(answer: dict, candidates) -> dict:
    """A `rank` JSON answer with unknown candidates marked (`tfrec_lm.protocol.mark_unknown_candidates`).

    Args:
        answer: dict. `encode_json_response`'s `{"outputs": {...}}` or `{"predictions": [...]}`.
        candidates: np.ndarray. the request's `candidate_item_ids` [B, M] (bytes or str).

    Returns:
        dict. the same form, each row's `scores` / `predicted_ratings` None at unknown
            candidates, and `unknown_item_ids` beside them (one list per row).
    """
    rows = [[v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in row]
            for row in np.asarray(candidates, dtype=object).tolist()]
    if isinstance(answer.get("outputs"), dict):
        outputs = answer["outputs"]
        marked = [mark_unknown_candidates(items, {name: values[i] for name, values in outputs.items()})
                  for i, items in enumerate(rows)]
        return {"outputs": {name: [row[name] for row in marked] for name in marked[0]}} if marked else answer
    if isinstance(answer.get("predictions"), list) and all(isinstance(r, dict) for r in answer["predictions"]):
        return {"predictions": [mark_unknown_candidates(items, row)
                                for items, row in zip(rows, answer["predictions"])]}
    return answer


class RestApi:
    """The protocol logic, independent of the HTTP library: (method, path, body) -> (status, JSON bytes).

    Args:
        manager: ModelManager. the served versions.
        limits: Limits. per-request tensor bounds.
        mark_unknown_items: bool. answers of signatures with `candidate_item_ids` and `scores`
            (`rank`) get None for the scores and predicted ratings of candidates the model does
            not know, and `unknown_item_ids` beside them (`--rest_api_mark_unknown_items`;
            TF Serving answers the raw lowest float32, so this is off by default).
    """

    def __init__(self, manager: ModelManager, limits: Limits, mark_unknown_items: bool = False):
        self.manager = manager
        self.limits = limits
        self.mark_unknown_items = bool(mark_unknown_items)

    def handle(self, method: str, path: str, body: bytes, deadline: float | None = None) -> tuple[int, bytes]:
        """One request's answer.

        Args:
            method: str. GET or POST.
            path: str. the URL path.
            body: bytes.
            deadline: float or None. `time.monotonic()` after which the model is not run.

        Returns:
            (HTTP status, JSON body bytes).
        """
        try:
            status, payload = 200, self._route(method, urllib.parse.unquote(path), body, deadline)
        except ServingError as error:
            status, payload = error.http_status, {"error": error.message}
        except Exception:  # a bug, not the client's fault; the server keeps running, the log has the details
            logger.exception("REST %s %s failed", method, path)
            error = internal_error()
            status, payload = error.http_status, {"error": error.message}
        return status, json.dumps(payload, separators=(",", ":")).encode("utf-8")

    def _route(self, method: str, path: str, body: bytes, deadline: float | None = None) -> dict:
        if method == "POST":
            match = PREDICT_PATH.fullmatch(path)
            if match:
                name, version, label, verb = match.groups()
                if verb.lower() != "predict":
                    raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                       f"{verb} is not served here: tfrec_lm signatures are predict signatures")
                return self._predict(name, _version(version), label, body, deadline)
        elif method == "GET":
            match = STATUS_PATH.fullmatch(path)
            if match:
                name, version, label, metadata = match.groups()
                if metadata:
                    return metadata_json(self.manager.get(name, _version(version), label))
                return version_status_json(self.manager.status(name, _version(version), label))
        raise invalid_argument(f"Malformed request: {method} {echo(path)}")

    def _predict(self, name, version, label, body: bytes, deadline: float | None = None) -> dict:
        servable = self.manager.get(name, version, label)  # this request runs on this version throughout
        signature_name, arrays, form = decode_json_request(body, servable.input_specs, self.limits)
        if deadline is not None and time.monotonic() > deadline:
            raise deadline_exceeded("Deadline exceeded before the model ran (--rest_api_timeout_in_ms)")
        signature = servable.signature(signature_name)
        outputs = servable.run(signature, arrays)
        answer = encode_json_response(outputs, form)
        if self.mark_unknown_items and "candidate_item_ids" in arrays and "scores" in outputs \
                and UNKNOWN_ITEM_IDS not in outputs:
            answer = mark_unknown_json(answer, arrays["candidate_item_ids"])
        return answer


def _version(text):
    return int(text) if text else None


class DeadlineWorkers:
    """Runs blocking calls on threads under a deadline, without letting timed-out calls starve later ones.

    At most `num_threads` calls hold a slot at once; a call waits for a slot within its
    deadline. When a call's deadline passes it is answered at once and, while fewer than
    `max_abandoned` timed-out calls are still running, its slot goes to the next call (its
    thread finishes in the background; Python cannot interrupt it). Past that bound a
    timed-out call keeps its slot until it ends, so threads stay bounded at
    `num_threads + max_abandoned`. Use from one event loop.

    Args:
        num_threads: int. calls running at once.
        max_abandoned: int or None. timed-out calls allowed to run on without a slot
            (default `num_threads`).
    """

    def __init__(self, num_threads: int, max_abandoned: int | None = None):
        self.num_threads = max(1, int(num_threads))
        self.max_abandoned = self.num_threads if max_abandoned is None else max(0, int(max_abandoned))
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=self.num_threads + self.max_abandoned,
                                                              thread_name_prefix="tfrec-lm-rest")
        self.abandoned = 0
        self._slots = None

    async def run(self, timeout_s: float, function, *args):
        """`function(*args)` on a worker thread; raises asyncio.TimeoutError after `timeout_s`."""
        loop = asyncio.get_running_loop()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.num_threads)
        deadline = loop.time() + timeout_s
        await asyncio.wait_for(self._slots.acquire(), timeout_s)
        try:
            future = self.executor.submit(function, *args)
        except BaseException:
            self._slots.release()
            raise
        try:
            result = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)),
                                            max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            if self.abandoned < self.max_abandoned:
                self.abandoned += 1
                self._slots.release()
                release = self._abandoned_done
            else:
                release = self._slots.release
            future.add_done_callback(lambda _: _call_soon(loop, release))
            raise
        except BaseException:  # cancelled, or the call raised: the slot is free once the thread is
            future.add_done_callback(lambda _: _call_soon(loop, self._slots.release))
            raise
        self._slots.release()
        return result

    def _abandoned_done(self) -> None:
        self.abandoned -= 1

    def shutdown(self, wait: bool = True) -> None:
        self.executor.shutdown(wait=wait, cancel_futures=True)


def _call_soon(loop, callback) -> None:
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:  # the loop is closed: the server stopped
        pass


class RestServer:
    """Serves a RestApi with tornado on its own event-loop thread.

    Args:
        api: RestApi. anything with `handle(method, path, body, deadline)`.
        host: str. address to bind (127.0.0.1 by default everywhere in this project).
        port: int. 0 picks a free port (see `port` after `start`).
        num_threads: int. requests parsed and run at once (`--rest_api_num_threads`).
        timeout_s: float. per-request deadline; a slower request answers 504
            (`--rest_api_timeout_in_ms`) and frees its slot (see `DeadlineWorkers`).
        max_body_bytes: int. largest accepted request body (`--rest_api_max_body_bytes`);
            a larger one answers 400 before it is read.
    """

    def __init__(self, api: RestApi, host: str = "127.0.0.1", port: int = 8501, num_threads: int = 4,
                 timeout_s: float = 30.0, max_body_bytes: int = 16 << 20):
        self.api, self.host, self.port = api, host, port
        self.timeout_s, self.max_body_bytes = timeout_s, int(max_body_bytes)
        self.workers = DeadlineWorkers(num_threads)
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
                # The handler enforces max_body_bytes with a JSON answer; tornado's own limit
                # (a bare 400 and a closed connection) is only the backstop for chunked bodies.
                self._http = tornado.httpserver.HTTPServer(app, max_body_size=2 * self.max_body_bytes + (1 << 20),
                                                           max_header_size=MAX_HEADER_BYTES,
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
            self.workers.shutdown(wait=False)
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
        self.workers.shutdown(wait=True)


def body_too_large(size_text: str, limit: int) -> bytes:
    return json.dumps({"error": f"the request body has {size_text} bytes, more than --rest_api_max_body_bytes="
                                f"{limit}; send fewer users per request"}).encode()


try:
    import tornado.web as _web
except ImportError:  # pragma: no cover - tornado is a dependency of the server
    _web = None


if _web is not None:
    @_web.stream_request_body
    class _Handler(_web.RequestHandler):
        def initialize(self, server: RestServer):
            self.server = server
            self._chunks = []
            self._received = 0

        def set_default_headers(self):
            self.set_header("Content-Type", "application/json")

        def _refuse(self, body: bytes, status: int = 400, size: int | None = None) -> None:
            # The rest of the body is never read: tornado closes the connection after this answer.
            if size is not None and size > self.server.max_body_bytes:
                # Keep tornado from raising its own (bare) error while it discards the body.
                self.request.connection.set_max_body_size(size)
            self.set_status(status)
            self.set_header("Connection", "close")
            self.finish(body)

        def prepare(self):
            limit = self.server.max_body_bytes
            declared = self.request.headers.get("Content-Length")
            try:
                size = int(declared.split(",")[0].strip()) if declared is not None else None
            except ValueError:
                size = None  # tornado answers a malformed Content-Length itself
            url_bytes = len(self.request.uri)  # tornado decodes the request line as Latin-1: one char a byte
            if url_bytes > MAX_URL_BYTES:
                self._refuse(url_too_long(url_bytes), 414, size)
                return
            if self.request.method == "POST":
                content_type = self.request.headers.get("Content-Type")
                if not is_json_content_type(content_type):
                    self._refuse(not_json(content_type), 415, size)
                    return
            if size is not None and size > limit:
                self._refuse(body_too_large(str(size), limit), 400, size)

        def data_received(self, chunk: bytes):
            if self._finished:
                return
            self._received += len(chunk)
            if self._received > self.server.max_body_bytes:
                self._chunks = []
                self._refuse(body_too_large(f"over {self.server.max_body_bytes}", self.server.max_body_bytes))
                return
            self._chunks.append(chunk)

        async def _dispatch(self, method: str):
            if self._finished:
                return
            body, self._chunks = b"".join(self._chunks), []
            timeout = self.server.timeout_s
            deadline = time.monotonic() + timeout
            try:
                status, answer = await self.server.workers.run(timeout, self.server.api.handle, method,
                                                               self.request.path, body, deadline)
            except asyncio.TimeoutError:
                status = 504
                answer = json.dumps({"error": f"Deadline exceeded: no answer within {timeout:g} s "
                                              "(--rest_api_timeout_in_ms)"}).encode()
            self.set_status(status, REASONS.get(status))
            self.finish(answer)

        async def get(self):
            await self._dispatch("GET")

        async def post(self):
            await self._dispatch("POST")

        def write_error(self, status_code, **kwargs):
            self.finish(json.dumps({"error": self._reason or f"HTTP {status_code}"}))
