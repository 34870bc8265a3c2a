"""`pipeline.recommend`: batch top-K through Beam's RunInference equals ``serving_default`` called on each user's
history, keys from the vocabularies, counts, the model/data identity check, the output folder rules, and the Dask
runner against the direct one.

Tiny data from the real pipeline (`pipeline.synthetic` + `pipeline.run`), and the untrained, well-separated SASRec
of tests/test_export.py exported with a model card recording the data's fingerprint, as `mdcns_tf.train` writes it.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from test_export import make_encoder, write_vocabulary

from mdcns_tf import features
from mdcns_tf.savedmodel import publish, signatures
from pipeline import readback, recommend, run, synthetic

MAX_LEN = 12
TOP_K = 5
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def pipeline_data(folder: Path, split: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "log.tsv"
    if not log.exists():
        with open(log, "w") as f:
            synthetic.generate(f, users=150, items=60, events=1800, seed=3)
    output = str(folder / split)
    run.run([f"--input={log}", "--input_format=interactions", f"--split={split}", f"--output={output}"])
    return output


def export(root: Path, data_dir: str, n_items: int, fingerprint: dict | None) -> str:
    """A model folder: the untrained SASRec over ``n_items`` with ``data_dir``'s items.txt, its model card recording
    ``fingerprint`` as the training data's (as `mdcns_tf.train` writes it)."""
    card = {"provenance": {"data": {"dir": data_dir, "fingerprint": fingerprint}}} if fingerprint else None
    encoder = make_encoder(n_items=n_items, max_len=MAX_LEN)
    publish.export_saved_model(
        encoder, str(root), "mdcns", MAX_LEN, TOP_K, data_dir=data_dir, model_card=card, warmup_batch_sizes=(1,)
    )
    return str(root / "mdcns")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """Two data folders of one log (leave-one-out and user split: the same items.txt, other records) and a model
    exported from the leave-one-out one."""
    root = tmp_path_factory.mktemp("recommend")
    loo, user = pipeline_data(root / "data", "loo"), pipeline_data(root / "data", "user")
    metadata = features.Metadata.load(loo)
    model = export(root / "models", loo, metadata.n_items, metadata.fingerprint)
    return {"root": str(root), "loo": loo, "user": user, "model": model}


def reference(model: str, data_dir: str, split: str) -> dict[int, dict]:
    """``serving_default`` called directly, one user at a time, on the history `pipeline.recommend` must score:
    the whole sequence (`readback.full_sequences`, in keys) for ``all``, else the split's record inputs."""
    version = sorted(glob.glob(os.path.join(model, "[0-9]*")))[-1]
    serve = tf.saved_model.load(version).signatures[signatures.SERVING_DEFAULT]
    items = readback.read_vocab(data_dir, features.ITEMS_FILE)
    users = readback.read_vocab(data_dir, features.USERS_FILE)
    if split == "all":
        item_id = {key: i for i, key in enumerate(items, start=1)}
        user_index = {key: u for u, key in enumerate(users, start=1)}
        histories = {
            user_index[user]: [item_id[k] for k in keys] for user, keys in readback.full_sequences(data_dir).items()
        }
    else:
        histories = {user: ids for user, ids, _ in readback.read_split(data_dir, split)}
    out = {}
    for user, history in histories.items():
        padded = ([0] * MAX_LEN + history)[-MAX_LEN:]
        answer = serve(**{signatures.ITEM_IDS: tf.constant([padded], tf.int32)})
        ids = answer[signatures.ITEM_IDS].numpy()[0]
        out[user] = {
            "user": users[user - 1],
            "item_ids": ids.tolist(),
            "item_keys": [items[i - 1] if i else "" for i in ids],
            "scores": answer[signatures.SCORES].numpy()[0],
        }
    return out


def read_jsonl(output: str) -> dict[int, dict]:
    rows = {}
    for path in sorted(glob.glob(os.path.join(output, "part-*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                assert row["user_index"] not in rows, "a user written twice"
                rows[row["user_index"]] = row
    return rows


def success(output: str) -> dict:
    with open(os.path.join(output, "_SUCCESS"), encoding="utf-8") as f:
        return json.load(f)


def recommend_ok(world: dict, data: str, output: str, *flags: str) -> dict:
    args = ["--model", world["model"], "--data", world[data], "--output", output, *flags]
    assert recommend.main(args) == 0
    return success(output)


def assert_same_as_reference(rows: dict[int, dict], expected: dict[int, dict], top_k: int = TOP_K) -> None:
    assert sorted(rows) == sorted(expected)
    for user, want in expected.items():
        row = rows[user]
        assert row["user"] == want["user"], user
        assert row["item_ids"] == want["item_ids"][:top_k], user
        assert row["item_keys"] == want["item_keys"][:top_k], user
        np.testing.assert_allclose(row["scores"], want["scores"][:top_k], rtol=1e-5)


@pytest.mark.parametrize(
    "data,split,flags",
    [
        ("loo", "all", ["--batch_size=16"]),
        ("loo", "test", ["--batch_size=7"]),
        ("loo", "train", []),
        ("user", "all", ["--batch_size=16", "--allow_data_mismatch"]),
        ("user", "valid", ["--top_k=3", "--allow_data_mismatch"]),
    ],
)
def test_top_k_is_serving_default_on_each_users_history(world, tmp_path, data, split, flags) -> None:
    output = str(tmp_path / "out")
    summary = recommend_ok(world, data, output, f"--split={split}", *flags)
    meta = features.Metadata.load(world[data])
    users = meta.n_users if split == "all" else meta.records[split]
    assert summary["users_expected"] == summary["users_in"] == summary["users_out"] == users > 0
    top_k = 3 if "--top_k=3" in flags else TOP_K
    assert summary["top_k"] == top_k and summary["split"] == split
    assert_same_as_reference(read_jsonl(output), reference(world["model"], world[data], split), top_k)
    with open(os.path.join(output, features.MANIFEST_FILE)) as f:
        manifest = json.load(f)
    assert manifest["state"] == "complete"
    assert sorted(manifest["files"]) == sorted([*summary["files"], "_SUCCESS"])
    assert not glob.glob(os.path.join(output, ".temp-*")) and not os.path.exists(os.path.join(output, ".mdcns.lock"))


def test_tfrecord_output_holds_the_same_lists(world, tmp_path) -> None:
    output = str(tmp_path / "out")
    summary = recommend_ok(world, "loo", output, "--format=tfrecord", "--split=test")
    rows = {}
    files = sorted(glob.glob(os.path.join(output, "part-*.tfrecord.gz")))
    assert [os.path.basename(f) for f in files] == summary["files"]
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        rows[feature["user_index"].int64_list.value[0]] = {
            "user": feature["user"].bytes_list.value[0].decode(),
            "item_ids": list(feature["item_ids"].int64_list.value),
            "item_keys": [k.decode() for k in feature["item_keys"].bytes_list.value],
            "scores": list(feature["scores"].float_list.value),
        }
    assert_same_as_reference(rows, reference(world["model"], world["loo"], "test"))


def error_of(capsys, args: list[str]) -> str:
    capsys.readouterr()  # an earlier run's log lines
    assert recommend.main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_a_model_of_another_vocabulary_is_refused(world, tmp_path, capsys) -> None:
    n_items = features.Metadata.load(world["loo"]).n_items
    other = str(tmp_path / "vocabulary")
    write_vocabulary(other, [f"other-{i}" for i in range(1, n_items + 1)])
    model = export(tmp_path / "models", other, n_items, None)
    output = tmp_path / "out"
    line = error_of(capsys, ["--model", model, "--data", world["loo"], "--output", str(output)])
    assert "another item vocabulary" in line
    assert not output.exists()


def test_other_records_of_the_same_vocabulary_need_the_flag(world, tmp_path, capsys) -> None:
    output = tmp_path / "out"
    line = error_of(capsys, ["--model", world["model"], "--data", world["user"], "--output", str(output)])
    assert "other records" in line and "--allow_data_mismatch" in line
    assert not output.exists()
    summary = recommend_ok(world, "user", str(output), "--allow_data_mismatch")
    assert summary["identity"]["records"].startswith("other than the model's")


def test_output_folder_rules(world, tmp_path, capsys) -> None:
    output = tmp_path / "out"
    base = ["--model", world["model"], "--data", world["loo"], "--output", str(output)]
    first = recommend_ok(world, "loo", str(output), "--split=test")
    before = {name: (output / name).read_bytes() for name in first["files"]}
    assert "--overwrite" in error_of(capsys, base)
    assert {name: (output / name).read_bytes() for name in first["files"]} == before
    second = recommend_ok(world, "loo", str(output), "--split=all", "--overwrite")
    assert sorted(p.name for p in output.glob("part-*")) == second["files"]
    # a file this command did not write, at an output path: never deleted, even with --overwrite
    (output / "part-99999-of-99999.jsonl").write_text("mine\n")
    line = error_of(capsys, [*base, "--overwrite"])
    assert "part-99999-of-99999.jsonl" in line and (output / "part-99999-of-99999.jsonl").exists()
    # the data folder holds the pipeline's manifest, and is the data: refused either way
    for inside in (world["loo"], os.path.join(world["loo"], "recs")):
        assert "inside" in error_of(capsys, ["--model", world["model"], "--data", world["loo"], "--output", inside])
    assert not os.path.exists(os.path.join(world["loo"], "recs"))


def test_usage_errors(world, tmp_path, capsys) -> None:
    base = ["--model", world["model"], "--data", world["loo"], "--output", str(tmp_path / "out")]
    assert "K=5" in error_of(capsys, [*base, "--top_k=6"])
    assert "--batch_size" in error_of(capsys, [*base, "--batch_size=0"])
    assert "no numeric version" in error_of(capsys, [*base[:1], str(tmp_path), *base[2:]])
    assert not (tmp_path / "out").exists()


def test_dask_runner_writes_what_the_direct_runner_writes(world, tmp_path, dask_cluster_address) -> None:
    direct, dask = str(tmp_path / "direct"), str(tmp_path / "dask")
    recommend_ok(world, "loo", direct, "--batch_size=16")
    summary = recommend_ok(
        world,
        "loo",
        dask,
        "--batch_size=16",
        f"--runner={DASK_RUNNER}",
        f"--dask_client_address={dask_cluster_address}",
    )
    assert summary["users_in"] == summary["users_out"] == features.Metadata.load(world["loo"]).n_users
    rows, expected = read_jsonl(dask), read_jsonl(direct)
    assert sorted(rows) == sorted(expected)
    for user, row in rows.items():
        assert row["item_ids"] == expected[user]["item_ids"] and row["item_keys"] == expected[user]["item_keys"]
        np.testing.assert_allclose(row["scores"], expected[user]["scores"], rtol=1e-5)
