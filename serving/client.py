"""Clients for an mdcns export served by TensorFlow Serving: REST and gRPC, with timeouts and bounded retries.

    python -m serving.client --host localhost --model mdcns --history 3,17,42            # REST, port 8501
    python -m serving.client --host localhost --model mdcns --history 3,17,42 --grpc     # gRPC, port 8500
    python -m serving.client --host localhost --model mdcns --history B0001,B0042 --keys # raw item keys

A history is the user's items, oldest first. The client keeps the ``max_len`` most recent ones and left-pads them
(0 / ``""``), the layout the model was trained on; ``max_len`` is read once from the model's metadata
(``GET /v1/models/NAME/metadata`` or ``GetModelMetadata``) unless given. Results drop the "no item" marker
(id 0 / key ``""``), which the model returns for an empty history or when the catalog runs out of unseen items.

Retries: a request is retried when the failure is transient (connection refused/reset, timeout, HTTP 429/502/503/
504, gRPC UNAVAILABLE/DEADLINE_EXCEEDED/RESOURCE_EXHAUSTED), at most ``RetryPolicy.attempts`` times in all,
sleeping an exponentially growing, jittered delay in between. Predict is read-only, so repeating it is safe.
Bad input (HTTP 400, gRPC INVALID_ARGUMENT) and unknown models are never retried: the server's message is raised
as `ServingError`. The REST client needs only the standard library; the gRPC client needs ``grpcio`` and
``tensorflow-serving-api`` (the ``serving`` extra), which import TensorFlow.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

SERVING_DEFAULT = "serving_default"
SERVE_KEYS = "serve_keys"
RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
RETRYABLE_GRPC = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})


class ServingError(RuntimeError):
    """A request failed; ``status`` is the HTTP status or gRPC code name, ``retryable`` whether it was transient."""

    def __init__(self, message: str, status: str | int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class ServingTimeout(ServingError):
    """No answer within the per-request timeout, on every attempt."""


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: ``attempts`` tries in all, delays ``initial * multiplier**i`` capped at ``max_backoff``,
    each scaled by a random factor in ``[1 - jitter, 1 + jitter]`` so that many clients do not retry in step."""

    attempts: int = 3
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be >= 1")

    def delays(self) -> Iterator[float]:
        """The sleeps between attempts (``attempts - 1`` of them)."""
        delay = self.initial_backoff
        for _ in range(self.attempts - 1):
            yield min(delay, self.max_backoff) * random.uniform(1 - self.jitter, 1 + self.jitter)
            delay *= self.multiplier


def call_with_retries(call: Callable[[], T], policy: RetryPolicy, sleep: Callable[[float], None] = time.sleep) -> T:
    """Runs ``call`` until it succeeds, raises a non-retryable `ServingError`, or ``policy`` is exhausted."""
    delays = policy.delays()
    while True:
        try:
            return call()
        except ServingError as error:
            if not error.retryable:
                raise
            delay = next(delays, None)
            if delay is None:
                raise
            sleep(delay)


def left_pad(history: Sequence[T], max_len: int, padding: T) -> list[T]:
    """The ``max_len`` most recent items of ``history`` (oldest first), left-padded with ``padding``."""
    recent = list(history)[-max_len:] if max_len > 0 else []
    return [padding] * (max_len - len(recent)) + recent


Recommendations = list[list[tuple[Any, float]]]


def _pairs(items: Sequence[Any], scores: Sequence[float], no_item: Any) -> list[tuple[Any, float]]:
    return [(item, float(score)) for item, score in zip(items, scores, strict=True) if item != no_item]


def _max_len_from_signature(signature: dict[str, Any], name: str) -> int:
    """Reads the sequence length from a SignatureDef in proto-JSON form (shape sizes may be strings)."""
    try:
        tensor = next(iter(signature["inputs"].values()))
        # TF Serving writes proto field names (tensor_shape); accept the camelCase JSON mapping too.
        dims = (tensor.get("tensor_shape") or tensor["tensorShape"])["dim"]
        return int(dims[1]["size"])
    except (KeyError, IndexError, StopIteration, ValueError) as e:
        raise ServingError(f"signature {name!r} has no (batch, max_len) input in the model metadata") from e


class RestClient:
    """TF Serving's REST API: ``POST /v1/models/NAME[/versions/V]:predict``.

    ``columnar=False`` sends the row format (``{"instances": [{"item_ids": [...]}, ...]}`` ->
    ``{"predictions": [...]}``), ``columnar=True`` the columnar one (``{"inputs": {"item_ids": [[...], ...]}}`` ->
    ``{"outputs": {...}}``). ``timeout`` (seconds) bounds each attempt.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 8501,
        model: str = "mdcns",
        version: int | None = None,
        timeout: float = 5.0,
        retry: RetryPolicy = RetryPolicy(),
        scheme: str = "http",
    ) -> None:
        self.base = f"{scheme}://{host}:{port}/v1/models/{model}" + (f"/versions/{version}" if version else "")
        self.timeout = timeout
        self.retry = retry
        self._max_len: dict[str, int] = {}

    def _request(self, url: str, body: dict[str, Any] | None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error", e.reason)
            except (ValueError, AttributeError):
                message = e.reason
            raise ServingError(f"HTTP {e.code} from {url}: {message}", e.code, e.code in RETRYABLE_HTTP) from None
        except TimeoutError as e:  # socket.timeout is an alias of TimeoutError
            raise ServingTimeout(f"no answer from {url} within {self.timeout}s", "timeout", True) from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise ServingTimeout(f"no answer from {url} within {self.timeout}s", "timeout", True) from e
            raise ServingError(f"cannot reach {url}: {e.reason}", "unreachable", True) from e
        except ConnectionError as e:  # reset mid-response
            raise ServingError(f"connection to {url} failed: {e}", "unreachable", True) from e

    def predict(
        self, inputs: dict[str, list[Any]], signature: str = SERVING_DEFAULT, columnar: bool = False
    ) -> dict[str, list[Any]]:
        """``inputs``: name -> batch (list of rows). Returns name -> batch of outputs, whichever format was sent."""
        if columnar:
            body: dict[str, Any] = {"signature_name": signature, "inputs": inputs}
        else:
            batch = len(next(iter(inputs.values())))
            body = {
                "signature_name": signature,
                "instances": [{k: v[i] for k, v in inputs.items()} for i in range(batch)],
            }
        answer = call_with_retries(lambda: self._request(self.base + ":predict", body), self.retry)
        if columnar:
            return answer["outputs"]
        rows = answer["predictions"]
        return {name: [row[name] for row in rows] for name in (rows[0] if rows else {})}

    def metadata(self) -> dict[str, Any]:
        """``GET .../metadata``: the model spec and the SignatureDefs in proto-JSON form."""
        return call_with_retries(lambda: self._request(self.base + "/metadata", None), self.retry)

    def max_len(self, signature: str = SERVING_DEFAULT) -> int:
        if signature not in self._max_len:
            signatures = self.metadata()["metadata"]["signature_def"]["signature_def"]
            if signature not in signatures:
                raise ServingError(f"the model has no signature {signature!r}; it has {sorted(signatures)}")
            self._max_len[signature] = _max_len_from_signature(signatures[signature], signature)
        return self._max_len[signature]

    def recommend(
        self,
        histories: Sequence[Sequence[int | str]],
        keys: bool = False,
        columnar: bool = False,
        max_len: int | None = None,
    ) -> Recommendations:
        """Top-K ``(item, score)`` per history; items are ids, or raw keys with ``keys=True``."""
        signature = SERVE_KEYS if keys else SERVING_DEFAULT
        max_len = max_len or self.max_len(signature)
        name, padding = ("item_keys", "") if keys else ("item_ids", 0)
        rows = [left_pad([str(i) if keys else int(i) for i in h], max_len, padding) for h in histories]
        out = self.predict({name: rows}, signature, columnar)
        items = out["item_keys" if keys else "item_ids"]
        return [_pairs(i, s, padding) for i, s in zip(items, out["scores"], strict=True)]


class GrpcClient:
    """TF Serving's gRPC API (``PredictionService.Predict`` / ``GetModelMetadata``) on port 8500 by default."""

    def __init__(
        self,
        host: str = "localhost",
        port: int = 8500,
        model: str = "mdcns",
        version: int | None = None,
        timeout: float = 5.0,
        retry: RetryPolicy = RetryPolicy(),
        max_message_mb: int = 64,
    ) -> None:
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.target = f"{host}:{port}"
        self.model = model
        self.version = version
        self.timeout = timeout
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
            self._max_len[signature] = int(dims[1].size)
        return self._max_len[signature]

    def recommend(
        self, histories: Sequence[Sequence[int | str]], keys: bool = False, max_len: int | None = None
    ) -> Recommendations:
        """Top-K ``(item, score)`` per history; items are ids, or raw keys with ``keys=True``."""
        signature = SERVE_KEYS if keys else SERVING_DEFAULT
        max_len = max_len or self.max_len(signature)
        name, padding = ("item_keys", "") if keys else ("item_ids", 0)
        rows = [left_pad([str(i) if keys else int(i) for i in h], max_len, padding) for h in histories]
        out = self.predict({name: rows}, signature)
        if keys:
            items = [[k.decode() for k in row] for row in out["item_keys"]]
        else:
            items = [[int(i) for i in row] for row in out["item_ids"]]
        return [_pairs(i, s, padding) for i, s in zip(items, out["scores"].tolist(), strict=True)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=0, help="default 8501 (REST) or 8500 (gRPC)")
    parser.add_argument("--model", default="mdcns", help="model name on the server (MODEL_NAME)")
    parser.add_argument("--version", type=int, default=None, help="a specific version; default: the served one")
    parser.add_argument("--history", required=True, help="comma-separated items, oldest first: 3,17,42")
    parser.add_argument("--keys", action="store_true", help="the history is raw item keys (serve_keys signature)")
    parser.add_argument("--grpc", action="store_true", help="use gRPC instead of REST")
    parser.add_argument("--columnar", action="store_true", help="REST: columnar `inputs` instead of `instances`")
    parser.add_argument("--max-len", type=int, default=None, help="sequence length; default: from the metadata")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per attempt")
    parser.add_argument("--attempts", type=int, default=3, help="tries in all for transient failures")
    args = parser.parse_args(argv)

    history: list[int | str] = [h.strip() for h in args.history.split(",") if h.strip()]
    if not args.keys:
        try:
            history = [int(h) for h in history]
        except ValueError:
            parser.error(f"--history must be integer ids (or pass --keys for raw item keys): {args.history!r}")
    retry = RetryPolicy(attempts=args.attempts)
    try:
        if args.grpc:
            with GrpcClient(args.host, args.port or 8500, args.model, args.version, args.timeout, retry) as client:
                result = client.recommend([history], keys=args.keys, max_len=args.max_len)[0]
        else:
            client = RestClient(args.host, args.port or 8501, args.model, args.version, args.timeout, retry)
            result = client.recommend([history], keys=args.keys, columnar=args.columnar, max_len=args.max_len)[0]
    except ServingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{'rank':>4}  {'item':<20} score")
    for rank, (item, score) in enumerate(result, start=1):
        print(f"{rank:>4}  {item!s:<20} {score:.4f}")
    if not result:
        print("(no recommendation: none of the history items is known to the model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
