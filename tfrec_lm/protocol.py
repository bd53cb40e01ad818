"""TF Serving's request format, shared by the client, the dev server and the export.

One owner for each piece both sides of the wire need:

- `HTTP_STATUS`: the HTTP status of each gRPC status code, as TF Serving's REST layer maps
  it (`http_server.cc`, `ToHTTPStatusCode`); the dev server answers with it and the client
  reports gRPC failures with it.
- `grpc_code`: a gRPC status code from its number (as a `tensorflow::Status` carries it).
- `tensor_proto`: a numpy array as a `TensorProto`, text as UTF-8 `DT_STRING` (the gRPC
  client's requests, the export's warm-up records and the dev server's answers).
- `history_batch`: the `history_item_ids` / `history_timestamps` rows of some users,
  right-padded with `""` / 0 (SPEC §3), optionally led by one padding column (what keeps
  answers exact under TF Serving's batching, see `serving/README.md`).
- `mark_unknown_candidates`: one user's `rank` answer with the candidates the model does
  not know (score `UNKNOWN_SCORE`) marked: score and predicted rating None, their ids in
  `unknown_item_ids` (the client's answers, and the dev server's REST answers when asked).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


# The `rank` signature's score of a candidate it cannot score: unknown to the export, retired
# or padding (`tfrec_lm.serving_module.LOWEST_SCORE`, the lowest float32).
UNKNOWN_SCORE = float(np.finfo(np.float32).min)
UNKNOWN_ITEM_IDS = "unknown_item_ids"
# `rank` outputs with one value per candidate that mean nothing for an unknown candidate.
PER_CANDIDATE_OUTPUTS = ("scores", "predicted_ratings")


def is_unknown_score(score) -> bool:
    """Whether a `rank` score marks a candidate the model does not know.

    Args:
        score: float or None. one candidate's score, as the signature, a JSON answer (TF
            Serving may print fewer digits) or an already marked answer (None) gives it.

    Returns:
        bool. True for None, NaN and anything at or below `UNKNOWN_SCORE` in float32.
    """
    if score is None:
        return True
    value = float(score)
    if value != value:
        return True
    with np.errstate(over="ignore"):
        return bool(np.float32(value) <= np.float32(UNKNOWN_SCORE))


def mark_unknown_candidates(candidates: Sequence, outputs: dict) -> dict:
    """One user's `rank` answer with the candidates the model cannot score marked.

    Args:
        candidates: sequence of str. that user's candidate ids, one per score.
        outputs: dict. that user's outputs (`scores`, `predicted_ratings`, ...), each a
            sequence with one value per candidate; an `unknown_item_ids` entry is replaced.

    Returns:
        dict. the outputs as lists, None in `scores` and `predicted_ratings` at each
            unknown candidate, and `unknown_item_ids`: those candidates, in order (padding
            `""` left out).

    Raises:
        ValueError: `outputs` has no `scores`, or a per-candidate output's length differs
            from the candidates'.
    """
    if "scores" not in outputs:
        raise ValueError(f"a rank answer needs 'scores', got {sorted(outputs)}")
    candidates = [str(c) for c in candidates]
    marked = {}
    for name, values in outputs.items():
        if name == UNKNOWN_ITEM_IDS:
            continue
        values = np.asarray(values, dtype=object).tolist() if not isinstance(values, list) else list(values)
        if name in PER_CANDIDATE_OUTPUTS and len(values) != len(candidates):
            raise ValueError(f"'{name}' has {len(values)} values for {len(candidates)} candidates")
        marked[name] = values
    unknown = [i for i, score in enumerate(marked["scores"]) if is_unknown_score(score)]
    for name in PER_CANDIDATE_OUTPUTS:
        if name in marked:
            values = [None if v is None else float(v) for v in marked[name]]
            for i in unknown:
                values[i] = None
            marked[name] = values
    marked[UNKNOWN_ITEM_IDS] = [candidates[i] for i in unknown if candidates[i].strip()]
    return marked


def grpc_code(number: int):
    """The gRPC status code with a number.

    Args:
        number: int. the code's number (e.g. `tf.errors.OpError.error_code`, `Status.error_code`).

    Returns:
        grpc.StatusCode or None. None when no code has that number.
    """
    import grpc

    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return None


def tensor_proto(value):
    """A numpy array (or nested list) as a `TensorProto`.

    Text (object, bytes or str arrays) becomes `DT_STRING` with str values encoded as
    UTF-8 and bytes kept as they are; anything else keeps its numpy dtype.

    Args:
        value: np.ndarray or array-like. the tensor, any shape.

    Returns:
        tensorflow.core.framework.tensor_pb2.TensorProto. the encoded tensor.
    """
    import tensorflow as tf

    array = np.asarray(value)
    if array.dtype == object or array.dtype.kind in "SU":
        encoded = np.empty(array.shape, dtype=object)
        flat = encoded.reshape(-1)
        for i, v in enumerate(array.reshape(-1)):
            flat[i] = v if isinstance(v, bytes) else str(v).encode("utf-8")
        return tf.make_tensor_proto(encoded, dtype=tf.string, shape=array.shape)
    return tf.make_tensor_proto(array)


def history_batch(histories: Sequence[Sequence], timestamps: Sequence[Sequence] | None = None,
                  lead_padding: bool = True) -> dict:
    """`history_item_ids` / `history_timestamps` for some users, oldest item first.

    Rows are right-padded with `""` / 0 to the longest history (at least one column). With
    `lead_padding` every row also starts with one `""` / 0 column, which keeps answers
    exact when TF Serving's batching pads requests together with the first element of
    each request.

    Args:
        histories: sequence of sequences. one sequence of item ids per user, oldest first
            (each id is sent as `str(id)`).
        timestamps: sequence of sequences or None. one sequence of Unix times per user,
            matching `histories`; zeros when None.
        lead_padding: bool. start every row with one `""` / 0 column.

    Returns:
        dict. `history_item_ids`: np.ndarray of str objects [U, N]; `history_timestamps`:
        np.ndarray int64 [U, N].

    Raises:
        ValueError: the timestamps do not match the histories.
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


# History timestamps when a caller gives none. The item-sequence tower reads item ages (each
# row's newest item's time minus each item's time), so a history sent with timestamp 0
# everywhere has every item the same age, which no training history had.
DEFAULT_SPACING_S = 60


def spaced_timestamps(histories: Sequence[Sequence], now: int | None = None,
                      spacing_s: int = DEFAULT_SPACING_S) -> list[list[int]]:
    """Unix times for histories without any: the newest item at `now`, older items `spacing_s` apart.

    Args:
        histories: sequence of sequences. one sequence of item ids per user, oldest first.
        now: int or None. Unix seconds of each history's newest item (None: the current time).
        spacing_s: int. seconds between one item and the next (0: all at `now`).

    Returns:
        list of list of int. one list per user, as long as its history, oldest first.

    Raises:
        ValueError: a negative spacing.
    """
    if spacing_s < 0:
        raise ValueError(f"the spacing between history items must be 0 or more seconds, got {spacing_s}")
    now = int(time.time()) if now is None else int(now)
    return [[now - (len(history) - 1 - j) * int(spacing_s) for j in range(len(history))] for history in histories]
