"""``--output``: what the pipeline may write, overwrite and delete there, and what it writes last (the
vocabularies, ``metadata.json`` with the record fingerprint, the complete manifest: `write_metadata`).

Ownership. ``--output`` is shared with whatever else lives there, so the pipeline only ever deletes files that a
previous run recorded as its own in ``manifest.json`` (`mdcns_tf.features.MANIFEST_FILE`):

- before writing, a run claims the directory with a ``running`` manifest: it owns whatever appears at its output
  paths (`OUTPUT_PATTERNS`) from then on, which a crashed run leaves behind;
- its last step replaces it with a ``complete`` manifest listing exactly the files written.

A file at an output path that no manifest claims (an input named ``items.txt``, the output of an older pipeline
version, anything copied in) is *foreign*: the run stops with an error instead of overwriting or deleting it, with
or without ``--overwrite``. Symbolic links are never followed: a link at an output path (``train/`` linked to
another dataset) is an error. An input file inside ``--output`` is an error too: the pipeline may overwrite it.

Lock. A run holds ``<output>/.mdcns.lock`` with an exclusive `fcntl.flock` from before it claims the folder until it
ends (`lock_output`), so a second pipeline, or one on the data of a live training run (which holds it shared), is
refused naming the folder; the kernel drops it when the process dies. Object stores have no locks; NFS and
lock-less mounts: `mdcns_tf.runs.ownership`.

Fingerprint. ``metadata.json`` records the sha256 of every record and vocabulary file it describes (format in
`mdcns_tf.features`), so the trainer can tell its records from another run's (`mdcns_tf.features.verify_records`).

Local paths use ``os`` (to see links); other filesystems (``gs://``) go through Beam's `FileSystems`, which has no
links and no directories to confuse.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import fnmatch
import hashlib
import json
import logging
import os
import posixpath
import socket
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from mdcns_tf import features
from pipeline import accounting, splits

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.splits import SplitFile

LOG = logging.getLogger("pipeline")

REJECTED_DIR = "rejected"
OUTPUT_DIRS = (*features.SPLITS, REJECTED_DIR)
TOP_FILES = (features.METADATA_FILE, features.ITEMS_FILE, features.USERS_FILE)
# Relative paths (posix) a run writes; a file matching one of them is either owned (manifest) or foreign.
OUTPUT_PATTERNS = (
    *TOP_FILES,
    *(f"{split}/*{features.TFRECORD_SUFFIX}" for split in features.SPLITS),
    f"{REJECTED_DIR}/*.txt",
)
RUNNING, COMPLETE = "running", "complete"
_SHOWN = 5  # offending paths an error lists


class OutputError(ValueError):
    """``--output`` cannot be used as asked (a usage error: one line, exit code 2)."""


def is_local(path: str) -> bool:
    return "://" not in path


def absolute(path: str) -> str:
    """A local path made absolute (workers in other processes or machines have another cwd); URLs unchanged."""
    return os.path.abspath(path) if is_local(path) else path


def _join(output: str, relative: str) -> str:
    return FileSystems.join(output, *relative.split("/"))


def _listing(paths: Sequence[str]) -> str:
    more = f" and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else ""
    return ", ".join(paths[:_SHOWN]) + more


def check_output_location(output: str, input_paths: Iterable[str]) -> None:
    """`OutputError` unless ``output`` is a directory path the pipeline can own: not empty, not an existing file,
    no symbolic link at an output path, and no input file inside it."""
    if not output.strip():
        raise OutputError("--output is empty: name the output directory")
    if not is_local(output):
        prefix = output.rstrip("/") + "/"
        inside = [path for path in input_paths if path.startswith(prefix)]
        if inside:
            raise OutputError(f"--input {_listing(inside)} lies inside --output {output!r}: choose another --output")
        return
    if os.path.lexists(output) and not os.path.isdir(output):
        raise OutputError(f"--output {output!r} is an existing file, not a directory (the input?)")
    links = [
        name
        for name in (*TOP_FILES, features.MANIFEST_FILE, *OUTPUT_DIRS)
        if os.path.islink(os.path.join(output, name))
    ]
    if links:
        raise OutputError(
            f"--output {output!r}: {_listing(links)} is a symbolic link; the pipeline never writes or deletes "
            "through links (it could be another dataset): remove the link or choose another --output"
        )
    root = os.path.realpath(output)
    inside = [path for path in input_paths if os.path.realpath(path).startswith(root + os.sep)]
    if inside:
        raise OutputError(
            f"--input {_listing(inside)} lies inside --output {output!r}, where the pipeline overwrites and deletes "
            "its own files: move the input or choose another --output"
        )


def existing_outputs(output: str) -> list[str]:
    """Relative paths of the files at `OUTPUT_PATTERNS` in ``output`` (links included, never followed)."""
    if not is_local(output):
        matches = FileSystems.match([_join(output, pattern) for pattern in OUTPUT_PATTERNS])
        prefix = len(output.rstrip("/")) + 1
        return sorted(m.path[prefix:] for match in matches for m in match.metadata_list)
    found = [name for name in TOP_FILES if os.path.lexists(os.path.join(output, name))]
    for directory in OUTPUT_DIRS:
        path = os.path.join(output, directory)
        if os.path.isdir(path) and not os.path.islink(path):
            found += [f"{directory}/{entry.name}" for entry in os.scandir(path)]
    return sorted(path for path in found if any(fnmatch.fnmatchcase(path, p) for p in OUTPUT_PATTERNS))


def read_manifest(output: str) -> dict[str, Any] | None:
    """The manifest in ``output`` (None if absent); `OutputError` if it is not one this pipeline wrote."""
    path = _join(output, features.MANIFEST_FILE)
    if not FileSystems.exists(path):
        return None
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            manifest = json.loads(f.read().decode("utf-8"))
        files = manifest["files"]
        if manifest["state"] not in (RUNNING, COMPLETE) or not isinstance(files, list):
            raise ValueError(f"state {manifest['state']!r}, files {type(files).__name__}")
        if not all(isinstance(p, str) for p in files):
            raise ValueError("a file that is not a path")
    except (ValueError, KeyError, TypeError) as e:
        raise OutputError(f"{path} is not a pipeline manifest ({e}): move it or choose another --output") from None
    return manifest


def owned_files(manifest: dict[str, Any] | None, existing: Sequence[str]) -> set[str]:
    """The existing output files a previous run recorded as its own (see the module docstring)."""
    if manifest is None:
        return set()
    if manifest["state"] == RUNNING:
        return set(existing)
    return set(manifest["files"]) & set(existing)


def read_metadata(output: str) -> dict[str, Any]:
    """``metadata.json`` of ``output`` as a dict, on any filesystem (`features.Metadata.load` reads local files)."""
    with FileSystems.open(_join(output, features.METADATA_FILE), compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return json.loads(f.read().decode("utf-8"))


def write_manifest(output: str, state: str, files: Sequence[str] = ()) -> None:
    body = {"writer": "mdcns-tf pipeline", "state": state, "files": sorted(files)}
    write_text(_join(output, features.MANIFEST_FILE), json.dumps(body, indent=1) + "\n")


def write_text(path: str, text: str) -> None:
    with FileSystems.create(path, mime_type="text/plain", compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(text.encode("utf-8"))


_LOCKS: dict[str, tuple[int, str]] = {}  # real path of an output this process holds -> (fd, lock file)


def lock_output(output: str, create: bool = True) -> None:
    """Holds ``<output>/.mdcns.lock`` exclusively until `release_output` (which deletes it) or the end of the process
    (nothing for object stores; without ``create``, nothing when there is no lock file). `OutputError` naming the
    folder when another live process holds it."""
    key, path = os.path.realpath(output), os.path.join(output, features.LOCK_FILE)
    while is_local(output) and key not in _LOCKS and (create or os.path.exists(path)):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno != errno.EWOULDBLOCK:  # ENOLCK, EOPNOTSUPP: a filesystem without locks
                return LOG.warning("%s: cannot lock (%s): runs on this folder are not kept apart", path, e.strerror)
            with open(path, errors="replace") as f:
                holder = f.read().strip() or "a training run reading it"
            raise OutputError(
                f"--output {output!r} is in use by another live process ({holder}): {path} is locked; wait for it "
                "to end, or choose another --output"
            ) from None
        if os.path.exists(path) and os.path.samestat(os.fstat(fd), os.stat(path)):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pipeline pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}".encode(), 0)
            _LOCKS[key] = (fd, path)
        else:  # its last holder deleted it between our open and our lock: lock the file that is there now
            os.close(fd)


def release_output(output: str) -> None:
    """Releases (and deletes) the lock file `lock_output` holds on ``output``, if this process holds it."""
    fd, path = _LOCKS.pop(os.path.realpath(output), (None, ""))
    if fd is not None:
        os.unlink(path)  # while held: a process that opened it meanwhile sees another file and tries again
        os.close(fd)


def prepare_output(output: str, overwrite: bool, input_paths: Sequence[str]) -> None:
    """Makes ``output`` ready for a run and claims it (a ``running`` manifest), holding its lock (`lock_output`).

    Refuses (`OutputError`) a folder another live run holds, foreign files at output paths, links and inputs inside
    ``output``; refuses (`FileExistsError`) a previous run's output unless ``overwrite``, which then deletes exactly
    that run's files. A stale shard left in place would be read as part of the new run, hence no mixing at all.
    The checks run before the lock file is created (a refused folder is left as it was) and again under the lock.
    """
    check_output_location(output, input_paths)
    lock_output(output, create=False)
    owned = _owned_by_a_previous_run(output, overwrite)
    if is_local(output):
        os.makedirs(output, exist_ok=True)
        lock_output(output)
        owned = _owned_by_a_previous_run(output, overwrite)  # another run may have claimed it in between
    if owned:
        LOG.info("--overwrite: deleting the %d files of the previous run in %s", len(owned), output)
        _delete(output, sorted(owned))
    write_manifest(output, RUNNING)


def _owned_by_a_previous_run(output: str, overwrite: bool) -> set[str]:
    """The files of ``output`` a previous run owns, which this one deletes; raises when it may not."""
    existing = existing_outputs(output)
    # The pipeline never writes a link: one at an output path is foreign even where a manifest lists the path.
    links = {path for path in existing if is_local(output) and os.path.islink(os.path.join(output, *path.split("/")))}
    owned = owned_files(read_manifest(output), existing) - links
    foreign = [path for path in existing if path not in owned]
    if foreign:
        raise OutputError(
            f"--output {output!r} holds {len(foreign)} file(s) at pipeline output paths that no pipeline manifest "
            f"claims or that are links ({_listing(foreign)}): the pipeline neither overwrites nor deletes them, "
            "even with --overwrite; move them or choose another --output"
        )
    if owned and not overwrite:
        raise FileExistsError(f"{output!r} already holds pipeline output ({len(owned)} files); pass --overwrite")
    return owned


def _delete(output: str, relative_paths: Sequence[str]) -> None:
    if not is_local(output):
        FileSystems.delete([_join(output, path) for path in relative_paths])
        return
    for path in relative_paths:
        full = os.path.join(output, *path.split("/"))
        if os.path.islink(full) or not os.path.isfile(full):  # checked by the caller; a race must not follow a link
            raise OutputError(f"{full} changed to a link or a non-file while deleting the previous output: stopped")
        os.unlink(full)


def record_fingerprint(
    output: str, written: Iterable[str], records: dict[str, int], vocabularies: dict[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """``(fingerprint, relative paths written)`` from the sinks' output paths (``split/name`` and
    ``rejected/name``) and the vocabulary texts about to be written as ``items.txt``/``users.txt``."""
    per_split: dict[str, Any] = {split: {"records": records.get(split, 0), "files": {}} for split in features.SPLITS}
    relative = []
    for path in written:
        directory, name = posixpath.basename(posixpath.dirname(path.replace("\\", "/"))), posixpath.basename(path)
        relative.append(f"{directory}/{name}")
        if directory in per_split:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                per_split[directory]["files"][name] = features.sha256_stream(f)
    fingerprint = {
        "algorithm": features.FINGERPRINT_ALGORITHM,
        "splits": per_split,
        "vocabularies": {name: _sha256_text(text) for name, text in vocabularies.items()},
    }
    return fingerprint, sorted(relative)


def _sha256_text(text: str) -> str:
    return hashlib.new(features.FINGERPRINT_ALGORITHM, text.encode("utf-8")).hexdigest()


def write_metadata(
    *,
    config: PipelineConfig,
    files: list[str],
    stats: dict[str, int],
    item_vocab: list[str],
    user_vocab: list[str],
    item_counts: dict[int, int],
    written: list[str],
    split_file: SplitFile | None = None,
    time_cut: dict[str, Any] | None = None,
    vocabulary_from: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The pipeline's last writes: ``items.txt``, ``users.txt``, ``metadata.json``, then the complete
    ``manifest.json``; returns the metadata dict.

    ``files``: the input paths; ``stats``: the summed stats (`pipeline.accounting`); ``item_vocab`` /
    ``user_vocab``: the keys of ids 1..n; ``item_counts``: ``{item id: occurrences in the train records}``;
    ``written``: the final paths of every sink's files, which the fingerprint hashes; ``time_cut``: the time split's
    cutoff (`pipeline.splits.split_metadata`); ``vocabulary_from``: the parent (`pipeline.parent`). Called once by
    the graph's last step (`pipeline.preprocess.Finish`), after every sink's files are in place.
    """
    n_items, n_users = len(item_vocab), len(user_vocab)
    dense_counts = [0] * (n_items + 1)
    for item_id, count in item_counts.items():
        dense_counts[item_id] = count
    counts = accounting.row_counts(stats, stats.get("users_written", 0), config.kcore, config.split == "time")
    records = accounting.record_counts(stats)
    vocabularies = {
        features.ITEMS_FILE: "".join(k + "\n" for k in item_vocab),
        features.USERS_FILE: "".join(k + "\n" for k in user_vocab),
    }
    fingerprint, written_files = record_fingerprint(config.output, written, records, vocabularies)
    meta = features.Metadata(
        schema_version=features.SCHEMA_VERSION,
        n_users=n_users,
        n_items=n_items,
        item_counts=dense_counts,
        split=splits.split_metadata(config, split_file, time_cut),
        counts=counts,
        records=records,
        source={
            "input": config.input,
            "files": files,
            "format": config.input_format,
            "options": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("input", "output")},
            **({"vocabulary_from": vocabulary_from} if vocabulary_from is not None else {}),
        },
        fingerprint=fingerprint,
    )
    for name, text in vocabularies.items():
        write_text(FileSystems.join(config.output, name), text)
    if "://" in config.output:  # Metadata.save writes local files only
        write_text(
            FileSystems.join(config.output, features.METADATA_FILE), json.dumps(dataclasses.asdict(meta), indent=1)
        )
    else:
        meta.save(config.output)
    write_manifest(config.output, COMPLETE, [*written_files, *vocabularies, features.METADATA_FILE])
    empty = empty_output_message(config.output, counts)
    if empty is not None:  # `main` exits 1 on it; `run` callers get this warning
        LOG.warning("%s", empty)
    if counts.get("kcore_items_below_k") or counts.get("kcore_users_below_k"):
        LOG.warning(
            "k-core did not reach its fixed point in %d rounds (%d items, %d users still below k=%d): "
            "raise --kcore_rounds",
            config.kcore_rounds,
            counts["kcore_items_below_k"],
            counts["kcore_users_below_k"],
            config.kcore,
        )
    LOG.info(
        "wrote %s: %d users, %d items, records %s, counts %s", config.output, n_users, n_items, meta.records, counts
    )
    return dataclasses.asdict(meta)


def empty_output_message(output: str, counts: dict[str, int]) -> str | None:
    """The error for a run that wrote no user (every row rejected or filtered), naming the counts; else None."""
    if counts.get("users_written", 0) > 0:
        return None
    reasons = ", ".join(f"{k[len('rejected_') :]} {v}" for k, v in sorted(counts.items()) if k.startswith("rejected_"))
    return (
        f"no user left in {output}: {counts.get('lines_read', 0)} lines read ({counts.get('empty_lines', 0)} empty, "
        f"{counts.get('header_lines', 0)} header), rows read {counts.get('rows_read', 0)} = written 0 + rejected "
        f"{counts.get('rows_rejected', 0)}{f' ({reasons})' if reasons else ''} + filtered "
        f"{counts.get('rows_filtered', 0)} (dedupe {counts.get('rows_filtered_dedupe', 0)}, kcore "
        f"{counts.get('rows_filtered_kcore', 0)}, min_seq_len {counts.get('rows_filtered_min_seq_len', 0)}); "
        f"the rejected rows are in {FileSystems.join(output, REJECTED_DIR)}/"
    )
