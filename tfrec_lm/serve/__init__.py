"""The local, TF-Serving-compatible development server for tfrec_lm exports.

`python -m tfrec_lm.serve` (the CLI, `__main__.py`: TF Serving's flags) runs `LocalServer`:
TF Serving's REST paths and JSON shapes, and the gRPC `PredictionService` / `ModelService`
with the official `tensorflow-serving-api` messages. It is a stand-in for development and
tests; production serving is the real TensorFlow Serving binary, deployed with the files
in the top-level `serving/` folder.

Modules:
    __main__: the CLI (`python -m tfrec_lm.serve`): flags -> `ServerOptions`, `LocalServer`.
    errors: `ServingError`, the server's request failure with a gRPC status code.
    tensors: JSON / TensorProto <-> numpy conversion and request validation.
    manager: version discovery, loading (and warm-up replay) and atomic hot-swap of SavedModels.
    rest: the tornado REST front end.
    grpc_service: the gRPC servicers.
    server: `LocalServer`, which wires them together.
"""
