"""``--vocabulary_from PREVIOUS_OUTPUT``: a run whose item ids and user indices extend a previous output's.

Every key of the parent's ``items.txt`` / ``users.txt`` keeps its line (its id or index), keys this log has and the
parent does not are appended after the parent's last line in vocabulary order (`vocabulary.vocabulary_order`:
integers numerically, then the rest sorted), and parent keys this log lacks stay where they are: the catalogue
only grows, so a model trained on day 1 reads day 2's ids as the same items.

The parent is checked at launch (`load_parent`, a `ParentVocabularyError` naming what is wrong): a complete
pipeline output (``manifest.json`` ``complete``, listing ``metadata.json``, ``items.txt``, ``users.txt``), this
schema version, and vocabulary files whose sha256 and line counts are the ones its ``metadata.json`` fingerprint
and ``n_items`` / ``n_users`` give (the records are not read). The worker that extends a vocabulary
(`pipeline.vocabulary.extend_parent`) reads the parent's file again through Beam's `FileSystems` (so ``gs://``
parents work and the graph does not carry the catalogue) and refuses bytes that differ from those checked at launch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from mdcns_tf import features
from pipeline import outputs

HELP = (
    "a previous pipeline output: its items and users keep their ids, new ones are appended after its largest id "
    "(in vocabulary order); its items absent from this log keep theirs (the catalogue only grows)"
)
VOCABULARIES = (features.ITEMS_FILE, features.USERS_FILE)


class ParentVocabularyError(ValueError):
    """A ``--vocabulary_from`` folder that is not a usable pipeline output (one ``error:`` line, exit code 2)."""


def _read(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def _sha256(data: bytes) -> str:
    return hashlib.new(features.FINGERPRINT_ALGORITHM, data).hexdigest()


def _keys(data: bytes) -> list[str]:
    return data.decode("utf-8").split("\n")[:-1]


@dataclasses.dataclass(frozen=True)
class ParentVocabulary:
    """A checked parent: its folder, the sha256 of its ``metadata.json`` and of each vocabulary file, and their
    sizes (``{file name: lines}``)."""

    path: str
    metadata_sha256: str
    sha256: dict[str, str]
    sizes: dict[str, int]

    def keys(self, name: str) -> list[str]:
        """The parent's keys of ``items.txt`` or ``users.txt`` (element i-1 = id i), re-read and checked."""
        data = _read(FileSystems.join(self.path, name))
        if _sha256(data) != self.sha256[name]:
            raise ParentVocabularyError(
                f"--vocabulary_from {self.path}: {name} changed while the pipeline ran (its sha256 differs from the "
                "one checked at launch); run again once nothing writes that folder"
            )
        return _keys(data)

    def describe(self, n_items: int, n_users: int) -> dict[str, Any]:
        """``metadata.json`` ``source.vocabulary_from`` for an output of ``n_items`` items and ``n_users`` users."""
        items, users = self.sizes[features.ITEMS_FILE], self.sizes[features.USERS_FILE]
        return {
            "path": self.path,
            "metadata_sha256": self.metadata_sha256,
            "items_sha256": self.sha256[features.ITEMS_FILE],
            "users_sha256": self.sha256[features.USERS_FILE],
            "n_items": items,
            "n_users": users,
            "new_items": n_items - items,
            "new_users": n_users - users,
        }


def _same_folder(a: str, b: str) -> bool:
    if outputs.is_local(a) and outputs.is_local(b):
        return os.path.realpath(a) == os.path.realpath(b)
    return a.rstrip("/") == b.rstrip("/")


def _json(path: str, what: str, source: str) -> tuple[dict[str, Any], bytes]:
    try:
        data = _read(path)
        value = json.loads(data.decode("utf-8"))
    except (OSError, ValueError) as e:
        raise ParentVocabularyError(f"--vocabulary_from {source}: {what} cannot be read ({e})") from None
    if not isinstance(value, dict):
        raise ParentVocabularyError(f"--vocabulary_from {source}: {what} is not a JSON object")
    return value, data


def load_parent(path: str, output: str) -> ParentVocabulary:
    """Checks that ``path`` is a complete pipeline output whose vocabularies match its metadata (module
    docstring) and is not ``output`` (which this run may overwrite); raises `ParentVocabularyError`."""
    source = path
    path = outputs.absolute(path)
    if _same_folder(path, outputs.absolute(output)):
        raise ParentVocabularyError(
            f"--vocabulary_from {source} is the --output folder, which this run rewrites: write the new output "
            "to another folder"
        )
    not_output = f"--vocabulary_from {source} is not a pipeline output folder"
    if not FileSystems.exists(FileSystems.join(path, features.METADATA_FILE)):
        raise ParentVocabularyError(f"{not_output} (no {features.METADATA_FILE} there)")
    manifest_path = FileSystems.join(path, features.MANIFEST_FILE)
    if not FileSystems.exists(manifest_path):
        raise ParentVocabularyError(f"{not_output} (no {features.MANIFEST_FILE}): re-run the pipeline that wrote it")
    manifest, _ = _json(manifest_path, features.MANIFEST_FILE, source)
    files = manifest.get("files") if isinstance(manifest.get("files"), list) else []
    missing = [name for name in (features.METADATA_FILE, *VOCABULARIES) if name not in files]
    if manifest.get("state") != outputs.COMPLETE or missing:
        raise ParentVocabularyError(
            f"--vocabulary_from {source}: its {features.MANIFEST_FILE} is not that of a complete run (state "
            f"{manifest.get('state')!r}, missing {missing}): wait for that run to end, or re-run it"
        )
    metadata, raw = _json(FileSystems.join(path, features.METADATA_FILE), features.METADATA_FILE, source)
    if metadata.get("schema_version") != features.SCHEMA_VERSION:
        raise ParentVocabularyError(
            f"--vocabulary_from {source}: schema_version {metadata.get('schema_version')!r}, this pipeline writes "
            f"{features.SCHEMA_VERSION}; re-run the pipeline that wrote it"
        )
    fingerprint = metadata.get("fingerprint")
    printed = fingerprint.get("vocabularies") if isinstance(fingerprint, dict) else None
    sizes = {features.ITEMS_FILE: metadata.get("n_items"), features.USERS_FILE: metadata.get("n_users")}
    sha256, lines = {}, {}
    for name in VOCABULARIES:
        data = _read(FileSystems.join(path, name)) if FileSystems.exists(FileSystems.join(path, name)) else None
        expected = printed.get(name) if isinstance(printed, dict) else None
        if data is None or expected is None or _sha256(data) != expected or data.count(b"\n") != sizes[name]:
            raise ParentVocabularyError(
                f"--vocabulary_from {source}: {name} is not the file its {features.METADATA_FILE} describes "
                f"(absent, or its sha256 or line count differs from the fingerprint and n_items / n_users): "
                "its ids cannot be trusted; re-run the pipeline that wrote it"
            )
        sha256[name], lines[name] = expected, sizes[name]
    return ParentVocabulary(path, _sha256(raw), sha256, lines)
