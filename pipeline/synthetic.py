"""Synthetic interaction logs with learnable sequential structure, streamed to an ``interactions`` file.

    python -m pipeline.synthetic --output FILE --users N --items M --events E --seed S

Generative model (all draws from ``numpy.random.default_rng(seed)``, so a seed fixes the file byte for byte):

- Item popularity is Zipf-like (``p(rank r) ~ 1 / r**popularity_exponent``) over a seeded permutation of the items.
- Every item has ``successors`` (default 3) seeded successor items with weights 0.6/0.3/0.1 (a sparse Markov chain).
- A user starts at a popularity draw; each next item follows the chain with probability ``follow`` (default 0.8)
  and is otherwise a popularity draw ("noise"). So the next item is mostly predictable from the last one, which a
  sequential model (SASRec) learns and a popularity baseline cannot.
- Sequence lengths average ``events / users`` with seeded variation (at least ``min_len``) and sum exactly to
  ``events``. Timestamps increase by 1..3600 s per event from a per-user start.

``--drift D`` (0 < D <= 1; default 0, the model above, byte for byte) makes the log drift on one global clock of
``SPAN_DAYS`` days from ``START``: ids are introduction order, the catalogue starts with the first ``(1 - D) *
items`` and grows linearly to all of them at the end of the span; popularity draws are Zipf over the items on offer
ranked newest first (yesterday's hits fade as new items arrive); an item's successors are near it in introduction
order (within ``DRIFT_WINDOW``, mostly later ones), and a successor not yet on offer is replaced by a popularity
draw. Each user is active over a seeded window of 5-50% of the span (event times uniform in it, sorted), so a
global time cut finds users on both sides of it.

Rows ``user \\t item \\t timestamp`` (ids 1..N, 1..M) are written with users interleaved like a real log: a pool of
``pool`` active users emits events in random order, so the file is not grouped by user and the pipeline's
per-user chronological sort matters. Memory is O(items * successors + pool * sequence length): 10M events stream.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import TextIO

import numpy as np


def check_sizes(users: int, items: int, events: int, min_len: int) -> None:
    if users <= 0 or items < 2 or min_len < 1 or events < users * min_len:
        raise ValueError(
            f"need users > 0, items >= 2, min_len >= 1 and events >= users * min_len ({users} * {min_len}); "
            f"got users={users}, items={items}, events={events}"
        )


def sequence_lengths(users: int, events: int, min_len: int, rng: np.random.Generator) -> Iterator[int]:
    """Streams ``users`` lengths >= ``min_len`` summing exactly to ``events`` (pairs of users get +d / -d)."""
    base, extra = divmod(events, users)
    spread = base - min_len  # the largest symmetric deviation that keeps both users of a pair >= min_len
    for u in range(0, users, 2):
        delta = int(rng.integers(0, spread + 1)) if spread > 0 and u + 1 < users else 0
        for v, d in ((u, delta), (u + 1, -delta)):
            if v < users:
                yield base + d + (1 if v < extra else 0)


class MarkovItems:
    """The item model: popularity draws and a seeded successor table (ids are 1-based)."""

    def __init__(
        self, items: int, rng: np.random.Generator, successors: int, follow: float, popularity_exponent: float
    ) -> None:
        self.items = items
        self.follow = follow
        ranks = np.arange(1, items + 1, dtype=np.float64)
        weights = 1.0 / ranks**popularity_exponent
        self.popularity_cdf = np.cumsum(weights / weights.sum())
        self.popular_order = rng.permutation(items) + 1  # rank r -> item id
        self.successors = rng.integers(1, items + 1, size=(items + 1, successors))
        w = np.array([0.6, 0.3, 0.1][:successors] + [0.0] * max(0, successors - 3), dtype=np.float64)
        w = w if w.sum() > 0 else np.ones(successors)
        self.successor_cdf = np.cumsum(w / w.sum())

    def popular(self, rng: np.random.Generator, n: int) -> np.ndarray:
        ranks = np.searchsorted(self.popularity_cdf, rng.random(n), side="right")
        return self.popular_order[np.minimum(ranks, self.items - 1)]

    def walk(self, rng: np.random.Generator, length: int) -> np.ndarray:
        """One user's item ids, shape (length,)."""
        noise = self.popular(rng, length)
        follows = rng.random(length) < self.follow
        choice = np.searchsorted(self.successor_cdf, rng.random(length), side="right")
        choice = np.minimum(choice, self.successors.shape[1] - 1)
        out = np.empty(length, dtype=np.int64)
        current = int(noise[0])
        out[0] = current
        for t in range(1, length):
            current = int(self.successors[current, choice[t]]) if follows[t] else int(noise[t])
            out[t] = current
        return out


START = 1_600_000_000
SPAN_DAYS = 365
DRIFT_WINDOW = 100


class DriftingItems:
    """The item model of ``--drift`` (module docstring); ``walk`` takes each event's time as a fraction of the span."""

    def __init__(
        self,
        items: int,
        rng: np.random.Generator,
        successors: int,
        follow: float,
        popularity_exponent: float,
        drift: float,
    ) -> None:
        self.items, self.follow, self.drift = items, follow, drift
        ranks = np.arange(1, items + 1, dtype=np.float64)
        weights = 1.0 / ranks**popularity_exponent
        self.popularity_cdf = np.cumsum(weights / weights.sum())
        ids = np.arange(items + 1)[:, None]
        offsets = rng.integers(-DRIFT_WINDOW // 2, DRIFT_WINDOW + 1, size=(items + 1, successors))
        self.successors = np.clip(ids + np.where(offsets >= 0, offsets + 1, offsets), 1, items)
        w = np.array([0.6, 0.3, 0.1][:successors] + [0.0] * max(0, successors - 3), dtype=np.float64)
        w = w if w.sum() > 0 else np.ones(successors)
        self.successor_cdf = np.cumsum(w / w.sum())

    def on_offer(self, when: np.ndarray) -> np.ndarray:
        """The number of items introduced by each time fraction in [0, 1] (ids 1..that)."""
        return np.clip(np.ceil(self.items * (1.0 - self.drift + self.drift * when)), 2, self.items).astype(np.int64)

    def popular(self, rng: np.random.Generator, when: np.ndarray) -> np.ndarray:
        offer = self.on_offer(when)
        ranks = np.searchsorted(self.popularity_cdf, rng.random(len(when)), side="right")
        return offer - np.minimum(ranks, self.items - 1) % offer  # rank 0 = the newest item on offer

    def walk(self, rng: np.random.Generator, when: np.ndarray) -> np.ndarray:
        """One user's item ids at the time fractions ``when`` (chronological)."""
        length = len(when)
        noise = self.popular(rng, when)
        offer = self.on_offer(when)
        follows = rng.random(length) < self.follow
        choice = np.minimum(
            np.searchsorted(self.successor_cdf, rng.random(length), side="right"), len(self.successor_cdf) - 1
        )
        out = np.empty(length, dtype=np.int64)
        current = int(noise[0])
        out[0] = current
        for t in range(1, length):
            nxt = int(self.successors[current, choice[t]]) if follows[t] else int(noise[t])
            current = nxt if nxt <= offer[t] else int(noise[t])
            out[t] = current
        return out


def generate(
    out: TextIO,
    users: int,
    items: int,
    events: int,
    seed: int = 42,
    successors: int = 3,
    follow: float = 0.8,
    popularity_exponent: float = 1.0,
    min_len: int = 5,
    pool: int = 64,
    drift: float = 0.0,
) -> int:
    """Writes ``events`` rows ``user\\titem\\ttimestamp`` to ``out``; returns the number of rows written."""
    check_sizes(users, items, events, min_len)
    if not 0.0 <= drift <= 1.0:
        raise ValueError(f"need 0 <= drift <= 1, got {drift}")
    rng = np.random.default_rng(seed)
    if drift:
        model = DriftingItems(items, rng, successors, follow, popularity_exponent, drift)
    else:
        model = MarkovItems(items, rng, successors, follow, popularity_exponent)
    lengths = sequence_lengths(users, events, min_len, rng)
    active: list[tuple[int, np.ndarray, np.ndarray, int]] = []  # (user, items, timestamps, next position)
    next_user = 1
    written = 0
    buffer: list[str] = []

    def admit() -> None:
        nonlocal next_user
        length = next(lengths)
        if drift:
            span = 86_400 * SPAN_DAYS
            duration = int(span * rng.uniform(0.05, 0.5))
            offsets = int(rng.integers(0, span - duration)) + np.sort(rng.integers(0, duration, size=length))
            active.append((next_user, model.walk(rng, offsets / span), START + offsets, 0))
            next_user += 1
            return
        start = START + int(rng.integers(0, 86_400 * 365))
        times = start + np.cumsum(rng.integers(1, 3601, size=length))
        active.append((next_user, model.walk(rng, length), times, 0))
        next_user += 1

    while next_user <= users and len(active) < pool:
        admit()
    while active:
        slot = int(rng.integers(0, len(active)))
        user, seq, times, pos = active[slot]
        buffer.append(f"{user}\t{seq[pos]}\t{times[pos]}\n")
        written += 1
        if pos + 1 < len(seq):
            active[slot] = (user, seq, times, pos + 1)
        else:
            active[slot] = active[-1]
            active.pop()
            if next_user <= users:
                admit()
        if len(buffer) >= 65536:
            out.write("".join(buffer))
            buffer.clear()
    out.write("".join(buffer))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="file to write (user\\titem\\ttimestamp rows)")
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--successors", type=int, default=3, help="successor items per item (Markov chain)")
    parser.add_argument("--follow", type=float, default=0.8, help="probability the next item follows the chain")
    parser.add_argument("--popularity_exponent", type=float, default=1.0, help="Zipf exponent of the noise draws")
    parser.add_argument("--min_len", type=int, default=5, help="minimum events per user")
    parser.add_argument(
        "--drift",
        type=float,
        default=0.0,
        help="0 < D <= 1: a drifting log on a global clock, the catalogue growing from (1 - D) x items to all "
        "(module docstring); 0 (default): no drift",
    )
    args = parser.parse_args(argv)
    try:
        check_sizes(args.users, args.items, args.events, args.min_len)
        with open(args.output, "w") as f:
            n = generate(
                f,
                args.users,
                args.items,
                args.events,
                args.seed,
                successors=args.successors,
                follow=args.follow,
                popularity_exponent=args.popularity_exponent,
                min_len=args.min_len,
                drift=args.drift,
            )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} events ({args.users} users, {args.items} items, seed {args.seed}) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
