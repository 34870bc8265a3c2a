"""TensorFlow-free serialisation of one record as a `tf.train.Example` (the `mdcns_tf.features` spec).

`mdcns_tf.features.make_example` builds the proto with TensorFlow's classes: ~20 us a record, plus a TensorFlow
import (~4 s, ~0.5 GB) in every Beam worker process. This writes the same protobuf wire format directly
(~2-4 us a record, no TensorFlow in the workers). The result parses to a proto equal to ``make_example``'s
(`tests/test_pipeline_formats.py` checks it); bytes may differ only in the order of the three map entries, which
protobuf leaves unspecified anyway.

Wire format (field numbers from tensorflow/core/example/{example,feature}.proto):
``Example{1: Features{1: map<string, Feature>}}``, ``Feature{3: Int64List{1: packed int64}}``; a map entry is a
message ``{1: key, 2: value}``.
"""

from __future__ import annotations

from collections.abc import Sequence

from mdcns_tf.features import ITEM_IDS, PADDING_ID, TARGET, USER_INDEX


def _put_varint(out: bytearray, value: int) -> None:
    if value < 0:  # int64 two's complement: always 10 bytes on the wire
        value += 1 << 64
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _put_length_delimited(out: bytearray, tag: int, payload: bytes | bytearray) -> None:
    out.append(tag)
    _put_varint(out, len(payload))
    out += payload


def _int64_feature(key: bytes, values: Sequence[int]) -> bytearray:
    """One ``Features.feature`` map entry: ``{1: key, 2: Feature{3: Int64List{1: packed values}}}``."""
    packed = bytearray()
    for value in values:
        _put_varint(packed, int(value))
    int64_list = bytearray()
    if values:  # an empty packed field is omitted on the wire
        _put_length_delimited(int64_list, 0x0A, packed)
    feature = bytearray()
    _put_length_delimited(feature, 0x1A, int64_list)  # Feature.int64_list = field 3
    entry = bytearray()
    _put_length_delimited(entry, 0x0A, key)
    _put_length_delimited(entry, 0x12, feature)
    out = bytearray()
    _put_length_delimited(out, 0x0A, entry)  # Features.feature = field 1
    return out


_ITEM_IDS, _TARGET, _USER_INDEX = ITEM_IDS.encode(), TARGET.encode(), USER_INDEX.encode()


def encode_example(user_index: int, item_ids: Sequence[int], target: int = PADDING_ID) -> bytes:
    """Serialised ``tf.train.Example`` with ``user_index``, ``item_ids`` and ``target`` (int64 lists)."""
    features = _int64_feature(_ITEM_IDS, item_ids) + _int64_feature(_TARGET, [target])
    features += _int64_feature(_USER_INDEX, [user_index])
    out = bytearray()
    _put_length_delimited(out, 0x0A, features)  # Example.features = field 1
    return bytes(out)
