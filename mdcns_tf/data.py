"""`tf.data` input from the pipeline's TFRecords (format: `mdcns_tf.features`).

Training elements (a dict, no labels: the trainer's `train_step` reads it):
    input_ids      `(batch, max_len)` int32, left-padded model input
    target_ids     `(batch, max_len)` int32, next item per position, 0 where the position is not trained
    exclusion_ids  `(batch, x)` int32, the user's whole training sequence (a negative is never one of these)
    user_index     `(batch,)` int32

Evaluation elements:
    input_ids      `(batch, max_len)` int32, the last max_len items of the history, left-padded
    history_ids    `(batch, x)` int32, the whole history (masked out of the ranking), 0-padded
    target         `(batch,)` int32, the held-out item
    user_index     `(batch,)` int32
"""

from __future__ import annotations

import glob
import os

import tensorflow as tf

import mdcns_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from mdcns_tf import features


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
        "input_ids": left_pad(sequence[:-1], max_len),
        "target_ids": left_pad(sequence[1:], max_len),
        "exclusion_ids": sequence,
        "user_index": record[features.USER_INDEX],
    }


def _prefixes(record: dict[str, tf.Tensor], max_len: int) -> tf.data.Dataset:
    """Prefix augmentation: one sample per position t >= 1, only its last position trained."""
    sequence = record[features.ITEM_IDS]
    only_last = tf.concat([tf.zeros([max_len - 1], tf.int32), [1]], axis=0)

    def prefix(t: tf.Tensor) -> dict[str, tf.Tensor]:
        t = tf.cast(t, tf.int32)
        return {
            "input_ids": left_pad(sequence[:t], max_len),
            "target_ids": only_last * sequence[t],
            "exclusion_ids": sequence,
            "user_index": record[features.USER_INDEX],
        }

    return tf.data.Dataset.range(1, tf.cast(tf.shape(sequence)[0], tf.int64)).map(prefix)


def train_sequences(data_dir: str, max_sequences: int = 0) -> list:
    """The training split's item-id sequences (1-D int32 numpy arrays, chronological), for samplers that build a
    statistic of the training data before training (`NegativeSampler.prepare`)."""
    records = read_records(data_dir, "train")
    if max_sequences:
        records = records.take(max_sequences)
    return [record[features.ITEM_IDS] for record in records.as_numpy_iterator()]


def _train_lengths(data_dir: str, max_sequences: int) -> tf.data.Dataset:
    records = read_records(data_dir, "train")
    if max_sequences:
        records = records.take(max_sequences)
    return records.map(lambda r: tf.shape(r[features.ITEM_IDS], out_type=tf.int64)[0])


def _total(dataset: tf.data.Dataset) -> int:
    return int(dataset.reduce(tf.constant(0, tf.int64), lambda total, n: total + n))


def count_train_examples(data_dir: str, train_positions: str, max_sequences: int = 0) -> int:
    """Number of training samples one epoch yields (for the progress bar and step budgets)."""
    lengths = _train_lengths(data_dir, max_sequences)
    if train_positions == "all":
        return _total(lengths.map(lambda n: tf.cast(n >= 2, tf.int64)))
    return _total(lengths.map(lambda n: tf.maximum(n - 1, 0)))


def count_trained_positions(data_dir: str, train_positions: str, max_len: int, max_sequences: int = 0) -> int:
    """Number of positions with a target (``target_ids != 0``) one epoch trains: a sequence of n items trains
    min(n - 1, max_len) positions with ``all`` (its last max_len inputs) and n - 1 prefixes of one position each
    with ``last``."""
    lengths = _train_lengths(data_dir, max_sequences)
    if train_positions == "all":
        return _total(lengths.map(lambda n: tf.clip_by_value(n - 1, 0, max_len)))
    return _total(lengths.map(lambda n: tf.maximum(n - 1, 0)))


def train_dataset(
    data_dir: str,
    max_len: int,
    batch_size: int,
    train_positions: str = "all",
    seed: int = 0,
    shuffle_buffer: int = 100_000,
    max_sequences: int = 0,
    bucket_by_length: bool = False,
    epoch: tf.Variable | None = None,
) -> tf.data.Dataset:
    """Shuffled, batched training samples; one pass over the data per iteration (Keras epochs).

    With ``epoch`` (an int64 variable the trainer sets before each epoch's iterator is created) the shuffle order of
    an iteration is a function of ``(seed, epoch)`` only, so a run resumed at epoch k sees the same order as an
    uninterrupted run does at epoch k. Without it, ``reshuffle_each_iteration`` derives the order from how many
    iterators this process has created, which restarts at 0 after a resume.

    With ``bucket_by_length`` the shuffled stream is grouped into batches of similar length and each batch is
    trimmed to its longest sequence: ``input_ids``/``target_ids`` become `(batch, t)` with t <= max_len, holding
    the last t positions. Short-sequence datasets (Amazon: ~9 items a user against max_len 50) then train several
    times faster; backbones treat a `(batch, t)` input as the last t of max_len positions.
    """
    records = read_records(data_dir, "train")
    if max_sequences:
        records = records.take(max_sequences)
    records = records.filter(lambda r: tf.shape(r[features.ITEM_IDS])[0] >= 2)
    if train_positions == "all":
        samples = records.map(lambda r: _all_positions(r, max_len), num_parallel_calls=tf.data.AUTOTUNE)
    elif train_positions == "last":
        samples = records.flat_map(lambda r: _prefixes(r, max_len))
    else:
        raise ValueError(f"train_positions must be 'all' or 'last', got {train_positions!r}")
    samples = samples.cache()
    if epoch is None:
        samples = samples.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    else:
        # The epoch is read once when an iterator starts; the cache above is shared by all iterations.
        cached = samples
        samples = (
            tf.data.Dataset.from_tensors(tf.constant(0, tf.int64))
            .map(lambda _: epoch.read_value())
            .flat_map(
                lambda e: cached.shuffle(shuffle_buffer, seed=epoch_seed(seed, e), reshuffle_each_iteration=False)
            )
        )
    padded_shapes = {"input_ids": [max_len], "target_ids": [max_len], "exclusion_ids": [None], "user_index": []}
    return batch_samples(samples, batch_size, max_len, padded_shapes, bucket_by_length)


def batch_samples(
    samples: tf.data.Dataset, batch_size: int, max_len: int, padded_shapes: dict, bucket_by_length: bool
) -> tf.data.Dataset:
    """Padded batches of ``samples``; with ``bucket_by_length`` batches of similar input length, each trimmed to
    its longest input (`trim_batch`): ``input_ids`` (and ``target_ids`` if present) become `(batch, t)`."""
    if not bucket_by_length:
        return samples.padded_batch(batch_size, padded_shapes=padded_shapes).prefetch(tf.data.AUTOTUNE)
    boundaries = sorted({b for b in (4, 8, 12, 16, 24, 32, 40) if b < max_len})
    batches = samples.bucket_by_sequence_length(
        element_length_func=lambda sample: tf.math.count_nonzero(sample["input_ids"], dtype=tf.int32),
        bucket_boundaries=boundaries,
        bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
        padded_shapes=padded_shapes,
    )
    return batches.map(trim_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def epoch_seed(seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """The shuffle seed of one epoch: distinct per (seed, epoch), within int64."""
    return tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)


def trim_batch(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Drops the leading columns that are padding in every row of a left-padded batch."""
    used = tf.maximum(tf.reduce_max(tf.math.count_nonzero(batch["input_ids"], axis=1, dtype=tf.int32)), 1)
    start = tf.shape(batch["input_ids"])[1] - used
    trimmed = {key: batch[key][:, start:] for key in ("input_ids", "target_ids") if key in batch}
    return {**batch, **trimmed}


def eval_dataset(
    data_dir: str, split: str, max_len: int, batch_size: int, max_users: int = 0, bucket_by_length: bool = False
) -> tf.data.Dataset:
    """Batched evaluation users of ``split`` (``valid`` or ``test``), in file order.

    With ``bucket_by_length`` users of similar history length are batched together (no longer in file order) and
    each batch is trimmed to its longest input: the per-user metrics are the same (backbones give a left-padded
    history the same states at any window length), at a fraction of the encoder cost on short-history data.
    """
    records = read_records(data_dir, split)
    if max_users:
        records = records.take(max_users)

    def to_eval(record: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        history = record[features.ITEM_IDS]
        return {
            "input_ids": left_pad(history, max_len),
            "history_ids": history,
            "target": record[features.TARGET],
            "user_index": record[features.USER_INDEX],
        }

    padded_shapes = {"input_ids": [max_len], "history_ids": [None], "target": [], "user_index": []}
    dataset = records.map(to_eval, num_parallel_calls=tf.data.AUTOTUNE).cache()
    return batch_samples(dataset, batch_size, max_len, padded_shapes, bucket_by_length)


def has_split(data_dir: str, split: str) -> bool:
    return bool(glob.glob(os.path.join(data_dir, split, "*" + features.TFRECORD_SUFFIX)))
