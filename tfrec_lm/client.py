"""Clients of a TF Serving server (or `python -m tfrec_lm.serve`) for tfrec_lm exports.

Two protocols, one interface (`predict(inputs, signature_name) -> {output: np.ndarray}`):

- `RestClient`: TF Serving's REST JSON API with `requests`: columnar (`inputs`) or row
  (`instances`) requests; retries (`urllib3.Retry`) with exponential backoff on 502/503/504
  and connection errors and read timeouts; a per-request timeout.
- `GrpcClient`: the official `tensorflow-serving-api` stubs
  (`PredictionServiceStub.Predict` / `GetModelMetadata`, `ModelServiceStub.GetModelStatus`);
  a per-call deadline; gRPC's own retry policy on UNAVAILABLE.

Failures raise `ServingError`: `ServingRequestError` when the server rejected the request
(HTTP 4xx / INVALID_ARGUMENT, NOT_FOUND, ...) with the server's own message,
`ServingUnavailable` when it could not answer after the retries, `ServingTimeout` when it
did not answer in time, and `ServingError` itself when the server did not speak the
protocol (e.g. the REST client pointed at a gRPC port).

`recommend()` / `rank()` send many users in requests of `batch_size` users each and
return the answers in the users' order. Every request row starts with one padding
column (`""`, timestamp 0): TF Serving's batching (`pad_variable_length_inputs`) pads a
request's shorter rows with that request's *first element*, and the export treats `""` as
padding, so the leading column keeps batched answers exact (see `serving/README.md`).

CLI:

    python -m tfrec_lm.client recommend --user-history 50,172,133 --server localhost:8501 \
        [--protocol rest|grpc] [--model-name tfrec_lm] [--signature serving_default]
    python -m tfrec_lm.client rank --user-history 50,172 --candidates 1,2,3
    python -m tfrec_lm.client status | metadata
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import math
import sys
from typing import Mapping, Sequence

import numpy as np

DEFAULT_SIGNATURE = "serving_default"
DEFAULT_MODEL = "tfrec_lm"
DEFAULT_SERVERS = {"rest": "localhost:8501", "grpc": "localhost:8500"}
RETRY_STATUSES = (502, 503, 504)


# ---------------------------------------------------------------- errors


class ServingError(Exception):
    """A request the server did not answer with outputs.

    Attributes:
        message: str. the server's `{"error": ...}` message (or the transport's).
        status: int or None. HTTP status (REST), or TF Serving's HTTP equivalent (gRPC).
        code: str or None. gRPC status code name (gRPC only).
    """

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    def __str__(self) -> str:
        where = " ".join(str(p) for p in (self.status, self.code) if p is not None)
        return f"[{where}] {self.message}" if where else self.message


class ServingRequestError(ServingError):
    """The server rejected the request (HTTP 4xx; gRPC INVALID_ARGUMENT, NOT_FOUND, ...)."""


class ServingUnavailable(ServingError):
    """No answer after the retries: 502/503/504, UNAVAILABLE, or no connection."""


class ServingTimeout(ServingError):
    """No answer within the timeout (after the retries)."""


_GRPC_CLIENT_ERRORS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400,
                       "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "UNAUTHENTICATED": 401,
                       "RESOURCE_EXHAUSTED": 429, "UNIMPLEMENTED": 501}


# ---------------------------------------------------------------- helpers


def _strings(array) -> np.ndarray:
    """An array of text as an object array of str (bytes are decoded as UTF-8)."""
    array = np.asarray(array, dtype=object)
    out = np.empty(array.shape, dtype=object)
    flat_in, flat_out = array.reshape(-1), out.reshape(-1)
    for i, v in enumerate(flat_in):
        flat_out[i] = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
    return out


def _json_value(array) -> list:
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind in "SU":
        return _strings(array).tolist()
    return array.tolist()


def _from_json(value) -> np.ndarray:
    array = np.asarray(value)
    return array.astype(object) if array.dtype.kind == "U" else array


def _host_port(server: str) -> str:
    server = server.strip()
    for scheme in ("http://", "https://", "grpc://"):
        if server.startswith(scheme):
            server = server[len(scheme):]
    return server.rstrip("/")


def _non_http_answer(error: BaseException) -> str | None:
    """The start of an answer that was not HTTP, found in an exception's chain.

    error: BaseException. What `requests` raised (urllib3's errors nest in `reason`,
        `args` and the exception chain).
    Returns str or None. The answer's first line as `http.client` read it (bytes as
        Latin-1 characters), or None when the server answered HTTP or not at all.
    """
    stack, seen = [error], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        # RemoteDisconnected is a BadStatusLine too, but means "closed without an answer".
        if isinstance(current, http.client.BadStatusLine) and not isinstance(current, http.client.RemoteDisconnected):
            return str(current.args[0]) if current.args else ""
        linked = [getattr(current, "reason", None), current.__cause__, current.__context__, *current.args]
        stack.extend(e for e in linked if isinstance(e, BaseException))
    return None


def _not_http_message(address: str, answer: str) -> str:
    """What to tell a user whose REST request got a non-HTTP answer from `address` (host:port)."""
    # An HTTP/2 frame header: 3 bytes of length, then the type (4 SETTINGS, 7 GOAWAY).
    if len(answer) >= 9 and answer[:1] == "\x00" and answer[3] in "\x04\x07":
        return (f"the server at {address} answered with HTTP/2 frames, not HTTP/1.1 (a gRPC server): is this the "
                f"gRPC port? Use the REST port (TF Serving's --rest_api_port, {DEFAULT_SERVERS['rest'].split(':')[1]} "
                f"by default; gRPC is on --port, {DEFAULT_SERVERS['grpc'].split(':')[1]}) or the gRPC protocol")
    return (f"the server at {address} did not answer HTTP (its answer began {answer[:16]!r}): is it the REST port "
            f"of a TF Serving server?")


# ---------------------------------------------------------------- REST


class RestClient:
    """TF Serving REST JSON client.

    Args:
        server: str. `host:port` (or an `http(s)://host:port` URL) of the REST API.
        model_name: str.
        version: int or None. a specific version; None: the newest served.
        label: str or None. a version label (instead of `version`).
        timeout: float. seconds to wait for an answer (each attempt).
        retries: int. retries of 502/503/504, connection errors and read timeouts.
        backoff_factor: float. urllib3's exponential backoff: factor * 2 ** (retry - 1) s.
        request_format: str. `columnar` (`inputs`) or `row` (`instances`).
        session: requests.Session or None. one is made (and mounted with the retries).
    """

    protocol = "rest"

    def __init__(self, server: str = DEFAULT_SERVERS["rest"], model_name: str = DEFAULT_MODEL,
                 version: int | None = None, label: str | None = None, timeout: float = 10.0, retries: int = 3,
                 backoff_factor: float = 0.1, request_format: str = "columnar", session=None):
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        if request_format not in ("columnar", "row"):
            raise ValueError(f"request_format must be 'columnar' or 'row', got {request_format!r}")
        if version is not None and label:
            raise ValueError("give a version or a label, not both")
        scheme = "https" if server.strip().startswith("https://") else "http"
        self.address = _host_port(server)
        self.base_url = f"{scheme}://{self.address}/v1/models/{model_name}"
        if version is not None:
            self.base_url += f"/versions/{int(version)}"
        elif label:
            self.base_url += f"/labels/{label}"
        self.model_name, self.timeout, self.request_format = model_name, timeout, request_format
        self.retry = Retry(total=retries, connect=retries, read=retries, status=retries, other=0,
                           backoff_factor=backoff_factor, status_forcelist=RETRY_STATUSES,
                           allowed_methods=frozenset({"GET", "POST"}), raise_on_status=False,
                           respect_retry_after_header=True)
        self.session = session or requests.Session()
        adapter = HTTPAdapter(max_retries=self.retry, pool_connections=4, pool_maxsize=16)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def close(self) -> None:
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _send(self, method: str, url: str, body: bytes | None = None) -> dict:
        import requests
        from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

        try:
            response = self.session.request(method, url, data=body, timeout=self.timeout,
                                            headers={"Content-Type": "application/json"} if body else None)
        except requests.Timeout as error:
            raise ServingTimeout(f"{method} {url}: no answer within {self.timeout:g} s ({error})") from None
        except requests.ConnectionError as error:
            answer = _non_http_answer(error)
            if answer is not None:
                raise ServingError(f"{method} {url}: {_not_http_message(self.address, answer)}") from None
            reason = getattr(error.args[0], "reason", None) if error.args else None
            # NewConnectionError (refused, unreachable) subclasses ConnectTimeoutError in urllib3 2.
            if isinstance(reason, (ReadTimeoutError, ConnectTimeoutError)) and not isinstance(reason, NewConnectionError):
                raise ServingTimeout(f"{method} {url}: no answer within {self.timeout:g} s, "
                                     f"after {self.retry.total} retries") from None
            raise ServingUnavailable(f"{method} {url}: cannot connect after {self.retry.total} retries: "
                                     f"{reason or error}") from None
        if response.status_code == 200:
            try:
                return response.json()
            except ValueError:
                raise ServingError(f"{method} {url}: the answer is not JSON: {response.text[:200]!r}",
                                   status=200) from None
        try:
            message = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:2000] or response.reason
        if 400 <= response.status_code < 500:
            raise ServingRequestError(message, status=response.status_code)
        if response.status_code in RETRY_STATUSES:
            raise ServingUnavailable(f"{message} (after {self.retry.total} retries)", status=response.status_code)
        raise ServingError(message, status=response.status_code)

    def request_body(self, inputs: Mapping[str, np.ndarray], signature_name: str = DEFAULT_SIGNATURE) -> dict:
        """The JSON body of a `:predict` request for numpy inputs (batch dimension first)."""
        body: dict = {"signature_name": signature_name}
        if self.request_format == "columnar":
            body["inputs"] = {name: _json_value(value) for name, value in inputs.items()}
        else:
            columns = {name: _json_value(value) for name, value in inputs.items()}
            batch = {len(v) for v in columns.values()}
            if len(batch) != 1:
                raise ValueError(f"inputs have different batch sizes: { {k: len(v) for k, v in columns.items()} }")
            body["instances"] = [{name: columns[name][i] for name in columns} for i in range(batch.pop())]
        return body

    def predict(self, inputs: Mapping[str, np.ndarray], signature_name: str = DEFAULT_SIGNATURE) -> dict:
        """Runs a signature; {output name: np.ndarray} (strings as str objects)."""
        body = json.dumps(self.request_body(inputs, signature_name), separators=(",", ":")).encode("utf-8")
        answer = self._send("POST", self.base_url + ":predict", body)
        if "outputs" in answer:
            outputs = answer["outputs"]
            if isinstance(outputs, dict):
                return {name: _from_json(value) for name, value in outputs.items()}
            return {"outputs": _from_json(outputs)}
        if "predictions" in answer:
            rows = answer["predictions"]
            if rows and isinstance(rows[0], dict):
                return {name: _from_json([row[name] for row in rows]) for name in rows[0]}
            return {"predictions": _from_json(rows)}
        raise ServingError(f"unexpected answer: keys {sorted(answer)}", status=200)

    def model_status(self) -> dict:
        return self._send("GET", self.base_url)

    def metadata(self) -> dict:
        return self._send("GET", self.base_url + "/metadata")


# ---------------------------------------------------------------- gRPC


class GrpcClient:
    """TF Serving gRPC client on the official `tensorflow-serving-api` stubs.

    Args:
        server: str. `host:port` of the gRPC API.
        model_name: str.
        version: int or None. a specific version; None: the newest served.
        label: str or None. a version label (instead of `version`).
        timeout: float. deadline of each call in seconds (retries included).
        retries: int. retries on UNAVAILABLE (gRPC's retry policy; at most 4).
        initial_backoff: float. seconds before the first retry (doubling, at most 2 s).
        max_message_bytes: int. largest message sent or received.
    """

    protocol = "grpc"

    def __init__(self, server: str = DEFAULT_SERVERS["grpc"], model_name: str = DEFAULT_MODEL,
                 version: int | None = None, label: str | None = None, timeout: float = 10.0, retries: int = 3,
                 initial_backoff: float = 0.1, max_message_bytes: int = 256 << 20):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        if version is not None and label:
            raise ValueError("give a version or a label, not both")
        self.target = _host_port(server)
        self.model_name, self.version, self.label, self.timeout = model_name, version, label, timeout
        self.last_model_spec = None  # the ModelSpec (name, version, signature) of the last Predict answer
        self.retries = max(0, min(int(retries), 4))
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if self.retries:
            config = {"methodConfig": [{
                "name": [{"service": "tensorflow.serving.PredictionService"},
                         {"service": "tensorflow.serving.ModelService"}],
                "retryPolicy": {"maxAttempts": self.retries + 1, "initialBackoff": f"{initial_backoff:g}s",
                                "maxBackoff": "2s", "backoffMultiplier": 2,
                                "retryableStatusCodes": ["UNAVAILABLE"]},
            }]}
            options += [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(config))]
        else:
            options += [("grpc.enable_retries", 0)]
        self.channel = grpc.insecure_channel(self.target, options=options)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _model_spec(self, spec, signature_name: str = "") -> None:
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = int(self.version)
        elif self.label:
            spec.version_label = self.label
        if signature_name:
            spec.signature_name = signature_name

    def _call(self, method, request):
        import grpc

        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            code = error.code()
            name = code.name if code is not None else "UNKNOWN"
            message = error.details() or name
            if name in _GRPC_CLIENT_ERRORS:
                raise ServingRequestError(message, status=_GRPC_CLIENT_ERRORS[name], code=name) from None
            if name == "UNAVAILABLE":
                raise ServingUnavailable(f"{message} (after {self.retries} retries)", status=503, code=name) from None
            if name == "DEADLINE_EXCEEDED":
                raise ServingTimeout(f"no answer within {self.timeout:g} s", status=504, code=name) from None
            raise ServingError(message, status=500, code=name) from None

    def predict_request(self, inputs: Mapping[str, np.ndarray], signature_name: str = DEFAULT_SIGNATURE,
                        output_filter: Sequence[str] = ()):
        """The `PredictRequest` for numpy inputs (strings are sent as UTF-8 bytes)."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, signature_name)
        for name, value in inputs.items():
            array = np.asarray(value)
            if array.dtype == object or array.dtype.kind in "SU":
                encoded = np.empty(array.shape, dtype=object)
                flat = encoded.reshape(-1)
                for i, v in enumerate(array.reshape(-1)):
                    flat[i] = v if isinstance(v, bytes) else str(v).encode("utf-8")
                request.inputs[name].CopyFrom(tf.make_tensor_proto(encoded, dtype=tf.string, shape=array.shape))
            else:
                request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
        request.output_filter.extend(output_filter)
        return request

    def predict(self, inputs: Mapping[str, np.ndarray], signature_name: str = DEFAULT_SIGNATURE,
                output_filter: Sequence[str] = ()) -> dict:
        """Runs a signature; {output name: np.ndarray} (strings as str objects)."""
        import tensorflow as tf

        response = self._call(self.stub.Predict, self.predict_request(inputs, signature_name, output_filter))
        outputs = {}
        for name, proto in response.outputs.items():
            array = tf.make_ndarray(proto)
            outputs[name] = _strings(array) if array.dtype == object else array
        self.last_model_spec = response.model_spec
        return outputs

    def metadata(self) -> dict:
        """Like REST's `/metadata`: {"model_spec": ..., "metadata": {"signature_def": ...}}."""
        from google.protobuf.json_format import MessageToDict
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._model_spec(request.model_spec)
        request.metadata_field.append("signature_def")
        response = self._call(self.stub.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return {"model_spec": {"name": response.model_spec.name, "signature_name": "",
                               "version": str(response.model_spec.version.value)},
                "metadata": {"signature_def": MessageToDict(signature_map, preserving_proto_field_name=True)}}

    def model_status(self) -> dict:
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec)
        response = self._call(self.model_stub.GetModelStatus, request)
        states = get_model_status_pb2.ModelVersionStatus.State
        return {"model_version_status": [
            {"version": str(s.version), "state": states.Name(s.state),
             "status": {"error_code": _grpc_code_name(s.status.error_code), "error_message": s.status.error_message}}
            for s in response.model_version_status]}


def _grpc_code_name(number: int) -> str:
    import grpc

    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code.name
    return str(number)


def make_client(protocol: str = "rest", server: str | None = None, **kwargs):
    """A RestClient or GrpcClient; `server` defaults to localhost:8501 (REST) / localhost:8500 (gRPC)."""
    if protocol not in DEFAULT_SERVERS:
        raise ValueError(f"protocol must be 'rest' or 'grpc', got {protocol!r}")
    server = server or DEFAULT_SERVERS[protocol]
    if protocol == "rest":
        return RestClient(server, **kwargs)
    kwargs.pop("request_format", None)
    return GrpcClient(server, **kwargs)


# ---------------------------------------------------------------- many users


@dataclasses.dataclass
class Recommendations:
    """One user's answer. `extra` holds any further outputs (e.g. the `explain` signature's)."""

    item_ids: list
    scores: list
    extra: dict = dataclasses.field(default_factory=dict)


def history_batch(histories: Sequence[Sequence], timestamps: Sequence[Sequence] | None = None,
                  lead_padding: bool = True) -> dict:
    """`history_item_ids` / `history_timestamps` for some users, oldest item first.

    Rows are right-padded with `""` / 0 to the longest history. With `lead_padding` every
    row also starts with one `""` / 0 column, which keeps answers exact when TF Serving's
    batching pads requests together with the first element of each request.
    """
    if timestamps is not None and len(timestamps) != len(histories):
        raise ValueError(f"{len(histories)} histories but {len(timestamps)} timestamp lists")
    lead = 1 if lead_padding else 0
    width = lead + max([len(h) for h in histories] + [1 - lead])
    ids = np.full((len(histories), width), "", dtype=object)
    times = np.zeros((len(histories), width), dtype=np.int64)
    for row, history in enumerate(histories):
        stamps = timestamps[row] if timestamps is not None else [0] * len(history)
        if len(stamps) != len(history):
            raise ValueError(f"user {row}: {len(history)} items but {len(stamps)} timestamps")
        ids[row, lead:lead + len(history)] = [str(v) for v in history]
        times[row, lead:lead + len(history)] = [int(t) for t in stamps]
    return {"history_item_ids": ids, "history_timestamps": times}


def _chunks(count: int, batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, count, batch_size):
        yield start, min(count, start + batch_size)


def recommend(client, histories: Sequence[Sequence], timestamps: Sequence[Sequence] | None = None,
              batch_size: int = 64, signature_name: str = DEFAULT_SIGNATURE,
              lead_padding: bool = True) -> list[Recommendations]:
    """Top-K recommendations of many users, `batch_size` users per request, in the users' order.

    Empty slots (item id `""`, when a history covers almost the whole catalog) are left out.

    Args:
        client: RestClient or GrpcClient (anything with `predict(inputs, signature_name)`).
        histories: one sequence of item ids per user, oldest first.
        timestamps: one sequence of Unix times per user (zeros when None).
        batch_size: int. users per request (at most the server's `--max_batch_size`).
        signature_name: str. `serving_default`, or another signature with `item_ids`/`scores`.
        lead_padding: bool. see `history_batch`.
    """
    answers: list[Recommendations] = []
    for start, stop in _chunks(len(histories), batch_size):
        inputs = history_batch(histories[start:stop], None if timestamps is None else timestamps[start:stop],
                               lead_padding)
        outputs = client.predict(inputs, signature_name)
        for name in ("item_ids", "scores"):
            if name not in outputs:
                raise ServingError(f"signature '{signature_name}' has no '{name}' output: {sorted(outputs)}")
        for row in range(stop - start):
            ids = _row_list(outputs["item_ids"][row])
            keep = [i for i, item in enumerate(ids) if item != ""]  # "" marks an empty slot
            extra = {k: [values[i] for i in keep] for k, values in
                     ((k, _row_list(v[row])) for k, v in outputs.items() if k not in ("item_ids", "scores"))}
            scores = outputs["scores"][row]
            answers.append(Recommendations([ids[i] for i in keep], [float(scores[i]) for i in keep], extra))
    return answers


def rank(client, histories: Sequence[Sequence], candidates: Sequence[Sequence],
         timestamps: Sequence[Sequence] | None = None, batch_size: int = 64, signature_name: str = "rank",
         lead_padding: bool = True) -> list[dict]:
    """Scores of given candidates per user (`rank` signature), batched, in order.

    Returns one dict per user: each output (`scores`, `predicted_ratings`) as a list with
    one value per candidate of that user (the padding columns are cut off).
    """
    if len(candidates) != len(histories):
        raise ValueError(f"{len(histories)} histories but {len(candidates)} candidate lists")
    answers: list[dict] = []
    for start, stop in _chunks(len(histories), batch_size):
        inputs = history_batch(histories[start:stop], None if timestamps is None else timestamps[start:stop],
                               lead_padding)
        chunk = candidates[start:stop]
        width = max([len(c) for c in chunk] + [1])
        table = np.full((stop - start, width), "", dtype=object)
        for row, items in enumerate(chunk):
            table[row, :len(items)] = [str(v) for v in items]
        inputs["candidate_item_ids"] = table
        outputs = client.predict(inputs, signature_name)
        for row, items in enumerate(chunk):
            answers.append({name: _row_list(value[row])[:len(items)] for name, value in outputs.items()})
    return answers


def _row_list(row) -> list:
    values = np.asarray(row).tolist()
    return [float(v) if isinstance(v, float) else v for v in values] if isinstance(values, list) else values


# ---------------------------------------------------------------- CLI


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


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in _id_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"timestamps must be comma-separated integers: {text!r}") from None


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
    users.add_argument("--timestamps", action="append", type=_int_list,
                       help="comma-separated Unix times matching a --user-history (repeat in the same order)")
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
        with open(args.users_file, encoding="utf-8") as handle:
            histories += [_id_list(line) for line in handle if line.strip()]
    if not histories:
        parser.error("give at least one --user-history (or --users-file)")
    return histories


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
            names = [n for n in answer if n != "candidate"]
            print("  " + "\t".join(["item_id"] + names), file=stream)
            for i, item in enumerate(answer["candidate"]):
                print("  " + "\t".join([str(item)] + [_fmt(answer[n][i]) for n in names]), file=stream)


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def main(argv=None, stream=None) -> int:
    stream = stream or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    options = dict(model_name=args.model_name, version=args.version, timeout=args.timeout, retries=args.retries)
    if args.protocol == "rest" and getattr(args, "format", None):
        options["request_format"] = args.format
    try:
        client = make_client(args.protocol, args.server, **options)
        with client:
            if args.command in ("status", "metadata"):
                answer = client.model_status() if args.command == "status" else client.metadata()
                print(json.dumps(answer, indent=2), file=stream)
                return 0
            histories = _read_users(args, parser)
            timestamps = args.timestamps
            if timestamps is not None and len(timestamps) != len(histories):
                parser.error(f"{len(histories)} users but {len(timestamps)} --timestamps")
            if args.command == "recommend":
                answers = recommend(client, histories, timestamps, args.batch_size, args.signature)
                payload = [{"history": h, "item_ids": a.item_ids, "scores": a.scores, **a.extra}
                           for h, a in zip(histories, answers)]
            else:
                candidates = args.candidates
                if len(candidates) == 1:
                    candidates = candidates * len(histories)
                if len(candidates) != len(histories):
                    parser.error(f"{len(histories)} users but {len(candidates)} --candidates lists")
                answers = rank(client, histories, candidates, timestamps, args.batch_size, args.signature)
                answers = [{"candidate": c, **a} for c, a in zip(candidates, answers)]
                payload = [{"history": h, **a} for h, a in zip(histories, answers)]
    except ServingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(payload, indent=2), file=stream)
    else:
        _print_table(histories, answers, stream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
