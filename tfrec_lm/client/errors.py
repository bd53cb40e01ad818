"""The client's errors: one base class, `ClientError`, and a subclass per kind of failure.

`ServingRequestError`: the server rejected the request (HTTP 4xx; gRPC INVALID_ARGUMENT,
NOT_FOUND, ...), with the server's own message. `ServingUnavailable`: no answer after the
retries. `ServingTimeout`: no answer in time. `ClientError` itself: the server did not
speak the protocol (e.g. the REST client pointed at a gRPC port). The dev server's own
request failure is a different class, `tfrec_lm.serve.errors.ServingError`.
"""

from __future__ import annotations


class ClientError(Exception):
    """A request the server did not answer with outputs (raised by the clients, never by the server).

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


class ServingRequestError(ClientError):
    """The server rejected the request (HTTP 4xx; gRPC INVALID_ARGUMENT, NOT_FOUND, ...)."""


class ServingUnavailable(ClientError):
    """No answer after the retries: 502/503/504, UNAVAILABLE, or no connection."""


class ServingTimeout(ClientError):
    """No answer within the timeout (after the retries)."""
