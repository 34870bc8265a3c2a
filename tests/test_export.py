"""The TF Serving export: signatures, agreement with the in-memory model, input errors, warmup, atomic versions."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import mdcns_tf  # noqa: F401
from mdcns_tf import features
from mdcns_tf.backbones import build_backbone
from mdcns_tf.config import ModelConfig
from mdcns_tf.savedmodel import assets, publish, signatures, versions, warmup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

N_ITEMS = 60
MAX_LEN = 12
TOP_K = 5
KEYS = [f"item-{i:03d}" for i in range(1, N_ITEMS + 1)]
SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")


def make_encoder(n_items: int = N_ITEMS, max_len: int = MAX_LEN, seed: int = 0):
    """A small, untrained SASRec with weights scaled up so that scores are well separated (no ties)."""
    keras.utils.set_random_seed(seed)
    encoder = build_backbone(ModelConfig(dim=16, num_layers=1, num_heads=2, dropout=0.0), n_items, max_len)
    encoder(tf.zeros([1, max_len], tf.int32))
    encoder.item_embedding.embeddings.assign(encoder.item_embedding.embeddings * 50.0)
    return encoder


def write_vocabulary(data_dir: str, keys: list[str]) -> None:
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, features.ITEMS_FILE), "w") as f:
        f.write("\n".join(keys) + "\n")


def histories(batch: int, seed: int = 1, n_items: int = N_ITEMS, max_len: int = MAX_LEN) -> np.ndarray:
    """Left-padded histories `(batch, max_len)` of varied lengths, one of them full."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((batch, max_len), np.int32)
    for row in range(batch):
        length = max_len if row == 0 else int(rng.integers(1, max_len))
        ids[row, max_len - length :] = rng.integers(1, n_items + 1, size=length)
    return ids


def reference_top_k(encoder, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The evaluation protocol in numpy: score every item, mask padding and the history, take the top k."""
    query = encoder(tf.constant(ids), training=False)[:, -1, :].numpy()
    scores = query @ encoder.item_embeddings.numpy().T
    scores[:, 0] = -np.inf
    for row, history in enumerate(ids):
        scores[row, history] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return top.astype(np.int32), np.take_along_axis(scores, top, axis=1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(encoder, export path): one verified export with a real vocabulary, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("export")
    data_dir = str(root / "data")
    write_vocabulary(data_dir, KEYS)
    encoder = make_encoder()
    path = publish.export_saved_model(encoder, str(root / "models"), "mdcns", MAX_LEN, TOP_K, data_dir=data_dir)
    return encoder, path


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported[1])


def test_layout_and_signatures(exported, loaded):
    _, path = exported
    assert os.path.basename(path) == "1"
    assert sorted(os.listdir(os.path.dirname(path))) == ["1"]  # no staging folder left behind
    for name in ("saved_model.pb", "variables", signatures.WARMUP_FILE, os.path.join("assets", features.ITEMS_FILE)):
        assert os.path.exists(os.path.join(path, name)), name
    assert set(loaded.signatures) == set(signatures.SIGNATURES)
    specs = {name: fn.structured_outputs for name, fn in loaded.signatures.items()}
    assert specs["serving_default"]["item_ids"].shape.as_list() == [None, TOP_K]
    assert specs["serving_default"]["scores"].shape.as_list() == [None, TOP_K]
    assert specs["serve_keys"]["item_keys"].dtype == tf.string
    assert specs["query_embedding"]["embedding"].shape.as_list() == [None, 16]
    assert specs["item_embeddings"]["embeddings"].shape.as_list() == [None, 16]
    inputs = loaded.signatures["serving_default"].structured_input_signature[1]
    assert inputs["item_ids"].shape.as_list() == [None, MAX_LEN]


def test_exported_top_k_equals_in_memory_model(exported, loaded):
    encoder, _ = exported
    ids = histories(16)
    out = loaded.signatures["serving_default"](item_ids=tf.constant(ids))
    expected_ids, expected_scores = reference_top_k(encoder, ids, TOP_K)
    np.testing.assert_array_equal(out["item_ids"].numpy(), expected_ids)
    np.testing.assert_allclose(out["scores"].numpy(), expected_scores, rtol=1e-4, atol=1e-4)
    # History and padding are never recommended.
    for row, history in enumerate(ids):
        assert not set(out["item_ids"].numpy()[row]) & set(history.tolist()) - {0}
        assert 0 not in out["item_ids"].numpy()[row]


def test_embedding_signatures_reproduce_the_scores(exported, loaded):
    _, path = exported
    ids = histories(4)
    out = loaded.signatures["serving_default"](item_ids=tf.constant(ids))
    query = loaded.signatures["query_embedding"](item_ids=tf.constant(ids))["embedding"].numpy()
    for row in range(len(ids)):
        rows = loaded.signatures["item_embeddings"](item_ids=out["item_ids"][row])["embeddings"].numpy()
        np.testing.assert_allclose(rows @ query[row], out["scores"].numpy()[row], rtol=1e-4, atol=1e-4)
    table = assets.read_item_table(path)
    assert table.shape == (N_ITEMS + 1, 16)
    everything = loaded.signatures["item_embeddings"](item_ids=tf.range(1, N_ITEMS + 1))["embeddings"].numpy()
    np.testing.assert_array_equal(everything, table[1:])


def test_padding_anywhere_is_left_aligned(loaded):
    left = np.zeros((1, MAX_LEN), np.int32)
    left[0, -3:] = [3, 17, 42]
    messy = np.zeros((1, MAX_LEN), np.int32)
    messy[0, [0, 4, 5]] = [3, 17, 42]  # right/middle padding, same order
    serve = loaded.signatures["serving_default"]
    np.testing.assert_array_equal(serve(item_ids=left)["item_ids"], serve(item_ids=messy)["item_ids"])


def test_serve_keys_maps_through_the_vocabulary(loaded):
    ids = histories(3)
    keys = np.where(ids > 0, np.asarray([""] + KEYS, dtype=object)[ids], "").astype(object)
    keys[1, 0] = "never-seen-item"  # unknown keys are dropped like padding and counted
    keys[2, -1] = "another-unknown"
    by_ids = loaded.signatures["serving_default"](item_ids=tf.constant(ids))
    expected_ids = by_ids["item_ids"].numpy()
    # Row 2 lost its most recent item: compare it with the history without that item.
    shorter = np.concatenate([[0], ids[2, :-1]]).astype(np.int32)[np.newaxis]
    expected_ids[2] = loaded.signatures["serving_default"](item_ids=shorter)["item_ids"].numpy()[0]
    out = loaded.signatures["serve_keys"](item_keys=tf.constant(keys))
    got = np.vectorize(lambda k: k.decode())(out["item_keys"].numpy())
    np.testing.assert_array_equal(got, np.asarray(KEYS)[expected_ids - 1])
    np.testing.assert_array_equal(out["unknown_keys"].numpy(), [0, 1, 1])


def test_empty_history_returns_the_no_item_marker(loaded):
    keys = np.full((1, MAX_LEN), "", dtype=object)
    keys[0, -2:] = ["unknown-a", "unknown-b"]
    out = loaded.signatures["serve_keys"](item_keys=tf.constant(keys))
    assert out["item_keys"].numpy().tolist() == [[b""] * TOP_K]
    assert np.all(out["scores"].numpy() == signatures.NO_ITEM_SCORE)
    assert signatures.NO_ITEM_SCORE == float(np.finfo(np.float32).min)  # the lowest float32, written as a plain float
    assert out["unknown_keys"].numpy().tolist() == [2]
    ids = loaded.signatures["serving_default"](item_ids=tf.zeros([1, MAX_LEN], tf.int32))["item_ids"]
    assert ids.numpy().tolist() == [[0] * TOP_K]


def test_small_catalog_never_returns_seen_items(tmp_path):
    # 8 items, 6 in the history, K = 5: only 2 unseen items exist, the tail is the "no item" marker.
    encoder = make_encoder(n_items=8, max_len=MAX_LEN)
    path = publish.export_saved_model(encoder, str(tmp_path), "small", MAX_LEN, 5, verify=False)
    ids = np.zeros((1, MAX_LEN), np.int32)
    ids[0, -6:] = [1, 2, 3, 4, 5, 6]
    out = tf.saved_model.load(path).signatures["serving_default"](item_ids=tf.constant(ids))
    assert sorted(out["item_ids"].numpy()[0, :2].tolist()) == [7, 8]
    assert out["item_ids"].numpy()[0, 2:].tolist() == [0, 0, 0]
    assert np.all(out["scores"].numpy()[0, 2:] == signatures.NO_ITEM_SCORE)


def test_bad_ids_fail_with_a_clear_message(loaded):
    ids = histories(2)
    ids[1, -1] = N_ITEMS + 1
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(f"item_ids must be <= n_items ({N_ITEMS})")):
        loaded.signatures["serving_default"](item_ids=tf.constant(ids))
    ids[1, -1] = -4
    with pytest.raises(tf.errors.InvalidArgumentError, match="item_ids must be >= 0"):
        loaded.signatures["query_embedding"](item_ids=tf.constant(ids))
    with pytest.raises(tf.errors.InvalidArgumentError, match="item_ids must be >= 1"):
        loaded.signatures["item_embeddings"](item_ids=tf.constant([0, 3]))


def test_wrong_length_fails_in_the_graph_too(exported):
    """TF Serving's C++ session does not check a feed against the signature's static shape; the graph must.

    ``Session._do_run`` feeds the C API directly, skipping the Python-side shape check, as the C++ server does.
    Before the in-graph check a shorter input was answered (silently wrong) and a longer one crashed in a gather.
    """
    _, path = exported
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
        if not hasattr(session, "_do_run"):
            pytest.skip("this TF version has no Session._do_run to bypass the Python shape check")
        signature = meta_graph.signature_def["serving_default"]
        feed = graph.get_tensor_by_name(signature.inputs["item_ids"].name)
        fetch = [graph.get_tensor_by_name(signature.outputs["item_ids"].name)]
        ok = session._do_run(None, [], fetch, {feed.ref(): histories(1)}, None, None)
        assert ok[0].shape == (1, TOP_K)
        for length in (MAX_LEN - 5, MAX_LEN + 3):
            with pytest.raises(tf.errors.InvalidArgumentError, match=rf"\[1,{length}\] is not compatible with "):
                session._do_run(None, [], fetch, {feed.ref(): np.ones((1, length), np.int32)}, None, None)


def cli_command(path: str, signature: str, *args: str) -> list[str]:
    return [SAVED_MODEL_CLI, "run", "--dir", path, "--tag_set", "serve", "--signature_def", signature, *args]


@pytest.fixture(scope="module")
def cli_runs(exported, tmp_path_factory):
    """`saved_model_cli run` on every signature plus two bad inputs, as concurrent subprocesses (each one pays
    for a TensorFlow import): name -> (CompletedProcess-like result, output folder)."""
    encoder, path = exported
    tmp = tmp_path_factory.mktemp("cli")
    np.save(tmp / "ids.npy", histories(2))
    np.save(tmp / "some.npy", np.array([1, 7, N_ITEMS], np.int32))
    np.save(tmp / "short.npy", np.ones((1, MAX_LEN - 4), np.int32))
    too_big = histories(1)
    too_big[0, -1] = N_ITEMS + 5
    np.save(tmp / "big.npy", too_big)
    keys = [["", ""] + KEYS[: MAX_LEN - 2]]
    runs = {
        "serving_default": ("serving_default", "--inputs", f"item_ids={tmp / 'ids.npy'}"),
        "query_embedding": ("query_embedding", "--inputs", f"item_ids={tmp / 'ids.npy'}"),
        "item_embeddings": ("item_embeddings", "--inputs", f"item_ids={tmp / 'some.npy'}"),
        "serve_keys": ("serve_keys", "--input_exprs", f"item_keys={keys!r}"),
        "short": ("serving_default", "--inputs", f"item_ids={tmp / 'short.npy'}"),
        "big": ("serving_default", "--inputs", f"item_ids={tmp / 'big.npy'}"),
    }
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    processes = {}
    for name, (signature, *args) in runs.items():
        outdir = tmp / name
        command = cli_command(path, signature, *args, "--outdir", str(outdir), "--overwrite")
        processes[name] = (
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env),
            outdir,
        )
    results = {}
    try:
        for name, (process, outdir) in processes.items():
            stdout, stderr = process.communicate(timeout=300)
            results[name] = (subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), outdir)
    finally:
        for process, _ in processes.values():
            if process.poll() is None:
                process.kill()
    return results


def test_saved_model_cli_runs_every_signature(exported, cli_runs):
    """`saved_model_cli run` uses the session-based loader of the C++ server: every signature must run there."""
    encoder, _ = exported
    ids = histories(2)
    expected_ids, expected_scores = reference_top_k(encoder, ids, TOP_K)
    for signature in signatures.SIGNATURES:
        result, outdir = cli_runs[signature]
        assert result.returncode == 0, result.stderr[-2000:]
        outputs = {f[:-4]: np.load(outdir / f, allow_pickle=True) for f in os.listdir(outdir)}
        if signature == "serving_default":
            np.testing.assert_array_equal(outputs["item_ids"], expected_ids)
            np.testing.assert_allclose(outputs["scores"], expected_scores, rtol=1e-4, atol=1e-4)
        elif signature == "query_embedding":
            query = encoder(tf.constant(ids), training=False)[:, -1, :].numpy()
            np.testing.assert_allclose(outputs["embedding"], query, rtol=1e-4, atol=1e-5)
        elif signature == "item_embeddings":
            np.testing.assert_array_equal(outputs["embeddings"], encoder.item_embeddings.numpy()[[1, 7, N_ITEMS]])
        else:
            key_ids = np.array([[0, 0] + list(range(1, MAX_LEN - 1))], np.int32)
            top, _ = reference_top_k(encoder, key_ids, TOP_K)
            assert [k.decode() for k in outputs["item_keys"][0]] == [KEYS[i - 1] for i in top[0]]
            assert outputs["unknown_keys"].tolist() == [0]


def test_saved_model_cli_reports_bad_inputs(cli_runs):
    short, _ = cli_runs["short"]
    assert short.returncode != 0
    assert f"Cannot feed value of shape (1, {MAX_LEN - 4})" in short.stderr
    assert f"which has shape (None, {MAX_LEN})" in short.stderr
    big, _ = cli_runs["big"]
    assert big.returncode != 0
    assert f"item_ids must be <= n_items ({N_ITEMS})" in big.stderr


def test_export_holds_only_the_encoder_variables(tmp_path):
    """No optimizer slots, no sampler state, no copy of the item table for the index."""
    encoder = make_encoder()
    optimizer = keras.optimizers.Adam(1e-3)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(encoder(tf.constant(histories(4)), training=True) ** 2)
    optimizer.apply_gradients(
        zip(tape.gradient(loss, encoder.trainable_variables), encoder.trainable_variables, strict=True)
    )
    sampler_state = tf.Variable(tf.zeros([N_ITEMS + 1]), name="sampler_scores")  # noqa: F841 (must not leak)
    path = publish.export_saved_model(encoder, str(tmp_path), "m", MAX_LEN, TOP_K, verify=False)

    saved = {
        name: shape
        for name, shape in tf.train.list_variables(os.path.join(path, "variables", "variables"))
        if name.endswith("VARIABLE_VALUE")
    }
    assert all(name.startswith(("encoder/", "item_table/")) for name in saved), sorted(saved)
    assert len(saved) == len(encoder.variables)
    assert sorted(map(tuple, saved.values())) == sorted(tuple(v.shape) for v in encoder.variables)
    assert sum(np.prod(s) for s in saved.values()) == sum(np.prod(v.shape) for v in encoder.variables)


def test_warmup_file_parses_and_replays(exported):
    _, path = exported
    requests = warmup.read_warmup(os.path.join(path, signatures.WARMUP_FILE))
    assert 0 < len(requests) <= warmup.MAX_WARMUP_RECORDS
    assert {signature for signature, _ in requests} == set(signatures.SIGNATURES)
    batch_sizes = {inputs["item_ids"].shape[0] for s, inputs in requests if s == "serving_default"}
    assert batch_sizes == {1, 8, 64}
    for signature, inputs in requests:
        if signature == "serving_default":
            assert inputs["item_ids"].dtype == np.int32 and inputs["item_ids"].shape[1] == MAX_LEN
        if signature == "serve_keys":
            assert inputs["item_keys"].shape[1] == MAX_LEN
            assert set(inputs["item_keys"].ravel().tolist()) <= {b""} | {k.encode() for k in KEYS}
    assert warmup.replay_warmup(path) == len(requests)


def test_versions_are_numeric_side_by_side_and_immutable(tmp_path):
    encoder = make_encoder()
    first = publish.export_saved_model(encoder, str(tmp_path), "m", MAX_LEN, TOP_K, verify=False)
    mtime = os.path.getmtime(os.path.join(first, "saved_model.pb"))
    second = publish.export_saved_model(encoder, str(tmp_path), "m", MAX_LEN, TOP_K, verify=False)
    assert versions.serving_versions(str(tmp_path / "m")) == [1, 2]
    assert os.path.getmtime(os.path.join(first, "saved_model.pb")) == mtime
    assert os.path.basename(second) == "2"
    with pytest.raises(FileExistsError, match="immutable"):
        publish.export_saved_model(encoder, str(tmp_path), "m", MAX_LEN, TOP_K, version=2, verify=False)
    assert sorted(os.listdir(tmp_path / "m")) == ["1", "2"]


def test_an_error_mid_export_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(warmup, "write_warmup", fail)
    with pytest.raises(OSError, match="disk full"):
        publish.export_saved_model(make_encoder(), str(tmp_path), "m", MAX_LEN, TOP_K, verify=False)
    assert os.listdir(tmp_path / "m") == []


def test_a_hard_crash_mid_export_leaves_no_loadable_version(tmp_path):
    """A process killed after the SavedModel is written but before the rename: only a dot-folder remains."""
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {REPO!r})
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        from mdcns_tf.savedmodel import publish, warmup
        from test_export import make_encoder

        def crash(*args, **kwargs):
            os._exit(17)  # no cleanup, no finally blocks: like SIGKILL or a power cut

        warmup.write_warmup = crash
        publish.export_saved_model(make_encoder(), {str(tmp_path)!r}, "m", {MAX_LEN}, {TOP_K}, verify=False)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert result.returncode == 17, result.stderr[-2000:]
    leftovers = os.listdir(tmp_path / "m")
    assert leftovers and all(name.startswith(".") for name in leftovers)
    # TF Serving keeps only children whose names parse as integers: nothing to load.
    assert versions.serving_versions(str(tmp_path / "m")) == []
    staged = os.path.join(tmp_path, "m", leftovers[0], "model", "saved_model.pb")
    assert os.path.exists(staged)  # the crash really happened after the model was written
    # The next export is version 1 and loads.
    path = publish.export_saved_model(make_encoder(), str(tmp_path), "m", MAX_LEN, TOP_K, verify=False)
    assert os.path.basename(path) == "1"


def test_vocabulary_must_match_the_model(tmp_path):
    data_dir = str(tmp_path / "data")
    write_vocabulary(data_dir, KEYS[:-1])
    with pytest.raises(ValueError, match=f"has {N_ITEMS - 1} keys, the model has n_items={N_ITEMS}"):
        publish.export_saved_model(make_encoder(), str(tmp_path), "m", MAX_LEN, TOP_K, data_dir=data_dir)
    write_vocabulary(data_dir, KEYS[:-1] + [KEYS[0]])
    with pytest.raises(ValueError, match="duplicate item keys"):
        publish.export_saved_model(make_encoder(), str(tmp_path), "m", MAX_LEN, TOP_K, data_dir=data_dir)
    assert versions.serving_versions(str(tmp_path / "m")) == []


def test_top_k_above_the_catalog_is_refused(tmp_path):
    with pytest.raises(ValueError, match="top_k must be in"):
        publish.export_saved_model(make_encoder(n_items=4), str(tmp_path), "m", MAX_LEN, 5, verify=False)


def test_model_server_config_parses():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    with open(os.path.join(REPO, "serving", "models.config")) as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("mdcns", "/models/mdcns", "tensorflow")
    assert model.model_version_policy.latest.num_versions == 1
