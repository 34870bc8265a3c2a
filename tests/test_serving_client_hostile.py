"""The REST client (`serving.rest_client`) against a hostile server: replies that are not predictions, answers that
are not HTTP, a server that drips its answer, and command-line values that make no sense.

The server is a scripted TCP server on 127.0.0.1 (OS-assigned port): each test sets the raw bytes it answers with,
optionally sent a few bytes at a time with a pause. Every answer ends by itself within `MAX_DRIP_SECONDS`.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from serving import client
from serving.rest_client import RestClient
from serving.retry import RetryPolicy, ServingError, ServingTimeout

MAX_DRIP_SECONDS = 8.0  # a dripping answer stops here, whatever the client does: no test can hang
ONE_TRY = RetryPolicy(attempts=1)
TWO_TRIES = RetryPolicy(attempts=2, initial_backoff=0.01, max_backoff=0.01)
NO_ITEM = -3.4028234663852886e38


@dataclasses.dataclass
class Script:
    """What the server answers every request with: ``head`` at once, then ``drip`` one byte every ``pause`` s."""

    head: bytes = b""
    drip: bytes = b""
    pause: float = 0.0
    requests: int = 0


def http_reply(body: bytes, status: str = "200 OK") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


class ScriptedServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    script = Script()


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        script = self.server.script
        script.requests += 1
        length = 0
        for line in iter(self.rfile.readline, b""):  # the request head, then its body
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
            if line in (b"\r\n", b"\n"):
                break
        self.rfile.read(length)
        try:
            self.wfile.write(script.head)
            self.wfile.flush()
            deadline = time.monotonic() + MAX_DRIP_SECONDS
            for byte in script.drip:
                if time.monotonic() > deadline:
                    break
                time.sleep(script.pause)
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
        except OSError:
            pass  # the client gave up and closed the connection


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(("127.0.0.1", 0), Handler) as srv:
        thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield srv
        finally:
            srv.shutdown()
            thread.join(timeout=10)


def answering(server: ScriptedServer, head: bytes, drip: bytes = b"", pause: float = 0.0) -> RestClient:
    server.script = Script(head, drip, pause)
    return RestClient("127.0.0.1", server.server_address[1], "m", timeout=2.0, retry=TWO_TRIES)


# -- replies that are not predictions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "columnar"),
    [
        (b"<html>Service Unavailable</html>", False),  # a proxy's page with a 200
        (b"\xff\xfe\x00", False),  # not even UTF-8
        (b"[]", False),
        (b"{}", False),
        (b'{"predictions": 5}', False),
        (b'{"predictions": [7, 1]}', False),
        (b'{"predictions": [{"item_ids": [1, 2]}]}', False),  # no scores
        (b'{"predictions": [{"item_ids": [1, 2], "scores": [0.5]}]}', False),  # rows of different lengths
        (b'{"predictions": [{"item_ids": ["a"], "scores": [0.5]}]}', False),  # keys where ids are expected
        (b'{"predictions": [{"item_ids": [1], "scores": [null]}]}', False),
        (b'{"predictions": [{"item_ids": [1], "scores": [1]}, {"item_ids": [2], "scores": [1]}]}', False),  # 2 rows
        (b'{"outputs": [[1, 2]]}', True),
        (b'{"outputs": {"item_ids": [[1]], "scores": 0.5}}', True),
        (b'{"outputs": {"item_ids": [[1, 2]], "scores": [["x", 0.1]]}}', True),
    ],
)
def test_a_200_reply_that_is_not_a_prediction_is_a_serving_error(server, body, columnar):
    rest = answering(server, http_reply(body))
    with pytest.raises(ServingError, match="unexpected reply from") as error:
        rest.recommend([[3, 4]], max_len=4, columnar=columnar)
    assert (error.value.status, error.value.retryable) == ("bad_reply", False)
    assert server.script.requests == 1  # a wrong answer is not transient: no retry


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b"[1]",
        b'{"metadata": []}',
        b'{"metadata": {"signature_def": {"signature_def": "serving_default"}}}',
        b'{"metadata": {"signature_def": {"signature_def": {"serving_default": {"inputs": []}}}}}',
        b'{"metadata": {"signature_def": {"signature_def": {"serving_default": {"inputs": {"item_ids": '
        b'{"tensor_shape": {"dim": [{"size": "-1"}, {"size": "fifty"}]}}}}}}}}',
        b'{"metadata": {"signature_def": {"signature_def": {"serving_default": {"inputs": {"item_ids": '
        b'{"tensor_shape": {"dim": [{"size": "-1"}, {"size": "-1"}]}}}}}}}}',  # no fixed length
    ],
)
def test_metadata_without_a_usable_signature_is_a_serving_error(server, body):
    with pytest.raises(ServingError):
        answering(server, http_reply(body)).max_len()


def test_well_formed_replies_still_parse(server):
    """The checks above must not reject what TF Serving sends: the "no item" marker is dropped as before."""
    rows = json.dumps({"predictions": [{"item_ids": [7, 0], "scores": [1.5, NO_ITEM]}]}).encode()
    assert answering(server, http_reply(rows)).recommend([[3]], max_len=4) == [[(7, 1.5)]]
    columns = json.dumps({"outputs": {"item_keys": [["b", ""]], "scores": [[2, NO_ITEM]], "unknown_keys": [0]}})
    assert answering(server, http_reply(columns.encode())).recommend([["a"]], keys=True, columnar=True, max_len=4) == [
        [("b", 2.0)]
    ]


# -- answers that are not HTTP -----------------------------------------------------------------------------------------


def test_an_answer_that_is_not_http_is_a_serving_error(server):
    rest = answering(server, b"SSH-2.0-OpenSSH_9.6\r\n")
    with pytest.raises(ServingError, match="did not answer in HTTP") as error:
        rest.recommend([[3]], max_len=4)
    assert not error.value.retryable and server.script.requests == 1


def test_a_cut_answer_is_a_serving_error(server):
    cut = http_reply(b'{"predictions": [{"item_ids": [1], "scores": [0.5]}]}')[:-20]  # Content-Length not reached
    with pytest.raises(ServingError):
        answering(server, cut).recommend([[3]], max_len=4)
    # Closed before any answer: a transient failure, retried.
    with pytest.raises(ServingError, match="cannot reach") as error:
        answering(server, b"").recommend([[3]], max_len=4)
    assert error.value.retryable and server.script.requests == 2


# -- the timeout is a deadline for the whole answer --------------------------------------------------------------------


@pytest.mark.parametrize("where", ["status_line", "body"])
def test_a_dripping_server_cannot_hold_the_client_past_its_timeout(server, where):
    reply = http_reply(b'{"predictions": [{"item_ids": [1], "scores": [0.5]}]}' + b" " * 200)
    split = 5 if where == "status_line" else reply.index(b"\r\n\r\n") + 4
    # A byte every 0.1 s: every socket read succeeds well within the timeout, the answer takes ~20 s.
    rest = answering(server, reply[:split], drip=reply[split:], pause=0.1)
    rest.timeout = 1.0
    started = time.monotonic()
    with pytest.raises(ServingTimeout, match="within 1.0s") as error:
        rest.recommend([[3]], max_len=4)
    elapsed = time.monotonic() - started
    assert error.value.retryable and server.script.requests == 2
    assert elapsed < 4.0, f"2 attempts of 1 s took {elapsed:.1f} s"  # loose: a loaded machine


def test_a_server_that_never_answers_times_out(server):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts connections (the kernel does), never reads nor answers
    try:
        rest = RestClient("127.0.0.1", silent.getsockname()[1], "m", timeout=0.5, retry=ONE_TRY)
        started = time.monotonic()
        with pytest.raises(ServingTimeout):
            rest.recommend([[3]], max_len=4)
        assert time.monotonic() - started < 3.0
    finally:
        silent.close()


# -- command line and constructor values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--attempts", "0"], "--attempts"),
        (["--attempts", "-3"], "--attempts"),
        (["--timeout", "-1"], "--timeout"),
        (["--timeout", "0"], "--timeout"),
        (["--timeout", "nan"], "--timeout"),
        (["--timeout", "inf"], "--timeout"),
        (["--port", "70000"], "--port"),
        (["--max-len", "0"], "--max-len"),
        (["--version", "-1"], "--version"),
    ],
)
def test_nonsense_command_line_values_are_usage_errors(args, option, capsys):
    with pytest.raises(SystemExit) as exit_:
        client.main(["--host", "127.0.0.1", "--port", "1", "--history", "3", *args])
    assert exit_.value.code == 2
    assert option in capsys.readouterr().err


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf")])
def test_clients_refuse_a_timeout_that_is_not_a_duration(timeout):
    with pytest.raises(ValueError, match="timeout must be a finite number of seconds"):
        RestClient("127.0.0.1", 1, timeout=timeout)
