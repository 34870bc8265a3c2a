"""Config loading: layering, overrides and errors that name the key, before any graph is built."""

from __future__ import annotations

import glob
import os

import pytest

from mdcns_tf.config import ConfigError
from mdcns_tf.config_loader import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_layered_yaml_and_overrides(tmp_path):
    write(tmp_path / "parent.yaml", "seed: 1\ntrain: {epochs: 5, patience: 2}\nmodel: {dim: 32}\n")
    child = write(tmp_path / "child.yaml", "base: parent.yaml\ntrain: {epochs: 7}\n")
    config = load_config(child, ["model.dropout=0.1", "sampler.name=uniform"])
    assert (config.seed, config.train.epochs, config.train.patience) == (1, 7, 2)
    assert config.model.dim == 32 and config.model.dropout == 0.1


def test_exponent_floats_without_a_dot_are_floats_in_files_and_overrides(tmp_path):
    # PyYAML alone reads 1e-4 as the string "1e-4", which the strict schema then refused.
    path = write(tmp_path / "c.yaml", "train: {learning_rate: 1e-4, weight_decay: 5E-5}\n")
    config = load_config(path, ["model.dropout=2.5e-1"])
    assert (config.train.learning_rate, config.train.weight_decay, config.model.dropout) == (1e-4, 5e-5, 0.25)
    assert load_config(path, ["train.learning_rate=1e-9"]).train.learning_rate == 1e-9
    with pytest.raises(ConfigError, match="expected float, got str '1e'"):
        load_config(path, ["train.learning_rate=1e"])
    with pytest.raises(ConfigError, match="expected int, got float"):
        load_config(path, ["train.epochs=1e3"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epoch=3", "unknown config key 'train.epoch'"),
        ("train.epochs=three", "train.epochs: expected int"),
        ("model.backbone=transformer9", "unknown backbone 'transformer9'"),
        ("sampler.name=nope", "unknown sampler 'nope'"),
        ("loss.name=hinge", "loss.name"),
        ("model.num_heads=3", "divisible"),
        ("sampler.uniform.alpha=1", "sampler.uniform: unknown option"),
        ("model.options.sasrec.depth=3", "model.options.sasrec: unknown option"),
        ("train.monitor=ndcg@7", "train.monitor"),
        ("mdcns.teacher=frozen", "teacher_checkpoint"),
    ],
)
def test_bad_configs_are_reported_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(None, [override])


def test_every_shipped_config_loads():
    paths = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))
    paths = [p for p in paths if os.sep + "benchmarks" + os.sep not in p]
    assert paths
    for path in paths:
        load_config(path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.distribute=mirrored", "sampler.name=srns"], "sampler 'srns' keeps per-user state"),
        (["train.distribute=multi_worker", "sampler.name=gdns"], "sampler 'gdns' keeps per-user state"),
        (["train.distribute=mirrored", "sampler.name=autosample"], "cannot be shared across replicas"),
        (["eval.item_chunk_size=0"], "eval.item_chunk_size: must be positive"),
        (["train.warm_start_shrink=0.0"], r"train.warm_start_shrink: must be in \(0, 1\], got"),
        (["train.warm_start_shrink=1.5"], r"train.warm_start_shrink: must be in \(0, 1\], got"),
        (["train.warm_start_perturb=-0.1"], "train.warm_start_perturb: must be 0 or more"),
        (["train.warm_start_new_items=context"], r"train.warm_start_new_items: 'context' .*needs train\.warm_start"),
        (["train.warm_start_new_items=zero", "train.warm_start=x"], "'zero' is not one of"),
        (["train.jit_compile=true"], "train.jit_compile: sampler 'uniform' draws by rejection"),
        (["train.jit_compile=true", "sampler.name=autosample"], "use train.jit_compile=false, loss.name=softmax"),
        (["train.jit_compile=true", "trainer=mdcns"], "train.jit_compile: the mdcns trainer draws its candidate"),
    ],
)
def test_incompatible_options_are_reported(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_distributed_stateless_samplers_and_mdcns_are_accepted():
    load_config(None, ["train.distribute=mirrored", "sampler.name=dns_mn"])
    load_config(None, ["train.distribute=mirrored", "trainer=mdcns"])
    load_config(None, ["train.distribute=mirrored", "sampler.name=srns", "loss.name=softmax"])  # sampler unused


def test_jit_compile_is_accepted_where_every_shape_is_fixed():
    assert load_config(None, ["train.jit_compile=true", "loss.name=softmax"]).train.jit_compile  # no sampler


def test_the_rejection_draw_does_not_compile_under_xla_so_no_sampler_claims_it():
    # Every registered sampler draws with `candidates.draw_excluding`; a sampler that sets xla_compilable must draw
    # otherwise. If this draw ever compiles, the refusal in `config_loader` can be relaxed.
    import tensorflow as tf

    from mdcns_tf import samplers
    from mdcns_tf.samplers.candidates import sample_excluding

    generator = tf.random.Generator.from_seed(0)
    exclusions = tf.constant([[1, 2, 3], [4, 5, 0]])
    draw = tf.function(lambda: sample_excluding(generator, exclusions, 50, 4), jit_compile=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="XLA compilation requires"):
        draw()
    assert sample_excluding(generator, exclusions, 50, 4).shape == (2, 4)  # eagerly it draws
    assert [name for name, cls in samplers.SAMPLERS.items() if cls.xla_compilable] == []
