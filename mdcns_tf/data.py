"""`tf.data` input from the pipeline's TFRecords (format: `mdcns_tf.features`).

Training and evaluation elements are dicts of int32 tensors, no labels (the trainers' ``train_step`` and
``test_step`` read them); their keys and shapes are the batch contract in `mdcns_tf.batch`.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import heapq
import logging
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

import mdcns_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from mdcns_tf import features
from mdcns_tf.batch import EXCLUSION_IDS, HISTORY_IDS, INPUT_IDS, POSITION_KEYS, TARGET, TARGET_IDS, USER_INDEX
from mdcns_tf.config import Config, ConfigError, DataConfig

log = logging.getLogger("mdcns_tf.train")


def split_files(data_dir: str, split: str) -> list[str]:
    files = sorted(glob.glob(features.split_pattern(data_dir, split)))
    if not files:
        raise FileNotFoundError(
            f"no {split} TFRecords matching {features.split_pattern(data_dir, split)!r}; run the pipeline first"
        )
    return files


def read_records(data_dir: str, split: str) -> tf.data.Dataset:
    """Parsed records: dicts with ``user_index`` (), ``item_ids`` (None,) and ``target`` (), all int32."""
    dataset = tf.data.TFRecordDataset(split_files(data_dir, split), compression_type="GZIP")
    spec = features.feature_spec()

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_single_example(serialized, spec)
        return {
            features.USER_INDEX: tf.cast(parsed[features.USER_INDEX], tf.int32),
            features.ITEM_IDS: tf.cast(tf.sparse.to_dense(parsed[features.ITEM_IDS]), tf.int32),
            features.TARGET: tf.cast(parsed[features.TARGET], tf.int32),
        }

    return dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def left_pad(ids: tf.Tensor, length: int) -> tf.Tensor:
    """Keeps the last ``length`` ids of a 1-D tensor and left-pads with 0 to exactly ``length``."""
    ids = ids[-length:]
    return tf.pad(ids, [[length - tf.shape(ids)[0], 0]])


def _all_positions(record: dict[str, tf.Tensor], max_len: int) -> dict[str, tf.Tensor]:
    sequence = record[features.ITEM_IDS]
    return {
        INPUT_IDS: left_pad(sequence[:-1], max_len),
        TARGET_IDS: left_pad(sequence[1:], max_len),
        EXCLUSION_IDS: sequence,
        USER_INDEX: record[features.USER_INDEX],
    }


def _prefixes(record: dict[str, tf.Tensor], max_len: int) -> tf.data.Dataset:
    """Prefix augmentation: one sample per position t >= 1, only its last position trained."""
    sequence = record[features.ITEM_IDS]
    only_last = tf.concat([tf.zeros([max_len - 1], tf.int32), [1]], axis=0)

    def prefix(t: tf.Tensor) -> dict[str, tf.Tensor]:
        t = tf.cast(t, tf.int32)
        return {
            INPUT_IDS: left_pad(sequence[:t], max_len),
            TARGET_IDS: only_last * sequence[t],
            EXCLUSION_IDS: sequence,
            USER_INDEX: record[features.USER_INDEX],
        }

    return tf.data.Dataset.range(1, tf.cast(tf.shape(sequence)[0], tf.int64)).map(prefix)


def train_sequences(data_dir: str, max_sequences: int = 0) -> list:
    """The training split's item-id sequences (1-D int32 numpy arrays, chronological), for samplers that build a
    statistic of the training data before training (`NegativeSampler.prepare`): every user's, also under
    ``data.train_users`` (a statistic of the whole data)."""
    return [record[features.ITEM_IDS] for record in _train_records(data_dir, max_sequences).as_numpy_iterator()]


def _train_records(data_dir: str, max_sequences: int, users: np.ndarray | None = None) -> tf.data.Dataset:
    """The training records: the first ``max_sequences`` (all when 0), of ``users`` (indices) only when given."""
    records = read_records(data_dir, "train")
    if max_sequences:
        records = records.take(max_sequences)
    return records if users is None else records.filter(_user_filter(users))


def train_user_indices(cfg: DataConfig) -> np.ndarray | None:
    """The user indices `(n,)` int64 of ``cfg.train_users`` (user keys, one a line, looked up in ``users.txt`` of
    ``cfg.dir``), or None: train on every user. Keys that are no user of the data (a user the pipeline filtered out)
    are logged and skipped; a file with no user of the data is an error (`ConfigError`). Read once a process."""
    if not cfg.train_users:
        return None
    return np.array(_train_user_indices(cfg.dir, cfg.train_users), np.int64)


@functools.lru_cache(maxsize=4)
def _train_user_indices(data_dir: str, path: str) -> tuple[int, ...]:
    try:
        wanted = set(features.read_keys(path))
        users = features.read_keys(os.path.join(data_dir, features.USERS_FILE))
    except OSError as e:
        raise ConfigError(f"data.train_users: {e}") from None
    found = tuple(i for i, key in enumerate(users, start=1) if key in wanted)
    if not found:
        raise ConfigError(
            f"data.train_users: none of the {len(wanted)} keys of {path} is a user of {data_dir} "
            f"({features.USERS_FILE}); give the keys of this data's users, one a line"
        )
    log.info(
        "data.train_users: training on %d of %d users (%d keys of %s are no user of this data)",
        len(found),
        len(users),
        len(wanted) - len(found),
        path,
    )
    return found


def train_users_record(cfg: DataConfig, users: np.ndarray | None) -> dict:
    """What a run's provenance says of ``data.train_users``: the file, its SHA-256 and the users trained ({} off)."""
    if users is None:
        return {}
    return {
        "train_users": {"file": cfg.train_users, "sha256": features.file_sha256(cfg.train_users), "users": len(users)}
    }


def _train_lengths(data_dir: str, max_sequences: int, users: np.ndarray | None) -> tf.data.Dataset:
    records = _train_records(data_dir, max_sequences, users)
    return records.map(lambda r: tf.shape(r[features.ITEM_IDS], out_type=tf.int64)[0])


def _total(dataset: tf.data.Dataset) -> int:
    return int(dataset.reduce(tf.constant(0, tf.int64), lambda total, n: total + n))


def count_train_examples(
    data_dir: str, train_positions: str, max_sequences: int = 0, users: np.ndarray | None = None
) -> int:
    """Number of training samples one epoch yields (for the progress bar and step budgets); ``users``: as
    `train_user_indices`."""
    lengths = _train_lengths(data_dir, max_sequences, users)
    if train_positions == "all":
        return _total(lengths.map(lambda n: tf.cast(n >= 2, tf.int64)))
    return _total(lengths.map(lambda n: tf.maximum(n - 1, 0)))


def count_trained_positions(
    data_dir: str, train_positions: str, max_len: int, max_sequences: int = 0, users: np.ndarray | None = None
) -> int:
    """Number of positions with a target (``target_ids != 0``) one epoch trains: a sequence of n items trains
    min(n - 1, max_len) positions with ``all`` (its last max_len inputs) and n - 1 prefixes of one position each
    with ``last``."""
    lengths = _train_lengths(data_dir, max_sequences, users)
    if train_positions == "all":
        return _total(lengths.map(lambda n: tf.clip_by_value(n - 1, 0, max_len)))
    return _total(lengths.map(lambda n: tf.maximum(n - 1, 0)))


def train_dataset(
    cfg: DataConfig, seed: int, *, shuffle_buffer: int | None = None, epoch: tf.Variable | None = None
) -> tf.data.Dataset:
    """Shuffled, batched training elements (`mdcns_tf.batch`) of ``cfg``: the records in ``cfg.dir`` (the first
    ``cfg.max_train_sequences``, all when 0; of ``cfg.train_users`` only when set), as ``cfg.train_positions``,
    ``cfg.max_len``, ``cfg.batch_size`` and ``cfg.bucket_by_length`` say; one pass over the data per iteration
    (Keras epochs).

    ``shuffle_buffer`` (default ``cfg.shuffle_buffer``) overrides the buffer only: 1 gives the records' order,
    which counts the batches of an epoch without paying for a shuffle (`mdcns_tf.training.batches`).

    With ``epoch`` (an int64 variable the trainer sets before each epoch's iterator is created) the shuffle order of
    an iteration is a function of ``(seed, epoch)`` only, so a run resumed at epoch k sees the same order as an
    uninterrupted run does at epoch k. Without it, ``reshuffle_each_iteration`` derives the order from how many
    iterators this process has created, which restarts at 0 after a resume.

    With ``cfg.bucket_by_length`` the shuffled stream is grouped into batches of similar length and each batch is
    trimmed to its longest sequence: ``input_ids``/``target_ids`` become `(batch, t)` with t <= max_len, holding
    the last t positions. Short-sequence datasets (Amazon: ~9 items a user against max_len 50) then train several
    times faster; backbones treat a `(batch, t)` input as the last t of max_len positions.
    """
    max_len = cfg.max_len
    buffer = cfg.shuffle_buffer if shuffle_buffer is None else shuffle_buffer
    records = _train_records(cfg.dir, cfg.max_train_sequences, train_user_indices(cfg))
    records = records.filter(lambda r: tf.shape(r[features.ITEM_IDS])[0] >= 2)
    if cfg.train_positions == "all":
        samples = records.map(lambda r: _all_positions(r, max_len), num_parallel_calls=tf.data.AUTOTUNE)
    elif cfg.train_positions == "last":
        samples = records.flat_map(lambda r: _prefixes(r, max_len))
    else:
        raise ValueError(f"train_positions must be 'all' or 'last', got {cfg.train_positions!r}")
    samples = samples.cache()
    if epoch is None:
        samples = samples.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    else:
        # The epoch is read once when an iterator starts; the cache above is shared by all iterations.
        cached = samples
        samples = (
            tf.data.Dataset.from_tensors(tf.constant(0, tf.int64))
            .map(lambda _: epoch.read_value())
            .flat_map(lambda e: cached.shuffle(buffer, seed=epoch_seed(seed, e), reshuffle_each_iteration=False))
        )
    padded_shapes = {INPUT_IDS: [max_len], TARGET_IDS: [max_len], EXCLUSION_IDS: [None], USER_INDEX: []}
    return batch_samples(samples, cfg.batch_size, max_len, padded_shapes, cfg.bucket_by_length, cfg.autotune)


def batch_samples(
    samples: tf.data.Dataset,
    batch_size: int,
    max_len: int,
    padded_shapes: dict,
    bucket_by_length: bool,
    autotune: bool = False,
) -> tf.data.Dataset:
    """Padded batches of ``samples``; with ``bucket_by_length`` batches of similar input length, each trimmed to
    its longest input (`trim_batch`): ``input_ids`` (and ``target_ids`` if present) become `(batch, t)`.
    ``autotune``: tf.data's autotuning (`DataConfig.autotune` says why it is off by default)."""
    options = tf.data.Options()
    options.autotune.enabled = autotune
    if not bucket_by_length:
        batches = samples.padded_batch(batch_size, padded_shapes=padded_shapes)
        return batches.prefetch(tf.data.AUTOTUNE).with_options(options)
    boundaries = sorted({b for b in (4, 8, 12, 16, 24, 32, 40) if b < max_len})
    batches = samples.bucket_by_sequence_length(
        element_length_func=lambda sample: tf.math.count_nonzero(sample[INPUT_IDS], dtype=tf.int32),
        bucket_boundaries=boundaries,
        bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
        padded_shapes=padded_shapes,
    )
    trimmed = batches.map(trim_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return trimmed.prefetch(tf.data.AUTOTUNE).with_options(options)


def epoch_seed(seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """The shuffle seed of one epoch: distinct per (seed, epoch), within int64."""
    return tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)


def trim_batch(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Drops the leading columns that are padding in every row of a left-padded batch."""
    used = tf.maximum(tf.reduce_max(tf.math.count_nonzero(batch[INPUT_IDS], axis=1, dtype=tf.int32)), 1)
    start = tf.shape(batch[INPUT_IDS])[1] - used
    trimmed = {key: batch[key][:, start:] for key in POSITION_KEYS if key in batch}
    return {**batch, **trimmed}


def eval_dataset(
    data_dir: str,
    split: str,
    max_len: int,
    batch_size: int,
    max_users: int = 0,
    bucket_by_length: bool = False,
    autotune: bool = False,
    users: Sequence[int] | None = None,
) -> tf.data.Dataset:
    """Batched evaluation users of ``split`` (``valid`` or ``test``), in file order.

    With ``bucket_by_length`` users of similar history length are batched together (no longer in file order) and
    each batch is trimmed to its longest input: the per-user metrics are the same (backbones give a left-padded
    history the same states at any window length), at a fraction of the encoder cost on short-history data.

    ``users``: only the records of these user indices (e.g. `sample_users`), after ``max_users``; None: all.
    """
    records = read_records(data_dir, split)
    if max_users:
        records = records.take(max_users)
    if users is not None:
        records = records.filter(_user_filter(users))

    def to_eval(record: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        history = record[features.ITEM_IDS]
        return {
            INPUT_IDS: left_pad(history, max_len),
            HISTORY_IDS: history,
            TARGET: record[features.TARGET],
            USER_INDEX: record[features.USER_INDEX],
        }

    padded_shapes = {INPUT_IDS: [max_len], HISTORY_IDS: [None], TARGET: [], USER_INDEX: []}
    dataset = records.map(to_eval, num_parallel_calls=tf.data.AUTOTUNE).cache()
    return batch_samples(dataset, batch_size, max_len, padded_shapes, bucket_by_length, autotune)


def has_split(data_dir: str, split: str) -> bool:
    return bool(glob.glob(os.path.join(data_dir, split, "*" + features.TFRECORD_SUFFIX)))


@dataclasses.dataclass(frozen=True)
class UserSample:
    """A fixed, seeded sample of a split's users (`sample_users`)."""

    split: str
    seed: int
    users: tuple[int, ...]  # the sampled user indices, ascending
    population: int  # the split's users it was drawn from (its first ``max_users`` records when that is set)

    @property
    def whole(self) -> bool:
        return len(self.users) == self.population

    def record(self) -> dict:
        """What ``metrics.json`` keeps of it: sizes, seed and a digest of the user indices."""
        digest = hashlib.sha256(",".join(map(str, self.users)).encode()).hexdigest()
        return {"users": len(self.users), "of": self.population, "seed": self.seed, "users_sha256": digest}


def sample_order_key(seed: int, split: str, user_index: int) -> bytes:
    """The draw order of a user: sha256 of (seed, split, user index), as the pipeline's user split orders users
    (docs/design.md, section 3.2), so the sample depends on nothing else (not file order, sharding, or a library's
    random stream)."""
    return hashlib.sha256(f"{seed}\0{split}\0{user_index}".encode()).digest()


def split_users(data_dir: str, split: str, max_users: int = 0) -> np.ndarray:
    """The user indices of ``split``'s records in file order (the first ``max_users`` records when set)."""
    spec = {features.USER_INDEX: features.feature_spec()[features.USER_INDEX]}
    records = tf.data.TFRecordDataset(split_files(data_dir, split), compression_type="GZIP")
    if max_users:
        records = records.take(max_users)
    batches = records.batch(4096).map(lambda serialized: tf.io.parse_example(serialized, spec)[features.USER_INDEX])
    parts = [batch for batch in batches.as_numpy_iterator()]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros([0], np.int64)


def sample_users(data_dir: str, split: str, size: int, seed: int, max_users: int = 0) -> UserSample:
    """``size`` users of ``split`` (all of them when it has no more), the same for the same seed and records: the
    first ``size`` in the order of `sample_order_key`. A sample grows by adding users: the sample of ``size`` holds
    the one of any smaller size."""
    users = np.unique(split_users(data_dir, split, max_users)).tolist()
    first = heapq.nsmallest(size, users, key=lambda user: sample_order_key(seed, split, user))
    return UserSample(split, seed, tuple(sorted(first)), len(users))


def selection_sample(config: Config) -> UserSample | None:
    """The validation users model selection runs on: ``eval.valid_users`` of them drawn with the run's ``seed``
    (`sample_users`), None for every user (0, the default)."""
    if not config.eval.valid_users:
        return None
    cfg = config.data
    return sample_users(cfg.dir, "valid", config.eval.valid_users, config.seed, cfg.max_eval_users)


def sample_dataset(config: Config, sample: UserSample) -> tf.data.Dataset:
    """`eval_dataset` of ``sample``'s split as ``config`` evaluates it, reading only the sampled users."""
    cfg = config.data
    return eval_dataset(
        cfg.dir,
        sample.split,
        cfg.max_len,
        cfg.eval_batch_size,
        cfg.max_eval_users,
        config.eval.bucket_by_length,
        cfg.autotune,
        users=sample.users,
    )


def _user_filter(users: Sequence[int]):
    """A `Dataset.filter` predicate keeping the records whose user index is in ``users`` (a dense lookup table)."""
    users = np.asarray(users, np.int64)
    member = np.zeros(int(users.max()) + 1 if users.size else 1, bool)
    member[users] = True
    table = tf.constant(member)

    def keep(record: dict[str, tf.Tensor]) -> tf.Tensor:
        user = tf.cast(record[features.USER_INDEX], tf.int64)
        inside = (user >= 0) & (user < table.shape[0])
        return inside & tf.gather(table, tf.clip_by_value(user, 0, table.shape[0] - 1))

    return keep
