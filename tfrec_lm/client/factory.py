"""`make_client`: a REST or gRPC client by protocol name (the one module that imports both)."""

from __future__ import annotations

from tfrec_lm.client.common import DEFAULT_SERVERS
from tfrec_lm.client.grpc_client import GrpcClient
from tfrec_lm.client.rest_client import RestClient


def make_client(protocol: str = "rest", server: str | None = None, **kwargs):
    """A RestClient or GrpcClient.

    Args:
        protocol: str. `rest` or `grpc`.
        server: str or None. `host:port`; None: localhost:8501 (REST) / localhost:8500 (gRPC).
        **kwargs: dict. the client's own arguments (`request_format` is dropped for gRPC).

    Returns:
        RestClient or GrpcClient.

    Raises:
        ValueError: an unknown protocol.
    """
    if protocol not in DEFAULT_SERVERS:
        raise ValueError(f"protocol must be 'rest' or 'grpc', got {protocol!r}")
    server = server or DEFAULT_SERVERS[protocol]
    if protocol == "rest":
        return RestClient(server, **kwargs)
    kwargs.pop("request_format", None)
    return GrpcClient(server, **kwargs)
