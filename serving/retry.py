"""What both clients do when a request fails: the errors they raise, timeouts, and bounded retries with jittered
exponential backoff (only transient failures are retried; predict is read-only, so repeating it is safe)."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


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


# The policy of a client made without one.
DEFAULT_RETRY = RetryPolicy()


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
