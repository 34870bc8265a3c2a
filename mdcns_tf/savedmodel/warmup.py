"""Warmup: the requests TF Serving replays when it loads a version, so that the first real request does not pay
for lazy initialisation.

``assets.extra/tf_serving_warmup_requests`` is a TFRecord of `PredictionLog` messages, each holding one
`PredictRequest`: a few per signature and batch size. The message classes live in ``tensorflow-serving-api``, an
optional extra; rather than make every install depend on it for the four small wrapper messages, they are written
and read here directly in protobuf wire format, around the `TensorProto` bytes TensorFlow itself serialises (the
same approach as `pipeline.encoding` for `tf.train.Example`). ``tests/test_packaging.py`` checks both directions
against the real message classes.

    PredictionLog { predict_log = 6: PredictLog { request = 1: PredictRequest {
        model_spec = 1: ModelSpec { name = 1: string, signature_name = 3: string },
        inputs = 2: map<string, TensorProto> (entries: key = 1, value = 2) } } }
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from mdcns_tf.savedmodel.signatures import (
    ITEM_EMBEDDINGS,
    ITEM_IDS,
    ITEM_KEYS,
    QUERY_EMBEDDING,
    SERVE_KEYS,
    SERVING_DEFAULT,
    WARMUP_FILE,
)

# TF Serving refuses warmup files with more than 1000 records.
MAX_WARMUP_RECORDS = 1000

# Field numbers of the messages above.
PREDICTION_LOG_PREDICT_LOG = 6
PREDICT_LOG_REQUEST = 1
REQUEST_MODEL_SPEC = 1
REQUEST_INPUTS = 2
MODEL_SPEC_NAME = 1
MODEL_SPEC_SIGNATURE_NAME = 3
MAP_KEY = 1
MAP_VALUE = 2

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, messages, map entries)."""
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def encode_prediction_log(model_name: str, signature: str, inputs: Mapping[str, bytes]) -> bytes:
    """A serialised `PredictionLog` whose request calls ``signature`` of ``model_name`` with ``inputs``
    (input name -> serialised `TensorProto`)."""
    spec = _field(MODEL_SPEC_NAME, model_name.encode()) + _field(MODEL_SPEC_SIGNATURE_NAME, signature.encode())
    entries = b"".join(
        _field(REQUEST_INPUTS, _field(MAP_KEY, name.encode()) + _field(MAP_VALUE, tensor))
        for name, tensor in inputs.items()
    )
    request = _field(REQUEST_MODEL_SPEC, spec) + entries
    return _field(PREDICTION_LOG_PREDICT_LOG, _field(PREDICT_LOG_REQUEST, request))


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or malformed varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes) -> Iterator[tuple[int, bytes | int]]:
    """(field number, value) of every field of one message: bytes for length-delimited fields, else the number."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, pos = _read_varint(data, pos)
            yield number, value
        elif wire_type == _LENGTH_DELIMITED:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated length-delimited field")
            yield number, data[pos : pos + length]
            pos += length
        elif wire_type in (_FIXED64, _FIXED32):
            size = 8 if wire_type == _FIXED64 else 4
            yield number, int.from_bytes(data[pos : pos + size], "little")
            pos += size
        else:
            raise ValueError(f"unsupported wire type {wire_type}")


def _submessage(data: bytes, number: int) -> bytes:
    """The last occurrence of message field ``number`` (protobuf's merge rule for a repeated singular field)."""
    found = None
    for field, value in _fields(data):
        if field == number and isinstance(value, bytes):
            found = value
    if found is None:
        raise ValueError(f"field {number} is missing: not a PredictionLog with a predict request")
    return found


def decode_prediction_log(record: bytes) -> tuple[str, str, dict[str, bytes]]:
    """(model name, signature, input name -> serialised `TensorProto`) of a `PredictionLog` written by
    `encode_prediction_log` or by the ``tensorflow-serving-api`` classes; raises `ValueError` for any other record."""
    request = _submessage(_submessage(record, PREDICTION_LOG_PREDICT_LOG), PREDICT_LOG_REQUEST)
    model_name, signature, inputs = "", "", {}
    for number, value in _fields(request):
        if not isinstance(value, bytes):
            continue
        if number == REQUEST_MODEL_SPEC:
            for spec_number, spec_value in _fields(value):
                if spec_number == MODEL_SPEC_NAME and isinstance(spec_value, bytes):
                    model_name = spec_value.decode()
                elif spec_number == MODEL_SPEC_SIGNATURE_NAME and isinstance(spec_value, bytes):
                    signature = spec_value.decode()
        elif number == REQUEST_INPUTS:
            entry = {n: v for n, v in _fields(value) if isinstance(v, bytes)}
            inputs[entry.get(MAP_KEY, b"").decode()] = entry.get(MAP_VALUE, b"")
    return model_name, signature, inputs


# -- warmup requests ---------------------------------------------------------------------------------------------------


def warmup_inputs(
    n_items: int, max_len: int, keys: Sequence[str], batch_sizes: Sequence[int], seed: int = 0
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(signature, inputs) pairs: every signature at every batch size, with histories of varied length."""
    rng = np.random.default_rng(seed)
    requests: list[tuple[str, dict[str, np.ndarray]]] = []
    for batch in batch_sizes:
        ids = np.zeros((batch, max_len), np.int32)
        for row in range(batch):
            length = int(rng.integers(1, max_len + 1))
            ids[row, max_len - length :] = rng.integers(1, n_items + 1, size=length)
        key_array = np.where(ids > 0, np.asarray([""] + list(keys), dtype=object)[ids], "").astype(object)
        requests += [
            (SERVING_DEFAULT, {ITEM_IDS: ids}),
            (SERVE_KEYS, {ITEM_KEYS: key_array}),
            (QUERY_EMBEDDING, {ITEM_IDS: ids}),
            (ITEM_EMBEDDINGS, {ITEM_IDS: rng.integers(1, n_items + 1, size=batch).astype(np.int32)}),
        ]
    return requests


def write_warmup(path: str, model_name: str, requests: Sequence[tuple[str, dict[str, np.ndarray]]]) -> None:
    """Writes ``requests`` as a TFRecord of `PredictionLog` (the format TF Serving reads from assets.extra)."""
    if len(requests) > MAX_WARMUP_RECORDS:
        raise ValueError(f"{len(requests)} warmup requests; TF Serving accepts at most {MAX_WARMUP_RECORDS}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests:
            tensors = {name: tf.make_tensor_proto(value).SerializeToString() for name, value in inputs.items()}
            writer.write(encode_prediction_log(model_name, signature, tensors))


def read_warmup(path: str) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The (signature, inputs) pairs of a warmup file."""
    out = []
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        _, signature, tensors = decode_prediction_log(record)
        inputs = {name: tf.make_ndarray(tensor_pb2.TensorProto.FromString(data)) for name, data in tensors.items()}
        out.append((signature, inputs))
    return out


def replay_warmup(export_dir: str) -> int:
    """Loads ``export_dir`` with `tf.saved_model.load` and runs every warmup request; returns how many ran."""
    loaded = tf.saved_model.load(export_dir)
    requests = read_warmup(os.path.join(export_dir, WARMUP_FILE))
    for signature, inputs in requests:
        outputs = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        batch = next(iter(inputs.values())).shape[0]
        for name, value in outputs.items():
            if value.shape[0] != batch:
                raise AssertionError(f"{signature}/{name}: batch {value.shape[0]} for a request of {batch}")
    return len(requests)
