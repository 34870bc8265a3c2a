"""TF Serving's gRPC API (``PredictionService.Predict`` / ``GetModelMetadata``), port 8500 by default.

Needs ``grpcio`` and ``tensorflow-serving-api`` (the ``serving`` extra), which import TensorFlow: imported when a
client is made, so that importing this module stays cheap. A call's timeout is its gRPC deadline; transient
failures are retried (`serving.retry`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from mdcns_tf.savedmodel.signatures import ITEM_IDS, ITEM_KEYS, SCORES, SERVING_DEFAULT, checked_max_len
from serving.recommendations import Recommendations, request_rows, signature_for, without_marker
from serving.retry import DEFAULT_RETRY, RetryPolicy, ServingError, ServingTimeout, call_with_retries, check_timeout

T = TypeVar("T")

RETRYABLE_GRPC = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})


class GrpcClient:
    """A client of one model (``version``: one version, default the served one) on ``host:port``."""

    def __init__(
        self,
        host: str = "localhost",
        port: int = 8500,
        model: str = "mdcns",
        version: int | None = None,
        timeout: float = 5.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        max_message_mb: int = 64,
    ) -> None:
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.target = f"{host}:{port}"
        self.model = model
        self.version = version
        self.timeout = check_timeout(timeout)  # a gRPC timeout is a deadline for the whole call
        self.retry = retry
        size = max_message_mb * 1024 * 1024
        self.channel = grpc.insecure_channel(
            self.target, options=[("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]
        )
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self._max_len: dict[str, int] = {}

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _model_spec(self, spec: Any, signature: str = "") -> None:
        spec.name = self.model
        if signature:
            spec.signature_name = signature
        if self.version:
            spec.version.value = self.version

    def _call(self, method: Callable[..., T], request: Any) -> T:
        import grpc

        def once() -> T:
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as e:
                code = e.code().name if e.code() else "UNKNOWN"
                message = f"gRPC {code} from {self.target}: {e.details()}"
                if code == "DEADLINE_EXCEEDED":
                    raise ServingTimeout(message, code, True) from None
                raise ServingError(message, code, code in RETRYABLE_GRPC) from None

        return call_with_retries(once, self.retry)

    def predict(self, inputs: dict[str, Any], signature: str = SERVING_DEFAULT) -> dict[str, Any]:
        """``inputs``: name -> array-like batch. Returns name -> numpy array."""
        import numpy as np
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, signature)
        for name, value in inputs.items():
            array = np.asarray(value)
            if array.dtype.kind in "USO":
                array = array.astype(object)
            elif array.dtype.kind in "iu":
                array = array.astype(np.int32)
            request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
        response = self._call(self.stub.Predict, request)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def max_len(self, signature: str = SERVING_DEFAULT) -> int:
        if signature not in self._max_len:
            from tensorflow_serving.apis import get_model_metadata_pb2

            request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
            self._model_spec(request.model_spec)
            response = self._call(self.stub.GetModelMetadata, request)
            signatures = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(signatures)
            if signature not in signatures.signature_def:
                raise ServingError(
                    f"the model has no signature {signature!r}; it has {sorted(signatures.signature_def)}"
                )
            dims = next(iter(signatures.signature_def[signature].inputs.values())).tensor_shape.dim
            if len(dims) != 2:
                raise ServingError(f"signature {signature!r} has no (batch, max_len) input")
            try:
                self._max_len[signature] = checked_max_len(dims[1].size, signature)
            except ValueError as e:
                raise ServingError(str(e)) from None
        return self._max_len[signature]

    def recommend(
        self, histories: Sequence[Sequence[int | str]], keys: bool = False, max_len: int | None = None
    ) -> Recommendations:
        """Top-K ``(item, score)`` per history; items are ids, or raw keys with ``keys=True``."""
        signature, name, padding = signature_for(keys)
        rows = request_rows(histories, keys, max_len or self.max_len(signature))
        out = self.predict({name: rows}, signature)
        if keys:
            items = [[k.decode() for k in row] for row in out[ITEM_KEYS]]
        else:
            items = [[int(i) for i in row] for row in out[ITEM_IDS]]
        return [without_marker(i, s, padding) for i, s in zip(items, out[SCORES].tolist(), strict=True)]
