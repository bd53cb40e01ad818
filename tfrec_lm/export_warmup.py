"""Warm-up records of an export (TF Serving's `assets.extra/tf_serving_warmup_requests`).

The export writes them (`write_export_warmup`, called by `tfrec_lm.export` before a
version directory is renamed into place); TF Serving and the dev server
(`tfrec_lm.serve.manager`) read `WARMUP_FILE` and replay its requests before a version
takes traffic, so the first user request does not pay for tracing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tfrec_lm.protocol import history_batch, tensor_proto

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def write_warmup_requests(export_dir, requests, model_name: str = "tfrec_lm") -> Path:
    """Writes `assets.extra/tf_serving_warmup_requests` (TF Serving's warm-up format).

    Args:
        export_dir: str or Path. a SavedModel directory (write it *before* the directory
            is renamed into the served base path).
        requests: list of (str, dict). (signature name, {input name: np.ndarray}) pairs.
        model_name: str. recorded in each request's ModelSpec (not used for lookup).

    Returns:
        Path. the file written.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    path = Path(export_dir, WARMUP_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature_name, inputs in requests:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature_name
            for key, value in inputs.items():
                request.inputs[key].CopyFrom(tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def write_export_warmup(export_dir, item_ids, model_name: str) -> Path:
    """The export's warm-up: `serving_default` and `rank` on one known and one empty history.

    Args:
        export_dir: str or Path. the SavedModel directory, before it is renamed into place.
        item_ids: np.ndarray. [C+1] the export's vocabulary (str or UTF-8 bytes), index 0
            padding; items 1 and 2 make the known history.
        model_name: str. recorded in each request's ModelSpec.

    Returns:
        Path. the file written.
    """
    known = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(item_ids)[1:3]]
    inputs = history_batch([known, []], lead_padding=True)
    return write_warmup_requests(export_dir, [
        ("serving_default", inputs),
        ("rank", {**inputs, "candidate_item_ids": np.array([[known[0]], [known[1]]], dtype=object)}),
    ], model_name=model_name)
