"""TF Serving's REST API, with the standard library only: ``POST /v1/models/NAME[/versions/V]:predict`` and
``GET .../metadata``, each attempt bounded as a whole by a timeout, transient failures retried (`serving.retry`).

A reply that is not what TF Serving sends (not HTTP, not JSON, JSON without the expected outputs, rows of unequal
length) raises `ServingError` with status ``"bad_reply"`` and is not retried.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Sequence
from typing import Any

from mdcns_tf.savedmodel.signatures import SCORES, SERVING_DEFAULT, checked_max_len
from serving.recommendations import Recommendations, request_rows, signature_for, without_marker
from serving.retry import DEFAULT_RETRY, RetryPolicy, ServingError, ServingTimeout, call_with_retries, check_timeout

RETRYABLE_HTTP = frozenset({429, 502, 503, 504})


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
    try:
        return checked_max_len(max_len, name)
    except ValueError as e:
        raise ServingError(str(e)) from None


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
    items, scores = out.get(item_name), out.get(SCORES)
    if items is None or scores is None:
        raise _bad_reply(source, f"outputs {sorted(out)} lack {item_name!r} or 'scores'")
    for row_items, row_scores in zip(items, scores, strict=True):
        if not isinstance(row_items, list) or not isinstance(row_scores, list) or len(row_items) != len(row_scores):
            raise _bad_reply(source, f"{item_name!r} and 'scores' rows of different lengths")
        if not all(isinstance(i, item_type) and not isinstance(i, bool) for i in row_items):
            raise _bad_reply(source, f"{item_name!r} holds values that are not {item_type.__name__}s")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in row_scores):
            raise _bad_reply(source, "'scores' holds values that are not numbers")
    return [without_marker(i, s, padding) for i, s in zip(items, scores, strict=True)]


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
        retry: RetryPolicy = DEFAULT_RETRY,
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
        signature, name, padding = signature_for(keys)
        rows = request_rows(histories, keys, max_len or self.max_len(signature))
        out = self.predict({name: rows}, signature, columnar)
        return _recommendations(out, name, padding, self.base + ":predict")
