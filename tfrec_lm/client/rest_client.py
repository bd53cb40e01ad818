"""`RestClient`: TF Serving's REST JSON API over `requests`.

Columnar (`inputs`) or row (`instances`) requests; retries (`urllib3.Retry`) with
exponential backoff on 502/503/504, connection errors and read timeouts; a per-request
timeout.
"""

from __future__ import annotations

import http.client
import json
from typing import Mapping

import numpy as np

from tfrec_lm.client.common import DEFAULT_MODEL, DEFAULT_SERVERS, DEFAULT_SIGNATURE, as_str_array, host_port
from tfrec_lm.client.errors import ClientError, ServingRequestError, ServingTimeout, ServingUnavailable

RETRY_STATUSES = (502, 503, 504)


def _json_value(array) -> list:
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind in "SU":
        return as_str_array(array).tolist()
    return array.tolist()


def _from_json(value) -> np.ndarray:
    try:
        array = np.asarray(value)
    except ValueError:  # rows of different lengths (a marked answer's `unknown_item_ids`)
        array = np.empty(len(value), dtype=object)
        for i, row in enumerate(value):
            array[i] = row
        return array
    return array.astype(object) if array.dtype.kind == "U" else array


def _non_http_answer(error: BaseException) -> str | None:
    """The start of an answer that was not HTTP, found in an exception's chain.

    Args:
        error: BaseException. what `requests` raised (urllib3's errors nest in `reason`,
            `args` and the exception chain).

    Returns:
        str or None. the answer's first line as `http.client` read it (bytes as Latin-1
        characters), or None when the server answered HTTP or not at all.
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
        self.address = host_port(server)
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
                raise ClientError(f"{method} {url}: {_not_http_message(self.address, answer)}") from None
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
                raise ClientError(f"{method} {url}: the answer is not JSON: {response.text[:200]!r}",
                                   status=200) from None
        try:
            message = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:2000] or response.reason
        if 400 <= response.status_code < 500:
            raise ServingRequestError(message, status=response.status_code)
        if response.status_code in RETRY_STATUSES:
            raise ServingUnavailable(f"{message} (after {self.retry.total} retries)", status=response.status_code)
        raise ClientError(message, status=response.status_code)

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
        raise ClientError(f"unexpected answer: keys {sorted(answer)}", status=200)

    def model_status(self) -> dict:
        return self._send("GET", self.base_url)

    def metadata(self) -> dict:
        return self._send("GET", self.base_url + "/metadata")
