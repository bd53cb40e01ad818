"""Contract tests of the local TF-Serving-compatible server (`tfrec_lm.serve`) and `serving/`.

A tiny model is trained and exported for real (`tests/tiny_export.py`: a
brute-force and a ScaNN export with K = 5, and a K = 3 brute-force export used as a new
version). The server runs in-process on free loopback ports (one test starts the CLI as
a subprocess). Its answers, through the official gRPC stub and plain HTTP JSON, must
equal a direct in-process call of the same SavedModel. Then: every malformed request
gets HTTP 400 / INVALID_ARGUMENT with a message and the server keeps serving; a new
version directory appearing under load is swapped in without a failed request; the
files in `serving/` parse with TF Serving's own message schemas.

The real TensorFlow Serving binary is not installable on these machines; what these
tests cannot cover is listed in serving/README.md.
"""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfrec_lm.export_warmup import write_warmup_requests
from tfrec_lm.serve.manager import ModelConfig, read_model_config_file
from tfrec_lm.serve.server import LocalServer, ServerOptions
from tfrec_lm.serve.tensors import Limits
from tiny_export import tiny_exports

REPO = Path(__file__).resolve().parents[1]
JSON = {"Content-Type": "application/json"}  # the dev server refuses other POST bodies (415)
SERVING = REPO / "serving"
LIMITS = Limits(max_batch_size=8, max_history_length=40, max_candidates=60)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return tiny_exports(tmp_path_factory.mktemp("tiny_exports"))


@pytest.fixture(scope="module")
def server(exports):
    models = [ModelConfig("tfrec_lm", str(exports.brute_force_base)), ModelConfig("scann", str(exports.scann_base))]
    options = ServerOptions(grpc_port=0, rest_api_port=0, limits=LIMITS, file_system_poll_wait_seconds=-1)
    with LocalServer(models, options) as running:
        yield running


@pytest.fixture(scope="module")
def direct(exports):
    """The same SavedModels loaded in-process: {model name: loaded}."""
    return {"tfrec_lm": tf.saved_model.load(str(exports.brute_force_base / "1")),
            "scann": tf.saved_model.load(str(exports.scann_base / "1"))}


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel), model_service_pb2_grpc.ModelServiceStub(channel)


def histories_request(exports, unknown=True):
    """Right-padded histories with unknown ids and an empty row (SPEC §3 request shapes)."""
    rows = [list(h[-6:]) for h in exports.histories[:4]]
    if unknown:
        rows[1] = ["no-such-item"] + rows[1]
    rows.append([])
    width = max(len(r) for r in rows)
    ids = [r + [""] * (width - len(r)) for r in rows]
    stamps = [[1_600_000_000 + 60 * j if v else 0 for j, v in enumerate(r)] for r in ids]
    return {"history_item_ids": ids, "history_timestamps": stamps}


def rank_request(exports):
    request = histories_request(exports)
    candidates = [exports.catalog[0], "no-such-item", exports.catalog[7], exports.catalog[20]]
    request["candidate_item_ids"] = [candidates] * len(request["history_item_ids"])
    return request


def call_direct(loaded, signature, request):
    fn = loaded.signatures[signature]
    dtypes = {k: v.dtype for k, v in fn.structured_input_signature[1].items()}
    out = fn(**{k: tf.constant(v, dtypes[k]) for k, v in request.items()})
    return {k: v.numpy() for k, v in out.items()}


def assert_same(got: dict, expected: dict):
    assert set(got) == set(expected)
    for name, want in expected.items():
        value = got[name]
        if want.dtype == object:
            assert [[v.decode() if isinstance(v, bytes) else v for v in row] for row in np.asarray(value).tolist()] \
                == [[v.decode() for v in row] for row in want.tolist()], name
        else:
            value = np.asarray(value, dtype=want.dtype)
            assert value.shape == want.shape, name
            np.testing.assert_array_equal(value, want, err_msg=name)


def post(server, path, body):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(server.rest_url + path, data=data, headers=JSON, timeout=30)


def make_tensor_request(model, signature, request):
    proto = predict_pb2.PredictRequest()
    proto.model_spec.name = model
    proto.model_spec.signature_name = signature
    for name, value in request.items():
        dtype = tf.string if name.endswith("item_ids") else tf.int64
        proto.inputs[name].CopyFrom(tf.make_tensor_proto(np.array(value, dtype=object if dtype == tf.string
                                                                    else np.int64), dtype=dtype))
    return proto


# ---------------------------------------------------------------- the contract


@pytest.mark.parametrize("model", ["tfrec_lm", "scann"])
def test_rest_columnar_equals_direct_savedmodel(server, direct, exports, model):
    request = histories_request(exports)
    response = post(server, f"/v1/models/{model}:predict", {"signature_name": "serving_default", "inputs": request})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    outputs = response.json()["outputs"]
    expected = call_direct(direct[model], "serving_default", request)
    assert_same(outputs, expected)
    assert np.asarray(outputs["item_ids"]).shape == (5, exports.k)


def test_rest_row_format_returns_predictions_per_row(server, direct, exports):
    request = histories_request(exports)
    instances = [{"history_item_ids": ids, "history_timestamps": ts}
                 for ids, ts in zip(request["history_item_ids"], request["history_timestamps"])]
    response = post(server, "/v1/models/tfrec_lm:predict", {"instances": instances})  # default signature
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert isinstance(predictions, list) and len(predictions) == len(instances)
    assert all(set(p) == {"item_ids", "scores"} for p in predictions)
    columns = {name: [p[name] for p in predictions] for name in ("item_ids", "scores")}
    assert_same(columns, call_direct(direct["tfrec_lm"], "serving_default", request))


@pytest.mark.parametrize("model", ["tfrec_lm", "scann"])
def test_grpc_official_stub_equals_direct_savedmodel(stub, direct, exports, model):
    request = histories_request(exports)
    response = stub[0].Predict(make_tensor_request(model, "serving_default", request), timeout=30)
    assert response.model_spec.name == model
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    outputs = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
    assert outputs["scores"].dtype == np.float32
    assert_same(outputs, call_direct(direct[model], "serving_default", request))


def test_rank_signature_over_both_protocols(server, stub, direct, exports):
    request = rank_request(exports)
    expected = call_direct(direct["tfrec_lm"], "rank", request)
    rest = post(server, "/v1/models/tfrec_lm/versions/1:predict", {"signature_name": "rank", "inputs": request})
    assert rest.status_code == 200, rest.text
    assert_same(rest.json()["outputs"], expected)
    response = stub[0].Predict(make_tensor_request("tfrec_lm", "rank", request), timeout=30)
    assert_same({k: tf.make_ndarray(v) for k, v in response.outputs.items()}, expected)
    assert (expected["scores"][:, 1] == np.finfo(np.float32).min).all()  # the unknown candidate


def test_grpc_output_filter(stub, direct, exports):
    request = histories_request(exports)
    proto = make_tensor_request("tfrec_lm", "serving_default", request)
    proto.output_filter.append("item_ids")
    response = stub[0].Predict(proto, timeout=30)
    assert set(response.outputs) == {"item_ids"}


def test_metadata_and_status_over_both_protocols(server, stub):
    metadata = requests.get(server.rest_url + "/v1/models/tfrec_lm/metadata", timeout=30).json()
    assert metadata["model_spec"] == {"name": "tfrec_lm", "signature_name": "", "version": "1"}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    retrieve = signatures["serving_default"]
    assert retrieve["method_name"] == "tensorflow/serving/predict"
    assert retrieve["inputs"]["history_item_ids"]["dtype"] == "DT_STRING"
    assert retrieve["inputs"]["history_timestamps"]["dtype"] == "DT_INT64"
    assert set(retrieve["outputs"]) == {"item_ids", "scores"}
    assert set(signatures["rank"]["inputs"]) == {"history_item_ids", "history_timestamps", "candidate_item_ids"}

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "tfrec_lm"
    request.metadata_field.append("signature_def")
    response = stub[0].GetModelMetadata(request, timeout=30)
    assert response.model_spec.version.value == 1
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    assert signature_map.signature_def["serving_default"].inputs["history_item_ids"].dtype == tf.string.as_datatype_enum

    status = requests.get(server.rest_url + "/v1/models/tfrec_lm", timeout=30).json()
    assert status == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    grpc_status = stub[1].GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
        model_spec={"name": "tfrec_lm"}), timeout=30)
    assert [(s.version, s.state) for s in grpc_status.model_version_status] == \
        [(1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]


def test_server_binds_loopback_only(server):
    assert server.options.rest_api_host == "127.0.0.1" and server.options.grpc_host == "127.0.0.1"
    assert ServerOptions().rest_api_host == "127.0.0.1" and ServerOptions().grpc_host == "127.0.0.1"


# ---------------------------------------------------------------- validation at the edge


def _rows(n, width=2, pad=""):
    return {"history_item_ids": [["x"] * width] * n, "history_timestamps": [[0] * width] * n}


BAD_REST_BODIES = {
    "malformed_json": (b'{"inputs": ', "JSON Parse error"),
    "not_utf8": (b"\xff\xfe{}", "JSON Parse error"),
    "not_an_object": ([1, 2], "must be a JSON object"),
    "neither_key": ({"signature_name": "serving_default"}, "exactly one of 'instances'"),
    "both_keys": ({"inputs": _rows(1), "instances": []}, "exactly one of 'instances'"),
    "ids_as_integers": ({"inputs": {"history_item_ids": [[50, 172]], "history_timestamps": [[0, 0]]}},
                        "expects strings"),
    "timestamps_as_strings": ({"inputs": {"history_item_ids": [["a"]], "history_timestamps": [["1"]]}},
                              "expects integers"),
    "timestamps_as_floats": ({"inputs": {"history_item_ids": [["a"]], "history_timestamps": [[1.5]]}},
                             "expects integers"),
    "timestamp_overflow": ({"inputs": {"history_item_ids": [["a"]], "history_timestamps": [[2 ** 70]]}},
                           "out of range"),
    "ragged_columnar": ({"inputs": {"history_item_ids": [["a", "b"], ["c"]], "history_timestamps": [[0, 0], [0]]}},
                        "ragged"),
    "ragged_instances": ({"instances": [{"history_item_ids": ["a", "b"], "history_timestamps": [0, 0]},
                                        {"history_item_ids": ["c"], "history_timestamps": [0]}]}, "ragged"),
    "too_deep": ({"inputs": {"history_item_ids": [[["a"]]], "history_timestamps": [[[0]]]}}, "rank 2"),
    "wrong_rank": ({"inputs": {"history_item_ids": ["a", "b"], "history_timestamps": [0, 0]}}, "rank 2"),
    "batch_too_large": ({"inputs": _rows(LIMITS.max_batch_size + 1)}, "--max_batch_size=8"),
    "instances_too_many": ({"instances": [{"history_item_ids": ["a"], "history_timestamps": [0]}] * 9},
                           "--max_batch_size=8"),
    "history_too_long": ({"inputs": _rows(1, LIMITS.max_history_length + 1)}, "--max_history_length=40"),
    "empty_instances": ({"instances": []}, "'instances' is empty"),
    "missing_input": ({"inputs": {"history_item_ids": [["a"]]}}, "missing: ['history_timestamps']"),
    "extra_input": ({"inputs": {**_rows(1), "user_id": [["u"]]}}, "not in the signature: ['user_id']"),
    "instance_not_object": ({"instances": [["a"]]}, "must be an object"),
    "unknown_signature": ({"signature_name": "nope", "inputs": _rows(1)}, "\"nope\" not found"),
    "bad_b64": ({"inputs": {"history_item_ids": [[{"b64": "***"}]], "history_timestamps": [[0]]}}, "base64"),
    "mismatched_batches": ({"inputs": {"history_item_ids": [["a"], ["b"]], "history_timestamps": [[0]]}},
                           "different batch sizes"),
}


@pytest.mark.parametrize("case", sorted(BAD_REST_BODIES))
def test_rest_rejects_bad_requests_with_400(server, case):
    body, fragment = BAD_REST_BODIES[case]
    response = post(server, "/v1/models/tfrec_lm:predict", body)
    assert response.status_code == 400, (response.status_code, response.text)
    error = response.json()["error"]
    assert fragment in error, error


def test_zero_width_history_is_answered_as_the_savedmodel_answers(server, direct):
    """[B, 0] histories pass the edge; the server returns what the model does (an answer,
    or the model's error as 400), never a crash."""
    request = {"history_item_ids": [[], []], "history_timestamps": [[], []]}
    response = post(server, "/v1/models/tfrec_lm:predict", {"inputs": request})
    try:
        expected = call_direct(direct["tfrec_lm"], "serving_default",
                               {k: np.zeros([2, 0], object if k.endswith("ids") else np.int64) for k in request})
    except tf.errors.InvalidArgumentError:
        assert response.status_code == 400 and response.json()["error"]
    else:
        assert response.status_code == 200, response.text
        assert_same(response.json()["outputs"], expected)


def test_rest_rank_candidate_limit(server):
    body = {"signature_name": "rank", "inputs": {**_rows(1), "candidate_item_ids": [["c"] * 61]}}
    response = post(server, "/v1/models/tfrec_lm:predict", body)
    assert response.status_code == 400 and "--max_candidates=60" in response.json()["error"]


@pytest.mark.parametrize("method,path,status,fragment", [
    ("POST", "/v1/models/nope:predict", 404, "Servable not found for request: Latest(nope)"),
    ("POST", "/v1/models/tfrec_lm/versions/9:predict", 404, "Specific(tfrec_lm, 9)"),
    ("GET", "/v1/models/tfrec_lm/versions/9", 404, "Could not find version 9"),
    ("GET", "/v1/models/nope/metadata", 404, "Latest(nope)"),
    ("POST", "/v1/models/tfrec_lm:classify", 501, "classify"),
    ("GET", "/v1/models/tfrec_lm:predict", 400, "Malformed request"),
    ("POST", "/v2/whatever", 400, "Malformed request"),
    ("PUT", "/v1/models/tfrec_lm", 405, ""),
])
def test_rest_paths_errors(server, method, path, status, fragment):
    response = requests.request(method, server.rest_url + path, data=json.dumps({"inputs": _rows(1)}), headers=JSON,
                                timeout=30)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def _grpc_error(stub, request, method="Predict"):
    with pytest.raises(grpc.RpcError) as raised:
        getattr(stub[0], method)(request, timeout=30)
    return raised.value.code(), raised.value.details()


def test_grpc_rejects_bad_requests(stub, exports):
    good = histories_request(exports)

    wrong_dtype = make_tensor_request("tfrec_lm", "serving_default", good)
    wrong_dtype.inputs["history_item_ids"].CopyFrom(tf.make_tensor_proto(np.zeros([1, 2], np.int64)))
    assert _grpc_error(stub, wrong_dtype) == (grpc.StatusCode.INVALID_ARGUMENT,
                                              "input 'history_item_ids' expects dtype string but int64 is provided")

    too_many = make_tensor_request("tfrec_lm", "serving_default", _rows(9))
    code, message = _grpc_error(stub, too_many)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "--max_batch_size=8" in message

    too_long = make_tensor_request("tfrec_lm", "serving_default", _rows(1, 41))
    code, message = _grpc_error(stub, too_long)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "--max_history_length=40" in message

    broken = make_tensor_request("tfrec_lm", "serving_default", _rows(1))
    stamps = broken.inputs["history_timestamps"]
    stamps.ClearField("int64_val")
    stamps.tensor_content = b"\x00\x01\x02"  # 3 bytes for two int64s
    code, message = _grpc_error(stub, broken)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "malformed TensorProto" in message

    missing = make_tensor_request("tfrec_lm", "serving_default", {"history_item_ids": [["a"]]})
    code, message = _grpc_error(stub, missing)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "history_timestamps" in message

    no_name = make_tensor_request("", "serving_default", _rows(1))
    assert _grpc_error(stub, no_name)[0] == grpc.StatusCode.INVALID_ARGUMENT

    unknown_model = make_tensor_request("nope", "serving_default", _rows(1))
    assert _grpc_error(stub, unknown_model) == (grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)")

    unknown_signature = make_tensor_request("tfrec_lm", "nope", _rows(1))
    assert _grpc_error(stub, unknown_signature)[0] == grpc.StatusCode.INVALID_ARGUMENT

    no_field = get_model_metadata_pb2.GetModelMetadataRequest()
    no_field.model_spec.name = "tfrec_lm"
    assert _grpc_error(stub, no_field, "GetModelMetadata")[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_server_still_serves_after_bad_requests(server, stub, direct, exports):
    """Run last among the error tests (file order): nothing above broke the server."""
    request = histories_request(exports)
    expected = call_direct(direct["tfrec_lm"], "serving_default", request)
    assert_same(post(server, "/v1/models/tfrec_lm:predict", {"inputs": request}).json()["outputs"], expected)
    response = stub[0].Predict(make_tensor_request("tfrec_lm", "serving_default", request), timeout=30)
    assert_same({k: tf.make_ndarray(v) for k, v in response.outputs.items()}, expected)


# ---------------------------------------------------------------- hot swap


def _install(source: Path, base: Path, version: int) -> None:
    """Copies a SavedModel in as the exporter does: a staging name first, then one rename."""
    staging = base / f".tmp-{version}-{os.getpid()}"
    shutil.copytree(source, staging)
    os.rename(staging, base / str(version))


def test_new_version_is_swapped_in_without_failed_requests(exports, tmp_path):
    base = tmp_path / "tfrec_lm"
    base.mkdir()
    _install(exports.brute_force_base / "1", base, 1)
    # Version 2 (K = 3) also carries TF Serving warm-up records, replayed before it is published.
    request = histories_request(exports)
    v2_source = tmp_path / "v2-source"
    shutil.copytree(exports.v2_export, v2_source)
    write_warmup_requests(v2_source, [("serving_default", {k: np.array(v, dtype=object if k.endswith("ids")
                                                                           else np.int64)
                                                           for k, v in request.items()})])
    options = ServerOptions(grpc_port=0, rest_api_port=0, file_system_poll_wait_seconds=0.2, max_num_load_retries=1,
                            load_retry_interval_micros=100_000)
    seen = {"rest": [], "grpc": []}
    failures = []
    stop = threading.Event()
    max_requests, deadline = 150, time.monotonic() + 90  # per client; bounded either way
    body = json.dumps({"inputs": request})
    proto = make_tensor_request("tfrec_lm", "serving_default", request)

    with LocalServer([ModelConfig("tfrec_lm", str(base))], options) as server:
        def rest_client():
            with requests.Session() as session:
                while not stop.is_set() and len(seen["rest"]) < max_requests and time.monotonic() < deadline:
                    try:
                        answer = session.post(server.rest_url + "/v1/models/tfrec_lm:predict", data=body, headers=JSON,
                                              timeout=30)
                        assert answer.status_code == 200, answer.text
                        seen["rest"].append(len(answer.json()["outputs"]["item_ids"][0]))
                    except Exception as error:  # recorded, asserted below
                        failures.append(("rest", repr(error)))
                    time.sleep(0.02)

        def grpc_client():
            with grpc.insecure_channel(server.grpc_target) as channel:
                predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
                while not stop.is_set() and len(seen["grpc"]) < max_requests and time.monotonic() < deadline:
                    try:
                        answer = predict(proto, timeout=30)
                        k = tf.make_ndarray(answer.outputs["item_ids"]).shape[1]
                        assert answer.model_spec.version.value == {5: 1, 3: 2}[k]
                        seen["grpc"].append(k)
                    except Exception as error:
                        failures.append(("grpc", repr(error)))
                    time.sleep(0.02)

        threads = [threading.Thread(target=rest_client), threading.Thread(target=grpc_client)]
        for thread in threads:
            thread.start()
        while min(len(seen["rest"]), len(seen["grpc"])) < 10 and time.monotonic() < deadline and not failures:
            time.sleep(0.05)
        _install(v2_source, base, 2)  # appears mid-stream
        # Keep the stream going until both clients have had 20 answers from version 2.
        while time.monotonic() < deadline and not failures and \
                min(seen["rest"].count(3), seen["grpc"].count(3)) < 20 and \
                max(len(seen["rest"]), len(seen["grpc"])) < max_requests:
            time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        status = requests.get(server.rest_url + "/v1/models/tfrec_lm", timeout=30).json()["model_version_status"]

        # A broken version 3 never replaces version 2: the load fails, version 2 keeps serving.
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        _install(broken, base, 3)
        for _ in range(100):
            states = {s["version"]: s for s in
                      requests.get(server.rest_url + "/v1/models/tfrec_lm", timeout=30).json()["model_version_status"]}
            if states.get("3", {}).get("state") == "END":
                break
            time.sleep(0.1)
        still = requests.post(server.rest_url + "/v1/models/tfrec_lm:predict", data=body, headers=JSON, timeout=30)

    assert not failures, failures[:5]
    for client, ks in seen.items():
        assert ks and ks[0] == 5, (client, ks[:5])
        assert ks[-1] == 3, (client, ks[-5:])
        switch = ks.index(3)
        assert set(ks[:switch]) == {5} and set(ks[switch:]) == {3}, (client, ks)  # never back to version 1
        assert len(ks) <= max_requests
    assert {s["version"]: s["state"] for s in status} == {"2": "AVAILABLE", "1": "END"}
    assert states["3"]["state"] == "END" and states["3"]["status"]["error_code"] != "OK"
    assert states["2"]["state"] == "AVAILABLE"
    assert still.status_code == 200 and len(still.json()["outputs"]["item_ids"][0]) == exports.k_v2


# ---------------------------------------------------------------- the CLI, as a process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_with_model_config_file(exports, tmp_path):
    """`python -m tfrec_lm.serve --model_config_file=...` with serving/models.config's own text."""
    config = (SERVING / "models.config").read_text().replace("/models/tfrec_lm", str(exports.scann_base))
    (tmp_path / "models.config").write_text(config)
    grpc_port, rest_port = _free_port(), _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tfrec_lm.serve", f"--model_config_file={tmp_path / 'models.config'}",
         f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--file_system_poll_wait_seconds=5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(tmp_path))
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("tfrec_lm.serve ready"):
                break
        assert lines and lines[-1].startswith("tfrec_lm.serve ready"), "".join(lines[-30:])
        assert f"rest=http://127.0.0.1:{rest_port}" in lines[-1] and f"grpc=127.0.0.1:{grpc_port}" in lines[-1]
        request = histories_request(exports)
        answer = requests.post(f"http://127.0.0.1:{rest_port}/v1/models/tfrec_lm:predict",
                               json={"inputs": request}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert np.asarray(answer.json()["outputs"]["item_ids"]).shape == (5, exports.k)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
    assert process.returncode == 0


def test_cli_rejects_missing_model(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "tfrec_lm.serve", "--port=0"], capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 2 and "--model_base_path" in completed.stderr


# ---------------------------------------------------------------- serving/ files


def _message_class(full_name: str, fields):
    """A protobuf message class built at run time (TF Serving's config protos are not in the pip package).

    fields: list of (name, number, type, label, type_name) with descriptor_pb2 enums.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    package, _, name = full_name.rpartition(".")
    pool = descriptor_pool.DescriptorPool()
    from google.protobuf import wrappers_pb2

    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    file = descriptor_pb2.FileDescriptorProto(name=f"{name}.proto", package=package, syntax="proto3",
                                              dependency=["google/protobuf/wrappers.proto"])
    for message_name, message_fields in fields.items():
        message = file.message_type.add(name=message_name)
        for field_name, number, field_type, label, type_name in message_fields:
            message.field.add(name=field_name, number=number, type=field_type, label=label, type_name=type_name)
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))


def test_models_config_parses_with_the_official_proto():
    models = read_model_config_file(SERVING / "models.config")
    assert [m.name for m in models] == ["tfrec_lm"]
    assert models[0].base_path == "/models/tfrec_lm"
    assert models[0].policy == "latest" and models[0].num_versions == 1


def test_batching_parameters_parse_with_tf_serving_schema():
    from google.protobuf.descriptor_pb2 import FieldDescriptorProto as F

    optional, repeated = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    int64_value, string_value = ".google.protobuf.Int64Value", ".google.protobuf.StringValue"
    # tensorflow_serving/servables/tensorflow/session_bundle_config.proto, BatchingParameters (2.x).
    batching = _message_class("tensorflow.serving.BatchingParameters", {"BatchingParameters": [
        ("max_batch_size", 1, F.TYPE_MESSAGE, optional, int64_value),
        ("batch_timeout_micros", 2, F.TYPE_MESSAGE, optional, int64_value),
        ("max_enqueued_batches", 3, F.TYPE_MESSAGE, optional, int64_value),
        ("num_batch_threads", 4, F.TYPE_MESSAGE, optional, int64_value),
        ("thread_pool_name", 5, F.TYPE_MESSAGE, optional, string_value),
        ("allowed_batch_sizes", 6, F.TYPE_INT64, repeated, None),
        ("pad_variable_length_inputs", 7, F.TYPE_BOOL, optional, None),
    ]})
    params = text_format.Parse((SERVING / "batching_parameters.txt").read_text(), batching())
    sizes = list(params.allowed_batch_sizes)
    assert sizes == sorted(sizes) and sizes[-1] == params.max_batch_size.value  # TF Serving's requirement
    assert params.pad_variable_length_inputs  # histories of different lengths are batched together
    assert params.max_batch_size.value <= Limits().max_batch_size
    assert params.num_batch_threads.value >= 1 and params.batch_timeout_micros.value > 0


def test_monitoring_config_parses_with_tf_serving_schema():
    from google.protobuf.descriptor_pb2 import FieldDescriptorProto as F

    optional = F.LABEL_OPTIONAL
    # tensorflow_serving/config/monitoring_config.proto
    monitoring = _message_class("tensorflow.serving.MonitoringConfig", {
        "PrometheusConfig": [("enable", 1, F.TYPE_BOOL, optional, None), ("path", 2, F.TYPE_STRING, optional, None)],
        "MonitoringConfig": [("prometheus_config", 1, F.TYPE_MESSAGE, optional,
                              ".tensorflow.serving.PrometheusConfig")],
    })
    config = text_format.Parse((SERVING / "monitoring.config").read_text(), monitoring())
    assert config.prometheus_config.enable
    assert config.prometheus_config.path == "/monitoring/prometheus/metrics"


def test_container_files_agree():
    dockerfile = (SERVING / "Dockerfile").read_text()
    compose = (SERVING / "compose.yaml").read_text()
    scann = (SERVING / "scann" / "Dockerfile").read_text()
    assert "tensorflow/serving:2.20.0" in dockerfile
    for flag in ("--model_config_file=/config/models.config", "--enable_batching=true",
                 "--batching_parameters_file=/config/batching_parameters.txt",
                 "--monitoring_config_file=/config/monitoring.config"):
        assert flag in dockerfile, flag
    for name in ("models.config", "batching_parameters.txt", "monitoring.config"):
        assert f"COPY {name} /config/{name}" in dockerfile
    assert "tensorflow/serving:2.20.0-devel" in scann and "scann_ops" in scann
    import yaml

    services = yaml.safe_load(compose)["services"]
    ports = [p for s in services.values() for p in s.get("ports", [])]
    assert ports and all(str(p).startswith("127.0.0.1:") for p in ports)  # loopback unless changed on purpose
    assert subprocess.run(["bash", "-n", str(SERVING / "check_image.sh")]).returncode == 0
    assert subprocess.run(["bash", "-n", str(SERVING / "scann" / "link_scann_ops.sh")]).returncode == 0


def test_check_image_script_against_the_local_server(server):
    """check_image.sh's checks (status, one REST request) pass against a TF-Serving-compatible server."""
    completed = subprocess.run(["bash", str(SERVING / "check_image.sh"), "--url", server.rest_url, "--model", "tfrec_lm"],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "OK" in completed.stdout
    failing = subprocess.run(["bash", str(SERVING / "check_image.sh"), "--url", server.rest_url, "--model", "nope",
                              "--wait", "2"], capture_output=True, text=True, timeout=120)
    assert failing.returncode != 0


def test_link_scann_ops_edits_a_serving_tree(tmp_path):
    """link_scann_ops.sh's edits on a miniature TF Serving tree and ScaNN tree (no download, no build)."""
    serving = tmp_path / "tensorflow-serving"
    (serving / "tensorflow_serving" / "model_servers").mkdir(parents=True)
    (serving / "WORKSPACE").write_text('workspace(name = "tf_serving")\n')
    build = serving / "tensorflow_serving" / "model_servers" / "BUILD"
    build.write_text('SUPPORTED_TENSORFLOW_OPS = if_v2([]) + [\n    "@org_tensorflow_text//tensorflow_text:ops_lib",\n]\n')
    scann = tmp_path / "scann_src"
    ops = scann / "scann" / "scann_ops" / "cc"
    ops.mkdir(parents=True)
    tf_deps = '        "@local_config_tf//:libtensorflow_framework",\n        "@local_config_tf//:tf_header_lib",\n'
    (ops / "BUILD.bazel").write_text(
        'load("@pybind11_bazel//:build_defs.bzl", "pybind_library")\n\n'
        'cc_library(\n    name = "scann_ops",\n    srcs = ["ops/scann_ops.cc"],\n    deps = [\n' + tf_deps +
        '    ],\n    alwayslink = 1,\n)\n\n'
        'cc_library(\n    name = "scann_ops_kernels",\n    deps = [\n        ":scann",\n' + tf_deps +
        '    ],\n    alwayslink = 1,\n)\n\n'
        'pybind_library(\n    name = "scann_npy",\n    srcs = ["scann_npy.cc"],\n    deps = [\n        ":scann",\n'
        '    ],\n)\n')
    wrappers = scann / "scann" / "oss_wrappers"
    wrappers.mkdir(parents=True)
    (wrappers / "BUILD.bazel").write_text('cc_library(\n    name = "tf_dependency",\n    deps = [\n' + tf_deps + '    ],\n)\n')
    script = SERVING / "scann" / "link_scann_ops.sh"
    for _ in range(2):  # idempotent
        completed = subprocess.run(["bash", str(script), "test-ref", str(serving), str(scann)], capture_output=True,
                                   text=True, timeout=60)
        assert completed.returncode == 0, completed.stdout + completed.stderr
    target = "@com_google_scann//scann/scann_ops/cc:scann_ops_static"
    assert build.read_text().count(target) == 1
    workspace = (serving / "WORKSPACE").read_text()
    assert workspace.count('name = "com_google_scann"') == 1 and f'path = "{scann}"' in workspace
    edited = (ops / "BUILD.bazel").read_text()
    assert "@local_config_tf" not in edited and "pybind" not in edited
    assert edited.count('"@org_tensorflow//tensorflow/core:framework"') == 2
    assert 'name = "scann_ops_static"' in edited and edited.count("scann_ops_static") == 1
    assert "@org_tensorflow//tensorflow/core:framework" in (wrappers / "BUILD.bazel").read_text()
