"""Hardening of the local TF-Serving-compatible server (`tfrec_lm.serve`), issue 11 §2.

Each test pins one failure seen on the stand-in server: hostile JSON (deep nesting, lone
surrogates), inputs whose shapes disagree, per-request memory (limits checked on declared
shapes before any tensor is decoded; the REST body limit checked from Content-Length
before the body is read), a deadline that must not starve the requests behind it, version
directories that arrive slowly or disappear, and error bodies that must not leak paths or
exception classes. The servers run in-process on free loopback ports; the model tests use
the tiny real exports of `tests/tiny_export.py`.
"""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import concurrent.futures
import json
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfrec_lm.serve.grpc_service import make_grpc_server
from tfrec_lm.serve.manager import ModelConfig, ModelManager, Servable
from tfrec_lm.serve.rest import RestApi, RestServer
from tfrec_lm.serve.server import LocalServer, ServerOptions
from tfrec_lm.serve.tensors import Limits
from tiny_export import tiny_exports

REPO = Path(__file__).resolve().parents[1]
LIMITS = Limits(max_batch_size=8, max_history_length=40, max_candidates=60)
BODY_LIMIT = 256 << 10  # the 100,000-deep body (200 KB) is under it
PREDICT = "/v1/models/tfrec_lm:predict"
JSON = {"Content-Type": "application/json"}  # the dev server refuses other POST bodies (415)


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return tiny_exports(tmp_path_factory.mktemp("tiny_exports"))


@pytest.fixture(scope="module")
def server(exports):
    options = ServerOptions(grpc_port=0, rest_api_port=0, limits=LIMITS, rest_api_max_body_bytes=BODY_LIMIT,
                            file_system_poll_wait_seconds=-1)
    with LocalServer([ModelConfig("tfrec_lm", str(exports.brute_force_base))], options) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def post(server, body, path=PREDICT):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(server.rest_url + path, data=data, headers=JSON, timeout=30)


def tensor_request(signature, inputs, model="tfrec_lm"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        if name.endswith("item_ids"):
            request.inputs[name].CopyFrom(tf.make_tensor_proto(np.array(value, dtype=object), dtype=tf.string))
        else:
            request.inputs[name].CopyFrom(tf.make_tensor_proto(np.array(value, dtype=np.int64)))
    return request


def grpc_error(stub, request):
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(request, timeout=30)
    return raised.value.code(), raised.value.details()


def history(exports, width=3):
    return {"history_item_ids": [exports.histories[0][-width:]], "history_timestamps": [[1_600_000_000] * width]}


def wait_for(predicate, timeout_s=20.0, step_s=0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    return predicate()


# ---------------------------------------------------------------- hostile JSON


def test_deeply_nested_json_is_400_not_a_recursion_error(server):
    depth = 100_000
    body = '{"inputs": {"history_item_ids": ' + "[" * depth + "]" * depth + ', "history_timestamps": [[0]]}}'
    response = post(server, body)
    assert response.status_code == 400, response.text
    assert "nested too deeply" in response.json()["error"]
    assert post(server, {"inputs": {"history_item_ids": [["a"]], "history_timestamps": [[0]]}}).status_code == 200


@pytest.mark.parametrize("field", ["history_item_ids", "candidate_item_ids"])
def test_lone_surrogate_in_an_id_is_400(server, exports, field):
    inputs = {**history(exports), "candidate_item_ids": [[exports.catalog[0], "c"]]}
    inputs[field] = [["SURROGATE"] + row[1:] for row in inputs[field]]
    body = json.dumps({"signature_name": "rank", "inputs": inputs}).replace('"SURROGATE"', '"\\ud800"')
    response = post(server, body)  # the JSON escape \ud800: a lone UTF-16 surrogate, not a character
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert f"{field}[0][0]" in error and "surrogate" in error, error


# ---------------------------------------------------------------- inputs that disagree


def test_history_inputs_must_have_the_same_shape_rest_and_grpc(server, stub, exports):
    ids = [exports.histories[0][-3:], exports.histories[1][-3:]]
    stamps = [[1_600_000_000, 1_600_000_060]] * 2  # 2 wide against 3 wide
    inputs = {"history_item_ids": ids, "history_timestamps": stamps}
    for body in ({"inputs": inputs},
                 {"instances": [{"history_item_ids": i, "history_timestamps": t} for i, t in zip(ids, stamps)]},
                 {"signature_name": "rank", "inputs": {**inputs, "candidate_item_ids": [["a"], ["b"]]}}):
        response = post(server, body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert "'history_item_ids' (shape [2, 3])" in error and "'history_timestamps' (shape [2, 2])" in error, error
        assert "Op:" not in error and "Incompatible shapes" not in error
    code, message = grpc_error(stub, tensor_request("serving_default", inputs))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'history_item_ids' (shape [2, 3])" in message and "'history_timestamps' (shape [2, 2])" in message
    # Candidates may be longer or shorter than the history; only their batch must agree.
    fine = post(server, {"signature_name": "rank", "inputs": {**history(exports), "candidate_item_ids": [["a"]]}})
    assert fine.status_code == 200, fine.text
    code, message = grpc_error(stub, tensor_request("rank", {**history(exports), "candidate_item_ids": [["a"], ["b"]]}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "different batch sizes" in message


# ---------------------------------------------------------------- per-request memory


def test_default_limits_refuse_the_oversized_grpc_request_before_decoding(exports, monkeypatch):
    """The 146-byte `rank` request declaring [1024, 2048] / [1024, 4096] tensors (one value
    each, which TensorProto semantics repeat) is refused at the edge with the default limits;
    no tensor of that size is ever decoded."""
    decoded = []
    real = tf.make_ndarray

    def guarded(proto):
        size = int(np.prod([d.size for d in proto.tensor_shape.dim]))
        decoded.append(size)
        assert size <= 1_000_000, f"decoded a {size}-element tensor before checking the limits"
        return real(proto)

    monkeypatch.setattr(tf, "make_ndarray", guarded)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tfrec_lm"
    request.model_spec.signature_name = "rank"
    for name, shape, dtype in (("history_item_ids", [1024, 2048], tf.string),
                               ("history_timestamps", [1024, 2048], tf.int64),
                               ("candidate_item_ids", [1024, 4096], tf.string)):
        proto = request.inputs[name]
        proto.dtype = dtype.as_datatype_enum
        for size in shape:
            proto.tensor_shape.dim.add(size=size)
        if dtype == tf.string:
            proto.string_val.append(b"1")
        else:
            proto.int64_val.append(0)
    assert request.ByteSize() < 200
    options = ServerOptions(grpc_port=0, rest_api_port=None, file_system_poll_wait_seconds=-1)  # default limits
    with LocalServer([ModelConfig("tfrec_lm", str(exports.brute_force_base))], options) as running:
        with grpc.insecure_channel(running.grpc_target) as channel:
            code, message = grpc_error(prediction_service_pb2_grpc.PredictionServiceStub(channel), request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"--max_batch_size={Limits().max_batch_size}" in message
    assert not any(size > 1_000_000 for size in decoded)


def test_grpc_tensor_with_more_values_than_its_shape_is_refused(stub):
    request = tensor_request("serving_default", {"history_item_ids": [["a", "b"]], "history_timestamps": [[0, 0]]})
    request.inputs["history_item_ids"].string_val.extend([b"x"] * 10_000)
    code, message = grpc_error(stub, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "10002 values in string_val for 2 elements" in message


def test_rest_body_over_the_limit_is_400_naming_the_flag(server):
    rows = {"history_item_ids": [["x" * 1000] * 40] * 8, "history_timestamps": [[0] * 40] * 8}
    body = json.dumps({"inputs": rows})
    assert len(body) > BODY_LIMIT  # within every tensor limit, over the body limit
    response = post(server, body)
    assert response.status_code == 400, response.text
    assert f"--rest_api_max_body_bytes={BODY_LIMIT}" in response.json()["error"]

    def chunks():  # no Content-Length: counted as it arrives
        for start in range(0, len(body), 8192):
            yield body[start:start + 8192].encode()

    response = requests.post(server.rest_url + PREDICT, data=chunks(), headers=JSON, timeout=30)
    assert response.status_code == 400, response.text
    assert f"--rest_api_max_body_bytes={BODY_LIMIT}" in response.json()["error"]
    assert post(server, {"inputs": {"history_item_ids": [["a"]], "history_timestamps": [[0]]}}).status_code == 200


def test_rest_body_limit_is_checked_from_content_length_before_reading(server):
    """Headers declaring 1 GB and no body at all: the answer comes without waiting for the body."""
    host, port = server.rest_url.rsplit("/", 1)[-1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {1 << 30}\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    head, _, payload = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), received[:300]
    error = json.loads(payload)["error"]
    assert f"--rest_api_max_body_bytes={BODY_LIMIT}" in error and str(1 << 30) in error


# ---------------------------------------------------------------- deadlines


def test_timed_out_requests_do_not_starve_the_requests_behind_them():
    release = threading.Event()

    class Api:
        def handle(self, method, path, body, deadline=None):
            if body == b"slow":
                release.wait(60)
            return 200, b'{"ok": true}'

    rest = RestServer(Api(), "127.0.0.1", 0, 2, 0.5)  # 2 workers, 0.5 s deadline
    rest.start()
    url = f"http://127.0.0.1:{rest.port}/v1/models/m:predict"
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            slow = [pool.submit(requests.post, url, data=b"slow", headers=JSON, timeout=30) for _ in range(2)]
            assert [f.result().status_code for f in slow] == [504, 504]
        assert "--rest_api_timeout_in_ms" in slow[0].result().json()["error"]
        # Both slow runs are still going (Python cannot stop them); cheap requests get workers anyway.
        cheap = [requests.post(url, data=b"cheap", headers=JSON, timeout=30) for _ in range(4)]
        assert [r.status_code for r in cheap] == [200] * 4, [r.text for r in cheap]
    finally:
        release.set()
        rest.stop()


# ---------------------------------------------------------------- versions on disk


class _Loaded:
    def __init__(self, name, version, path):
        self.name, self.version, self.path = name, version, path


def _needs_index(name, version, path):
    """A loader that fails until the version's last file (nested, as in a SavedModel) is there."""
    if not os.path.exists(os.path.join(path, "variables", "variables.index")):
        raise OSError(f"{path}/variables/variables.index: no such file")
    return _Loaded(name, version, path)


def test_a_slowly_copied_version_is_retried_until_it_loads(tmp_path):
    """Files keep arriving below the version directory (its own mtime does not move) for far
    longer than max_num_load_retries x the retry interval: it still loads once complete."""
    base = tmp_path / "m"
    (base / "1" / "variables").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"pb")
    manager = ModelManager([ModelConfig("m", str(base))], poll_wait_seconds=0.05, max_num_load_retries=2,
                           load_retry_interval_s=0.05, loader=_needs_index)
    manager.start()
    try:
        for i in range(12):  # ~1.2 s of a copy in progress, against ~0.15 s of retries
            (base / "1" / "variables" / f"variables.data-{i:05d}").write_bytes(b"x" * (i + 1))
            time.sleep(0.1)
        assert manager.served_versions("m") == []
        assert manager.status("m")[0].state == "LOADING"
        (base / "1" / "variables" / "variables.index").write_bytes(b"index")
        assert wait_for(lambda: manager.served_versions("m") == [1], 10)
        assert manager.status("m")[0].state == "AVAILABLE"
    finally:
        manager.stop()


def test_a_broken_version_gives_up_after_the_retries_and_is_tried_again_when_its_files_change(tmp_path):
    base = tmp_path / "m"
    (base / "1" / "variables").mkdir(parents=True)
    attempts = []

    def loader(name, version, path):
        attempts.append(time.monotonic())
        return _needs_index(name, version, path)

    manager = ModelManager([ModelConfig("m", str(base))], poll_wait_seconds=0.02, max_num_load_retries=2,
                           load_retry_interval_s=0.1, loader=loader)
    manager.start()
    try:
        assert wait_for(lambda: manager.status("m")[0].state == "END", 10)
        time.sleep(0.3)
        assert len(attempts) == 3  # the first attempt and 2 retries, then no more while nothing changes
        assert all(b - a >= 0.09 for a, b in zip(attempts, attempts[1:]))  # on the retry interval
        status = manager.status("m")[0]
        assert status.error_code != "OK" and "Loading servable: {name: m version: 1} failed" in status.error_message
        assert str(tmp_path) not in status.error_message
        (base / "1" / "variables" / "variables.index").write_bytes(b"index")
        assert wait_for(lambda: manager.served_versions("m") == [1], 10)
    finally:
        manager.stop()


def test_deleting_every_version_unloads_the_model_as_tf_serving_does(exports, tmp_path):
    base = tmp_path / "tfrec_lm"
    base.mkdir()
    shutil.copytree(exports.brute_force_base / "1", base / "1")
    options = ServerOptions(grpc_port=0, rest_api_port=0, file_system_poll_wait_seconds=0.05)
    body = {"inputs": history(exports)}
    with LocalServer([ModelConfig("tfrec_lm", str(base))], options) as server:
        assert post(server, body).status_code == 200
        shutil.rmtree(base / "1")
        answer = wait_for(lambda: (lambda r: r if r.status_code != 200 else None)(post(server, body)), 20)
        assert answer is not None and answer.status_code == 404, answer
        assert answer.json()["error"] == "Servable not found for request: Latest(tfrec_lm)"
        with grpc.insecure_channel(server.grpc_target) as channel:
            code, _ = grpc_error(prediction_service_pb2_grpc.PredictionServiceStub(channel),
                                 tensor_request("serving_default", history(exports)))
        assert code == grpc.StatusCode.NOT_FOUND
        status = requests.get(server.rest_url + "/v1/models/tfrec_lm", timeout=30).json()["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("1", "END")]
        # A version that appears again is served again.
        shutil.copytree(exports.brute_force_base / "1", base / ".staging")
        os.rename(base / ".staging", base / "2")
        assert wait_for(lambda: post(server, body).status_code == 200, 20)


def test_an_unlistable_base_path_keeps_serving(tmp_path):
    """TF Serving fails the poll when the base path cannot be listed and changes nothing."""
    base = tmp_path / "m"
    (base / "1" / "variables").mkdir(parents=True)
    (base / "1" / "variables" / "variables.index").write_bytes(b"index")
    manager = ModelManager([ModelConfig("m", str(base))], poll_wait_seconds=-1, loader=_needs_index)
    manager.start()
    assert manager.served_versions("m") == [1]
    shutil.rmtree(base)
    manager.poll_once()
    assert manager.served_versions("m") == [1]
    base.mkdir()  # listed, and empty: every version is unloaded
    manager.poll_once()
    assert manager.served_versions("m") == []


# ---------------------------------------------------------------- what error bodies say


_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:tmp|home|root|work|private|var|Users)\b")


def test_a_failed_load_is_reported_without_paths(tmp_path):
    base = tmp_path / "tfrec_lm"
    (base / "3").mkdir(parents=True)
    (base / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
    manager = ModelManager([ModelConfig("tfrec_lm", str(base))], poll_wait_seconds=-1, max_num_load_retries=0,
                           loader=Servable)
    manager.start()
    status, body = RestApi(manager, LIMITS).handle("GET", "/v1/models/tfrec_lm", b"")
    assert status == 200
    entry = json.loads(body)["model_version_status"][0]
    assert entry["state"] == "END" and entry["status"]["error_code"] != "OK"
    message = entry["status"]["error_message"]
    assert message.startswith("Loading servable: {name: tfrec_lm version: 3} failed:"), message
    assert str(tmp_path) not in message and not _ABSOLUTE_PATH.search(message), message


class _BrokenManager:
    """A manager whose lookups fail with an unexpected exception that names a path."""

    def get(self, name, version=None, label=None):
        raise RuntimeError("/srv/secret/models/tfrec_lm/1/variables: kaboom")


def test_unexpected_failures_answer_500_without_internals():
    status, body = RestApi(_BrokenManager(), LIMITS).handle("POST", PREDICT, b"{}")
    assert status == 500
    error = json.loads(body)["error"]
    assert error.startswith("Internal") and "log" in error
    assert "RuntimeError" not in error and "/srv" not in error and "kaboom" not in error

    grpc_server, port = make_grpc_server(_BrokenManager(), LIMITS, "127.0.0.1", 0)
    grpc_server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            code, message = grpc_error(prediction_service_pb2_grpc.PredictionServiceStub(channel),
                                       tensor_request("serving_default", {"history_item_ids": [["a"]],
                                                                          "history_timestamps": [[0]]}))
    finally:
        grpc_server.stop(0)
    assert code == grpc.StatusCode.INTERNAL
    assert "RuntimeError" not in message and "/srv" not in message and "kaboom" not in message


# ---------------------------------------------------------------- edges of the REST front end


def _raw_request(server, method: str, target: str, headers: dict | None = None, body: bytes = b""):
    """One request over http.client: (status, body bytes); status None when the connection closed unanswered."""
    import http.client

    host, port = server.rest_url.rsplit("/", 1)[-1].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, target, body=body or None, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    except (http.client.RemoteDisconnected, ConnectionError):
        return None, b""
    finally:
        connection.close()


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_url_over_64_kib_answers_414(server, exports, method):
    from tfrec_lm.serve.rest import MAX_URL_BYTES

    target = "/v1/models/" + "m" * 100_000 + (":predict" if method == "POST" else "")
    assert MAX_URL_BYTES < len(target)
    status, body = _raw_request(server, method, target, {"Content-Type": "application/json"}, b"{}")
    assert status == 414, (status, body[:200])
    error = json.loads(body)["error"]
    assert f"has {len(target)} bytes" in error and len(error) < 300, error
    assert post(server, {"inputs": history(exports, 2)}).status_code == 200  # still serving


def test_a_long_model_name_is_quoted_cut_short(server, stub, exports):
    name = "n" * 60_000  # a URL under the 414 limit
    for method, path in (("POST", f"/v1/models/{name}:predict"), ("GET", f"/v1/models/{name}"),
                         ("GET", f"/v1/models/tfrec_lm/labels/{name}")):
        status, body = _raw_request(server, method, path, {"Content-Type": "application/json"}, b"{}")
        assert status == 404, (method, path[:40], status)
        assert len(body) < 400, (method, path[:40], len(body))
        assert "n" * 100 + "…" in json.loads(body)["error"] and "n" * 101 not in json.loads(body)["error"]
    code, message = grpc_error(stub, tensor_request("serving_default", history(exports, 2), model=name))
    assert code == grpc.StatusCode.NOT_FOUND and "n" * 100 + "…" in message and len(message) < 300, message


@pytest.mark.parametrize("content_type,status", [
    ("text/plain", 415), ("application/x-www-form-urlencoded", 415), (None, 415), ("application/jsonx", 415),
    ("application/json", 200), ("application/json; charset=utf-8", 200), ("Application/JSON", 200),
])
def test_predict_needs_a_json_content_type(server, exports, content_type, status):
    """A browser sends text/plain and form POSTs cross-origin without a preflight: they must not run the model."""
    body = json.dumps({"inputs": history(exports, 2)}).encode()
    headers = {"Origin": "https://elsewhere.example"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    got, answer = _raw_request(server, "POST", PREDICT, headers, body)
    assert got == status, answer[:300]
    if status == 415:
        error = json.loads(answer)["error"]
        assert "Content-Type: application/json" in error, error
        assert (content_type or "no Content-Type header") in error, error
        assert "outputs" not in json.loads(answer)
    else:
        assert len(json.loads(answer)["outputs"]["item_ids"][0]) == exports.k


def test_is_json_content_type():
    from tfrec_lm.serve.rest import is_json_content_type

    assert is_json_content_type("application/json") and is_json_content_type(" application/JSON ; charset=UTF-8")
    assert not any(is_json_content_type(v) for v in (None, "", "text/plain", "application/json-seq",
                                                      "multipart/form-data; boundary=application/json"))


def test_a_version_without_assets_extra_loads_with_a_warning(exports, tmp_path, caplog):
    base = tmp_path / "tfrec_lm"
    shutil.copytree(exports.brute_force_base / "1", base / "1")
    shutil.copytree(exports.brute_force_base / "1", base / "2")
    shutil.rmtree(base / "2" / "assets.extra")
    options = ServerOptions(grpc_port=None, rest_api_port=None, file_system_poll_wait_seconds=-1)
    config = ModelConfig("tfrec_lm", str(base), policy="all")
    with caplog.at_level("WARNING", logger="tfrec_lm.serve"):
        with LocalServer([config], options) as running:
            assert running.manager.served_versions("tfrec_lm") == [1, 2]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    about_2 = [m for m in warnings if str(base / "2") in m]
    assert len(about_2) == 1 and "no assets.extra/ folder" in about_2[0] and "without warm-up" in about_2[0], warnings
    assert not [m for m in warnings if str(base / "1") in m], warnings  # version 1 has its warm-up records


# ---------------------------------------------------------------- documentation


def test_readme_documents_every_limit_flag_and_its_default():
    from tfrec_lm.serve.__main__ import build_parser

    readme = (REPO / "serving" / "README.md").read_text()
    defaults = {action.dest: action.default for action in build_parser()._actions}
    for flag in ("max_batch_size", "max_history_length", "max_candidates", "rest_api_max_body_bytes",
                 "grpc_max_message_bytes", "rest_api_timeout_in_ms", "max_num_load_retries",
                 "load_retry_interval_micros", "file_system_poll_wait_seconds"):
        row = next((line for line in readme.splitlines() if line.startswith(f"| `--{flag}`")), None)
        assert row is not None, f"serving/README.md has no table row for --{flag}"
        value = defaults[flag]
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        assert re.search(rf"\b{re.escape(shown)}\b", row.split("|")[2]), (flag, value, row)
    assert "reverse proxy" in readme and "TLS" in readme
