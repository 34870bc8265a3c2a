"""``train.warm_start``: a run that starts from a finished run's selected weights (`mdcns_tf.training.warm_start`).

Two data folders written by the pipeline from two logs whose item keys overlap: the child's log has 8 keys that sort
before every parent key and lacks the parent's first 5, so a shared key has another id in each vocabulary. Runs are
tiny and in-process (one step an epoch); the child's model is read at the start of its first epoch, after
`BackupAndRestore` and before any step.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO

import mdcns_tf  # noqa: F401
from mdcns_tf import data, train
from mdcns_tf.config import Config, ConfigError
from mdcns_tf.config_loader import load_config
from mdcns_tf.features import read_keys
from mdcns_tf.training import callbacks, finished_run
from pipeline import run as pipeline_run

PARENT_KEYS = [f"b{i:02d}" for i in range(30)]
CHILD_KEYS = [f"a{i:02d}" for i in range(8)] + PARENT_KEYS[5:]  # "a.." sort first: every shared id moves by 3
SHARED = PARENT_KEYS[10:18]  # the items scored, present in both vocabularies
HISTORY = SHARED[:5]  # left-padded to max_len 8: the padding row is read too
BASE = [
    "data.max_len=8",
    "data.batch_size=512",  # one step an epoch
    "model.dim=8",
    "model.num_layers=1",
    "model.num_heads=1",
    "model.dropout=0.1",
    "train.verbose=0",
    "train.tensorboard=false",
    "eval.test=false",
    "export.enabled=false",
    "export.top_k=5",
    "mdcns.pool_size=5",
    "seed=7",
]
MDCNS = ("trainer=mdcns", "train.sparse_updates=lazy")


def write_log(path: str, keys: list[str], users: int, seed: int) -> None:
    """An interactions log: each user walks ``keys`` in order with some jumps, 6 to 12 events."""
    rng = random.Random(seed)
    lines = ["user,item,timestamp"]
    for user in range(users):
        position = rng.randrange(len(keys))
        for t in range(rng.randint(6, 12)):
            lines.append(f"u{user:03d},{keys[position]},{t}")
            position = (position + 1) % len(keys) if rng.random() < 0.85 else rng.randrange(len(keys))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("warm_start_data")
    dirs = {}
    for name, keys, seed in (("parent", PARENT_KEYS, 0), ("child", CHILD_KEYS, 1)):
        write_log(str(root / f"{name}.csv"), keys, users=80, seed=seed)
        dirs[name] = str(root / name)
        pipeline_run.run(
            [f"--input={root / f'{name}.csv'}", "--input_format=interactions", "--split=loo", f"--output={dirs[name]}"]
        )
    parent_ids, child_ids = vocabulary(dirs["parent"]), vocabulary(dirs["child"])
    assert all(parent_ids[key] != child_ids[key] for key in SHARED), "the test needs ids that moved"
    return dirs


def vocabulary(data_dir: str) -> dict[str, int]:
    return {key: i for i, key in enumerate(read_keys(os.path.join(data_dir, "items.txt")), start=1)}


def config_for(data_dir: str, output_dir: Any, *extra: str) -> Config:
    return load_config(None, [*BASE, f"data.dir={data_dir}", f"output_dir={output_dir}", *extra])


@pytest.fixture(scope="module")
def parents(data_dirs: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Finished parent runs on the parent data: a single model and an MDCNS one, 2 epochs each."""
    root = tmp_path_factory.mktemp("parents")
    runs = {"single": str(root / "single"), "mdcns": str(root / "mdcns")}
    train.run(config_for(data_dirs["parent"], runs["single"], "train.epochs=2"))
    train.run(config_for(data_dirs["parent"], runs["mdcns"], "train.epochs=2", *MDCNS))
    return runs


@contextlib.contextmanager
def at_first_step(read: Callable[[Any], Any]) -> Iterator[list]:
    """Calls ``read(model)`` when a run's first epoch begins (after `BackupAndRestore`, before any step)."""
    seen: list = []
    original = callbacks.ProgressLog.on_epoch_begin

    def on_epoch_begin(self: callbacks.ProgressLog, epoch: int, logs: dict | None = None) -> None:
        if not seen:
            seen.append(read(self.model))
        original(self, epoch, logs)

    callbacks.ProgressLog.on_epoch_begin = on_epoch_begin
    try:
        yield seen
    finally:
        callbacks.ProgressLog.on_epoch_begin = original


def scores(backbone: tf.keras.layers.Layer, ids: dict[str, int]) -> np.ndarray:
    """The backbone's scores of the SHARED items after HISTORY (ids of its own vocabulary): `(len(SHARED),)`."""
    history = tf.constant([[0] * (8 - len(HISTORY)) + [ids[key] for key in HISTORY]], tf.int32)
    query = backbone(history, training=False)[:, -1, :].numpy()
    table = backbone.item_embeddings.numpy()
    return (query @ table[[ids[key] for key in SHARED]].T)[0]


def snapshot(model: Any, ids: dict[str, int]) -> dict[str, Any]:
    out = {}
    for name in ("encoder", "peer"):
        backbone = getattr(model, name, None)
        if backbone is not None:
            out[name] = {"scores": scores(backbone, ids), "table": backbone.item_embeddings.numpy().copy()}
    teacher = getattr(getattr(model, "teacher", None), "backbone", None)
    if teacher is not None:
        out["teacher"] = [w.numpy().copy() for w in teacher.weights]
        out["self_weights"] = [w.numpy().copy() for w in model.encoder.weights]
    return out


def parent_model(run_dir: str) -> Any:
    model, _ = finished_run.load_model(run_dir, finished_run.load_run_config(run_dir))
    return model


class Killed(Exception):
    """Stands for a kill at the start of an epoch, after the previous one was backed up (Keras then leaves the
    backup behind, as after a SIGKILL: tests/test_hostile_runs.py)."""


def read_json(*parts: str) -> dict:
    with open(os.path.join(*parts)) as f:
        return json.load(f)


def test_child_scores_shared_items_as_its_parent_and_new_items_as_a_fresh_run(data_dirs, parents, tmp_path):
    child_ids, parent_ids = vocabulary(data_dirs["child"]), vocabulary(data_dirs["parent"])
    with at_first_step(lambda model: snapshot(model, child_ids)) as warm:
        result = train.run(
            config_for(data_dirs["child"], tmp_path / "warm", "train.epochs=1", f"train.warm_start={parents['single']}")
        )
    with at_first_step(lambda model: snapshot(model, child_ids)) as fresh:
        train.run(config_for(data_dirs["child"], tmp_path / "fresh", "train.epochs=1"))
    parent = parent_model(parents["single"])

    # Exactly the parent's scores (its selected weights, as export loads them) on the same history of keys.
    np.testing.assert_array_equal(warm[0]["encoder"]["scores"], scores(parent.encoder, parent_ids))
    parent_table = parent.encoder.item_embeddings.numpy()
    for key in SHARED:
        np.testing.assert_array_equal(warm[0]["encoder"]["table"][child_ids[key]], parent_table[parent_ids[key]])
    np.testing.assert_array_equal(warm[0]["encoder"]["table"][0], parent_table[0])  # padding
    # A new item's row is the one a fresh run with the same seed starts with.
    new = [child_ids[key] for key in CHILD_KEYS if key not in parent_ids]
    assert len(new) == 8
    np.testing.assert_array_equal(warm[0]["encoder"]["table"][new], fresh[0]["encoder"]["table"][new])
    assert not np.array_equal(warm[0]["encoder"]["scores"], fresh[0]["encoder"]["scores"])

    # The provenance names the parent and counts the rows.
    record = result["provenance"]["warm_start"]
    parent_metrics = read_json(parents["single"], "metrics.json")
    assert record["run_dir"] == parents["single"]
    assert record["run"] == parent_metrics["run"]  # run id, config hash, data fingerprint
    assert record["best_epoch"] == parent_metrics["best_epoch"]
    assert (len(parent_ids), len(child_ids)) == (30, 33)
    assert record["items"] == {"mapped": 25, "new": 8, "parent_only": 5}
    assert record["students"] == {"encoder": "encoder"}
    assert read_json(tmp_path / "warm", "metrics.json")["provenance"]["warm_start"] == record
    assert "warm_start" not in read_json(tmp_path / "fresh", "metrics.json")["provenance"]
    assert not os.path.exists(tmp_path / "warm" / "backup" / "warm_start.json"), "the record goes with the backup"


def test_shrink_and_perturb_mixes_the_parent_with_a_fresh_start(data_dirs, parents, tmp_path):
    child_ids, parent_ids = vocabulary(data_dirs["child"]), vocabulary(data_dirs["parent"])

    def weights(model: Any) -> list[np.ndarray]:
        return [w.numpy().copy() for w in model.encoder.weights]

    mix = ("train.warm_start_shrink=0.5", "train.warm_start_perturb=0.25")
    with at_first_step(weights) as warm:
        train.run(
            config_for(
                data_dirs["child"], tmp_path / "warm", "train.epochs=1", f"train.warm_start={parents['single']}", *mix
            )
        )
    with at_first_step(weights) as fresh:
        train.run(config_for(data_dirs["child"], tmp_path / "fresh", "train.epochs=1"))
    parent = parent_model(parents["single"]).encoder
    table = [w.name for w in parent.weights].index(parent.item_embeddings.name)
    # The item table: a shared key's row is 0.5 x the parent's row of that key + 0.25 x the fresh row; new keys fresh.
    ours = [child_ids[key] for key in SHARED]
    expected = 0.5 * parent.item_embeddings.numpy()[[parent_ids[key] for key in SHARED]] + 0.25 * fresh[0][table][ours]
    np.testing.assert_allclose(warm[0][table][ours], expected, rtol=1e-6, atol=1e-7)
    new = [child_ids[key] for key in CHILD_KEYS if key not in parent_ids]
    np.testing.assert_array_equal(warm[0][table][new], fresh[0][table][new])
    # Every other weight (attention, feed-forward, layer norms, positions): the same mix, whole.
    others = [i for i in range(len(parent.weights)) if i != table]
    assert len(others) > 5
    for i in others:
        np.testing.assert_allclose(
            warm[0][i], 0.5 * parent.weights[i].numpy() + 0.25 * fresh[0][i], rtol=1e-6, atol=1e-7
        )


def test_mdcns_maps_both_students(data_dirs, parents, tmp_path):
    child_ids, parent_ids = vocabulary(data_dirs["child"]), vocabulary(data_dirs["parent"])
    sets = ("train.epochs=1", *MDCNS, "mdcns.teacher=ema", f"train.warm_start={parents['mdcns']}")
    with at_first_step(lambda model: snapshot(model, child_ids)) as warm:
        result = train.run(config_for(data_dirs["child"], tmp_path / "warm", *sets))
    parent = parent_model(parents["mdcns"])
    for name in ("encoder", "peer"):
        np.testing.assert_array_equal(warm[0][name]["scores"], scores(getattr(parent, name), parent_ids), err_msg=name)
    assert not np.array_equal(warm[0]["encoder"]["table"], warm[0]["peer"]["table"])
    # The EMA teacher starts as a copy of the (warm-started) self model, as in a fresh run.
    for teacher, own in zip(warm[0]["teacher"], warm[0]["self_weights"], strict=True):
        np.testing.assert_array_equal(teacher, own)
    assert result["provenance"]["warm_start"]["students"] == {"encoder": "encoder", "peer": "peer"}
    assert np.isfinite(result["history"][0]["loss"])  # the lazy Adam trains the warm-started tables


def test_a_single_model_parent_starts_the_mdcns_self_model_and_a_fresh_peer(data_dirs, parents, tmp_path):
    child_ids, parent_ids = vocabulary(data_dirs["child"]), vocabulary(data_dirs["parent"])
    with at_first_step(lambda model: snapshot(model, child_ids)) as warm:
        result = train.run(
            config_for(
                data_dirs["child"], tmp_path / "warm", "train.epochs=1", *MDCNS, f"train.warm_start={parents['single']}"
            )
        )
    parent = parent_model(parents["single"])
    np.testing.assert_array_equal(warm[0]["encoder"]["scores"], scores(parent.encoder, parent_ids))
    assert result["provenance"]["warm_start"]["students"] == {"encoder": "encoder", "peer": "fresh"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["model.dim=16", "model.num_heads=1"], r"model\.dim differs: 8 in .*, 16 in this run"),
        (["model.backbone=gru4rec"], r"model\.backbone differs: 'sasrec' in .*, 'gru4rec' in this run"),
        (["model.num_layers=2"], r"do not fit \(encoder of .*: .*blocks/1/.*model\.num_layers 1 / 2"),
        (["data.max_len=12"], r"do not fit .*position_embedding/embeddings is \(8, 8\) there, \(12, 8\) here"),
    ],
)
def test_another_backbone_or_dimension_is_one_error_line(data_dirs, parents, tmp_path, capsys, extra, message):
    sets = [*BASE, f"data.dir={data_dirs['child']}", f"output_dir={tmp_path / 'run'}", "train.epochs=1"]
    sets += [*extra, f"train.warm_start={parents['single']}"]
    argv = ["--config", os.path.join(REPO, "configs", "base.yaml"), *(a for s in sets for a in ("--set", s))]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: train.warm_start: "), err
    assert re.search(message, err[0]), err[0]


def test_a_parent_that_did_not_finish_or_is_not_one_run_is_refused(data_dirs, parents, tmp_path):
    def child(parent_dir: Any) -> Config:
        return config_for(data_dirs["child"], tmp_path / "run", "train.epochs=1", f"train.warm_start={parent_dir}")

    unfinished = shutil.copytree(parents["single"], tmp_path / "unfinished")
    os.remove(unfinished / "metrics.json")
    with pytest.raises(ConfigError, match=r"^train\.warm_start: .*unfinished has no readable metrics\.json"):
        train.run(child(unfinished))
    no_weights = shutil.copytree(parents["single"], tmp_path / "no_weights")
    shutil.rmtree(no_weights / "best")
    with pytest.raises(ConfigError, match=r"^train\.warm_start: .*weights\.index not found"):
        train.run(child(no_weights))
    with pytest.raises(ConfigError, match=r"^train\.warm_start: .*is not a folder"):
        train.run(child(tmp_path / "nowhere"))
    mixed = shutil.copytree(parents["single"], tmp_path / "mixed")
    metrics = read_json(mixed, "metrics.json")
    metrics["run"]["run_id"] = "20200101T000000Z-000000"
    with open(mixed / "metrics.json", "w") as f:
        json.dump(metrics, f)
    with pytest.raises(ConfigError, match=r"^train\.warm_start: .*metrics\.json belongs to another run"):
        train.run(child(mixed))
    with pytest.raises(ConfigError, match=r"^train\.warm_start: .*own output_dir"):
        train.run(config_for(data_dirs["child"], parents["single"], f"train.warm_start={parents['single']}"))
    assert not os.path.exists(tmp_path / "run" / "run_manifest.json"), "refused before the output_dir was touched"


def test_a_resumed_run_keeps_its_backup_and_its_record_without_the_parent(data_dirs, parents, tmp_path):
    parent_dir = shutil.copytree(parents["single"], tmp_path / "parent")
    config = config_for(data_dirs["child"], tmp_path / "run", "train.epochs=2", f"train.warm_start={parent_dir}")

    def killed(self: callbacks.ProgressLog, epoch: int, logs: dict | None = None) -> None:
        if epoch == 1:
            raise Killed
        original(self, epoch, logs)

    original = callbacks.ProgressLog.on_epoch_begin
    callbacks.ProgressLog.on_epoch_begin = killed
    try:
        with pytest.raises(Killed):
            train.run(config)
    finally:
        callbacks.ProgressLog.on_epoch_begin = original
    stored = read_json(tmp_path / "run", "backup", "warm_start.json")
    backup = tf.train.latest_checkpoint(str(tmp_path / "run" / "backup" / "chief"))
    table_key = "model/encoder/item_embedding/embeddings/.ATTRIBUTES/VARIABLE_VALUE"
    backed_up = tf.train.load_variable(backup, table_key)

    shutil.rmtree(parent_dir)  # a resumed run never reads the parent again
    with at_first_step(lambda model: model.encoder.item_embeddings.numpy().copy()) as resumed:
        result = train.run(config)
    np.testing.assert_array_equal(resumed[0], backed_up)  # the backup's weights, not the warm start's
    assert result["epochs_run"] == 2
    assert result["provenance"]["warm_start"] == stored
    assert not os.path.exists(tmp_path / "run" / "backup" / "warm_start.json")


def train_sequences(data_dir: str) -> dict[str, np.ndarray]:
    """{user key: training sequence} of a data folder."""
    users = read_keys(os.path.join(data_dir, "users.txt"))
    records = data.read_records(data_dir, "train").as_numpy_iterator()
    return {users[r["user_index"] - 1]: r["item_ids"] for r in records}


def context_rows(backbone: Any, sequences: list[np.ndarray], mapped: np.ndarray, max_len: int = 8) -> dict:
    """By hand: every (input, target) position of the sequences as the training uses them (the last ``max_len``),
    the backbone's states at them, and for each new item j a target, m_j L / |m_j|^2 (numpy, float64)."""

    def pad(ids: np.ndarray) -> np.ndarray:
        return np.pad(ids[-max_len:], (max_len - len(ids[-max_len:]), 0))

    inputs = np.stack([pad(s[:-1]) for s in sequences if len(s) >= 2])
    targets = np.stack([pad(s[1:]) for s in sequences if len(s) >= 2]).ravel()
    states = backbone(tf.constant(inputs, tf.int32), training=False).numpy().reshape(-1, backbone.dim)
    states, targets = states[targets != 0].astype(np.float64), targets[targets != 0]
    table = backbone.item_embeddings.numpy().astype(np.float64)
    known = mapped[targets]
    mean_logit = np.mean(np.sum(states[known] * table[targets[known]], axis=1))
    rows = {}
    for j in sorted(set(targets[~known].tolist())):
        m = states[targets == j].mean(axis=0)
        rows[j] = m * mean_logit / (m @ m)
    new_positions = int(np.sum(~known))
    return {"rows": rows, "mean_logit": mean_logit, "positions": len(targets), "new": new_positions, "table": table}


def test_context_init_sets_new_items_rows_from_the_states_before_them(data_dirs, parents, tmp_path):
    child_ids, parent_ids = vocabulary(data_dirs["child"]), vocabulary(data_dirs["parent"])
    mapped = np.zeros(len(child_ids) + 1, bool)
    mapped[[0, *(i for key, i in child_ids.items() if key in parent_ids)]] = True
    new = np.flatnonzero(~mapped)
    # Train on the users that never go to the first new item (data.train_users): it is then no target, and stays fresh.
    sequences = train_sequences(data_dirs["child"])
    unseen = int(new[0])
    users = sorted(user for user, s in sequences.items() if unseen not in s[1:])
    assert 10 < len(users) < len(sequences)
    (tmp_path / "users.txt").write_text("\n".join(users) + "\n")
    sets = ("train.epochs=1", f"train.warm_start={parents['single']}", f"data.train_users={tmp_path / 'users.txt'}")
    expected_from = [sequences[user] for user in users]
    with at_first_step(lambda model: context_rows(model.encoder, expected_from, mapped)) as fresh:
        fresh_result = train.run(config_for(data_dirs["child"], tmp_path / "fresh", *sets))
    with at_first_step(lambda model: model.encoder.item_embeddings.numpy().copy()) as context:
        result = train.run(
            config_for(data_dirs["child"], tmp_path / "context", *sets, "train.warm_start_new_items=context")
        )
    expected, table, before = fresh[0]["rows"], context[0], fresh[0]["table"]

    assert unseen not in expected and len(expected) == len(new) - 1, "every other new item is a target"
    for j, row in expected.items():
        np.testing.assert_allclose(table[j], row, rtol=1e-4, atol=1e-6, err_msg=f"item {j}")
        assert not np.allclose(table[j], before[j])
    np.testing.assert_array_equal(table[unseen], before[unseen])  # never a target: the fresh row
    np.testing.assert_array_equal(table[mapped], before[mapped])  # parent's rows (and padding) unchanged
    # On average a new item scores against its contexts as a known item against its own.
    assert fresh[0]["mean_logit"] > 0

    record = result["provenance"]["warm_start"]
    assert record["new_items"]["init"] == "context"
    assert record["new_items"]["encoder"] == {
        "from_contexts": len(expected),
        "positions": fresh[0]["positions"],
        "new_item_positions": fresh[0]["new"],
        "mean_positive_logit": pytest.approx(fresh[0]["mean_logit"], rel=1e-5),
    }
    assert 0 < fresh[0]["new"] < fresh[0]["positions"]
    assert "new_items" not in fresh_result["provenance"]["warm_start"]  # fresh: the record as before
    assert {k: v for k, v in record.items() if k != "new_items"} == fresh_result["provenance"]["warm_start"]


def test_context_init_under_mdcns_sets_both_students_before_the_ema_teacher_copies_the_self_model(
    data_dirs, parents, tmp_path
):
    child_ids, parent_ids = vocabulary(data_dirs["child"]), vocabulary(data_dirs["parent"])
    new = [child_ids[key] for key in CHILD_KEYS if key not in parent_ids]
    sets = ("train.epochs=1", *MDCNS, "mdcns.teacher=ema", f"train.warm_start={parents['mdcns']}")
    runs = {}
    for init in ("fresh", "context"):
        with at_first_step(lambda model: snapshot(model, child_ids)) as seen:
            result = train.run(
                config_for(data_dirs["child"], tmp_path / init, *sets, f"train.warm_start_new_items={init}")
            )
        runs[init] = (seen[0], result["provenance"]["warm_start"])
    (fresh, _), (context, record) = runs["fresh"], runs["context"]
    for name in ("encoder", "peer"):
        assert record["new_items"][name]["from_contexts"] == len(new), name
        assert not np.allclose(context[name]["table"][new], fresh[name]["table"][new]), name
        old = [i for i in range(len(child_ids) + 1) if i not in new]
        np.testing.assert_array_equal(context[name]["table"][old], fresh[name]["table"][old], err_msg=name)
    for teacher, own in zip(context["teacher"], context["self_weights"], strict=True):
        np.testing.assert_array_equal(teacher, own)
