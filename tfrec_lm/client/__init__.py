"""Clients of a TF Serving server (or `python -m tfrec_lm.serve`) for tfrec_lm exports.

Two protocols, one interface (`predict(inputs, signature_name) -> {output: np.ndarray}`):
`RestClient` (TF Serving's REST JSON API, `rest_client.py`) and `GrpcClient` (the official
`tensorflow-serving-api` stubs, `grpc_client.py`); `make_client` picks one.
`recommend()` / `rank()` send many users in requests of `batch_size` users each and return
the answers in the users' order (`batching.py`); every row starts with one padding column
(`history_batch`, from `tfrec_lm.protocol`).

Failures raise `ClientError` (`errors.py`): `ServingRequestError` when the server rejected
the request (HTTP 4xx / INVALID_ARGUMENT, NOT_FOUND, ...) with the server's own message,
`ServingUnavailable` when it could not answer after the retries, `ServingTimeout` when it
did not answer in time, and `ClientError` itself when the server did not speak the protocol
(e.g. the REST client pointed at a gRPC port). Import them from here:
`from tfrec_lm.client import ClientError, ServingRequestError`.

CLI (`__main__.py`): `python -m tfrec_lm.client recommend|rank|explain|status|metadata ...`.

Modules:
    errors: `ClientError` and its subclasses.
    common: default servers, model and signature names, text decoding (imports no client).
    factory: `make_client`.
    rest_client: `RestClient`.
    grpc_client: `GrpcClient`.
    batching: `recommend`, `rank`, `Recommendations`.
    timestamps: `parse_timestamps` (`--timestamps`); the default times are `tfrec_lm.protocol.spaced_timestamps`.
    titles: `read_titles`, item titles from an export's catalog or an items file (`--catalog`).
    __main__: the CLI.
"""

from tfrec_lm.client.batching import Recommendations, rank, recommend
from tfrec_lm.client.common import DEFAULT_MODEL, DEFAULT_SERVERS, DEFAULT_SIGNATURE
from tfrec_lm.client.factory import make_client
from tfrec_lm.client.errors import ClientError, ServingRequestError, ServingTimeout, ServingUnavailable
from tfrec_lm.client.grpc_client import GrpcClient
from tfrec_lm.client.rest_client import RETRY_STATUSES, RestClient
from tfrec_lm.protocol import history_batch

__all__ = [
    "ClientError", "ServingRequestError", "ServingTimeout", "ServingUnavailable",
    "RestClient", "GrpcClient", "make_client", "RETRY_STATUSES",
    "Recommendations", "recommend", "rank", "history_batch",
    "DEFAULT_MODEL", "DEFAULT_SERVERS", "DEFAULT_SIGNATURE",
]
