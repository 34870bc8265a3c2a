"""Spill files: the large payloads of a shuffle stay in a file the producing worker writes; only references to them
cross the shuffle (the claim-check pattern).

Beam 2.77's local multi-process runner sends every byte a step emits from the worker, over gRPC, to the launcher,
which keeps it until the pipeline ends and sends it again to the worker of the next step. At 10M events that is
~115 MB of packed row batches (`pipeline.reading` to `pipeline.sequences`) and ~70 MB of packed blocks of sequences
(to `pipeline.records`), and the workers spent 15-18% more CPU in the steps that emit them than one process does
(`benchmarks/pipeline_stages.py`'s per-stage CPU). Spilled, the rows and the blocks go to one file per bundle under
the run's temporary folder, and the shuffles move ``(path, offset, length)`` references:

    SpillPayloads   (key, payload bytes) -> (key, Ref): each bundle appends its payloads to one new file
    payloads        [bytes | Ref, ...] -> the payloads, reading the references (in file order)

A bundle's file gets a new name (a retried bundle never reopens its failed attempt's file, whose references are
never used) and is closed in ``finish_bundle``, before any step downstream of a GroupByKey reads it (the same two
phases as `pipeline.sinks`). The folder, ``<output>/.temp-<run id>/spill``, is deleted by the last step
(`pipeline.preprocess.Finish`) and by the launcher when the run ends either way (`pipeline.run`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

Ref = tuple[str, int, int]  # (spill file path, offset, length)


def spill_dir(output: str, run_id: str) -> str:
    return FileSystems.join(output, f".temp-{run_id}", "spill")


class SpillPayloads(beam.DoFn):
    """``(key, payload bytes)`` -> ``(key, (path, offset, length))``, the payloads of a bundle appended to one new file
    in ``directory`` (opened at the bundle's first payload, closed in ``finish_bundle``)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._path = ""
        self._handle: BinaryIO | None = None
        self._offset = 0

    def start_bundle(self) -> None:
        self._handle, self._offset = None, 0

    def process(self, element: tuple[Any, bytes]) -> Iterator[tuple[Any, Ref]]:
        key, payload = element
        if self._handle is None:
            self._path = FileSystems.join(self.directory, uuid.uuid4().hex + ".spill")
            self._handle = FileSystems.create(self._path, compression_type=CompressionTypes.UNCOMPRESSED)
        self._handle.write(payload)
        yield key, (self._path, self._offset, len(payload))
        self._offset += len(payload)

    def finish_bundle(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def payloads(values: Iterable[bytes | Ref]) -> Iterator[bytes]:
    """The payloads of ``values``: bytes as they are, then the references read from their files, each file opened
    once and read in offset order. A reference past the end of its file raises ValueError (a spill file that lost
    bytes: never read short)."""
    refs: dict[str, list[tuple[int, int]]] = {}
    for value in values:
        if isinstance(value, bytes):
            yield value
        else:
            path, offset, length = value
            refs.setdefault(path, []).append((offset, length))
    for path, ranges in refs.items():
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            for offset, length in sorted(ranges):
                f.seek(offset)
                payload = f.read(length)
                if len(payload) != length:
                    raise ValueError(
                        f"spill file {path} holds {offset + len(payload)} bytes, a reference needs {offset + length}: "
                        "the file was cut short or replaced while the run was reading it"
                    )
                yield payload


def remove(output: str, run_id: str) -> None:
    """Deletes the run's spill folder and its parent temporary folder when empty (nothing when absent)."""
    directory = spill_dir(output, run_id)
    if FileSystems.exists(directory):
        FileSystems.delete([directory])
    parent = FileSystems.join(output, f".temp-{run_id}")
    if FileSystems.exists(parent):
        matched = FileSystems.match([FileSystems.join(parent, "*")])[0].metadata_list
        if not matched:
            FileSystems.delete([parent])
