"""The batch-recommendation graph as one composite transform, `Recommend`: a data folder's users through an exported
SavedModel -> top-K files in ``--output``.

    p | "Recommend" >> Recommend(options)      # what `pipeline.recommend` applies

Its stages, and the elements between them (``g`` = batch group, ``u`` = 1-based user index):

    ReadHistories   record files -> (g, (HISTORY, u, item ids)); ``split="all"``: every split, target appended
    ReadUserKeys    users.txt    -> (g, (USER_KEY, u, user key))
    MakeBatches     one GroupByKey on g -> [((u, user key), padded history (max_len,)), ...] of <= batch_size users;
                    with ``split="all"`` a user's history is its longest record + target, its whole sequence
    RunInference    `inference.SignatureModelHandler` (keyed, pre-batched) -> ((u, key), PredictionResult)
    Format          -> a JSON line or a tf.train.Example per user
    WriteFiles      `pipeline.sinks.WriteFiles` -> temporary paths
    Finish          paths and counts in one group -> files renamed, users in == users out checked, manifest,
                    ``_SUCCESS``

Batching. ``RunInference``'s own batching (``BatchElements``) emits each bundle's last batch from
``finish_bundle``, which Beam 2.77's Dask runner drops (`pipeline.portable`): those users would vanish there. So
the batches are formed by the GroupByKey that also joins each user's records and key: ``g = u mod G`` with ``G``
groups of about ``batch_size`` users, a group cut into batches of at most ``batch_size``, and ``RunInference`` is
told the input is already batched. The scoring is one ``serving_default`` call per batch.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference

from mdcns_tf import features
from mdcns_tf.savedmodel.signatures import ITEM_IDS, ITEM_KEYS, SCORES
from pipeline import inference, outputs, portable, recommend_output, sinks

HISTORY, USER_KEY = 0, 1
ALL = "all"
SPLIT_CHOICES = (*features.SPLITS, ALL)


@dataclasses.dataclass(frozen=True)
class RecommendOptions:
    """What `Recommend` needs; paths absolute (workers do not share the launcher's cwd)."""

    version_dir: str
    data_dir: str
    output: str
    split: str
    max_len: int
    top_k: int
    format: str
    batch_size: int
    users_expected: int
    summary: dict[str, Any]  # written into _SUCCESS with the counts


def read_histories(path: str, n_groups: int, with_target: bool) -> Iterator[tuple[int, tuple[int, int, Any]]]:
    """One record file -> ``(g, (HISTORY, u, item ids int32))``; with ``with_target`` an evaluation record's target
    is appended (the user's sequence up to and including it)."""
    import numpy as np
    import tensorflow as tf

    spec = features.feature_spec()
    # batch before parsing: parse_example on thousands of records is ~10x faster than one by one
    for serialized in tf.data.TFRecordDataset([path], compression_type="GZIP").batch(4096):
        parsed = tf.io.parse_example(serialized, spec)
        ragged = tf.RaggedTensor.from_sparse(parsed[features.ITEM_IDS])
        values, splits = ragged.values.numpy().astype(np.int32), ragged.row_splits.numpy()
        users, targets = parsed[features.USER_INDEX].numpy(), parsed[features.TARGET].numpy()
        for row, user in enumerate(users.tolist()):
            ids = values[splits[row] : splits[row + 1]]
            if with_target and targets[row] != features.PADDING_ID:
                ids = np.append(ids, np.int32(targets[row]))
            yield user % n_groups, (HISTORY, user, ids)


def read_user_keys(path: str, n_groups: int) -> Iterator[tuple[int, tuple[int, int, str]]]:
    """``users.txt`` -> ``(g, (USER_KEY, u, key))``; line u is the key of user u."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for user, line in enumerate(io.TextIOWrapper(f, encoding="utf-8", newline="\n"), start=1):
            yield user % n_groups, (USER_KEY, user, line[:-1] if line.endswith("\n") else line)


def make_batches(
    element: tuple[int, Iterable[tuple[int, int, Any]]], max_len: int, batch_size: int
) -> Iterator[list[tuple[tuple[int, str], Any]]]:
    """One group -> batches of ``((u, user key), padded history)``, users in index order."""
    _, values = element
    keys: dict[int, str] = {}
    histories: dict[int, Any] = {}
    for kind, user, payload in values:
        if kind == USER_KEY:
            keys[user] = payload
        elif user not in histories or len(payload) > len(histories[user]):
            histories[user] = payload
    users = sorted(histories)
    missing = [user for user in users if user not in keys]
    if missing:
        raise ValueError(f"user indices {missing[:5]} have records but no line in {features.USERS_FILE}")
    for start in range(0, len(users), batch_size):
        chunk = users[start : start + batch_size]
        rows = inference.padded_histories([histories[user] for user in chunk], max_len)
        yield [((user, keys[user]), row) for user, row in zip(chunk, rows, strict=True)]


def json_line(element: tuple[tuple[int, str], PredictionResult]) -> str:
    (user, key), result = element
    top = result.inference
    return json.dumps(
        {
            "user_index": user,
            "user": key,
            ITEM_IDS: top[ITEM_IDS].tolist(),
            ITEM_KEYS: top[ITEM_KEYS].tolist(),
            SCORES: top[SCORES].tolist(),
        },
        ensure_ascii=False,
    )


class ToExample(beam.DoFn):
    """-> a serialized ``tf.train.Example``: ``user_index`` int64, ``user`` bytes, ``item_ids`` int64 (K),
    ``item_keys`` bytes (K), ``scores`` float (K)."""

    def setup(self) -> None:
        import tensorflow as tf

        self.train = tf.train

    def process(self, element: tuple[tuple[int, str], PredictionResult]) -> Iterator[bytes]:
        (user, key), result = element
        top, train = result.inference, self.train
        feature = {
            "user_index": train.Feature(int64_list=train.Int64List(value=[user])),
            "user": train.Feature(bytes_list=train.BytesList(value=[key.encode("utf-8")])),
            ITEM_IDS: train.Feature(int64_list=train.Int64List(value=top[ITEM_IDS].tolist())),
            ITEM_KEYS: train.Feature(bytes_list=train.BytesList(value=[k.encode("utf-8") for k in top[ITEM_KEYS]])),
            SCORES: train.Feature(float_list=train.FloatList(value=top[SCORES].tolist())),
        }
        yield train.Example(features=train.Features(feature=feature)).SerializeToString()


def _tagged(value: Any, tag: str) -> tuple[None, tuple[str, Any]]:
    return None, (tag, value)


def _in_rows_sink(row: str | bytes) -> tuple[str, list[str | bytes]]:
    return "rows", [row]  # `sinks.WriteFiles` takes batches


def _one(_: Any) -> int:
    return 1


def _file_path(pair: tuple[str, str | None]) -> tuple[None, tuple[str, Any]]:
    return None, ("file", pair[1])


def finish(element: tuple[None, Iterable[tuple[str, Any]]], options: RecommendOptions, run_id: str) -> Iterator[dict]:
    """The last step: users in == users out == the users the data holds, else an error and no ``_SUCCESS``; then
    the temporary files renamed to ``part-SSSSS-of-NNNNN``, the complete manifest, and ``_SUCCESS``."""
    _, values = element
    temp_paths: list[str | None] = []
    counts = {"users_in": 0, "users_out": 0}
    for tag, value in values:
        if tag == "file":
            temp_paths.append(value)
        else:
            counts[tag] += value
    if not counts["users_in"] == counts["users_out"] == options.users_expected:
        raise RuntimeError(
            f"{options.output}: {options.users_expected} users in the data, {counts['users_in']} batched, "
            f"{counts['users_out']} written: users were lost on the way; the output is incomplete (no _SUCCESS)"
        )
    suffix, _ = recommend_output.FORMATS[options.format]
    finals = sinks.finalize(
        temp_paths,
        directory=options.output,
        prefix=recommend_output.PART_PREFIX,
        suffix=suffix,
        temp_dir=recommend_output.temp_dir(options.output, run_id),
    )
    files = [path.rsplit("/", 1)[-1] for path in finals]
    recommend_output.write_manifest(options.output, outputs.COMPLETE, [*files, recommend_output.SUCCESS_FILE])
    summary = {**options.summary, "users_expected": options.users_expected, **counts, "files": files}
    recommend_output.write_success(options.output, summary)
    yield summary


class Recommend(beam.PTransform):
    """The root -> the singleton PCollection of the ``_SUCCESS`` summary. ``--output`` must have been claimed
    (`recommend_output.prepare_output`)."""

    def __init__(self, options: RecommendOptions) -> None:
        super().__init__()
        self.options = options
        self.run_id = uuid.uuid4().hex[:16]

    def expand(self, root: beam.pvalue.PBegin) -> beam.PCollection:
        o = self.options
        n_groups = max(1, math.ceil(o.users_expected / o.batch_size))
        splits = features.SPLITS if o.split == ALL else (o.split,)
        patterns = [features.split_pattern(o.data_dir, split) for split in splits]
        files = sorted(m.path for match in FileSystems.match(patterns) for m in match.metadata_list)
        histories = (
            root
            | "RecordFiles" >> beam.Create(files)
            | "ReadHistories" >> beam.FlatMap(read_histories, n_groups=n_groups, with_target=o.split == ALL)
        )
        user_keys = (
            root
            | "UsersFile" >> beam.Create([FileSystems.join(o.data_dir, features.USERS_FILE)])
            | "ReadUserKeys" >> beam.FlatMap(read_user_keys, n_groups=n_groups)
        )
        batches = (
            (histories, user_keys)
            | "Join" >> beam.Flatten()
            | "GroupUsers" >> beam.GroupByKey()
            | "MakeBatches" >> beam.FlatMap(make_batches, max_len=o.max_len, batch_size=o.batch_size)
        )
        handler = KeyedModelHandler(inference.SignatureModelHandler(o.version_dir, o.max_len, o.top_k))
        results = batches | "RunInference" >> RunInference(handler.with_no_batching())
        suffix, kind = recommend_output.FORMATS[o.format]
        rows = results | "Format" >> (beam.Map(json_line) if o.format == "jsonl" else beam.ParDo(ToExample()))
        temp = recommend_output.temp_dir(o.output, self.run_id)
        written = (
            rows
            | "InSink" >> beam.Map(_in_rows_sink)
            | "WriteFiles" >> sinks.WriteFiles({"rows": (temp, suffix, kind, 0)})
        )
        users_in = portable.combine_globally(batches | "BatchSizes" >> beam.Map(len), sum, 0, "UsersIn")
        users_out = portable.combine_globally(rows | "Ones" >> beam.Map(_one), sum, 0, "UsersOut")
        marker = root | "FileMarker" >> beam.Create([("rows", None)])  # an empty output still gets its one file
        return (
            [
                (written, marker) | "AllFiles" >> beam.Flatten() | "FilePaths" >> beam.Map(_file_path),
                users_in | "TagIn" >> beam.Map(_tagged, "users_in"),
                users_out | "TagOut" >> beam.Map(_tagged, "users_out"),
            ]
            | "Everything" >> beam.Flatten()
            | "OneGroup" >> beam.GroupByKey()
            | "Finish" >> beam.FlatMap(finish, options=o, run_id=self.run_id)
        )
