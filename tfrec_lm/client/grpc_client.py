"""`GrpcClient`: TF Serving's gRPC API on the official `tensorflow-serving-api` stubs.

`PredictionServiceStub.Predict` / `GetModelMetadata`, `ModelServiceStub.GetModelStatus`;
a per-call deadline; gRPC's own retry policy on UNAVAILABLE. A failed call raises the
`ClientError` subclass of its status code, with TF Serving's HTTP status for the code
(`tfrec_lm.protocol.HTTP_STATUS`).
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

import numpy as np

from tfrec_lm.client.common import DEFAULT_MODEL, DEFAULT_SERVERS, DEFAULT_SIGNATURE, as_str_array, host_port
from tfrec_lm.client.errors import ClientError, ServingRequestError, ServingTimeout, ServingUnavailable
from tfrec_lm.protocol import HTTP_STATUS, grpc_code, tensor_proto

# gRPC codes that mean the server rejected the request (ServingRequestError, never retried).
REQUEST_ERROR_CODES = frozenset({"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "OUT_OF_RANGE",
                                 "ALREADY_EXISTS", "PERMISSION_DENIED", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED",
                                 "UNIMPLEMENTED"})

class GrpcClient:
    """TF Serving gRPC client on the official `tensorflow-serving-api` stubs.

    Args:
        server: str. `host:port` of the gRPC API.
        model_name: str.
        version: int or None. a specific version; None: the newest served.
        label: str or None. a version label (instead of `version`).
        timeout: float. deadline of each call in seconds (retries included).
        retries: int. retries on UNAVAILABLE (gRPC's retry policy; at most 4).
        initial_backoff: float. seconds before the first retry (doubling, at most 2 s).
        max_message_bytes: int. largest message sent or received.
    """

    protocol = "grpc"

    def __init__(self, server: str = DEFAULT_SERVERS["grpc"], model_name: str = DEFAULT_MODEL,
                 version: int | None = None, label: str | None = None, timeout: float = 10.0, retries: int = 3,
                 initial_backoff: float = 0.1, max_message_bytes: int = 256 << 20):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        if version is not None and label:
            raise ValueError("give a version or a label, not both")
        self.target = host_port(server)
        self.model_name, self.version, self.label, self.timeout = model_name, version, label, timeout
        self.last_model_spec = None  # the ModelSpec (name, version, signature) of the last Predict answer
        self.retries = max(0, min(int(retries), 4))
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if self.retries:
            config = {"methodConfig": [{
                "name": [{"service": "tensorflow.serving.PredictionService"},
                         {"service": "tensorflow.serving.ModelService"}],
                "retryPolicy": {"maxAttempts": self.retries + 1, "initialBackoff": f"{initial_backoff:g}s",
                                "maxBackoff": "2s", "backoffMultiplier": 2,
                                "retryableStatusCodes": ["UNAVAILABLE"]},
            }]}
            options += [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(config))]
        else:
            options += [("grpc.enable_retries", 0)]
        self.channel = grpc.insecure_channel(self.target, options=options)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _model_spec(self, spec, signature_name: str = "") -> None:
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = int(self.version)
        elif self.label:
            spec.version_label = self.label
        if signature_name:
            spec.signature_name = signature_name

    def _call(self, method, request):
        import grpc

        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            code = error.code()
            name = code.name if code is not None else "UNKNOWN"
            message = error.details() or name
            if name in REQUEST_ERROR_CODES:
                raise ServingRequestError(message, status=HTTP_STATUS[name], code=name) from None
            if name == "UNAVAILABLE":
                raise ServingUnavailable(f"{message} (after {self.retries} retries)", status=HTTP_STATUS[name],
                                         code=name) from None
            if name == "DEADLINE_EXCEEDED":
                raise ServingTimeout(f"no answer within {self.timeout:g} s", status=HTTP_STATUS[name],
                                     code=name) from None
            raise ClientError(message, status=500, code=name) from None

    def predict_request(self, inputs: Mapping[str, np.ndarray], signature_name: str = DEFAULT_SIGNATURE,
                        output_filter: Sequence[str] = ()):
        """The `PredictRequest` for numpy inputs (strings are sent as UTF-8 bytes)."""
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, signature_name)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tensor_proto(value))
        request.output_filter.extend(output_filter)
        return request

    def predict(self, inputs: Mapping[str, np.ndarray], signature_name: str = DEFAULT_SIGNATURE,
                output_filter: Sequence[str] = ()) -> dict:
        """Runs a signature; {output name: np.ndarray} (strings as str objects)."""
        import tensorflow as tf

        response = self._call(self.stub.Predict, self.predict_request(inputs, signature_name, output_filter))
        outputs = {}
        for name, proto in response.outputs.items():
            array = tf.make_ndarray(proto)
            outputs[name] = as_str_array(array) if array.dtype == object else array
        self.last_model_spec = response.model_spec
        return outputs

    def metadata(self) -> dict:
        """Like REST's `/metadata`: {"model_spec": ..., "metadata": {"signature_def": ...}}."""
        from google.protobuf.json_format import MessageToDict
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._model_spec(request.model_spec)
        request.metadata_field.append("signature_def")
        response = self._call(self.stub.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return {"model_spec": {"name": response.model_spec.name, "signature_name": "",
                               "version": str(response.model_spec.version.value)},
                "metadata": {"signature_def": MessageToDict(signature_map, preserving_proto_field_name=True)}}

    def model_status(self) -> dict:
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec)
        response = self._call(self.model_stub.GetModelStatus, request)
        states = get_model_status_pb2.ModelVersionStatus.State
        return {"model_version_status": [
            {"version": str(s.version), "state": states.Name(s.state),
             "status": {"error_code": _code_name(s.status.error_code), "error_message": s.status.error_message}}
            for s in response.model_version_status]}


def _code_name(number: int) -> str:
    """The name of a gRPC status code number (the number itself when unknown)."""
    code = grpc_code(number)
    return code.name if code is not None else str(number)
