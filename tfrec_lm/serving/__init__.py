"""A local, TF-Serving-compatible development server for tfrec_lm exports.

`python -m tfrec_lm.serve` (see `tfrec_lm/serve.py`) runs `LocalServer`: TF Serving's
flags, REST paths and JSON shapes, and the gRPC `PredictionService` / `ModelService`
with the official `tensorflow-serving-api` messages. It is a stand-in for development
and tests; production serving is the real TensorFlow Serving binary (`serving/`).

Modules:
    errors: status codes shared by REST and gRPC (TF Serving's code -> HTTP mapping).
    tensors: JSON / TensorProto <-> numpy conversion and request validation.
    manager: version discovery, loading and atomic hot-swap of SavedModels.
    rest: the tornado REST front end.
    grpc_service: the gRPC servicers.
    server: `LocalServer`, which wires them together.
    tiny_export: tiny trained exports for tests and smoke benchmarks.
"""
