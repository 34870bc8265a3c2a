"""File sinks without side inputs: records and rejected lines -> ``part-SSSSS-of-NNNNN`` files, paths out.

Beam's ``WriteToTFRecord`` / ``WriteToText`` (``iobase.WriteImpl``) pass the temporary directory and the written
files to their finalize step as side inputs, and with ``num_shards=0`` emit each bundle's file from
``finish_bundle``. Beam 2.77's Dask runner recomputes side inputs inside each consuming task (see
`pipeline.portable`) and drops whatever ``finish_bundle`` emits::

    class Late(beam.DoFn):
        def process(self, x):
            pass
        def finish_bundle(self):
            yield beam.utils.windowed_value.WindowedValue("late", 0, [beam.transforms.window.GlobalWindow()])

    p | beam.Create([1]) | beam.ParDo(Late()) | beam.Map(print)  # Dask: nothing (the outputs list is copied
                                                                  # before finish_bundle runs); elsewhere: "late"

so on Dask the sinks wrote their files several times into several temporary directories, and the metadata step
recomputed the whole pipeline to learn which. `WriteFiles` is the same two-phase write in plain steps, correct on
every runner: each bundle (or, with ``num_shards``, each shard group) writes one temporary file under
``<directory>/.temp-<run id>/`` and emits its path *when it opens the file* (the file is closed in
``finish_bundle``; a GroupByKey downstream only sees a bundle's output once the bundle, ``finish_bundle``
included, has committed); one GroupByKey collects the paths and `finalize` renames them to their final names in
sorted order and deletes the temporary directory, together with any file a failed and retried bundle left there.

The pipeline's sinks (`SINKS`, one folder of ``--output`` each): the rejected lines, one text file; each split's
records, gzip TFRecord files. `WriteOutputFiles` writes them, `finalize_sink` names them in the last step.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil

from mdcns_tf import features
from pipeline import outputs

TFRECORD, TEXT = "tfrecord", "text"


def write_element(handle: BinaryIO, kind: str, element: Any) -> None:
    if kind == TFRECORD:
        _TFRecordUtil.write_record(handle, element)  # length, masked crc32c, payload, masked crc32c
    else:
        handle.write(element.encode("utf-8") + b"\n")


def compression_of(suffix: str) -> str:
    return CompressionTypes.GZIP if suffix.endswith(".gz") else CompressionTypes.UNCOMPRESSED


def open_temp(temp_dir: str, suffix: str) -> tuple[str, BinaryIO]:
    """A new uniquely named file in ``temp_dir`` (a retried bundle never reopens its failed attempt's file)."""
    path = FileSystems.join(temp_dir, uuid.uuid4().hex + suffix)
    return path, FileSystems.create(path, compression_type=compression_of(suffix))


class _WriteBundle(beam.DoFn):
    """Writes a bundle's ``(sink, [element, ...])`` batches to one new temporary file per sink; emits ``(sink,
    path)`` when it opens the file."""

    def __init__(self, temp_dirs: dict[str, str], suffixes: dict[str, str], kinds: dict[str, str]) -> None:
        self.temp_dirs, self.suffixes, self.kinds = temp_dirs, suffixes, kinds
        self._handles: dict[str, BinaryIO] = {}

    def start_bundle(self) -> None:
        self._handles = {}

    def process(self, element: tuple[str, list[Any]]) -> Iterator[tuple[str, str]]:
        sink, values = element
        handle = self._handles.get(sink)
        if handle is None:
            path, handle = open_temp(self.temp_dirs[sink], self.suffixes[sink])
            self._handles[sink] = handle
            yield sink, path
        for value in values:
            write_element(handle, self.kinds[sink], value)

    def finish_bundle(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}


def _write_shard(
    element: tuple[tuple[str, int], Iterable[list[Any]]],
    temp_dirs: dict[str, str],
    suffixes: dict[str, str],
    kinds: dict[str, str],
) -> Iterator[tuple[str, str]]:
    (sink, _), batches = element
    path, handle = open_temp(temp_dirs[sink], suffixes[sink])
    with handle:
        for values in batches:
            for value in values:
                write_element(handle, kinds[sink], value)
    yield sink, path


def _by_shard(
    element: tuple[str, list[Any]], num_shards: dict[str, int]
) -> Iterator[tuple[tuple[str, int], list[Any]]]:
    """A batch -> one batch per shard its elements hash to (the shard of an element does not depend on its
    batch)."""
    sink, values = element
    shards: dict[int, list[Any]] = {}
    for value in values:
        data = value if isinstance(value, bytes) else value.encode("utf-8")
        shards.setdefault(zlib.crc32(data) % num_shards[sink], []).append(value)
    for shard, part in shards.items():
        yield (sink, shard), part


class WriteFiles(beam.PTransform):
    """``(sink, [element, ...])`` batches -> ``(sink, temporary path)`` per file written, for several sinks at once.

    ``sinks`` maps a sink's name to ``(temp_dir, suffix, kind, num_shards)``: ``kind`` is ``tfrecord`` (``bytes``
    records, gzip when the suffix ends in ``.gz``) or ``text`` (``str`` lines). ``num_shards=0``: one file per bundle
    (the runner decides, as Beam's sinks do); ``N``: exactly ``N`` groups by a hash of the element (a group is held
    by one worker, in memory on runners that materialise groups). All sinks must use the same mode. `finalize`
    turns the temporary paths into the final files.
    """

    def __init__(self, sinks: dict[str, tuple[str, str, str, int]]) -> None:
        super().__init__()
        self.temp_dirs = {name: spec[0] for name, spec in sinks.items()}
        self.suffixes = {name: spec[1] for name, spec in sinks.items()}
        self.kinds = {name: spec[2] for name, spec in sinks.items()}
        self.num_shards = {name: spec[3] for name, spec in sinks.items()}
        if len({bool(n) for n in self.num_shards.values()}) > 1:
            raise ValueError(f"sinks mix per-bundle files and fixed shard counts: {self.num_shards}")

    def expand(self, pairs: beam.PCollection) -> beam.PCollection:
        if not any(self.num_shards.values()):
            return pairs | "WriteBundles" >> beam.ParDo(_WriteBundle(self.temp_dirs, self.suffixes, self.kinds))
        return (
            pairs
            | "ShardKey" >> beam.FlatMap(_by_shard, num_shards=self.num_shards)
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShards"
            >> beam.FlatMap(_write_shard, temp_dirs=self.temp_dirs, suffixes=self.suffixes, kinds=self.kinds)
        )


def finalize(
    temp_paths: Iterable[str | None], directory: str, prefix: str, suffix: str, temp_dir: str, min_shards: int = 1
) -> list[str]:
    """Renames the temporary files to ``<directory>/<prefix>-SSSSS-of-NNNNN<suffix>`` (in the order of their
    temporary names), creates empty shards up to ``min_shards`` (an empty split still has a file, as with Beam's
    sinks), deletes ``temp_dir``; returns the final paths. ``None`` entries are markers, ignored. A retried call
    skips the renames an earlier attempt already did."""
    sources = sorted(path for path in temp_paths if path is not None)
    n = max(len(sources), min_shards)
    finals = [FileSystems.join(directory, f"{prefix}-{i:05d}-of-{n:05d}{suffix}") for i in range(n)]
    pending = [
        (src, dst)
        for src, dst in zip(sources, finals[: len(sources)], strict=True)
        if FileSystems.exists(src) or not FileSystems.exists(dst)
    ]
    if pending:
        FileSystems.rename([src for src, _ in pending], [dst for _, dst in pending])
    for path in finals[len(sources) :]:
        FileSystems.create(path, compression_type=compression_of(suffix)).close()
    leftovers = [m.path for m in FileSystems.match([FileSystems.join(temp_dir, "*")])[0].metadata_list]
    if leftovers:  # files of failed bundle attempts
        FileSystems.delete(leftovers)
    if FileSystems.exists(temp_dir):  # a local directory (object stores have none)
        FileSystems.delete([temp_dir])
    return finals


# --- The pipeline's sinks ---------------------------------------------------------------------------------------

SINKS = (outputs.REJECTED_DIR, *features.SPLITS)


def sink_layout(sink: str, num_shards: int) -> tuple[str, str, str, int]:
    """``(file name prefix, suffix, kind, shards)`` of one of `SINKS`: the rejected lines in one text file, a
    split's records in ``num_shards`` gzip TFRecord files (0: one per bundle, the runner decides)."""
    if sink == outputs.REJECTED_DIR:
        return "rejected", ".txt", TEXT, 1
    return "part", features.TFRECORD_SUFFIX, TFRECORD, num_shards


def temp_dir(output: str, sink: str, run_id: str) -> str:
    return FileSystems.join(output, sink, f".temp-{run_id}")


def _in_sink(value: Any, sink: str) -> tuple[str, Any]:
    return sink, value


class WriteOutputFiles(beam.PTransform):
    """``{"rejected": [text line, ...], "records": (split, [record bytes, ...])}`` batches -> ``(sink, temporary
    path)`` per file written, and
    one ``(sink, None)`` marker per sink, so that a sink that got no element still gets its (empty) file
    (`finalize_sink`)."""

    def __init__(self, output: str, run_id: str, num_shards: int) -> None:
        super().__init__()
        self.output = output
        self.run_id = run_id
        self.num_shards = num_shards

    def _sinks(self, names: Iterable[str]) -> dict[str, tuple[str, str, str, int]]:
        """`WriteFiles` specs: ``{sink: (temp_dir, suffix, kind, shards)}``."""
        specs = {}
        for sink in names:
            _, suffix, kind, shards = sink_layout(sink, self.num_shards)
            specs[sink] = (temp_dir(self.output, sink, self.run_id), suffix, kind, shards)
        return specs

    def expand(self, inputs: dict[str, beam.PCollection]) -> beam.PCollection:
        rejected_dir = outputs.REJECTED_DIR
        # Two writes: `WriteFiles` takes sinks of one mode, and the rejected lines have a fixed shard count.
        temp_files = [
            inputs["rejected"]
            | "RejectedPairs" >> beam.Map(_in_sink, rejected_dir)
            | "WriteRejected" >> WriteFiles(self._sinks([rejected_dir])),
            inputs["records"] | "WriteRecords" >> WriteFiles(self._sinks(features.SPLITS)),
        ]
        markers = inputs["records"].pipeline | "SinkMarkers" >> beam.Create([(sink, None) for sink in SINKS])
        return [*temp_files, markers] | "AllTempFiles" >> beam.Flatten()


def finalize_sink(sink: str, temp_paths: list[str | None], output: str, run_id: str, num_shards: int) -> list[str]:
    """The final paths of one sink's files (`finalize`); an empty split still gets one (empty) file."""
    prefix, suffix, _, shards = sink_layout(sink, num_shards)
    return finalize(
        temp_paths,
        directory=FileSystems.join(output, sink),
        prefix=prefix,
        suffix=suffix,
        temp_dir=temp_dir(output, sink, run_id),
        min_shards=max(1, shards),
    )
