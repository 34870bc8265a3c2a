"""Loading a config: layered YAML files, dotted command-line overrides, type checks against the schema, validation.

A YAML file may name parents with ``base: [other.yaml, ...]`` (paths relative to the file, else a shipped config's
name); parents are merged first, the child wins key by key. ``--set train.epochs=3`` style overrides are applied
last. Every key and value is checked against the annotations of `mdcns_tf.config` (a ``Literal`` lists the allowed
values), so a typo is an error that names the key and the known keys, raised before any graph is built.
Registry-typed blocks (``model.options.<backbone>``, ``sampler.<name>``) are validated by the backbone or sampler
they configure.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from collections.abc import Sequence
from typing import Any

import yaml

from mdcns_tf import shipped_configs
from mdcns_tf.config import Config, ConfigError, ExportConfig, SamplerConfig, is_safe_model_name

# The monitor is looked up as "val_<name with @ -> _>" in the Keras logs: only the exact names the evaluation
# reports (K written without leading zeros) can ever match.
_MONITOR = re.compile(r"mrr|(?:ndcg|recall)@([1-9][0-9]*)")
# np.random.seed, which keras.utils.set_random_seed calls, accepts [0, 2**32).
_MAX_SEED = 2**32 - 1


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as `yaml.safe_load` reads it, but exponents without a dot are floats as in YAML 1.2 and JSON: PyYAML
    reads ``1e-4`` (``learning_rate: 1e-4``, ``--set train.learning_rate=1e-4``) as the string "1e-4"."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(stream: Any) -> Any:
    """`yaml.safe_load` with `_Loader`'s floats: every config and grid file and override value is read by this."""
    return yaml.load(stream, Loader=_Loader)


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: str, seen: tuple[str, ...] = ()) -> dict:
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"config inheritance cycle: {' -> '.join(seen + (path,))}")
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            raw = load_yaml(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    parents = raw.pop("base", []) or []
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) and p for p in parents):
        raise ConfigError(f"{path}: base: expected a file name or a list of file names, got {parents!r}")
    merged: dict = {}
    for parent in parents:
        merged = _deep_merge(merged, _read_yaml(_parent_path(path, parent), seen + (path,)))
    return _deep_merge(merged, raw)


def _parent_path(child: str, parent: str) -> str:
    """A ``base:`` entry: a path relative to the child's folder, else a shipped config's name (``base``,
    ``training/fast``), so that a config copied anywhere can still build on the shipped ones."""
    relative = os.path.join(os.path.dirname(child), parent)
    if os.path.exists(relative):
        return relative
    try:
        return shipped_configs.resolve(parent)
    except ConfigError:
        raise ConfigError(f"{child}: base {parent!r} is neither a file beside it nor a shipped config") from None


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like dotted.key=value")
    key, value = text.split("=", 1)
    try:
        parsed = load_yaml(value) if value.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML: {e}") from None
    return key.strip().split("."), parsed


def _check_type(path: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        # bool is an int in Python: True must not pass for the choice 1
        if isinstance(value, bool) or value not in choices:
            raise ConfigError(f"{path}: {value!r} is not one of {choices}")
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool):
        if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
            raise ConfigError(f"{path}: expected {annotation.__name__}, got {type(value).__name__} {value!r}")
        return value
    if annotation is list or origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return value
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        return value
    return value


def _build(cls: type, raw: dict, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key not in fields or (cls is SamplerConfig and key == "blocks"):
            if cls is SamplerConfig and isinstance(value, dict):
                extra[key] = value
                continue
            raise ConfigError(f"unknown config key {path!r}; known keys here: {sorted(fields)}")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = _build(annotation, value, path + ".")
        else:
            kwargs[key] = _check_type(path, value, annotation)
    if extra:
        kwargs["blocks"] = extra
    return cls(**kwargs)


def _check_ranges(config: Config) -> None:
    """Counts and rates that may be 0 but never negative, and the few keys with a closed set of numbers."""
    non_negative = {
        "seed": config.seed,
        "data.max_train_sequences": config.data.max_train_sequences,
        "data.max_eval_users": config.data.max_eval_users,
        "eval.valid_users": config.eval.valid_users,
        "train.steps_per_epoch": config.train.steps_per_epoch,
        "train.patience": config.train.patience,
        "train.weight_decay": config.train.weight_decay,
        "export.version": config.export.version,
        "export.rescore": config.export.rescore,
        "mdcns.peer_learning_rate": config.mdcns.peer_learning_rate,
        "train.warm_start_perturb": config.train.warm_start_perturb,
    }
    for key, value in non_negative.items():
        if not value >= 0:
            raise ConfigError(f"{key}: must be 0 or more, got {value}")
    if config.seed > _MAX_SEED:
        raise ConfigError(f"seed: must be at most {_MAX_SEED}, got {config.seed}")


def _check_metrics(config: Config) -> None:
    """``eval.ks``: distinct positive ints (bool is an int in Python, and True would report ``recall@True``);
    ``train.monitor``: a metric the evaluation reports."""
    bad_ks = [k for k in config.eval.ks if isinstance(k, bool) or not isinstance(k, int) or k <= 0]
    if bad_ks:
        raise ConfigError(f"eval.ks: positive integers expected, got {bad_ks}")
    if len(set(config.eval.ks)) != len(config.eval.ks):
        raise ConfigError(f"eval.ks: each K once, got {config.eval.ks}")
    match = _MONITOR.fullmatch(config.train.monitor)
    if match is None or (match.group(1) is not None and int(match.group(1)) not in config.eval.ks):
        raise ConfigError(
            f"train.monitor: {config.train.monitor!r} must be mrr or ndcg@K / recall@K with K in eval.ks "
            f"{config.eval.ks}"
        )


def _check_export(export: ExportConfig) -> None:
    """``export.rescore``: a window of at least K candidates, for the index that has one."""
    if export.rescore and export.index == "exact":
        raise ConfigError(
            f"export.rescore: {export.rescore} applies to export.index: bfloat16 only (the exact index scores every "
            "item); set export.index=bfloat16 or leave export.rescore at 0"
        )
    if export.rescore and export.rescore < export.top_k:
        raise ConfigError(
            f"export.rescore: {export.rescore} re-scored candidates cannot give export.top_k = {export.top_k} "
            "results; use 0 (4 x top_k) or at least top_k"
        )


def _check_blocks(where: str, blocks: dict) -> None:
    """Registry blocks are ``{name: {option: value}}``; anything else would fail inside the registry's lookup."""
    for name, block in blocks.items():
        if not isinstance(name, str):
            raise ConfigError(f"{where}: block names must be strings, got {name!r}")
        if block is not None and not isinstance(block, dict):
            raise ConfigError(f"{where}.{name}: expected a mapping of options, got {block!r}")
        bad = [key for key in block or {} if not isinstance(key, str)]
        if bad:
            raise ConfigError(f"{where}.{name}: option names must be strings, got {bad}")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (empty mappings stay as values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences_from_defaults(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The dotted keys of ``config_dict`` (the form of `Config.to_dict`) whose value differs from the code's default.

    What identifies a run (the resume check, a benchmark cell): a config stored before a key existed lacks it and
    today's holds its default, so both leave it out, while a changed default shows in every config that relied on it.
    """
    # Through JSON, so that a tuple default equals the list a stored config holds.
    defaults = flatten(json.loads(json.dumps(Config().to_dict(), default=repr)))
    given = flatten(json.loads(json.dumps(config_dict, default=repr)))
    missing = object()
    return {key: value for key, value in given.items() if defaults.get(key, missing) != value}


def validate(config: Config) -> Config:
    """Cross-field checks and registry lookups; raises `ConfigError` naming the key."""
    positive = {
        "data.max_len": config.data.max_len,
        "data.batch_size": config.data.batch_size,
        "data.eval_batch_size": config.data.eval_batch_size,
        "model.dim": config.model.dim,
        "model.num_layers": config.model.num_layers,
        "model.num_heads": config.model.num_heads,
        "sampler.num_negatives": config.sampler.num_negatives,
        "train.epochs": config.train.epochs,
        "export.top_k": config.export.top_k,
        "mdcns.pool_size": config.mdcns.pool_size,
        "mdcns.top_m": config.mdcns.top_m,
        "eval.item_chunk_size": config.eval.item_chunk_size,
        "data.shuffle_buffer": config.data.shuffle_buffer,
        "train.validation_freq": config.train.validation_freq,
        "train.learning_rate": config.train.learning_rate,
    }
    for key, value in positive.items():
        if not value > 0:  # "not >" also refuses NaN
            raise ConfigError(f"{key}: must be positive, got {value}")
    _check_ranges(config)
    if config.model.dim % config.model.num_heads:
        raise ConfigError(f"model.dim ({config.model.dim}) must be divisible by model.num_heads")
    if not 0.0 <= config.model.dropout < 1.0:
        raise ConfigError(f"model.dropout: must be in [0, 1), got {config.model.dropout}")
    if config.mdcns.top_m > config.mdcns.pool_size:
        raise ConfigError("mdcns.top_m must not exceed mdcns.pool_size")
    if not 0.0 < config.train.warm_start_shrink <= 1.0:
        raise ConfigError(f"train.warm_start_shrink: must be in (0, 1], got {config.train.warm_start_shrink}")
    if config.train.warm_start_new_items != "fresh" and not config.train.warm_start:
        raise ConfigError(
            f"train.warm_start_new_items: {config.train.warm_start_new_items!r} initialises the rows of items a parent "
            "run did not have, and needs train.warm_start (the parent's output_dir); set it or leave the key at fresh"
        )
    if not 0.0 <= config.loss.gbce_t <= 1.0:
        raise ConfigError(f"loss.gbce_t: must be in [0, 1], got {config.loss.gbce_t}")
    if not config.mdcns.tau > 0:
        raise ConfigError("mdcns.tau must be positive")
    if config.mdcns.pool_alpha < 0:
        raise ConfigError(f"mdcns.pool_alpha: must be >= 0 (0 = uniform), got {config.mdcns.pool_alpha}")
    if config.mdcns.teacher == "frozen" and not config.mdcns.teacher_checkpoint:
        raise ConfigError("mdcns.teacher: frozen needs mdcns.teacher_checkpoint")
    _check_metrics(config)
    _check_export(config.export)
    if not is_safe_model_name(config.export.model_name):
        raise ConfigError(
            f"export.model_name: {config.export.model_name!r} is not a single folder name of letters, digits, '.', "
            "'_' or '-' (not starting with '.' or '-'): it becomes <output_dir>/export/<model_name>"
        )

    # Registry-typed blocks: imported lazily so that loading a config does not build TensorFlow graphs.
    from mdcns_tf import backbones, samplers

    _check_blocks("model.options", config.model.options)
    _check_blocks("sampler", config.sampler.blocks)
    try:
        backbones.get_backbone_class(config.model.backbone)
        for name, block in config.model.options.items():
            backbones.backbone_options(name, block)
        if config.trainer == "mdcns":
            backbones.get_backbone_class(config.mdcns.peer_backbone)
        samplers.get_sampler_class(config.sampler.name)
        for name, block in config.sampler.blocks.items():
            samplers.sampler_params(name, block)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _check_distributed_sampler(config, samplers)
    _check_jit_compile(config, samplers)
    return config


def _check_distributed_sampler(config: Config, samplers: types.ModuleType) -> None:
    """Samplers whose state is updated inside `train_step` (scatter/assign in replica context; the class attribute
    ``replica_local_state``) have no cross-replica meaning, and tf.distribute rejects them at trace time."""
    if config.train.distribute == "default" or config.trainer != "single" or config.loss.name == "softmax":
        return
    if samplers.get_sampler_class(config.sampler.name).replica_local_state:
        stateful = sorted(name for name, cls in samplers.SAMPLERS.items() if cls.replica_local_state)
        raise ConfigError(
            f"train.distribute={config.train.distribute}: sampler {config.sampler.name!r} keeps per-user state that "
            "is updated inside the training step and cannot be shared across replicas; use train.distribute=default "
            f"or a stateless sampler (not one of {stateful})"
        )


def _check_jit_compile(config: Config, samplers: types.ModuleType) -> None:
    """``train.jit_compile`` compiles the whole step with XLA, which needs every shape fixed at trace time: a sampler
    must say it draws so (the class attribute ``xla_compilable``); the mdcns trainer draws its candidate pools with
    the same rejection loop. Refused here, before a run, instead of an XLA conversion error at the first step."""
    if not config.train.jit_compile:
        return
    if config.trainer == "mdcns":
        raise ConfigError(
            "train.jit_compile: the mdcns trainer draws its candidate pools by rejection (a data-dependent shape XLA "
            "cannot compile); use train.jit_compile=false"
        )
    if config.loss.name == "softmax":
        return
    if not samplers.get_sampler_class(config.sampler.name).xla_compilable:
        compilable = sorted(name for name, cls in samplers.SAMPLERS.items() if cls.xla_compilable)
        raise ConfigError(
            f"train.jit_compile: sampler {config.sampler.name!r} draws by rejection (a data-dependent shape XLA "
            f"cannot compile); use train.jit_compile=false, loss.name=softmax (no sampler), or a sampler that compiles "
            f"({', '.join(compilable) or 'none is registered'})"
        )


def merged_yaml(paths: str | Sequence[str] | None) -> dict:
    """The raw mapping of one config file or a list of them, ``base:`` parents resolved, later files winning; unlike
    the loaded `Config` it tells a key that is not set from one set to its default."""
    raw: dict = {}
    for path in [paths] if isinstance(paths, str) else list(paths or []):
        raw = _deep_merge(raw, _read_yaml(path))
    return raw


def load_config(paths: str | Sequence[str] | None = None, overrides: list[str] | None = None) -> Config:
    """Loads one config file or a list of them (each with its ``base`` parents; a later file's keys win, as in
    ``base:``), applies ``overrides`` (``a.b=value``), validates."""
    raw = merged_yaml(paths)
    for text in overrides or []:
        keys, value = _parse_override(text)
        node = raw
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {key!r} is not a mapping")
        node[keys[-1]] = value
    config = _build(Config, raw, "")
    return validate(config)
