"""TensorFlow-free serialisation of one record as a `tf.train.Example` (the `mdcns_tf.features` spec).

`mdcns_tf.features.make_example` builds the proto with TensorFlow's classes: ~20 us a record, plus a TensorFlow
import (~4 s, ~0.5 GB) in every Beam worker process. This writes the same protobuf wire format directly (~1-2 us
a record with a table of varints, no TensorFlow in the workers). The result parses to a proto equal to
``make_example``'s (`tests/test_pipeline_formats.py` checks it); bytes may differ only in the order of the three
map entries, which protobuf leaves unspecified anyway.

Wire format (field numbers from tensorflow/core/example/{example,feature}.proto):
``Example{1: Features{1: map<string, Feature>}}``, ``Feature{3: Int64List{1: packed int64}}``; a map entry is a
message ``{1: key, 2: value}``.
"""

from __future__ import annotations

from collections.abc import Sequence

from mdcns_tf.features import ITEM_IDS, PADDING_ID, TARGET, USER_INDEX


def varint(value: int) -> bytes:
    """An int64's varint bytes (a negative value as its two's complement: always 10 bytes on the wire)."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# The varints of 0..len-1, grown on demand up to `_TABLE_LIMIT`: a record's ids are small non-negative integers, and
# joining looked-up bytes costs ~0.05 us an id instead of ~1 us for a loop of shifts.
_TABLE: list[bytes] = [varint(value) for value in range(1 << 14)]
_TABLE_LIMIT = 1 << 22


def _packed(values: Sequence[int]) -> bytes:
    """The varints of ``values``, concatenated (a packed repeated int64's payload)."""
    if not values:
        return b""
    low, high = min(values), max(values)
    if low < 0 or high >= _TABLE_LIMIT:
        return b"".join(varint(int(value)) for value in values)
    if high >= len(_TABLE):
        _TABLE.extend(varint(value) for value in range(len(_TABLE), max(high + 1, 2 * len(_TABLE))))
    return b"".join(map(_TABLE.__getitem__, values))


def length_delimited(tag: bytes, payload: bytes) -> bytes:
    size = len(payload)
    return tag + (_TABLE[size] if size < len(_TABLE) else varint(size)) + payload


def _int64_feature(key: bytes, values: Sequence[int]) -> bytes:
    """One ``Features.feature`` map entry: ``{1: key, 2: Feature{3: Int64List{1: packed values}}}``."""
    return _int64_entry(key, _packed(values))


def _int64_entry(key: bytes, packed: bytes) -> bytes:
    int64_list = length_delimited(b"\x0a", packed) if packed else b""  # an empty packed field is omitted
    feature = length_delimited(b"\x1a", int64_list)  # Feature.int64_list = field 3
    entry = length_delimited(b"\x0a", key) + length_delimited(b"\x12", feature)
    return length_delimited(b"\x0a", entry)  # Features.feature = field 1


def _single_prefixes(key: bytes) -> list[bytes]:
    """``prefix[n]``: the map entry of ``key`` holding one value whose varint has ``n`` bytes, but that varint. Every
    length inside the entry depends only on ``n``, so a one-value feature is ``prefix[n] + varint``."""
    prefixes = [b""]
    for n in range(1, 11):
        # `varint`, not `_packed`: a 4-byte value would grow the table to 2M entries (0.5 s, ~100 MB) in every process.
        whole = _int64_entry(key, varint((1 << (7 * (n - 1))) if n < 10 else -1))
        prefixes.append(whole[:-n])
    return prefixes


_ITEM_IDS, _TARGET, _USER_INDEX = ITEM_IDS.encode(), TARGET.encode(), USER_INDEX.encode()
_TARGET_PREFIX, _USER_INDEX_PREFIX = _single_prefixes(_TARGET), _single_prefixes(_USER_INDEX)


def _single_feature(prefixes: list[bytes], value: int) -> bytes:
    encoded = _TABLE[value] if 0 <= value < len(_TABLE) else varint(int(value))
    return prefixes[len(encoded)] + encoded


def encode_example(user_index: int, item_ids: Sequence[int], target: int = PADDING_ID) -> bytes:
    """Serialised ``tf.train.Example`` with ``user_index``, ``item_ids`` and ``target`` (int64 lists)."""
    features = (
        _int64_feature(_ITEM_IDS, item_ids)
        + _single_feature(_TARGET_PREFIX, target)
        + _single_feature(_USER_INDEX_PREFIX, user_index)
    )
    return length_delimited(b"\x0a", features)  # Example.features = field 1
