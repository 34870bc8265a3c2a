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
import os
import sys
from collections.abc import Sequence

from mdcns_tf.savedmodel.signatures import checked_item_id
from serving.grpc_client import GrpcClient
from serving.rest_client import RestClient
from serving.retry import RetryPolicy, ServingError, check_timeout


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
    # The command as typed (argparse would say "client.py" under python -m); not mdcns_tf.cli: the client takes only
    # the serving contract from the library.
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
            history = [checked_item_id(h) for h in history]
        except ValueError as e:
            parser.error(f"--history must be item ids (or pass --keys for raw item keys): {args.history!r}: {e}")
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
