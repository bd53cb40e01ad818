"""Tests of `tfrec_lm.client` (REST and gRPC clients, batching of many users, the CLI).

Retries and timeouts run against tiny local fakes on 127.0.0.1 (an HTTP server that
answers 503 before 200, a gRPC PredictionService that answers UNAVAILABLE before OK, a
server that is too slow). Everything else runs against the local TF-Serving-compatible
server (`tfrec_lm.serve`) over a real tiny export and is compared with a direct call of
the SavedModel.
"""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import concurrent.futures
import http.server
import io
import json
import socket
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfrec_lm import client as client_module
from tfrec_lm.client import __main__ as client_cli
from tfrec_lm.client import (
    GrpcClient,
    Recommendations,
    RestClient,
    ServingRequestError,
    ServingTimeout,
    ServingUnavailable,
    history_batch,
    rank,
    recommend,
)
from tfrec_lm.serve.manager import ModelConfig
from tfrec_lm.serve.server import LocalServer, ServerOptions
from tfrec_lm.serve.tensors import Limits
from tiny_export import tiny_exports

OK_BODY = {"outputs": {"item_ids": [["a", "b"]], "scores": [[0.5, 0.25]]}}


# ---------------------------------------------------------------- fakes


class _FakeHandler(http.server.BaseHTTPRequestHandler):
    """Answers from `server.script`: a list of (status, body, delay_s), one per request, then OK."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append(self.path)
        status, body, delay = self.server.script.pop(0) if self.server.script else (200, OK_BODY, 0.0)
        time.sleep(delay)
        payload = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = do_POST

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_upstream():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHandler)
    server.daemon_threads = True
    server.requests, server.script = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _address(server) -> str:
    return f"127.0.0.1:{server.server_address[1]}"


class _FlakyPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, failures: int):
        self.failures, self.calls = failures, 0

    def Predict(self, request, context):
        self.calls += 1
        if self.calls <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        response = predict_pb2.PredictResponse()
        response.outputs["item_ids"].CopyFrom(tf.make_tensor_proto(np.array([[b"a", b"b"]], dtype=object)))
        response.outputs["scores"].CopyFrom(tf.make_tensor_proto(np.array([[0.5, 0.25]], np.float32)))
        return response


@pytest.fixture
def flaky_grpc():
    def start(failures):
        service = _FlakyPredictionService(failures)
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        started.append(server)
        return service, f"127.0.0.1:{port}"

    started = []
    yield start
    for server in started:
        server.stop(0)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ONE_USER = {"history_item_ids": np.array([["", "x"]], dtype=object), "history_timestamps": np.zeros([1, 2], np.int64)}


# ---------------------------------------------------------------- retries and timeouts


def test_rest_retries_503_then_succeeds(fake_upstream):
    fake_upstream.script = [(503, {"error": "busy"}, 0.0), (503, {"error": "busy"}, 0.0)]
    with RestClient(_address(fake_upstream), retries=3, backoff_factor=0.01) as client:
        outputs = client.predict(ONE_USER)
    assert len(fake_upstream.requests) == 3
    assert outputs["item_ids"].tolist() == [["a", "b"]]
    np.testing.assert_allclose(outputs["scores"], [[0.5, 0.25]])


@pytest.mark.parametrize("status", [502, 504])
def test_rest_retries_other_gateway_errors(fake_upstream, status):
    fake_upstream.script = [(status, {"error": "gateway"}, 0.0)]
    with RestClient(_address(fake_upstream), retries=2, backoff_factor=0.01) as client:
        client.predict(ONE_USER)
    assert len(fake_upstream.requests) == 2


def test_rest_gives_up_after_the_retries(fake_upstream):
    fake_upstream.script = [(503, {"error": "busy"}, 0.0)] * 5
    with RestClient(_address(fake_upstream), retries=2, backoff_factor=0.01) as client:
        with pytest.raises(ServingUnavailable) as raised:
            client.predict(ONE_USER)
    assert raised.value.status == 503 and "busy" in raised.value.message
    assert len(fake_upstream.requests) == 3


def test_rest_does_not_retry_4xx(fake_upstream):
    fake_upstream.script = [(400, {"error": "input 'history_item_ids' expects strings"}, 0.0)]
    with RestClient(_address(fake_upstream), retries=3, backoff_factor=0.01) as client:
        with pytest.raises(ServingRequestError) as raised:
            client.predict(ONE_USER)
    assert raised.value.status == 400 and raised.value.message == "input 'history_item_ids' expects strings"
    assert len(fake_upstream.requests) == 1


def test_rest_timeout_is_retried_then_raised(fake_upstream):
    fake_upstream.script = [(200, OK_BODY, 1.0), (200, OK_BODY, 1.0)]
    with RestClient(_address(fake_upstream), retries=1, backoff_factor=0.01, timeout=0.2) as client:
        start = time.monotonic()
        with pytest.raises(ServingTimeout):
            client.predict(ONE_USER)
    assert time.monotonic() - start < 5
    assert len(fake_upstream.requests) == 2


def test_rest_connection_refused_is_unavailable():
    with RestClient(f"127.0.0.1:{_closed_port()}", retries=2, backoff_factor=0.01) as client:
        with pytest.raises(ServingUnavailable) as raised:
            client.predict(ONE_USER)
    assert "cannot connect" in raised.value.message


def test_rest_row_format_body(fake_upstream):
    with RestClient(_address(fake_upstream), request_format="row") as client:
        body = client.request_body(ONE_USER, "serving_default")
    assert body == {"signature_name": "serving_default",
                    "instances": [{"history_item_ids": ["", "x"], "history_timestamps": [0, 0]}]}


def test_grpc_retries_unavailable(flaky_grpc):
    service, target = flaky_grpc(failures=2)
    with GrpcClient(target, retries=3, initial_backoff=0.01, timeout=10) as client:
        outputs = client.predict(ONE_USER)
    assert service.calls == 3
    assert outputs["item_ids"].tolist() == [["a", "b"]]
    assert outputs["scores"].dtype == np.float32


def test_grpc_gives_up_after_the_retries(flaky_grpc):
    service, target = flaky_grpc(failures=10)
    with GrpcClient(target, retries=2, initial_backoff=0.01, timeout=10) as client:
        with pytest.raises(ServingUnavailable) as raised:
            client.predict(ONE_USER)
    assert raised.value.code == "UNAVAILABLE" and "warming up" in raised.value.message
    assert service.calls == 3


def test_grpc_deadline_is_a_timeout():
    class Slow(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            time.sleep(1.0)
            return predict_pb2.PredictResponse()

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Slow(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with GrpcClient(f"127.0.0.1:{port}", timeout=0.2) as client:
            with pytest.raises(ServingTimeout):
                client.predict(ONE_USER)
    finally:
        server.stop(0)


# ---------------------------------------------------------------- wrong port, bad options (issue 11, section 4)


def test_rest_client_on_a_grpc_port_says_so(flaky_grpc, capsys):
    _, target = flaky_grpc(failures=0)  # a real gRPC server: it answers HTTP/1.1 with HTTP/2 frames
    with RestClient(target, retries=1, backoff_factor=0.01) as client:
        with pytest.raises(client_module.ClientError) as raised:
            client.predict(ONE_USER)
    message = str(raised.value)
    assert f"the server at {target} answered with HTTP/2 frames" in message and "is this the gRPC port?" in message
    assert "8501" in message and "\\x00" not in message and "\x00" not in message
    assert client_cli.main(["recommend", "--user-history", "a", "--server", target, "--retries", "0"]) == 2
    assert "is this the gRPC port?" in capsys.readouterr().err


def test_rest_client_on_a_port_that_does_not_speak_http():
    listener = socket.create_server(("127.0.0.1", 0))

    def answer():
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        with RestClient(address, retries=0) as client:
            with pytest.raises(client_module.ClientError) as raised:
                client.model_status()
    finally:
        thread.join(5)
        listener.close()
    assert f"the server at {address} did not answer HTTP (its answer began 'SSH-2.0-" in str(raised.value)


@pytest.mark.parametrize("option,value,needle", [
    ("--timeout", "0", "argument --timeout: must be a number of seconds above 0, got '0'"),
    ("--timeout", "-1", "argument --timeout: must be a number of seconds above 0, got '-1'"),
    ("--timeout", "nan", "argument --timeout: must be a number of seconds above 0"),
    ("--batch-size", "0", "argument --batch-size: must be at least 1, got '0'"),
    ("--retries", "-1", "argument --retries: must be at least 0, got '-1'"),
    ("--retries", "two", "argument --retries: expected an integer, got 'two'"),
    ("--timestamps", "1998-13-01", "argument --timestamps: expected Unix seconds or an ISO date"),
    ("--timestamp-spacing", "-5", "argument --timestamp-spacing: must be at least 0, got '-5'"),
    ("--now", "yesterday", "argument --now: expected Unix seconds or an ISO date"),
])
def test_cli_rejects_bad_numbers_as_usage_errors(capsys, option, value, needle):
    argv = ["recommend", "--user-history", "a", "--server", f"127.0.0.1:{_closed_port()}", option, value]
    with pytest.raises(SystemExit) as exited:
        client_cli.main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and needle in err and "Traceback" not in err


class _Sent:
    """Records the inputs of every RestClient.predict call and answers like an empty catalog."""

    def __init__(self, monkeypatch):
        self.inputs = []

        def predict(client, inputs, signature_name="serving_default"):
            self.inputs.append({k: np.asarray(v) for k, v in inputs.items()})
            rows = len(inputs["history_item_ids"])
            return {"item_ids": np.full((rows, 1), "x", dtype=object), "scores": np.ones((rows, 1), np.float32)}

        monkeypatch.setattr(RestClient, "predict", predict)


def test_cli_default_timestamps_end_now_a_minute_apart(monkeypatch):
    from tfrec_lm import protocol as timestamps_module

    sent = _Sent(monkeypatch)
    monkeypatch.setattr(timestamps_module.time, "time", lambda: 1_700_000_000.7)
    argv = ["recommend", "--user-history", "a,b,c", "--user-history", "d", "--json"]
    assert client_cli.main(argv, stream=io.StringIO()) == 0
    assert sent.inputs[-1]["history_timestamps"].tolist() == [[0, 1_699_999_880, 1_699_999_940, 1_700_000_000],
                                                              [0, 1_700_000_000, 0, 0]]
    assert client_cli.main(argv + ["--timestamp-spacing", "3600", "--now", "2024-01-01"], stream=io.StringIO()) == 0
    newest = 1_704_067_200  # 2024-01-01T00:00:00Z
    assert sent.inputs[-1]["history_timestamps"].tolist() == [[0, newest - 7200, newest - 3600, newest],
                                                              [0, newest, 0, 0]]


def test_cli_timestamps_take_unix_seconds_and_iso_dates(monkeypatch):
    sent = _Sent(monkeypatch)
    out = io.StringIO()
    argv = ["recommend", "--user-history", "a,b,c", "--timestamps", "881250949,1998-03-01,1998-03-01T12:00:00+02:00",
            "--json"]
    assert client_cli.main(argv, stream=out) == 0
    expected = [881250949, 888710400, 888746400]
    assert sent.inputs[-1]["history_timestamps"].tolist() == [[0] + expected]
    assert json.loads(out.getvalue())[0]["history_timestamps"] == expected


@pytest.mark.parametrize("argv,needle", [
    (["--user-history", "a,b,c", "--timestamps", "1,2"], "user 1 has 3 history items but its --timestamps has 2 values"),
    (["--user-history", "a", "--user-history", "b", "--timestamps", "1"], "2 users but 1 --timestamps"),
])
def test_cli_timestamps_must_match_the_histories(monkeypatch, capsys, argv, needle):
    sent = _Sent(monkeypatch)
    with pytest.raises(SystemExit) as exited:
        client_cli.main(["recommend"] + argv)
    assert exited.value.code == 2 and needle in capsys.readouterr().err
    assert sent.inputs == []  # refused before anything was sent


def test_cli_help_says_how_timestamps_default(capsys):
    with pytest.raises(SystemExit):
        client_cli.main(["recommend", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Default: the newest item at --now, each older one --timestamp-spacing seconds earlier" in text
    assert "--timestamp-spacing" in text and "(default 60)" in text and "default: the current time" in text


def test_spaced_timestamps():
    from tfrec_lm.protocol import spaced_timestamps

    assert spaced_timestamps([["a", "b", "c"], [], ["d"]], now=1000, spacing_s=10) == [[980, 990, 1000], [], [1000]]
    with pytest.raises(ValueError, match="0 or more seconds"):
        spaced_timestamps([["a"]], now=0, spacing_s=-1)


# ---------------------------------------------------------------- against the local server


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return tiny_exports(tmp_path_factory.mktemp("tiny_exports"))


@pytest.fixture(scope="module")
def server(exports):
    options = ServerOptions(grpc_port=0, rest_api_port=0, file_system_poll_wait_seconds=0,
                            limits=Limits(max_batch_size=16, max_history_length=40, max_candidates=60))
    with LocalServer([ModelConfig("tfrec_lm", str(exports.brute_force_base))], options) as running:
        yield running


@pytest.fixture(scope="module")
def direct(exports):
    return tf.saved_model.load(str(exports.brute_force_base / "1"))


@pytest.fixture(params=["rest", "rest-row", "grpc"])
def client(request, server):
    if request.param == "grpc":
        made = GrpcClient(server.grpc_target, timeout=30)
    else:
        made = RestClient(server.rest_url, timeout=30, request_format="row" if request.param == "rest-row" else "columnar")
    with made:
        yield made


def _direct_recommend(direct, history, timestamps=None):
    """One user, no leading padding column: the SavedModel called in-process (timestamps 0 by default)."""
    history = list(history) or [""]
    stamps = tf.zeros([1, len(history)], tf.int64) if timestamps is None else tf.constant([timestamps], tf.int64)
    out = direct.signatures["serving_default"](history_item_ids=tf.constant([history]), history_timestamps=stamps)
    return [v.decode() for v in out["item_ids"].numpy()[0]], out["scores"].numpy()[0]


def _users(exports):
    users = [h[-(3 + i):] for i, h in enumerate(exports.histories[:6])]
    users.insert(2, [])  # a user without history
    users.append(["no-such-item"] + exports.histories[0][-2:])
    return users


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_4xx_message_is_surfaced(server, protocol):
    if protocol == "rest":
        unknown = RestClient(server.rest_url, model_name="nope")
    else:
        unknown = GrpcClient(server.grpc_target, model_name="nope")
    with unknown, pytest.raises(ServingRequestError) as raised:
        unknown.predict(ONE_USER)
    assert raised.value.status == 404
    assert raised.value.message == "Servable not found for request: Latest(nope)"


def test_invalid_request_message_is_surfaced(client):
    too_long = {"history_item_ids": np.full([1, 41], "x", dtype=object),
                "history_timestamps": np.zeros([1, 41], np.int64)}
    with pytest.raises(ServingRequestError) as raised:
        client.predict(too_long)
    assert raised.value.status == 400 and "--max_history_length=40" in raised.value.message


def test_batching_splits_users_and_keeps_their_order(client, direct, exports, monkeypatch):
    users = _users(exports)
    sent = []
    original = client.predict

    def spy(inputs, signature_name="serving_default"):
        sent.append(inputs["history_item_ids"].shape)
        return original(inputs, signature_name)

    monkeypatch.setattr(client, "predict", spy)
    answers = recommend(client, users, batch_size=3)
    assert [shape[0] for shape in sent] == [3, 3, 2]
    assert len(answers) == len(users)
    for user, answer in zip(users, answers):
        ids, scores = _direct_recommend(direct, user)
        assert isinstance(answer, Recommendations)
        assert answer.item_ids == ids, user
        np.testing.assert_allclose(answer.scores, scores, rtol=1e-5, atol=1e-6)
    # One request of everyone gives the same answers.
    together = recommend(client, users, batch_size=64)
    assert [a.item_ids for a in together] == [a.item_ids for a in answers]


def _direct_rank(direct, history, items):
    history = list(history) or [""]
    out = direct.signatures["rank"](history_item_ids=tf.constant([history]),
                                    history_timestamps=tf.zeros([1, len(history)], tf.int64),
                                    candidate_item_ids=tf.constant([items]))
    return {k: v.numpy()[0] for k, v in out.items()}


def _assert_marked(answer, expected, items, unknown):
    """`answer` is `expected` (the raw signature) with the candidates in `unknown` marked None."""
    assert answer["unknown_item_ids"] == unknown
    for name in ("scores", "predicted_ratings"):
        assert len(answer[name]) == len(items)
        for item, got, want in zip(items, answer[name], expected[name]):
            if item in unknown:
                assert got is None, (name, item)
            else:
                assert got == pytest.approx(float(want), rel=1e-5, abs=1e-6), (name, item)


def test_rank_batches_and_cuts_padding(client, direct, exports):
    users = _users(exports)[:5]
    catalog = exports.catalog
    candidates = [catalog[:2], catalog[5:9], [], ["no-such-item", catalog[1]], catalog[10:13]]
    answers = rank(client, users, candidates, batch_size=2)
    for user, items, answer in zip(users, candidates, answers):
        assert set(answer) == {"scores", "predicted_ratings", "unknown_item_ids"}
        assert len(answer["scores"]) == len(items)
        if not items:
            continue
        _assert_marked(answer, _direct_rank(direct, user, items), items,
                       ["no-such-item"] if "no-such-item" in items else [])
    raw = rank(client, users[3:4], candidates[3:4], mark_unknown=False)[0]
    assert set(raw) == {"scores", "predicted_ratings"} and raw["scores"][0] == np.finfo(np.float32).min


def test_unknown_score_is_the_exports_lowest_score():
    from tfrec_lm.protocol import UNKNOWN_SCORE
    from tfrec_lm.serving_module import LOWEST_SCORE

    assert UNKNOWN_SCORE == LOWEST_SCORE


def test_mark_unknown_candidates():
    from tfrec_lm.protocol import mark_unknown_candidates

    # As the signature gives it, as TF Serving's REST prints it (9 digits), and already marked.
    answer = {"scores": [0.5, float(np.finfo(np.float32).min), -3.40282347e38, None, -2.0],
              "predicted_ratings": np.array([3.5, 1.25, 2.0, 4.0, 3.0], np.float32),
              "unknown_item_ids": ["stale"]}
    marked = mark_unknown_candidates(["a", "gone", "retired", "marked", "b"], answer)
    assert marked == {"scores": [0.5, None, None, None, -2.0], "predicted_ratings": [3.5, None, None, None, 3.0],
                      "unknown_item_ids": ["gone", "retired", "marked"]}
    assert mark_unknown_candidates(["", "a"], {"scores": [np.finfo(np.float32).min, 1.0]})["unknown_item_ids"] == []
    with pytest.raises(ValueError, match="2 values for 3 candidates"):
        mark_unknown_candidates(["a", "b", "c"], {"scores": [1.0, 2.0]})


def test_dev_server_can_mark_unknown_candidates_in_rest_answers(exports, direct):
    options = ServerOptions(grpc_port=None, rest_api_port=0, file_system_poll_wait_seconds=0,
                            rest_api_mark_unknown_items=True)
    history = exports.histories[0][-3:]
    items = [exports.catalog[0], "no-such-item", exports.catalog[3]]
    expected = _direct_rank(direct, history, items)
    inputs = {"history_item_ids": [history], "history_timestamps": [[0] * 3], "candidate_item_ids": [items]}
    with LocalServer([ModelConfig("tfrec_lm", str(exports.brute_force_base))], options) as marking:
        url = marking.rest_url + "/v1/models/tfrec_lm:predict"
        columnar = requests_post(url, {"signature_name": "rank", "inputs": inputs})["outputs"]
        rows = requests_post(url, {"signature_name": "rank", "instances": [
            {name: value[0] for name, value in inputs.items()}]})["predictions"]
        with RestClient(marking.rest_url, timeout=30) as rest:
            through_client = rank(rest, [history], [items])[0]
    assert columnar["unknown_item_ids"] == [["no-such-item"]]
    _assert_marked({name: value[0] for name, value in columnar.items()}, expected, items, ["no-such-item"])
    _assert_marked(rows[0], expected, items, ["no-such-item"])
    # The client reads a marked answer as it reads a raw one (TF Serving's): the same result.
    _assert_marked(through_client, _direct_rank(direct, history, items), items, ["no-such-item"])


def requests_post(url, body):
    import requests

    response = requests.post(url, json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_history_batch_pads_and_leads_with_padding():
    batch = history_batch([["a", "b"], [], ["c"]], [[1, 2], [], [3]])
    assert batch["history_item_ids"].tolist() == [["", "a", "b"], ["", "", ""], ["", "c", ""]]
    assert batch["history_timestamps"].tolist() == [[0, 1, 2], [0, 0, 0], [0, 3, 0]]
    plain = history_batch([[], []], lead_padding=False)
    assert plain["history_item_ids"].shape == (2, 1)  # never zero columns
    with pytest.raises(ValueError):
        history_batch([["a"]], [[1, 2]])


def _tf_serving_batch(requests):
    """Merges requests as TF Serving's batching does with pad_variable_length_inputs: each
    request's tensors are padded to the batch's widest with that tensor's FIRST element
    (tensorflow_serving/batching/batching_util.cc, PadTensor), then concatenated."""
    merged = {}
    for name in requests[0]:
        width = max(r[name].shape[1] for r in requests)
        parts = []
        for r in requests:
            value = r[name]
            pad = np.full((value.shape[0], width - value.shape[1]), value.flat[0], dtype=value.dtype)
            parts.append(np.concatenate([value, pad], axis=1))
        merged[name] = np.concatenate(parts, axis=0)
    return merged


def test_leading_padding_keeps_tf_serving_batching_exact(direct, exports):
    users = [exports.histories[0][-2:], exports.histories[1][-7:]]
    fn = direct.signatures["serving_default"]

    def run(inputs):
        out = fn(history_item_ids=tf.constant(inputs["history_item_ids"].astype(str)),
                 history_timestamps=tf.constant(inputs["history_timestamps"]))
        return [[v.decode() for v in row] for row in out["item_ids"].numpy()], out["scores"].numpy()

    alone = [run(history_batch([u], lead_padding=False)) for u in users]
    alone_ids = [ids[0] for ids, _ in alone]
    alone_scores = np.stack([scores[0] for _, scores in alone])
    ids, scores = run(_tf_serving_batch([history_batch([u], lead_padding=True) for u in users]))
    assert ids == alone_ids
    np.testing.assert_allclose(scores, alone_scores, rtol=1e-5, atol=1e-6)
    # Without the leading "" the short first user's row is padded with its own oldest item,
    # which the model then reads as that user's most recent interactions.
    _, corrupted = run(_tf_serving_batch([history_batch([u], lead_padding=False) for u in users]))
    assert not np.allclose(corrupted[0], alone_scores[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(corrupted[1], alone_scores[1], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- CLI


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_cli_recommend(server, direct, exports, protocol):
    history = exports.histories[0][-3:]
    address = server.rest_url if protocol == "rest" else server.grpc_target
    out = io.StringIO()
    stamps = [1_600_000_000, 1_600_003_600, 1_600_090_000]
    code = client_cli.main(["recommend", "--user-history", ",".join(history), "--server", address,
                               "--protocol", protocol, "--model-name", "tfrec_lm", "--signature", "serving_default",
                               "--timestamps", ",".join(map(str, stamps)), "--json"], stream=out)
    assert code == 0
    answer = json.loads(out.getvalue())
    ids, scores = _direct_recommend(direct, history, stamps)
    assert answer[0]["history"] == history and answer[0]["item_ids"] == ids
    np.testing.assert_allclose(answer[0]["scores"], scores, rtol=1e-5, atol=1e-6)

    table = io.StringIO()
    assert client_cli.main(["recommend", "--user-history", ",".join(history), "--server", address,
                               "--protocol", protocol, "--timestamps", ",".join(map(str, stamps))], stream=table) == 0
    lines = table.getvalue().splitlines()
    assert lines[0].startswith("user 1") and lines[2].split("\t")[1] == ids[0]


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_cli_rank_marks_unknown_candidates(server, exports, protocol):
    history = exports.histories[0][-3:]
    address = server.rest_url if protocol == "rest" else server.grpc_target
    args = ["rank", "--user-history", ",".join(history), "--candidates", f"{exports.catalog[0]},no-such-item",
            "--server", address, "--protocol", protocol]
    out = io.StringIO()
    assert client_cli.main(args + ["--json"], stream=out) == 0
    answer = json.loads(out.getvalue())[0]
    assert answer["unknown_item_ids"] == ["no-such-item"]
    assert answer["scores"][1] is None and answer["predicted_ratings"][1] is None
    assert isinstance(answer["scores"][0], float) and answer["scores"][0] > -1e30
    table = io.StringIO()
    assert client_cli.main(args, stream=table) == 0
    lines = table.getvalue().splitlines()
    assert lines[-2].split("\t")[0].strip() == "no-such-item" and lines[-2].split("\t")[1:] == ["unknown"] * 2
    assert lines[-1].strip() == "unknown to the model (no score): no-such-item"


def _titled_export(exports, tmp_path):
    """A copy of the tiny export's model folder whose version 1 carries a catalog with titles."""
    import shutil

    import pandas as pd

    model = tmp_path / "tfrec_lm"
    shutil.copytree(exports.brute_force_base / "1", model / "1")
    titles = {item: f"Title of {item}" for item in exports.catalog}
    pd.DataFrame({"item_id": list(titles), "title": list(titles.values())}).to_parquet(
        model / "1" / "assets.extra" / "tfrec_lm_catalog.parquet", index=False)
    return model, titles


@pytest.mark.parametrize("source", ["version", "model", "csv"])
def test_cli_shows_titles_from_the_exports_catalog(server, exports, tmp_path, source):
    model, titles = _titled_export(exports, tmp_path)
    if source == "csv":
        catalog = tmp_path / "items.csv"
        catalog.write_text("item_id,title\n" + "".join(f'{k},"{v}"\n' for k, v in titles.items()))
    else:
        catalog = model / "1" if source == "version" else model
    history = exports.histories[0][-3:]
    args = ["recommend", "--user-history", ",".join(history), "--server", server.rest_url, "--catalog", str(catalog)]
    out = io.StringIO()
    assert client_cli.main(args + ["--json"], stream=out) == 0
    answer = json.loads(out.getvalue())[0]
    assert answer["titles"] == [titles[item] for item in answer["item_ids"]]
    table = io.StringIO()
    assert client_cli.main(args, stream=table) == 0
    lines = table.getvalue().splitlines()
    assert lines[1].split() == ["rank", "item_id", "title", "score"]
    assert lines[2].split("\t")[1:3] == [answer["item_ids"][0], titles[answer["item_ids"][0]]]


def test_cli_rank_titles_leave_unknown_items_untitled(server, exports, tmp_path):
    model, titles = _titled_export(exports, tmp_path)
    out = io.StringIO()
    assert client_cli.main(["rank", "--user-history", exports.histories[0][-1], "--candidates",
                            f"{exports.catalog[2]},no-such-item", "--server", server.rest_url, "--catalog", str(model),
                            "--json"], stream=out) == 0
    assert json.loads(out.getvalue())[0]["titles"] == [titles[exports.catalog[2]], None]


@pytest.mark.parametrize("make,needle", [
    (lambda exports, tmp: tmp / "missing", "no such file or folder"),
    (lambda exports, tmp: exports.brute_force_base / "1", "carries no assets.extra/tfrec_lm_catalog.parquet"),
    (lambda exports, tmp: _write(tmp / "ids.csv", "item_id,count\na,1\n"), "needs an item_id and a title"),
])
def test_cli_catalog_errors_are_usage_errors(server, exports, tmp_path, capsys, make, needle):
    with pytest.raises(SystemExit) as exited:
        client_cli.main(["recommend", "--user-history", "a", "--server", server.rest_url,
                         "--catalog", str(make(exports, tmp_path))])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and needle in err and "Traceback" not in err


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_cli_explain(server, direct, exports, tmp_path, protocol):
    model, titles = _titled_export(exports, tmp_path)
    history = exports.histories[1][-4:]
    stamps = [1_600_000_000 + 600 * i for i in range(4)]
    address = server.rest_url if protocol == "rest" else server.grpc_target
    args = ["explain", "--user-history", ",".join(history), "--timestamps", ",".join(map(str, stamps)),
            "--server", address, "--protocol", protocol, "--catalog", str(model)]
    out = io.StringIO()
    assert client_cli.main(args + ["--json"], stream=out) == 0
    answer = json.loads(out.getvalue())[0]
    expected = direct.signatures["explain"](history_item_ids=tf.constant([history]),
                                            history_timestamps=tf.constant([stamps], tf.int64))
    assert answer["item_ids"] == [v.decode() for v in expected["item_ids"].numpy()[0]]
    assert answer["because_item_ids"] == [v.decode() for v in expected["because_item_ids"].numpy()[0]]
    assert set(answer["because_item_ids"]) <= set(history)
    np.testing.assert_allclose(answer["because_similarity"], expected["because_similarity"].numpy()[0],
                               rtol=1e-5, atol=1e-6)
    assert answer["because_titles"] == [titles[item] for item in answer["because_item_ids"]]
    table = io.StringIO()
    assert client_cli.main(args, stream=table) == 0
    lines = table.getvalue().splitlines()
    assert lines[1].split("\t") == ["  rank", "item_id", "title", "score", "because_item_id", "because_title",
                                     "similarity"]
    first = lines[2].split("\t")
    assert first[4:6] == [answer["because_item_ids"][0], titles[answer["because_item_ids"][0]]]


def test_cli_explain_without_the_signature_says_so(fake_upstream, capsys):
    fake_upstream.script = [(400, {"error": 'Serving signature name: "explain" not found in signature def '
                                            "(available: ['rank', 'serving_default'])"}, 0.0)]
    code = client_cli.main(["explain", "--user-history", "a", "--server", _address(fake_upstream), "--retries", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "the served model has no 'explain' signature" in err, err


def test_cli_reports_server_errors(server, capsys):
    code = client_cli.main(["recommend", "--user-history", "a", "--server", server.rest_url, "--model-name", "nope"])
    assert code == 2
    assert "Servable not found for request: Latest(nope)" in capsys.readouterr().err


def test_cli_status_and_metadata(server):
    out = io.StringIO()
    assert client_cli.main(["status", "--server", server.grpc_target, "--protocol", "grpc"], stream=out) == 0
    assert json.loads(out.getvalue())["model_version_status"][0]["state"] == "AVAILABLE"
    out = io.StringIO()
    assert client_cli.main(["metadata", "--server", server.rest_url], stream=out) == 0
    assert "serving_default" in json.loads(out.getvalue())["metadata"]["signature_def"]["signature_def"]
