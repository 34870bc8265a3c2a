"""Splits (docs/design.md, section "Protocols"): which records a user's id sequence becomes under each protocol,
a given user split, the ``--split_file``, and the ``split`` object of ``metadata.json`` (`split_metadata`).

Records are ``(user_index, item_ids, target)`` tuples in `mdcns_tf.features` terms (target 0 = training record).
Everything here is pure but `load_split_file`, which reads the file through Beam's `FileSystems`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from mdcns_tf.features import PADDING_ID
from pipeline import formats

PROTOCOLS = ("loo", "user", "time")
# loo: >= 1 training item besides the 2 held out; user: >= 1 input + target; time: the same over the events a user
# shows up to its target (`pipeline.timesplit`), so a held-out user has a history and a train-only user a transition
MIN_SEQ_LEN = {"loo": 3, "user": 2, "time": 2}

Record = tuple[int, list[int], int]


def loo_records(user_index: int, ids: Sequence[int]) -> dict[str, Record]:
    """Leave-one-out: train ``s[:-2]`` (target 0), valid ``s[:-2] -> s[-2]``, test ``s[:-1] -> s[-1]``."""
    if len(ids) < MIN_SEQ_LEN["loo"]:
        raise ValueError(f"leave-one-out needs >= {MIN_SEQ_LEN['loo']} items, user {user_index} has {len(ids)}")
    ids = list(ids)
    return {
        "train": (user_index, ids[:-2], PADDING_ID),
        "valid": (user_index, ids[:-2], ids[-2]),
        "test": (user_index, ids[:-1], ids[-1]),
    }


def user_records(user_index: int, ids: Sequence[int], split: str) -> dict[str, Record]:
    """User split: a train user's whole sequence (target 0); a held-out user's ``s[:-1] -> s[-1]``."""
    if len(ids) < MIN_SEQ_LEN["user"]:
        raise ValueError(f"user split needs >= {MIN_SEQ_LEN['user']} items, user {user_index} has {len(ids)}")
    ids = list(ids)
    if split == "train":
        return {"train": (user_index, ids, PADDING_ID)}
    return {split: (user_index, ids[:-1], ids[-1])}


def time_records(user_index: int, ids: Sequence[int], split: str) -> dict[str, Record]:
    """Time split, ``ids`` = the events before the cut, then the target for a held-out user (``split`` valid or
    test): train ``ids[:-1]`` (target 0) and ``split`` ``ids[:-1] -> ids[-1]``; a train-only user: train ``ids``."""
    if len(ids) < MIN_SEQ_LEN["time"]:
        raise ValueError(f"time split needs >= {MIN_SEQ_LEN['time']} items, user {user_index} has {len(ids)}")
    ids = list(ids)
    if split == "train":
        return {"train": (user_index, ids, PADDING_ID)}
    return {"train": (user_index, ids[:-1], PADDING_ID), split: (user_index, ids[:-1], ids[-1])}


def time_split_assignment(held_out: Sequence[str], seed: int) -> dict[str, str]:
    """``{user_key: valid | test}`` for the time split's held-out users: ordered by `shuffle_key`, the first
    ceil(n / 2) validation, the rest test (so it depends on the seed and the set of held-out users only)."""
    order = sorted(held_out, key=lambda key: (shuffle_key(seed, key), key))
    n_valid = (len(order) + 1) // 2
    return {key: "valid" if rank < n_valid else "test" for rank, key in enumerate(order)}


def split_sizes(n_users: int, valid_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """Exact ``(n_train, n_valid, n_test)``: valid and test are rounded half up, train takes the rest."""
    if not (0 <= valid_fraction and 0 <= test_fraction and valid_fraction + test_fraction < 1):
        raise ValueError(
            f"need 0 <= valid_fraction, test_fraction and their sum < 1, got {valid_fraction}, {test_fraction}"
        )
    n_valid = math.floor(n_users * valid_fraction + 0.5)
    n_test = math.floor(n_users * test_fraction + 0.5)
    return n_users - n_valid - n_test, n_valid, n_test


def shuffle_key(seed: int, user_key: str) -> bytes:
    """The seeded position of a user: a hash, so it does not depend on Python's RNG or on the other users."""
    return hashlib.sha256(f"{seed}\x00{user_key}".encode()).digest()


def user_split_assignment(
    user_keys: Sequence[str], seed: int, valid_fraction: float, test_fraction: float
) -> dict[str, str]:
    """``{user_key: split}`` for the user protocol: users ordered by `shuffle_key`, cut exactly by `split_sizes`."""
    order = sorted(user_keys, key=lambda key: (shuffle_key(seed, key), key))
    n_train, n_valid, _ = split_sizes(len(order), valid_fraction, test_fraction)
    return {
        key: "train" if rank < n_train else "valid" if rank < n_train + n_valid else "test"
        for rank, key in enumerate(order)
    }


# --- A given user split (``--split_file``) ---------------------------------------------------------------------

SPLIT_FILE_SPLITS = ("train", "valid", "test")
MAX_OFFENDERS = 5  # how many offending lines or users an error lists
# The assignment travels inside the graph (`records.UserSplits`): a paper's split is KBs (Beauty: 75 KB, 22k users).
MAX_SPLIT_FILE_BYTES = 64 * 1024 * 1024


class SplitFileError(ValueError):
    """A ``--split_file`` that does not fit the data or is malformed; the message lists the first offenders."""


def _offenders(items: Sequence[str], what: str) -> str:
    shown = ", ".join(items[:MAX_OFFENDERS])
    more = f" and {len(items) - MAX_OFFENDERS} more" if len(items) > MAX_OFFENDERS else ""
    return f"{len(items)} {what}: {shown}{more}"


def parse_split_file(text: str, source: str = "--split_file") -> dict[str, str]:
    """``{user_key: split}`` from a TSV of ``user<TAB>valid|test`` lines (``train`` is accepted too).

    Blank lines and lines starting with ``#`` are skipped. The user key is matched verbatim (after stripping
    surrounding whitespace and `formats.normalize_key`, as the input's keys are) against the user column. Raises
    `SplitFileError` listing the first malformed lines, unknown split names or duplicate users, all of them checked
    before anything is raised.
    """
    assignment: dict[str, str] = {}
    malformed, unknown, duplicates = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) != 2 or not fields[0].strip():
            malformed.append(f"line {number} {line[:60]!r}")
            continue
        # keys are normalised as the input's are (`formats.normalize_key`: "49.0" is user "49")
        user, split = formats.normalize_key(fields[0].strip()), fields[1].strip()
        if split not in SPLIT_FILE_SPLITS:
            unknown.append(f"line {number} {split[:30]!r}")
        elif user in assignment:
            duplicates.append(f"line {number} user {user[:30]!r}")
        else:
            assignment[user] = split
    problems = []
    if malformed:
        problems.append(_offenders(malformed, "lines are not 'user<TAB>split'"))
    if unknown:
        problems.append(_offenders(unknown, f"unknown split names (expected one of {list(SPLIT_FILE_SPLITS)})"))
    if duplicates:
        problems.append(_offenders(duplicates, "duplicate users"))
    if problems:
        raise SplitFileError(f"{source}: " + "; ".join(problems))
    if not assignment:
        raise SplitFileError(f"{source}: no 'user<TAB>split' line")
    return assignment


def file_split_assignment(
    user_keys: Sequence[str], given: dict[str, str], source: str = "--split_file"
) -> dict[str, str]:
    """``{user_key: split}`` for every user of the data: ``given``'s split, ``train`` for users it does not list.

    Raises `SplitFileError` when ``given`` names users that are not in the data (after the pipeline's filters),
    listing the first of them: a split that silently loses held-out users would not be the split asked for.
    """
    known = set(user_keys)
    missing = sorted((user for user in given if user not in known), key=lambda key: (len(key), key))
    if missing:
        raise SplitFileError(
            f"{source}: {_offenders([repr(u) for u in missing], 'users are not in the data')} "
            "(absent from the input, rejected, or removed by --kcore/--min_seq_len)"
        )
    return {key: given.get(key, "train") for key in user_keys}


@dataclasses.dataclass(frozen=True)
class SplitFile:
    """A parsed ``--split_file``: ``{user key: split}`` and the sha256 of the file's bytes (for metadata.json)."""

    path: str
    assignment: dict[str, str]
    sha256: str

    @property
    def sizes(self) -> dict[str, int]:
        return {split: sum(s == split for s in self.assignment.values()) for split in SPLIT_FILE_SPLITS}


def load_split_file(path: str) -> SplitFile:
    """Reads and checks ``--split_file`` (local or ``gs://``-style); `SplitFileError` on a bad file."""
    if not FileSystems.exists(path):
        raise FileNotFoundError(f"--split_file {path!r} does not exist")
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            raw = f.read(MAX_SPLIT_FILE_BYTES + 1)
    except OSError as e:
        raise SplitFileError(f"--split_file {path!r} cannot be read ({e.strerror or e}): name a TSV file") from None
    if len(raw) > MAX_SPLIT_FILE_BYTES:
        raise SplitFileError(
            f"--split_file {path!r} is larger than {MAX_SPLIT_FILE_BYTES >> 20} MiB: the split travels inside the "
            "pipeline's graph, to every worker; split millions of users with --split user and a seed instead"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SplitFileError(f"--split_file {path!r} is not UTF-8 text ({e})") from None
    assignment = parse_split_file(text, source=f"--split_file {path}")
    return SplitFile(path, assignment, hashlib.sha256(raw).hexdigest())


def split_metadata(config: Any, split_file: SplitFile | None, time_cut: dict[str, Any] | None = None) -> dict[str, Any]:
    """``metadata.json`` ``split`` of a run of ``config`` (a `pipeline.config.PipelineConfig`; not in the annotation:
    that module imports this one): ``{protocol, seed, fractions, min_seq_len}``; with ``--split_file`` also
    ``split_file``, ``split_file_sha256``, ``split_file_users``; with ``--split time`` also ``cutoff`` (the one
    used), ``cutoff_quantile``, ``time_range`` and ``targets_unseen_in_train`` (``time_cut``, computed in the
    graph: `pipeline.timesplit`; absent when no event was left)."""
    split: dict[str, Any] = {
        "protocol": config.split,
        "seed": config.seed if split_file is None else None,
        "fractions": (
            {
                "train": round(1.0 - config.valid_fraction - config.test_fraction, 10),
                "valid": config.valid_fraction,
                "test": config.test_fraction,
            }
            if config.split == "user" and split_file is None
            else None
        ),
        "min_seq_len": config.effective_min_seq_len,
    }
    if split_file is not None:
        split.update(split_file=split_file.path, split_file_sha256=split_file.sha256, split_file_users=split_file.sizes)
    if config.split == "time":
        split.update(
            {"cutoff": config.cutoff, "cutoff_quantile": config.cutoff_quantile, "time_range": None, **(time_cut or {})}
        )
    return split
