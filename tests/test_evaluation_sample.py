"""``eval.valid_users``: model selection on a fixed, seeded sample of validation users; the final validation metrics
and the test split on every user."""

from __future__ import annotations

import json
import os

import pytest
import tensorflow as tf
import tf_keras as keras
from conftest import synthetic_sequences

import mdcns_tf  # noqa: F401
from mdcns_tf import data, features, train
from mdcns_tf.batch import USER_INDEX
from mdcns_tf.config import ConfigError
from mdcns_tf.config_loader import differences_from_defaults, load_config


def users_of(dataset) -> list[int]:
    """The user indices of an evaluation dataset, one per record, sorted."""
    return sorted(int(u) for batch in dataset for u in batch[USER_INDEX].numpy())


def test_the_sample_is_seeded_sized_and_drawn_from_the_split(tiny_dataset):
    population = users_of(data.eval_dataset(tiny_dataset, "valid", max_len=12, batch_size=64))
    sample = data.sample_users(tiny_dataset, "valid", 40, seed=7)
    assert len(sample.users) == 40 and len(set(sample.users)) == 40
    assert set(sample.users) <= set(population) and sample.population == len(population) == 300
    assert list(sample.users) == sorted(sample.users)
    # The same seed gives the same users (every epoch, and in a resumed process); another seed others.
    assert data.sample_users(tiny_dataset, "valid", 40, seed=7) == sample
    assert data.sample_users(tiny_dataset, "valid", 40, seed=8).users != sample.users
    # A larger sample adds users to a smaller one; one larger than the split is the whole split.
    assert set(sample.users) <= set(data.sample_users(tiny_dataset, "valid", 100, seed=7).users)
    whole = data.sample_users(tiny_dataset, "valid", 1_000, seed=7)
    assert whole.whole and list(whole.users) == population
    record = sample.record()
    assert (record["users"], record["of"], record["seed"]) == (40, 300, 7) and len(record["users_sha256"]) == 64


def test_the_sample_does_not_depend_on_the_order_of_the_records(tmp_path, tiny_dataset):
    # The tiny dataset's validation records (users 1..300, in order) written again in reverse order, in two files.
    sequences = synthetic_sequences(300, 60, seed=0)
    os.makedirs(tmp_path / "valid")
    for part, users in enumerate((range(300, 150, -1), range(150, 0, -1))):
        path = str(tmp_path / "valid" / f"part-{part}{features.TFRECORD_SUFFIX}")
        with tf.io.TFRecordWriter(path, options="GZIP") as writer:
            for user in users:
                sequence = sequences[user - 1]
                writer.write(features.make_example(user, sequence[:-2], sequence[-2]))
    forward = data.sample_users(tiny_dataset, "valid", 25, seed=3)
    assert data.sample_users(str(tmp_path), "valid", 25, seed=3) == forward
    # With data.max_eval_users the sample is drawn from the records evaluation reads, the first ones.
    first = data.sample_users(tiny_dataset, "valid", 25, seed=3, max_users=50)
    assert first.population == 50 and set(first.users) <= set(range(1, 51))


@pytest.mark.parametrize("bucket_by_length", [False, True])
def test_eval_dataset_reads_only_the_sampled_users(tiny_dataset, bucket_by_length):
    sample = data.sample_users(tiny_dataset, "valid", 33, seed=1)
    dataset = data.eval_dataset(
        tiny_dataset, "valid", max_len=12, batch_size=16, bucket_by_length=bucket_by_length, users=sample.users
    )
    assert users_of(dataset) == list(sample.users)
    assert users_of(data.eval_dataset(tiny_dataset, "valid", max_len=12, batch_size=16, users=[])) == []


def test_valid_users_defaults_to_every_user_and_keeps_config_hashes():
    config = load_config(None, [])
    assert config.eval.valid_users == 0
    assert "eval.valid_users" not in differences_from_defaults(config.to_dict())
    with pytest.raises(ConfigError, match="eval.valid_users"):
        load_config(None, ["eval.valid_users=-1"])


@pytest.fixture
def process_random_state():
    """`train.run` switches Keras dropout to `tf.random.Generator`s for the whole process; switched back after."""
    yield
    keras.backend.experimental.disable_tf_random_generator()


def test_a_run_selects_on_the_sample_and_reports_valid_and_test_on_every_user(
    tiny_dataset, tmp_path, monkeypatch, process_random_state
):
    from mdcns_tf.training import factory

    seen: dict[str, list] = {"fit": [], "evaluate": []}
    build_model, evaluate = train.build_model, factory.evaluate

    def spying_build_model(config, metadata):
        model = build_model(config, metadata)
        fit = model.fit

        def spying_fit(*args, validation_data=None, **kwargs):
            seen["fit"].append(users_of(validation_data))
            return fit(*args, validation_data=validation_data, **kwargs)

        model.fit = spying_fit
        return model

    def spying_evaluate(model, dataset):
        seen["evaluate"].append(users_of(dataset))
        return evaluate(model, dataset)

    monkeypatch.setattr(train, "build_model", spying_build_model)
    monkeypatch.setattr(factory, "evaluate", spying_evaluate)
    run_dir = str(tmp_path / "run")
    overrides = [
        f"data.dir={tiny_dataset}",
        f"output_dir={run_dir}",
        "seed=5",
        "eval.valid_users=45",
        "model.dim=16",
        "model.num_layers=1",
        "data.max_len=12",
        "data.batch_size=64",
        "train.epochs=2",
        "train.tensorboard=false",
        "train.verbose=0",
        "export.enabled=false",
    ]
    result = train.run(load_config(None, overrides))
    sample = data.sample_users(tiny_dataset, "valid", 45, seed=5)
    everyone = list(range(1, 301))
    # Model selection saw the sample drawn from the run's seed; the final valid and the test split every user; the
    # selected weights are measured once more on the sample.
    assert seen["fit"] == [list(sample.users)]
    assert seen["evaluate"] == [everyone, list(sample.users), everyone]
    with open(os.path.join(run_dir, "metrics.json")) as f:
        written = json.load(f)
    assert written["valid_users"] == "all"
    assert written["valid_sample"]["users"] == 45 and written["valid_sample"]["of"] == 300
    assert written["valid_sample"]["seed"] == 5
    assert written["valid_sample"]["users_sha256"] == sample.record()["users_sha256"]
    assert set(written["valid_sample"]["metrics"]) == set(written["valid"]) == set(written["test"])
    # The best epoch's monitor value in the history is the sample's, which the selected weights reproduce.
    best = next(h for h in written["history"] if h["epoch"] == written["best_epoch"])
    assert best["val_ndcg_20"] == pytest.approx(written["valid_sample"]["metrics"]["ndcg@20"], abs=1e-6)
    assert result["valid_sample"] == written["valid_sample"]
