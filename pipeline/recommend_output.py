"""``pipeline.recommend --output``: what it may write, overwrite and delete there, and the files it writes last.

The layout::

    <output>/part-SSSSS-of-NNNNN.jsonl          one JSON object a line, one line a user (or .tfrecord.gz: one
                                                tf.train.Example a user, gzip), written through a hidden
                                                .temp-<run id>/ folder and renamed by the last step
    <output>/manifest.json                      the files this command wrote ("running" until the last step)
    <output>/_SUCCESS                           written last: counts (users in = users out), model, data, options

The rules are the data pipeline's (`pipeline.outputs`): a run claims the folder with a ``running`` manifest and
holds its lock (``.mdcns.lock``) while it runs; ``--overwrite`` deletes exactly the files a previous run of this
command recorded; a file at an output path that no manifest of this command claims, a link there, or another
command's ``manifest.json`` (a data folder's, say) stops the run. Every path written is a fixed name inside
``--output``, which may not lie inside ``--data`` or the model's folder.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Sequence
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from mdcns_tf import features
from pipeline import outputs, sinks

SUCCESS_FILE = "_SUCCESS"
WRITER = "mdcns-tf pipeline.recommend"
PART_PREFIX = "part"
# --format -> (file suffix, `pipeline.sinks` kind)
FORMATS = {"jsonl": (".jsonl", sinks.TEXT), "tfrecord": (features.TFRECORD_SUFFIX, sinks.TFRECORD)}
PATTERNS = (SUCCESS_FILE, *(f"{PART_PREFIX}-*{suffix}" for suffix, _ in FORMATS.values()))


def _join(output: str, name: str) -> str:
    return FileSystems.join(output, name)


def temp_dir(output: str, run_id: str) -> str:
    return _join(output, f".temp-{run_id}")


def existing_outputs(output: str) -> list[str]:
    """Names of the files at `PATTERNS` in ``output`` (links included, never followed)."""
    if not outputs.is_local(output):
        matches = FileSystems.match([_join(output, pattern) for pattern in PATTERNS])
        return sorted({m.path.rsplit("/", 1)[-1] for match in matches for m in match.metadata_list})
    if not os.path.isdir(output):
        return []
    return sorted(name for name in os.listdir(output) if any(fnmatch.fnmatchcase(name, p) for p in PATTERNS))


def read_manifest(output: str) -> dict[str, Any] | None:
    """This command's manifest in ``output`` (None if there is none); `outputs.OutputError` for another's."""
    path = _join(output, features.MANIFEST_FILE)
    if not FileSystems.exists(path):
        return None
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            manifest = json.loads(f.read().decode("utf-8"))
        writer = manifest.get("writer") if isinstance(manifest, dict) else None
    except ValueError as e:
        raise outputs.OutputError(f"{path} is not a manifest ({e}): move it or choose another --output") from None
    if writer != WRITER:
        raise outputs.OutputError(
            f"{path} belongs to another command ({writer or 'unknown'}): --output {output!r} holds its output; "
            "choose another --output"
        )
    if manifest.get("state") not in (outputs.RUNNING, outputs.COMPLETE) or not isinstance(manifest.get("files"), list):
        raise outputs.OutputError(f"{path} is damaged (state, files): move it or choose another --output")
    return manifest


def write_manifest(output: str, state: str, files: Sequence[str] = ()) -> None:
    body = {"writer": WRITER, "state": state, "files": sorted(files)}
    outputs.write_text(_join(output, features.MANIFEST_FILE), json.dumps(body, indent=1) + "\n")


def write_success(output: str, summary: dict[str, Any]) -> None:
    outputs.write_text(_join(output, SUCCESS_FILE), json.dumps(summary, indent=1) + "\n")


def read_success(output: str) -> dict[str, Any]:
    with FileSystems.open(_join(output, SUCCESS_FILE), compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return json.loads(f.read().decode("utf-8"))


def check_location(output: str, protected: Sequence[str]) -> None:
    """`outputs.OutputError` for an empty ``--output``, an existing file, or a folder equal to or inside one of
    ``protected`` (the data folder, the model's version folder: a file there would change what they are)."""
    if not output.strip():
        raise outputs.OutputError("--output is empty: name the output directory")
    if not outputs.is_local(output):
        return
    if os.path.lexists(output) and not os.path.isdir(output):
        raise outputs.OutputError(f"--output {output!r} is an existing file, not a directory")
    real = os.path.realpath(output)
    for folder in protected:
        inside = os.path.realpath(folder)
        if real == inside or real.startswith(inside + os.sep):
            raise outputs.OutputError(f"--output {output!r} lies inside {folder}: choose a folder of its own")


def _owned_by_a_previous_run(output: str, overwrite: bool) -> list[str]:
    existing = existing_outputs(output)
    links = {name for name in existing if outputs.is_local(output) and os.path.islink(os.path.join(output, name))}
    manifest = read_manifest(output)
    owned: set[str] = set()
    if manifest is not None:
        owned = set(existing) if manifest["state"] == outputs.RUNNING else set(manifest["files"]) & set(existing)
    owned -= links
    foreign = [name for name in existing if name not in owned]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise outputs.OutputError(
            f"--output {output!r} holds {len(foreign)} file(s) at output paths that no manifest of this command "
            f"claims or that are links ({shown}): they are neither overwritten nor deleted, even with --overwrite; "
            "move them or choose another --output"
        )
    if owned and not overwrite:
        raise FileExistsError(f"{output!r} already holds recommendations ({len(owned)} files); pass --overwrite")
    return sorted(owned)


def prepare_output(output: str, overwrite: bool, protected: Sequence[str]) -> None:
    """Makes ``output`` ready and claims it (a ``running`` manifest), holding its lock until
    `outputs.release_output`. The checks run before the folder or its lock file is created, and again under the
    lock (another run may have claimed it in between)."""
    check_location(output, protected)
    outputs.lock_output(output, create=False)
    owned = _owned_by_a_previous_run(output, overwrite)
    if outputs.is_local(output):
        os.makedirs(output, exist_ok=True)
        outputs.lock_output(output)
        owned = _owned_by_a_previous_run(output, overwrite)
    for name in owned:
        path = _join(output, name)
        if outputs.is_local(output) and (os.path.islink(path) or not os.path.isfile(path)):
            raise outputs.OutputError(f"{path} changed to a link or a non-file while deleting the previous output")
        FileSystems.delete([path])
    write_manifest(output, outputs.RUNNING)
