"""What both transports share: default addresses and names, and text decoding.

Imports nothing from the clients (`make_client`, which needs both, is in `factory.py`).
"""

from __future__ import annotations

import numpy as np

DEFAULT_SIGNATURE = "serving_default"
DEFAULT_MODEL = "tfrec_lm"
DEFAULT_SERVERS = {"rest": "localhost:8501", "grpc": "localhost:8500"}


def as_str_array(array) -> np.ndarray:
    """An array of text as an object array of str (bytes are decoded as UTF-8)."""
    array = np.asarray(array, dtype=object)
    out = np.empty(array.shape, dtype=object)
    flat_in, flat_out = array.reshape(-1), out.reshape(-1)
    for i, v in enumerate(flat_in):
        flat_out[i] = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
    return out


def host_port(server: str) -> str:
    """`host:port` of a server given as `host:port` or a URL (`http://`, `https://`, `grpc://`)."""
    server = server.strip()
    for scheme in ("http://", "https://", "grpc://"):
        if server.startswith(scheme):
            server = server[len(scheme):]
    return server.rstrip("/")
