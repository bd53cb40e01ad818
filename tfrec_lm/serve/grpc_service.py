"""TF Serving's gRPC services with the official `tensorflow-serving-api` messages.

`tensorflow.serving.PredictionService`: `Predict` and `GetModelMetadata` (Classify,
Regress and MultiInference answer UNIMPLEMENTED). `tensorflow.serving.ModelService`:
`GetModelStatus`. Inputs and outputs are `TensorProto`s; failures are gRPC status codes
(INVALID_ARGUMENT for a bad request, NOT_FOUND for an unknown model or version).
"""

from __future__ import annotations

import concurrent.futures
import logging

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfrec_lm.protocol import tensor_proto
from tfrec_lm.serve.errors import ServingError, deadline_exceeded, internal_error, invalid_argument
from tfrec_lm.serve.manager import ModelManager
from tfrec_lm.serve.tensors import Limits, check_names, tensor_protos_to_arrays

logger = logging.getLogger(__name__)


def _spec(model_spec):
    if not model_spec.name:
        raise invalid_argument("Missing ModelSpec name")
    version = model_spec.version.value if model_spec.HasField("version") else None
    label = model_spec.version_label or None
    return model_spec.name, version, label


def _call(context, method, request, *extra):
    try:
        return method(request, *extra)
    except ServingError as error:
        code, message = error.code, error.message
    except Exception:  # a bug: the details go to the log, not to the client
        logger.exception("gRPC call failed")
        error = internal_error()
        code, message = error.code, error.message
    context.abort(code, message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager, limits: Limits):
        self.manager = manager
        self.limits = limits

    def Predict(self, request, context):
        return _call(context, self._predict, request, context)

    def GetModelMetadata(self, request, context):
        return _call(context, self._metadata, request)

    def _predict(self, request, context=None):
        name, version, label = _spec(request.model_spec)
        servable = self.manager.get(name, version, label)
        signature = servable.signature(request.model_spec.signature_name)
        check_names(request.inputs.keys(), signature.inputs)
        arrays = tensor_protos_to_arrays(request.inputs, signature.inputs, self.limits)
        remaining = context.time_remaining() if context is not None else None
        if remaining is not None and remaining <= 0:
            raise deadline_exceeded("Deadline exceeded before the model ran")
        outputs = servable.run(signature, arrays, tuple(request.output_filter))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature.name
        for key, array in outputs.items():
            response.outputs[key].CopyFrom(tensor_proto(array))
        return response

    def _metadata(self, request):
        name, version, label = _spec(request.model_spec)
        fields = list(request.metadata_field)
        if not fields:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        unsupported = [f for f in fields if f != "signature_def"]
        if unsupported:
            raise invalid_argument(f"Metadata field {unsupported[0]} is not supported")
        servable = self.manager.get(name, version, label)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(servable.signature_def_map)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def GetModelStatus(self, request, context):
        return _call(context, self._status, request)

    def _status(self, request):
        name, version, label = _spec(request.model_spec)
        response = get_model_status_pb2.GetModelStatusResponse()
        states = get_model_status_pb2.ModelVersionStatus.State
        for status in self.manager.status(name, version, label):
            entry = response.model_version_status.add()
            entry.version = status.version
            entry.state = states.Value(status.state)
            entry.status.error_code = getattr(grpc.StatusCode, status.error_code).value[0]
            entry.status.error_message = status.error_message
        return response


def make_grpc_server(manager: ModelManager, limits: Limits, host: str, port: int, max_threads: int = 8,
                     max_message_bytes: int = 16 << 20):
    """A ready (not started) grpc.Server and the port it bound (0 in `port` picks one).

    A message over `max_message_bytes` (`--grpc_max_message_bytes`) is refused by gRPC
    itself (RESOURCE_EXHAUSTED) before it is parsed.
    """
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="tfrec-lm-grpc"),
        options=[("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", max_message_bytes),
                 ("grpc.so_reuseport", 0)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(manager, limits), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_insecure_port(address)
    if not bound:
        raise OSError(f"could not bind gRPC to {address}")
    return server, bound
