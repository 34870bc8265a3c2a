"""What a training run may write, replace and delete in its ``output_dir``, and keeping two runs out of one folder.

Lock. A run holds ``<output_dir>/.mdcns.lock`` (`mdcns_tf.features.LOCK_FILE`) with an exclusive `fcntl.flock`
from before it looks at the folder until it ends, so a second run started on the same folder is refused with
`FolderInUseError` naming it; it also holds its ``data.dir``'s lock shared, so a pipeline cannot rewrite the data
under it (the pipeline takes that lock exclusively, `pipeline.outputs`). The kernel drops a lock when its process
ends or dies (SIGKILL included): a lock file left by a killed run is not locked, and the next run takes it. An
exclusive holder deletes the lock file when it ends. On NFS, Linux turns flock into a POSIX
byte-range lock that the server arbitrates (NLM with NFSv3, built into NFSv4), so it holds across machines when the
server supports locking; a mount without lock support (``nolock``, some FUSE mounts such as gcsfuse or s3fs)
either fails the call (ENOLCK, EOPNOTSUPP: warned, and the run goes on unlocked) or keeps the lock local to one
machine (``local_lock``), which does not stop a run on another machine.

Ownership. The trainer writes `ENTRIES` in ``output_dir`` (and ``export/``, whose versions are immutable and never
deleted). It deletes or replaces one only when a record of its own says it wrote it: ``run_manifest.json``
(`MANIFEST`), written once the run has checked the folder, lists what the run owns and says which run it is (run
id, config hash, data fingerprint: `mdcns_tf.runs.state`). A folder written before run manifests existed is taken
as the trainer's only when its own records agree with its ``config.yaml`` (`legacy_owner`). Anything else at an
entry's name (a folder of the user's called ``best``, a link, another tool's ``config.yaml``) is foreign: the run
stops and names it, and never deletes it, ``--restart`` or not.

A fresh run moves the previous run's ``metrics.json``, ``config.yaml`` and ``tensorboard/`` aside to
``previous_runs/<its run id>/`` (nothing lost, and a new run's TensorBoard events are never mixed with an old
run's) and deletes its ``best/`` and ``backup/`` (weights a new run must never restore).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

import yaml

from mdcns_tf.config import ConfigError
from mdcns_tf.features import LOCK_FILE

log = logging.getLogger("mdcns_tf.runs.ownership")

MANIFEST = "run_manifest.json"
WRITER = "mdcns-tf train"
# What a run writes in its output_dir (besides export/): deleted (weights) or moved aside (records) by a fresh run.
DELETED = ("best", "backup")
MOVED = ("metrics.json", "config.yaml", "tensorboard")
ENTRIES = (*DELETED, *MOVED)
PREVIOUS = "previous_runs"


class RunDirError(ConfigError):
    """``output_dir`` cannot be used as it is (not a folder, not writable, not the run's own); the message says
    what to do."""


class FolderInUseError(OSError):
    """Another live process holds a folder's lock: a training run using it, a pipeline writing it."""


# -- output_dir itself ---------------------------------------------------------------------------------------------


def check_output_dir(output_dir: str, data_dir: str) -> None:
    """`RunDirError` unless ``output_dir`` names a folder of its own for the run: not empty, not the working
    directory or one of its parents, not the home folder or ``/``, not ``~...`` (never expanded: it would create a
    folder called ``~``), not the data folder or one holding it, not a file."""
    hint = "name a folder of the run's own, e.g. output_dir=runs/<name>"
    if not output_dir.strip():
        raise RunDirError(f"output_dir is empty: {hint}")
    if output_dir.split(os.sep, 1)[0].startswith("~"):
        raise RunDirError(f"output_dir {output_dir!r} starts with '~', which is not expanded: write the path out")
    real, cwd = os.path.realpath(output_dir), os.path.realpath(os.getcwd())
    if (
        real == cwd
        or cwd.startswith(real.rstrip(os.sep) + os.sep)
        or real in ("/", os.path.realpath(os.path.expanduser("~")))
    ):
        raise RunDirError(
            f"output_dir {output_dir!r} is {real}, the working directory, one of its parents or the home folder, "
            f"where a run's best/, backup/ and config.yaml would land among other files: {hint}"
        )
    data = os.path.realpath(data_dir) if data_dir else None
    if data and (data == real or data.startswith(real.rstrip(os.sep) + os.sep)):
        raise RunDirError(f"output_dir {output_dir!r} is or contains the data folder (data.dir {data_dir!r}): {hint}")
    if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
        raise RunDirError(f"output_dir {output_dir!r} is a file, not a folder: {hint}, or move the file away")


# -- locks ---------------------------------------------------------------------------------------------------------

_HELD: dict[str, list[Any]] = {}  # real path -> [fd, lock file, exclusive, holds this process took]


def lock(folder: str, exclusive: bool = True, what: str = "folder") -> str | None:
    """Locks ``folder`` (see the module docstring) for this process and returns the key to `unlock`; a folder this
    process already holds in that mode is counted, not refused. An exclusive holder deletes the lock file when it
    lets go (after making sure, once locked, that the file it locked is still the one at the path); a shared
    holder leaves it. None without a lock: a shared lock in a folder that has no lock file and cannot be written
    (a read-only data folder), or a filesystem without locks."""
    key, path = os.path.realpath(folder), os.path.join(folder, LOCK_FILE)
    held = _HELD.get(key)
    if held and (held[2] or not exclusive):
        held[3] += 1
        return key
    if held:
        raise FolderInUseError(f"{what} {folder} is read by this process: it cannot also be its output")
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:  # a folder this process cannot write: a shared lock takes an existing file, or none
            if exclusive:
                raise
            if not os.path.exists(path):
                return None
            fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # a filesystem without locks
                log.warning("%s: cannot lock (%s): runs on this folder are not kept apart", path, e.strerror)
                return None
            if e.errno != errno.EWOULDBLOCK:
                raise
            with open(path, errors="replace") as f:
                holder = f.read().strip()
            raise FolderInUseError(
                f"{what} {folder} is in use by another live process{f' ({holder})' if holder else ''}: {path} is "
                "locked; wait for that run to end, or choose another folder"
            ) from None
        if os.path.exists(path) and os.path.samestat(os.fstat(fd), os.stat(path)):
            break
        os.close(fd)  # its last holder deleted it between our open and our lock: lock the file that is there now
    with contextlib.suppress(OSError):  # a record left by a killed exclusive holder is stale: nobody else holds it
        os.ftruncate(fd, 0)
    if exclusive:  # who holds it, for the message another process gets
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"{WRITER} pid {os.getpid()} on {socket.gethostname()} since {since}".encode(), 0)
    _HELD[key] = [fd, path, exclusive, 1]
    return key


def unlock(key: str | None) -> None:
    """Gives back one hold `lock` returned; the process's last one releases the lock (and an exclusive holder
    deletes the lock file, while it still holds it: a process that opened it meanwhile sees another file)."""
    held = _HELD.get(key) if key else None
    if held is not None:
        held[3] -= 1
        if not held[3]:
            del _HELD[key]
            if held[2] and os.path.lexists(held[1]):
                os.unlink(held[1])
            os.close(held[0])


def claim(output_dir: str, data_dir: str) -> str | None:
    """Checks ``output_dir`` (`check_output_dir`), creates it and locks it; returns the key for `unlock`. An
    output_dir that cannot be created or written is a `RunDirError` naming it."""
    check_output_dir(output_dir, data_dir)
    try:
        os.makedirs(output_dir, exist_ok=True)
        return lock(output_dir, what="output_dir")
    except FolderInUseError:
        raise
    except OSError as e:
        raise RunDirError(
            f"cannot write in output_dir {output_dir!r} ({e.strerror or e}): choose a folder you can write, or fix "
            "its permissions"
        ) from None


def discard(folder: str) -> None:
    """Deletes a worker's temporary output folder: what the run owns there (its export too), its manifest and lock
    file, then the folder itself when nothing else is left in it."""
    for name in (*ENTRIES, PREVIOUS, "export", MANIFEST, LOCK_FILE):
        remove(folder, name)
    try:
        os.rmdir(folder)
    except OSError:
        log.warning("left %s: it holds files the run did not write", folder)


# -- the record of what a run owns ---------------------------------------------------------------------------------


def read_manifest(output_dir: str) -> dict[str, Any] | None:
    """``run_manifest.json`` (None when absent); `RunDirError` when it is not one a run wrote."""
    path = os.path.join(output_dir, MANIFEST)
    if not os.path.lexists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        if manifest["writer"] != WRITER or not isinstance(manifest["run"], dict):
            raise ValueError(f"writer {manifest['writer']!r}")
        if not all(isinstance(name, str) for name in manifest["owns"]):
            raise ValueError("'owns' is not a list of names")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunDirError(f"{path} is not a run manifest ({e}): move it away or choose another output_dir") from None
    return manifest


def write_manifest(output_dir: str, run: dict[str, Any]) -> None:
    """Records that the run ``run`` (its identity) owns `ENTRIES` and `PREVIOUS` in ``output_dir``."""
    path = os.path.join(output_dir, MANIFEST)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"writer": WRITER, "run": run, "owns": [*ENTRIES, PREVIOUS]}, f, indent=1)
    os.replace(path + ".tmp", path)


def _hash_of(path: str, *keys: str) -> Any:
    """The value at ``keys`` in the JSON file ``path``, or None."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
        for key in keys:
            value = value[key]
        return value
    except (OSError, ValueError, KeyError, TypeError):
        return None


def legacy_owner(output_dir: str, config_hash: Callable[[dict[str, Any]], str]) -> str | None:
    """The config hash (`mdcns_tf.runs.state.config_hash`) of a run folder written before run manifests, when its
    records prove it the trainer's: its ``config.yaml`` hashes to the config hash its ``best/state.json``,
    ``backup/run.json`` or ``metrics.json`` records. None otherwise."""
    try:
        with open(os.path.join(output_dir, "config.yaml"), encoding="utf-8") as f:
            config = yaml.safe_load(f)
        digest = config_hash(config) if isinstance(config, dict) else None
    except (OSError, ValueError, yaml.YAMLError):
        return None
    recorded = (
        _hash_of(os.path.join(output_dir, "best", "state.json"), "config_hash"),
        _hash_of(os.path.join(output_dir, "backup", "run.json"), "config_hash"),
        _hash_of(os.path.join(output_dir, "metrics.json"), "provenance", "config_hash"),
    )
    return digest if digest is not None and digest in recorded else None


def present(output_dir: str, names: Iterable[str] = ENTRIES) -> list[str]:
    return [name for name in names if os.path.lexists(os.path.join(output_dir, name))]


def check_owned(output_dir: str, names: Iterable[str], manifest: dict[str, Any] | None, legacy: str | None) -> None:
    """`RunDirError` naming every entry of ``names`` present in ``output_dir`` that no record proves the trainer's
    (the manifest's ``owns``, or without a manifest, ``legacy``: the `legacy_owner` of the folder), or that is a
    symbolic link."""
    owned = set(manifest["owns"]) if manifest else set(ENTRIES) if legacy else set()
    names = list(names)
    foreign = [n for n in present(output_dir, names) if n not in owned or os.path.islink(os.path.join(output_dir, n))]
    if foreign:
        listing = ", ".join(os.path.join(output_dir, name) for name in foreign)
        raise RunDirError(
            f"output_dir {output_dir!r} holds {listing}, which no record of a training run in it claims ({MANIFEST} "
            "or, for runs written before it, config.yaml agreeing with best/state.json or metrics.json); the trainer "
            "neither deletes nor replaces what it did not write, --restart or not: move it away or choose another "
            "output_dir"
        )


def remove(output_dir: str, name: str) -> None:
    """Deletes an entry `check_owned` has cleared (never through a link)."""
    path = os.path.join(output_dir, name)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def move_aside(output_dir: str, run_id: str, names: Iterable[str] = MOVED) -> str | None:
    """Moves the entries ``names`` of the previous run ``run_id`` to ``previous_runs/<run_id>/``; returns that
    folder, or None when there was nothing to move."""
    names = present(output_dir, names)
    if not names:
        return None
    base = target = os.path.join(output_dir, PREVIOUS, run_id)
    suffix = 1
    while os.path.lexists(target):
        suffix += 1
        target = f"{base}.{suffix}"
    os.makedirs(target)
    for name in names:
        os.rename(os.path.join(output_dir, name), os.path.join(target, name))
    log.info("starting fresh: moved the previous run's %s to %s", ", ".join(names), target)
    return target
