"""Clients for an mdcns export served by TensorFlow Serving: REST and gRPC, with timeouts and bounded retries.

    python -m serving.client --host localhost --model mdcns --history 3,17,42            # REST, port 8501
    python -m serving.client --host localhost --model mdcns --history 3,17,42 --grpc     # gRPC, port 8500
    python -m serving.client --host localhost --model mdcns --history B0001,B0042 --keys # raw item keys

A history is the user's items, oldest first. The client keeps the ``max_len`` most recent ones and left-pads them
(0 / ``""``), the layout the model was trained on; ``max_len`` is read once from the model's metadata
(``GET /v1/models/NAME/metadata`` or ``GetModelMetadata``) unless given. Results drop the "no item" marker
(id 0 / key ``""``), which the model returns for an empty history or when the catalog runs out of unseen items.

Timeouts: ``timeout`` bounds each attempt as a whole (connecting, sending, every read of the answer), not each
socket operation, so a server that drips its answer byte by byte cannot hold a client longer than that; a call
takes at most about ``attempts x timeout`` plus the backoff sleeps.

A reply that is not what TF Serving sends (not HTTP, not JSON, JSON without the expected outputs, rows of unequal
length) raises `ServingError` with status ``"bad_reply"`` and is not retried.

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
import http.client
import json
import math
import os
import random
import socket
import sys
import threading
import time
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
    """No complete answer within the timeout, on every attempt."""


def check_timeout(timeout: float) -> float:
    """``timeout`` if it is a finite number of seconds above 0, else `ValueError`."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (0 < timeout < math.inf):
        raise ValueError(f"timeout must be a finite number of seconds above 0, got {timeout!r}")
    return float(timeout)


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


def _bad_reply(source: str, what: str) -> ServingError:
    return ServingError(f"unexpected reply from {source}: {what}", "bad_reply", retryable=False)


def _max_len_from_signature(signature: Any, name: str) -> int:
    """Reads the sequence length from a SignatureDef in proto-JSON form (shape sizes may be strings)."""
    try:
        tensor = next(iter(signature["inputs"].values()))
        # TF Serving writes proto field names (tensor_shape); accept the camelCase JSON mapping too.
        dims = (tensor.get("tensor_shape") or tensor["tensorShape"])["dim"]
        max_len = int(dims[1]["size"])
    except (KeyError, IndexError, StopIteration, ValueError, TypeError, AttributeError) as e:
        raise ServingError(f"signature {name!r} has no (batch, max_len) input in the model metadata") from e
    if max_len <= 0:
        raise ServingError(f"signature {name!r} has no fixed max_len in the model metadata (size {max_len})")
    return max_len


def _named_outputs(answer: Any, columnar: bool, batch: int, source: str) -> dict[str, list[Any]]:
    """A predict reply -> output name -> list of ``batch`` values, or `ServingError` if it is not that shape."""
    if columnar:
        outputs = answer.get("outputs") if isinstance(answer, dict) else None
        if not isinstance(outputs, dict) or not outputs:
            raise _bad_reply(source, "no 'outputs' object of named outputs")
    else:
        rows = answer.get("predictions") if isinstance(answer, dict) else None
        if not isinstance(rows, list) or not all(isinstance(row, dict) and row for row in rows):
            raise _bad_reply(source, "no 'predictions' list of named outputs per row")
        if any(row.keys() != rows[0].keys() for row in rows):
            raise _bad_reply(source, "rows of 'predictions' with different outputs")
        outputs = {name: [row[name] for row in rows] for name in (rows[0] if rows else {})}
    for name, value in outputs.items():
        if not isinstance(value, list) or len(value) != batch:
            raise _bad_reply(source, f"output {name!r} is not a list of {batch} rows")
    return outputs


def _recommendations(out: dict[str, list[Any]], item_name: str, padding: Any, source: str) -> Recommendations:
    """Validated ``(item, score)`` rows from the outputs of ``serving_default`` / ``serve_keys``."""
    item_type = str if isinstance(padding, str) else int
    items, scores = out.get(item_name), out.get("scores")
    if items is None or scores is None:
        raise _bad_reply(source, f"outputs {sorted(out)} lack {item_name!r} or 'scores'")
    for row_items, row_scores in zip(items, scores, strict=True):
        if not isinstance(row_items, list) or not isinstance(row_scores, list) or len(row_items) != len(row_scores):
            raise _bad_reply(source, f"{item_name!r} and 'scores' rows of different lengths")
        if not all(isinstance(i, item_type) and not isinstance(i, bool) for i in row_items):
            raise _bad_reply(source, f"{item_name!r} holds values that are not {item_type.__name__}s")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in row_scores):
            raise _bad_reply(source, "'scores' holds values that are not numbers")
    return [_pairs(i, s, padding) for i, s in zip(items, scores, strict=True)]


def _shutdown(sock: socket.socket | None) -> None:
    """Wakes a thread blocked on ``sock``: its pending read returns end-of-file at once."""
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


class RestClient:
    """TF Serving's REST API: ``POST /v1/models/NAME[/versions/V]:predict``.

    ``columnar=False`` sends the row format (``{"instances": [{"item_ids": [...]}, ...]}`` ->
    ``{"predictions": [...]}``), ``columnar=True`` the columnar one (``{"inputs": {"item_ids": [[...], ...]}}`` ->
    ``{"outputs": {...}}``). ``timeout`` (seconds) bounds each attempt as a whole. Talks HTTP/1.1 straight to
    ``host:port`` with `http.client` (``http_proxy`` variables are not used).
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
        if scheme not in ("http", "https"):
            raise ValueError(f"scheme must be http or https, got {scheme!r}")
        self.host, self.port, self.scheme = host, port, scheme
        self.path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "")
        self.base = f"{scheme}://{host}:{port}{self.path}"
        self.timeout = check_timeout(timeout)
        self.retry = retry
        self._max_len: dict[str, int] = {}

    def _exchange(self, method: str, path: str, data: bytes | None) -> tuple[int, str, bytes]:
        """One HTTP exchange finished within ``timeout`` seconds in all -> (status, reason, body).

        The socket timeout alone bounds each read, and a server sending a byte a second never trips it; a timer
        shuts the socket down at the deadline instead, which ends whatever read is pending. Raises `TimeoutError`
        past the deadline, `OSError` / `http.client.HTTPException` for what went wrong before it.
        """
        factory = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        connection = factory(self.host, self.port, timeout=self.timeout)
        expired = threading.Event()
        # The socket itself, not connection.sock: the connection lets go of it once a "Connection: close"
        # response takes it over, and the body is read after that.
        sockets: list[socket.socket] = []

        def expire() -> None:
            expired.set()  # before reading `sockets`: a connect that ends later sees the flag below
            for sock in sockets:
                _shutdown(sock)

        timer = threading.Timer(self.timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            connection.connect()
            sockets.append(connection.sock)
            if expired.is_set():
                raise TimeoutError
            connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as e:
            if expired.is_set():
                raise TimeoutError from e
            raise
        finally:
            timer.cancel()
            connection.close()
        if expired.is_set():  # a body without Content-Length reads as complete when the shutdown ends it
            raise TimeoutError
        return response.status, response.reason, body

    def _request(self, suffix: str, body: dict[str, Any] | None) -> Any:
        """One attempt: the parsed JSON of a 200 reply, else `ServingError` (``retryable`` when transient)."""
        url = self.base + suffix
        data = None if body is None else json.dumps(body).encode()
        try:
            status, reason, payload = self._exchange("GET" if data is None else "POST", self.path + suffix, data)
        except TimeoutError as e:  # socket.timeout is an alias of TimeoutError
            raise ServingTimeout(f"no complete answer from {url} within {self.timeout}s", "timeout", True) from e
        except ConnectionError as e:  # refused, reset, closed before answering
            raise ServingError(f"cannot reach {url}: {e!r}", "unreachable", True) from e
        except http.client.HTTPException as e:
            raise ServingError(f"{url} did not answer in HTTP: {e!r}", "bad_reply", False) from e
        except OSError as e:  # name resolution, no route to host
            raise ServingError(f"cannot reach {url}: {e}", "unreachable", True) from e
        if status != 200:
            try:
                message = json.loads(payload).get("error", reason)
            except (ValueError, AttributeError):
                message = reason
            raise ServingError(f"HTTP {status} from {url}: {message}", status, status in RETRYABLE_HTTP)
        try:
            return json.loads(payload)
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            raise _bad_reply(url, f"HTTP 200 with a body that is not JSON: {payload[:120]!r}") from None

    def predict(
        self, inputs: dict[str, list[Any]], signature: str = SERVING_DEFAULT, columnar: bool = False
    ) -> dict[str, list[Any]]:
        """``inputs``: name -> batch (list of rows). Returns name -> batch of outputs, whichever format was sent."""
        batch = len(next(iter(inputs.values())))
        if columnar:
            body: dict[str, Any] = {"signature_name": signature, "inputs": inputs}
        else:
            body = {
                "signature_name": signature,
                "instances": [{k: v[i] for k, v in inputs.items()} for i in range(batch)],
            }
        answer = call_with_retries(lambda: self._request(":predict", body), self.retry)
        return _named_outputs(answer, columnar, batch, self.base + ":predict")

    def metadata(self) -> dict[str, Any]:
        """``GET .../metadata``: the model spec and the SignatureDefs in proto-JSON form."""
        answer = call_with_retries(lambda: self._request("/metadata", None), self.retry)
        if not isinstance(answer, dict):
            raise _bad_reply(self.base + "/metadata", "not a JSON object")
        return answer

    def max_len(self, signature: str = SERVING_DEFAULT) -> int:
        if signature not in self._max_len:
            answer = self.metadata()
            try:
                signatures = answer["metadata"]["signature_def"]["signature_def"]
            except (KeyError, TypeError):
                signatures = None
            if not isinstance(signatures, dict):
                raise _bad_reply(self.base + "/metadata", "no metadata.signature_def.signature_def object")
            if signature not in signatures:
                raise ServingError(f"the model has no signature {signature!r}; it has {sorted(map(str, signatures))}")
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
        return _recommendations(out, name, padding, self.base + ":predict")


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


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def port_number(text: str) -> int:
    """argparse type: a TCP port (0 = the protocol's default)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in [0, 65535], got {value}")
    return value


def seconds(text: str) -> float:
    """argparse type: a finite number of seconds above 0."""
    try:
        return check_timeout(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds above 0, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    # The command as typed (argparse would say "client.py" under python -m); not mdcns_tf.cli, to keep the REST
    # client free of the package's imports.
    script = "mdcns-serving-client"
    prog = script if os.path.basename(sys.argv[0]) == script else "python -m serving.client"
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=port_number, default=0, help="default 8501 (REST) or 8500 (gRPC)")
    parser.add_argument("--model", default="mdcns", help="model name on the server (MODEL_NAME)")
    parser.add_argument(
        "--version", type=positive_int, default=None, help="a specific version; default: the served one"
    )
    parser.add_argument("--history", required=True, help="comma-separated items, oldest first: 3,17,42")
    parser.add_argument("--keys", action="store_true", help="the history is raw item keys (serve_keys signature)")
    parser.add_argument("--grpc", action="store_true", help="use gRPC instead of REST")
    parser.add_argument("--columnar", action="store_true", help="REST: columnar `inputs` instead of `instances`")
    parser.add_argument(
        "--max-len", type=positive_int, default=None, help="sequence length; default: from the metadata"
    )
    parser.add_argument(
        "--timeout", type=seconds, default=5.0, help="seconds an attempt may take in all, the whole answer read"
    )
    parser.add_argument("--attempts", type=positive_int, default=3, help="tries in all for transient failures")
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
