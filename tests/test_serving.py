"""The serving clients (`serving.rest_client`, `serving.grpc_client`, the `serving.client` command) against local
fakes of TF Serving's REST and gRPC APIs that evaluate the exported SavedModel.

The fakes listen on 127.0.0.1 with OS-assigned ports, answer like TF Serving (URL scheme, row/columnar JSON,
error bodies, PredictionService/GetModelMetadata), and can be told to fail or stall the next requests.
"""

from __future__ import annotations

import ast
import contextlib
import glob
import http.server
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc
from test_export import KEYS, MAX_LEN, N_ITEMS, TOP_K, histories, make_encoder, reference_top_k, write_vocabulary

import mdcns_tf  # noqa: F401
from mdcns_tf.savedmodel import publish, signatures
from serving import client
from serving.grpc_client import GrpcClient
from serving.recommendations import Recommendations, left_pad
from serving.rest_client import RestClient
from serving.retry import RetryPolicy, ServingError, ServingTimeout, call_with_retries

MODEL = "mdcns"


class FakeModel:
    """The exported SavedModel, evaluated as TF Serving would, plus failure injection shared by both fakes."""

    def __init__(self, path: str) -> None:
        self.loaded = tf.saved_model.load(path)
        proto = saved_model_pb2.SavedModel()
        with open(f"{path}/saved_model.pb", "rb") as f:
            proto.ParseFromString(f.read())
        self.signature_defs = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in proto.meta_graphs[0].signature_def.items():
            self.signature_defs.signature_def[name].CopyFrom(signature)
        self.lock = threading.Lock()
        self.fail_next = 0  # answer this many requests with UNAVAILABLE / 503
        self.stall_next = 0  # make this many requests wait `stall_seconds`
        self.stall_seconds = 0.0
        self.requests = 0
        self.signatures_run: set[str] = set()  # every signature a request asked for

    def injected_fault(self) -> str | None:
        """Consumes one injected fault: "fail", "stall" or None."""
        with self.lock:
            self.requests += 1
            if self.fail_next > 0:
                self.fail_next -= 1
                return "fail"
            if self.stall_next > 0:
                self.stall_next -= 1
                return "stall"
        return None

    def run(self, signature: str, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """Raises KeyError (unknown signature) or ValueError / InvalidArgumentError (bad input), like the server."""
        with self.lock:
            self.signatures_run.add(signature)
        function = self.loaded.signatures[signature]
        specs = function.structured_input_signature[1]
        if set(inputs) != set(specs):
            raise ValueError(f"expected inputs {sorted(specs)}, got {sorted(inputs)}")
        tensors = {name: tf.constant(np.asarray(value), dtype=specs[name].dtype) for name, value in inputs.items()}
        return {name: value.numpy() for name, value in function(**tensors).items()}


def _jsonable(value: np.ndarray) -> Any:
    if value.dtype == object:
        return np.vectorize(lambda b: b.decode())(value).tolist() if value.size else value.tolist()
    return value.tolist()


def make_rest_handler(model: FakeModel) -> type[http.server.BaseHTTPRequestHandler]:
    path_pattern = re.compile(rf"^/v1/models/{MODEL}(?:/versions/(\d+))?(:predict|/metadata)$")

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and closed the connection, as the timeout tests intend

        def route(self) -> str | None:
            match = path_pattern.match(self.path)
            if not match or (match.group(1) and match.group(1) != "1"):
                self.reply(404, {"error": f"Servable not found for request: {self.path}"})
                return None
            fault = model.injected_fault()
            if fault == "fail":
                self.reply(503, {"error": "Servable is loading"})
                return None
            if fault == "stall":
                time.sleep(model.stall_seconds)
            return match.group(2)

        def do_GET(self) -> None:
            if self.route() == "/metadata":
                # TF Serving writes the SignatureDefMap as proto-JSON with the proto field names (snake_case).
                metadata = json_format.MessageToDict(model.signature_defs, preserving_proto_field_name=True)
                self.reply(
                    200, {"model_spec": {"name": MODEL, "version": "1"}, "metadata": {"signature_def": metadata}}
                )

        def do_POST(self) -> None:
            if self.route() != ":predict":
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            signature = body.get("signature_name", "serving_default")
            try:
                if "instances" in body:
                    names = body["instances"][0].keys()
                    inputs = {name: [row[name] for row in body["instances"]] for name in names}
                else:
                    inputs = body["inputs"]
                outputs = model.run(signature, inputs)
            except (KeyError, ValueError, tf.errors.InvalidArgumentError) as e:
                message = e.message if isinstance(e, tf.errors.OpError) else str(e)
                self.reply(400, {"error": message})
                return
            if "instances" in body:
                batch = len(next(iter(outputs.values())))
                rows = [
                    {
                        name: _jsonable(value[i]) if value.ndim > 1 else value[i].item()
                        for name, value in outputs.items()
                    }
                    for i in range(batch)
                ]
                self.reply(200, {"predictions": rows})
            else:
                self.reply(200, {"outputs": {name: _jsonable(value) for name, value in outputs.items()}})

    return Handler


class FakePredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, model: FakeModel) -> None:
        self.model = model

    def _fault(self, context: grpc.ServicerContext) -> None:
        fault = self.model.injected_fault()
        if fault == "fail":
            context.abort(grpc.StatusCode.UNAVAILABLE, "Servable is loading")
        if fault == "stall":
            time.sleep(self.model.stall_seconds)

    def _check_spec(self, spec: Any, context: grpc.ServicerContext) -> None:
        if spec.name != MODEL or (spec.HasField("version") and spec.version.value != 1):
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {spec}")

    def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        self._check_spec(request.model_spec, context)
        self._fault(context)
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        try:
            outputs = self.model.run(request.model_spec.signature_name or "serving_default", inputs)
        except (KeyError, ValueError, tf.errors.InvalidArgumentError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, e.message if isinstance(e, tf.errors.OpError) else str(e))
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(request.model_spec)
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return response

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._check_spec(request.model_spec, context)
        self._fault(context)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = MODEL
        response.model_spec.version.value = 1
        response.metadata["signature_def"].Pack(self.model.signature_defs)
        return response


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Any, str]:
    root = tmp_path_factory.mktemp("serving")
    write_vocabulary(str(root / "data"), KEYS)
    encoder = make_encoder()
    path = publish.export_saved_model(
        encoder, str(root / "models"), MODEL, MAX_LEN, TOP_K, data_dir=str(root / "data"), verify=False
    )
    return encoder, path


@pytest.fixture(scope="module")
def model(exported) -> FakeModel:
    return FakeModel(exported[1])


@pytest.fixture(autouse=True)
def no_faults(model: FakeModel) -> Iterator[None]:
    yield
    model.fail_next = model.stall_next = 0


@pytest.fixture(scope="module")
def rest_port(model: FakeModel) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_rest_handler(model))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def grpc_port(model: FakeModel) -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(FakePredictionService(model), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None).wait(timeout=10)


FAST_RETRY = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.05)


@pytest.fixture
def grpc_client(grpc_port: int) -> Iterator[GrpcClient]:
    with GrpcClient("127.0.0.1", grpc_port, MODEL, timeout=10.0, retry=FAST_RETRY) as c:
        yield c


def expected(encoder: Any, rows: list[list[int]]) -> list[list[tuple[int, float]]]:
    ids = np.array([left_pad(r, MAX_LEN, 0) for r in rows], np.int32)
    top, scores = reference_top_k(encoder, ids, TOP_K)
    return [list(zip(t.tolist(), s.tolist(), strict=True)) for t, s in zip(top, scores, strict=True)]


def assert_same(got: Recommendations, want: Recommendations) -> None:
    assert [[item for item, _ in row] for row in got] == [[item for item, _ in row] for row in want]
    np.testing.assert_allclose([[s for _, s in row] for row in got], [[s for _, s in row] for row in want], rtol=1e-4)


@pytest.mark.parametrize("columnar", [False, True], ids=["instances", "inputs"])
def test_rest_recommend_matches_the_model(exported, rest_port, columnar):
    encoder, _ = exported
    rows = [[3, 17, 42], histories(1)[0][histories(1)[0] > 0].tolist(), list(range(1, 30))]  # the last is truncated
    rest = RestClient("127.0.0.1", rest_port, MODEL, timeout=10.0, retry=FAST_RETRY)
    assert rest.max_len() == MAX_LEN  # read from GET .../metadata
    assert_same(rest.recommend(rows, columnar=columnar), expected(encoder, rows))


def test_rest_keys_and_version(exported, rest_port):
    encoder, _ = exported
    rest = RestClient("127.0.0.1", rest_port, MODEL, version=1, timeout=10.0, retry=FAST_RETRY)
    assert rest.base.endswith(f"/v1/models/{MODEL}/versions/1")
    got = rest.recommend([[KEYS[2], "not-a-key", KEYS[16], KEYS[41]]], keys=True)
    want = expected(encoder, [[3, 17, 42]])
    assert [k for k, _ in got[0]] == [KEYS[i - 1] for i, _ in want[0]]
    missing = RestClient("127.0.0.1", rest_port, MODEL, version=7, timeout=10.0, retry=FAST_RETRY)
    with pytest.raises(ServingError, match="HTTP 404") as error:
        missing.recommend([[1, 2]], max_len=MAX_LEN)
    assert not error.value.retryable


def test_rest_bad_input_is_not_retried(model, rest_port):
    rest = RestClient("127.0.0.1", rest_port, MODEL, timeout=10.0, retry=FAST_RETRY)
    before = model.requests
    with pytest.raises(ServingError, match=re.escape(f"item_ids must be <= n_items ({N_ITEMS})")) as error:
        rest.recommend([[1, N_ITEMS + 3]], max_len=MAX_LEN)
    assert error.value.status == 400
    assert model.requests - before == 1


def test_rest_retries_a_transient_failure(exported, model, rest_port):
    rest = RestClient("127.0.0.1", rest_port, MODEL, timeout=10.0, retry=FAST_RETRY)
    model.fail_next = 2
    before = model.requests
    assert_same(rest.recommend([[3, 17, 42]], max_len=MAX_LEN), expected(exported[0], [[3, 17, 42]]))
    assert model.requests - before == 3
    model.fail_next = 5  # more failures than attempts: the 503 surfaces
    with pytest.raises(ServingError, match="HTTP 503") as error:
        rest.recommend([[3]], max_len=MAX_LEN)
    assert error.value.retryable


def test_rest_timeout_is_bounded(model, rest_port):
    rest = RestClient("127.0.0.1", rest_port, MODEL, timeout=0.3, retry=RetryPolicy(2, 0.01, 0.01))
    model.stall_next, model.stall_seconds = 2, 5.0
    started = time.monotonic()
    with pytest.raises(ServingTimeout, match="within 0.3s"):
        rest.recommend([[3]], max_len=MAX_LEN)
    assert time.monotonic() - started < 4.5  # 2 attempts x 0.3 s + backoff, not 2 x 5 s (loose: loaded CI)
    # A stall on the first attempt only: the retry answers (a timeout with room for a slow, loaded machine).
    patient = RestClient("127.0.0.1", rest_port, MODEL, timeout=2.0, retry=RetryPolicy(2, 0.01, 0.01))
    model.stall_next = 1
    before = model.requests
    assert len(patient.recommend([[3]], max_len=MAX_LEN)[0]) == TOP_K
    assert model.requests - before == 2


def test_rest_unreachable_server_fails_after_bounded_retries():
    with contextlib.closing(__import__("socket").socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        rest = RestClient("127.0.0.1", port, MODEL, timeout=1.0, retry=FAST_RETRY)
        with pytest.raises(ServingError, match="cannot reach") as error:
            rest.recommend([[3]], max_len=MAX_LEN)
    assert error.value.retryable


def test_grpc_recommend_matches_the_model(exported, grpc_client):
    encoder, _ = exported
    rows = [[3, 17, 42], [5], list(range(1, 30))]
    assert grpc_client.max_len() == MAX_LEN  # read with GetModelMetadata
    assert_same(grpc_client.recommend(rows), expected(encoder, rows))
    got = grpc_client.recommend([[KEYS[2], KEYS[16], KEYS[41]]], keys=True)
    assert [k for k, _ in got[0]] == [KEYS[i - 1] for i, _ in expected(encoder, [[3, 17, 42]])[0]]
    embeddings = grpc_client.predict({"item_ids": [1, 2]}, "item_embeddings")["embeddings"]
    np.testing.assert_array_equal(embeddings, encoder.item_embeddings.numpy()[[1, 2]])


def test_grpc_retries_a_transient_failure(exported, model, grpc_client):
    model.fail_next = 1
    before = model.requests
    assert_same(grpc_client.recommend([[3, 17, 42]], max_len=MAX_LEN), expected(exported[0], [[3, 17, 42]]))
    assert model.requests - before == 2


def test_grpc_bad_input_and_timeout(model, grpc_port):
    quick = GrpcClient("127.0.0.1", grpc_port, MODEL, timeout=0.3, retry=RetryPolicy(2, 0.01, 0.01))
    with quick:
        before = model.requests
        with pytest.raises(ServingError, match="(?s)INVALID_ARGUMENT.*item_ids must be >= 0") as error:
            quick.recommend([[3, -2]], max_len=MAX_LEN)
        assert error.value.status == "INVALID_ARGUMENT" and model.requests - before == 1
        model.stall_next, model.stall_seconds = 2, 5.0
        started = time.monotonic()
        with pytest.raises(ServingTimeout, match="DEADLINE_EXCEEDED"):
            quick.recommend([[3]], max_len=MAX_LEN)
        assert time.monotonic() - started < 4.5


def test_the_clients_and_the_export_share_one_set_of_signature_names(model, rest_port, grpc_client):
    """`mdcns_tf.savedmodel.signatures` is the contract: the SavedModel has exactly its signatures, inputs and
    outputs, and the clients ask for them by those names, written nowhere else in `serving`."""
    assert set(model.loaded.signatures) == set(signatures.SIGNATURES)
    for name, function in model.loaded.signatures.items():
        assert list(function.structured_input_signature[1]) == [signatures.INPUTS[name]], name
        assert set(function.structured_outputs) == set(signatures.OUTPUTS[name]), name
    rest = RestClient("127.0.0.1", rest_port, MODEL, timeout=10.0, retry=FAST_RETRY)
    model.signatures_run.clear()
    for keys in (False, True):
        history = [KEYS[2]] if keys else [3]
        assert rest.recommend([history], keys=keys) and grpc_client.recommend([history], keys=keys)
    assert model.signatures_run == {signatures.SERVING_DEFAULT, signatures.SERVE_KEYS}
    contract_names = set(signatures.SIGNATURES) | {signatures.ITEM_IDS, signatures.ITEM_KEYS, signatures.SCORES}
    for path in glob.glob(os.path.join(REPO, "serving", "*.py")):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        literals = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)}
        assert not literals & contract_names, f"{path} writes {sorted(literals & contract_names)} again"


def test_cli_prints_recommendations(exported, rest_port, grpc_port, capsys):
    encoder, _ = exported
    want = [item for item, _ in expected(encoder, [[3, 17, 42]])[0]]
    for extra in (
        ["--port", str(rest_port)],
        ["--port", str(rest_port), "--columnar"],
        ["--grpc", "--port", str(grpc_port)],
    ):
        assert client.main(["--host", "127.0.0.1", "--model", MODEL, "--history", "3,17,42", *extra]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert [int(line.split()[1]) for line in lines[1:]] == want
    assert client.main(["--host", "127.0.0.1", "--port", str(rest_port), "--history", "3,99999"]) == 1
    assert "item_ids must be <= n_items" in capsys.readouterr().err


def test_retry_policy_is_bounded():
    policy = RetryPolicy(attempts=5, initial_backoff=0.1, max_backoff=0.3, multiplier=2.0, jitter=0.0)
    assert list(policy.delays()) == pytest.approx([0.1, 0.2, 0.3, 0.3])
    calls, sleeps = [], []

    def flaky() -> str:
        calls.append(1)
        raise ServingError("busy", 503, retryable=True)

    with pytest.raises(ServingError):
        call_with_retries(flaky, policy, sleep=sleeps.append)
    assert len(calls) == 5 and len(sleeps) == 4
    assert left_pad([1, 2, 3], 5, 0) == [0, 0, 1, 2, 3]
    assert left_pad(list(range(10)), 3, 0) == [7, 8, 9]
