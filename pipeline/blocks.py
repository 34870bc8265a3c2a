"""Blocks: the unit the graph shuffles. A block is every user (or item) whose key hashes to one of ``n`` buckets.

The graph never shuffles single events. Each file's parsed rows leave the reader in batches, one per block and
chunk of lines (`pipeline.reading`); one GroupByKey per block brings a user's rows together; every later step
works on a block's sequences at once, and the joins (ids to events, users to their index and split) are joins of
blocks (`pipeline.records`). A shuffle then moves thousands of large elements instead of one small element per
event: Beam's cost per element (coding, dispatch, the runner's grouping tables) is paid per batch, and the
multi-process runner's shuffles hold a few thousand entries, not tens of millions (`docs/beam_multiprocess_loss`).

``n`` follows the size of the input (`block_count`), so a block holds a bounded share of the data whatever the log:
about `BLOCK_BYTES` of input lines, grouped in one worker's memory at a time; rounded up to a multiple of the local
runner's worker processes, so that each gets as many blocks.

    Batch      (file_ordinal, users, items, times, line_nos): parsed rows of one file, columns of equal length
    Block      (block, [(user K, sequence), ...]): the sequences of one block's users

What crosses a shuffle is `pack`ed: a compressed pickle. The local runner keeps every shuffled collection in its
own process until the pipeline ends (Beam 2.77's ``FnApiRunner`` never clears a buffer it has read), so the bytes
shuffled, not the events, set its memory; packed, a batch of rows takes about a third of Beam's element coding.
"""

from __future__ import annotations

import math
import pickle
import zlib
from collections.abc import Callable, Iterable
from typing import Any

# ~8 MiB of input lines (~350k events of a `user item timestamp` log) a block: a few hundred MB of Python objects
# while one worker groups it, and enough blocks for every worker at any size.
BLOCK_BYTES = 8 << 20
MIN_BLOCKS = 8
MAX_BLOCKS = 65536

Batch = tuple[int, list[str], list[tuple[str, ...]], list[Any], list[int]]
Block = tuple[int, list[tuple[Any, Any]]]


def pack(value: Any) -> bytes:
    """A block's payload (lists, tuples, dicts of keys and ints) as bytes for a shuffle: pickled, then zlib level 1
    (~0.3 s a million events each way, a third of the bytes)."""
    return zlib.compress(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), 1)


def unpack(payload: bytes) -> Any:
    """The value `pack` packed (only ever bytes this pipeline packed: a step's own output)."""
    return pickle.loads(zlib.decompress(payload))


def block_count(input_bytes: int, workers: int = 1) -> int:
    """How many blocks a log of ``input_bytes`` (the matched files' sizes; compressed files count x4) is cut into: a
    multiple of ``workers``, since the local runner deals a shuffle's keys to its worker processes in turn (29
    blocks on 2 workers: one does 15/29 of every block step, 3.4% more than half)."""
    count = max(MIN_BLOCKS, min(MAX_BLOCKS, math.ceil(input_bytes / BLOCK_BYTES)))
    workers = max(1, min(workers, MAX_BLOCKS))
    return min(MAX_BLOCKS // workers * workers, math.ceil(count / workers) * workers)


def block_of(key: str, blocks: int) -> int:
    """A key's block: a hash that every process computes the same (not Python's salted ``hash``)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % blocks


def by_block(values: Iterable[Any], blocks: int, key: Callable[[Any], str] | None = None) -> dict[int, list[Any]]:
    """``{block: [value, ...]}``: each value (a key, or with ``key`` a value holding one) in its key's block, in
    input order."""
    out: dict[int, list[Any]] = {}
    for value in values:
        out.setdefault(block_of(value if key is None else key(value), blocks), []).append(value)
    return out


def users_of(block: Block) -> list[tuple[Any, Any]]:
    """The ``(user K, sequence)`` pairs of a block."""
    return block[1]


def keyed(pair: tuple[Any, Any], blocks: int) -> tuple[int, tuple[Any, Any]]:
    """``(user K, value)`` -> ``(block, (user K, value))``, to be grouped back into blocks. A key may also be
    ``(user K, anything)`` (the time split keys a sequence by its user and target): the user decides the block."""
    key = pair[0]
    return block_of(key[0] if isinstance(key, tuple) else key, blocks), pair


def as_block(element: tuple[int, Iterable[tuple[str, Any]]]) -> Block:
    """A grouped ``(block, [(user K, value), ...])`` -> a `Block` (the group as a list)."""
    return element[0], list(element[1])
