"""Status codes shared by the REST and gRPC front ends.

TF Serving reports every failure as a `tensorflow::Status`; its REST layer maps the code
to an HTTP status (`http_server.cc`, `ToHTTPStatusCode`) and writes `{"error": message}`,
its gRPC layer returns the code itself. `ServingError` carries such a code (the table is
`tfrec_lm.protocol.HTTP_STATUS`, shared with the client). The client's own errors are
`tfrec_lm.client.ClientError` and its subclasses.

What a client reads never holds the server's internals: unexpected failures answer a
fixed INTERNAL message (the details go to the server log), and messages that come from
TensorFlow have absolute paths replaced by `<path>` (`scrub`).
"""

from __future__ import annotations

import re

import grpc

from tfrec_lm.protocol import HTTP_STATUS, grpc_code


class ServingError(Exception):
    """A request failure with a gRPC status code (and so an HTTP status).

    Args:
        code: grpc.StatusCode.
        message: str. what went wrong, for the client.
    """

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code.name, 500)


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def deadline_exceeded(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, message)


INTERNAL_MESSAGE = "Internal: the server failed to answer this request; the details are in its log"


def internal_error() -> ServingError:
    """The answer to an unexpected exception: no class name, message or path (log those)."""
    return ServingError(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


# An absolute POSIX or Windows path, not preceded by a word character (so "a/b" and
# "1/2" stay), up to whitespace, a quote or a closing bracket.
_PATH = re.compile(r"(?<![\w.~])(?:[A-Za-z]:)?[/\\](?:[^\s'\"`,;)\]}]+)")
_OP_SUFFIX = re.compile(r"\s*\[Op:[^\]]*\]\s*$")


def scrub(text: str, limit: int = 500) -> str:
    """A message fit for a client: absolute paths replaced by `<path>`, one line, at most `limit` chars."""
    text = _PATH.sub("<path>", str(text)).strip()
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


ECHO_LIMIT = 100


def echo(text, limit: int = ECHO_LIMIT) -> str:
    """A piece of the request (a model name, a label, a path) fit to quote in a message.

    Args:
        text: str. what the client sent.
        limit: int. characters kept.

    Returns:
        str. `text`, or its first `limit` characters and "…" when it is longer.
    """
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "…"


def tf_error_code(error) -> grpc.StatusCode:
    """The gRPC status code of a `tf.errors.OpError` (UNKNOWN for anything else)."""
    return grpc_code(getattr(error, "error_code", 2)) or grpc.StatusCode.UNKNOWN


def from_tf_error(error) -> ServingError:
    """A `tf.errors.OpError` raised while running a signature, as a ServingError.

    The message keeps TensorFlow's text without paths or the `[Op:__inference_...]`
    suffix (which names generated graph functions, not anything in the request).
    """
    message = getattr(error, "message", None) or str(error)
    return ServingError(tf_error_code(error), scrub(_OP_SUFFIX.sub("", message)) or "model run failed")
