"""Property: whatever the YAML file and the ``--set`` overrides hold, `load_config` returns a `Config` or raises
`ConfigError`, never another exception (a TypeError or a YAML parser error is a traceback for the user).

The generated configs mix the real dotted keys (and registry block names) with junk keys, values of the right and
of the wrong types, nested mappings where scalars belong, and ``base`` entries that are files, cycles or nonsense.
Loader only: nothing is trained.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdcns_tf.backbones import BACKBONES
from mdcns_tf.config import Config, ConfigError
from mdcns_tf.config_loader import load_config
from mdcns_tf.samplers import SAMPLERS


def _dotted(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys += _dotted(value, f"{prefix}{key}.")
    return keys


REAL_KEYS = sorted(
    set(_dotted(Config().to_dict()))
    | {f"sampler.{name}" for name in SAMPLERS}
    | {f"model.options.{name}" for name in BACKBONES}
    | {"sampler.uniform.alpha", "model.options.sasrec.depth", "base", "a.b"}
)
# Strings a user might write where the loader checks formats: choices, metrics, paths, YAML-looking text.
WORDS = ["sasrec", "gru4rec", "uniform", "dns", "mdcns", "bce", "softmax", "all", "last", "ndcg@20", "ndcg@abc",
         "recall@5", "mrr", "ndcg@20@x", "../x", "a/b", ".", "", "5", "true", "[", "{a: 1}", "parent.yaml",
         "config.yaml", "mirrored", "frozen"]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2, 5, 10, 20, 64, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(WORDS),
    st.text(max_size=6),
)
keys = st.one_of(st.sampled_from(REAL_KEYS), st.text(max_size=6), st.integers(-3, 3), st.booleans())
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.one_of(st.sampled_from(WORDS), keys), inner, max_size=4)
    ),
    max_leaves=8,
)


def nest(pairs: list[tuple[Any, Any]]) -> dict:
    """``[("train.epochs", 3), ...]`` -> ``{"train": {"epochs": 3}}``; a later path through a scalar replaces it."""
    tree: dict = {}
    for key, value in pairs:
        parts = key.split(".") if isinstance(key, str) else [key]
        node = tree
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return tree


def yaml_text(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


configs = st.lists(st.tuples(keys, values), max_size=8).map(nest)
overrides = st.lists(
    st.one_of(
        st.builds(lambda k, v: f"{k}={yaml_text(v)}", st.sampled_from(REAL_KEYS), values),
        st.builds(
            lambda k, v: f"{k}={v}", st.one_of(st.sampled_from(REAL_KEYS), st.text(max_size=6)), st.text(max_size=8)
        ),
        st.text(max_size=10),
    ),
    max_size=4,
)


def loads_or_config_error(path: str | None, sets: list[str]) -> None:
    try:
        config = load_config(path, sets)
    except ConfigError:
        return
    assert isinstance(config, Config)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=configs, sets=overrides, parent=configs)
def test_any_config_loads_or_is_a_config_error(raw: dict, sets: list[str], parent: dict) -> None:
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "parent.yaml"), "w") as f:
            yaml.safe_dump(parent, f)
        path = os.path.join(folder, "config.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(raw, f)
        loads_or_config_error(path, sets)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=60) | st.sampled_from(["base: 5", "base: [config.yaml]", "&a [*a]", "? [a]\n: 1", "\t"]))
def test_any_file_text_loads_or_is_a_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "config.yaml")
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(text)
        loads_or_config_error(path, [])


def test_the_generated_configs_reach_a_valid_config() -> None:
    """The fuzz is only worth something if real keys with plausible values get through validation at times."""
    assert isinstance(load_config(None, ["train.epochs=3", "eval.ks=[5, 20]", "model.options.sasrec={}"]), Config)
