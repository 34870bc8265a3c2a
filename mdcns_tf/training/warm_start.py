"""Warm start (``train.warm_start: RUN_DIR``): a run that starts from a finished run's selected weights.

Before the first step the new model gets the parent run's ``best/weights``, the weights its model selection kept and
its metrics and export are of (`mdcns_tf.training.finished_run`), read from the checkpoint's object graph by the
path of each weight inside its backbone (attribute names: ``blocks/0/ffn_in/kernel``), so no parent model is built:

- item-indexed weights (`Backbone.item_indexed_weights`: the item table) are mapped by item KEY through the parent's
  vocabulary (the ``items.txt`` of its ``data.dir``, checked against the data fingerprint the run recorded) and this
  run's: a key in both gets the parent's row, a new key keeps the row a fresh model with this run's seed gives it
  (with ``train.warm_start_new_items: context`` a new item's item-table row is set from the states of the training
  positions it follows: `mdcns_tf.training.new_item_rows`), and padding row 0 is the parent's (id 0 is padding in
  both);
- every other backbone weight is copied whole; a weight missing on either side or of another shape (another
  backbone, ``model.dim``, ``num_layers``, ``data.max_len`` of a position table) stops the run with a `ConfigError`.

Students: this run's ``encoder`` (under MDCNS the self model, the one exported) from the parent's ``encoder``; an
MDCNS ``peer`` from the parent's peer when the parent is an MDCNS run, else it starts fresh; an EMA teacher restarts
as a copy of the warm-started self model, as a fresh run's starts as a copy of its self model.

Not carried over: the optimizers' state (Adam's moments are statistics of the parent's steps on the parent's rows,
new rows have none, and its step count would bias-correct this run's first moments as if they were old: a fresh
Adam is the usual fine-tuning start), samplers' state (kept per the parent's user and item ids) and random
generators (this run draws from its own seed, so it trains as a fresh run would from these weights).

Resume: `BackupAndRestore` restores a resumed run's weights when `fit` starts, over anything set before, so a
resumed run never reads the parent again (it may be gone or retrained since); the record the first process wrote
beside the backup (``backup/warm_start.json``) goes into its provenance unchanged.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from mdcns_tf import features
from mdcns_tf.backbones import Backbone
from mdcns_tf.config import Config, ConfigError
from mdcns_tf.config_loader import flatten
from mdcns_tf.features import read_keys
from mdcns_tf.runs import lineage
from mdcns_tf.runs import state as run_state
from mdcns_tf.training import finished_run, new_item_rows
from mdcns_tf.training.retrieval_model import RetrievalModel

log = logging.getLogger("mdcns_tf.train")

KEY = "train.warm_start"
# The trainers' student attributes, which are also their names in a checkpoint's object graph.
STUDENTS = ("encoder", "peer")
# Where `tf.train.Checkpoint` stores the serialized object graph in a checkpoint.
_OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
_VALUE = "VARIABLE_VALUE"
# Config keys (and prefixes) a backbone's weight shapes may depend on, named when the weights do not fit.
SHAPING = ("model.", "data.max_len", "mdcns.peer_backbone")


@dataclasses.dataclass
class Parent:
    """The run to warm-start from, checked (`check`); ``record`` is what this run's provenance says of it.
    ``resumed``: this run resumes a backup and takes nothing from the parent but ``record``."""

    run_dir: str
    record: dict[str, Any]
    config: Config | None = None
    keys: list[str] = dataclasses.field(default_factory=list)  # parent vocabulary: the key of id i at i - 1
    resumed: bool = False


def record_path(config: Config) -> str:
    return os.path.join(config.output_dir, "backup", run_state.WARM_START_RECORD)


def check(config: Config, restart: bool = False) -> Parent | None:
    """The parent run of ``train.warm_start`` checked before the output folder is touched (no TensorFlow op): a
    finished run (config, selected weights, ``metrics.json``) whose records and data agree
    (`lineage.check_finished_run`), of this run's backbones and dimension; None when the key is off. A run that
    will resume its backup (one exists and no ``--restart``) gets the record its first process wrote."""
    source = config.train.warm_start
    if not source:
        return None
    if os.path.realpath(source) == os.path.realpath(config.output_dir):
        raise ConfigError(
            f"{KEY}: {source!r} is this run's own output_dir, whose best weights a fresh run deletes; copy the run "
            "elsewhere and warm-start from the copy, or train into another output_dir"
        )
    if not restart and os.path.exists(os.path.join(config.output_dir, "backup", "chief", "checkpoint")):
        stored = _read_record(record_path(config))
        if stored is not None:
            return Parent(source, stored, resumed=True)
    try:
        parent_config = finished_run.load_run_config(source)
    except (FileNotFoundError, ConfigError) as e:
        raise ConfigError(f"{KEY}: {e}") from None
    metrics = finished_run.read_metrics(source)
    if metrics is None:
        raise ConfigError(
            f"{KEY}: {source} has no readable metrics.json: the run has not finished (it writes metrics.json after "
            "its final evaluation); warm-start from a finished run"
        )
    data_dir = parent_config.data.dir
    try:
        metadata = features.Metadata.load(data_dir, verify=False)
        features.verify_records(data_dir, metadata, scan_ids=False)
        keys = item_keys(data_dir, metadata.n_items)
        run = lineage.check_finished_run(
            source,
            run_state.config_hash(parent_config.to_dict()),
            metrics,
            data_dir,
            lineage.data_fingerprint(data_dir, metadata),
        )["run"]
    except ConfigError as e:  # the lineage's
        raise ConfigError(f"{KEY}: {e}") from None
    except (OSError, ValueError) as e:  # DataFolderError, an unreadable items.txt
        raise ConfigError(
            f"{KEY}: the data.dir of {source}, {data_dir!r}, whose items.txt maps item keys to that run's rows: {e}"
        ) from None
    peer = ("mdcns.peer_backbone",) if config.trainer == parent_config.trainer == "mdcns" else ()
    for key in ("model.backbone", "model.dim", *peer):
        ours, theirs = _value(config, key), _value(parent_config, key)
        if ours != theirs:
            raise ConfigError(
                f"{KEY}: {key} differs: {theirs!r} in {source}, {ours!r} in this run; a warm start copies the "
                "weights of the same backbone of the same dimension"
            )
    record = {
        "run_dir": source,
        "run": run,  # run id, config hash, data fingerprint of the parent
        "weights": os.path.join("best", "weights"),
        "best_epoch": metrics.get("best_epoch"),
        "data_dir": data_dir,
    }
    return Parent(source, record, parent_config, keys)


def apply(model: RetrievalModel, config: Config, start: Any) -> dict[str, Any]:
    """Loads ``start.warm_start`` (a `Parent` from `check`, or None) into ``model``, built and not yet trained; returns
    ``{"warm_start": record}`` for the run's provenance (``{}`` when off): the parent's identity, and ``items``:
    rows ``mapped`` by key, ``new`` (fresh), ``parent_only`` (keys this data no longer has), and with
    ``train.warm_start_new_items: context`` ``new_items``: per warm-started student what
    `new_item_rows.set_from_contexts` set. ``start``: the run's `preflight.Start` (its ``metadata`` and ``chief``
    too)."""
    parent: Parent | None = getattr(start, "warm_start", None)
    if parent is None:
        return {}
    if parent.resumed:
        log.info("%s: resuming a run warm-started from %s; its weights come from the backup", KEY, parent.run_dir)
        return {"warm_start": parent.record}
    prefix = finished_run.weights_prefix(parent.run_dir)
    try:
        reader = tf.train.load_checkpoint(prefix)
        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        graph.ParseFromString(reader.get_tensor(_OBJECT_GRAPH))
    except run_state.checkpoint_errors() as e:
        raise ConfigError(f"{KEY}: the selected weights {prefix} cannot be read ({run_state.unreadable(e)})") from None
    keys = item_keys(config.data.dir, start.metadata.n_items)
    rows = row_map(parent.keys, keys)
    contexts = new_item_rows.training_batches(config) if config.train.warm_start_new_items == "context" else None
    students, new_items = {}, {}
    for name in STUDENTS:
        backbone = getattr(model, name, None)
        if backbone is None:
            continue
        stored = _student_variables(graph, name)
        if stored is None and name != "encoder":
            students[name] = "fresh"  # a single-model parent has no peer
            continue
        _copy(backbone, stored or {}, reader, rows, len(parent.keys), f"{name} of {prefix}", config, parent.config)
        students[name] = name
    if contexts is not None:  # train.warm_start_new_items: context, once every student is copied
        is_mapped = np.zeros(len(keys) + 1, bool)
        is_mapped[rows[0]] = True
        for name in [name for name, source in students.items() if source != "fresh"]:
            new_items[name] = new_item_rows.set_from_contexts(getattr(model, name), contexts, is_mapped, name)
    teacher = getattr(model, "teacher", None)
    if getattr(teacher, "mode", None) == "ema":
        for target, value in zip(teacher.backbone.weights, model.encoder.weights, strict=True):
            target.assign(value)
    mapped = len(rows[0]) - 1  # row 0 is padding
    record = {
        **parent.record,
        "students": students,
        "items": {"mapped": mapped, "new": len(keys) - mapped, "parent_only": len(parent.keys) - mapped},
    }
    if contexts is not None:
        record["new_items"] = {"init": "context", **new_items}
    if start.chief and config.train.backup_and_restore:
        _write_record(record_path(config), record)
    log.info(
        "%s: weights of %s (run %s): %d item rows mapped by key, %d new items, %d of its items not in this data",
        KEY,
        parent.run_dir,
        parent.record["run"].get(run_state.RUN_KEY),
        *record["items"].values(),
    )
    return {"warm_start": record}


def item_keys(data_dir: str, n_items: int) -> list[str]:
    """The item keys of a data folder, the key of id i at index i - 1 (``items.txt``; without one, the decimal ids,
    as an export's ``serve_keys`` then serves)."""
    path = os.path.join(data_dir, features.ITEMS_FILE)
    if not os.path.exists(path):
        return [str(i) for i in range(1, n_items + 1)]
    keys = read_keys(path)
    if len(keys) != n_items:
        raise ConfigError(f"{path} has {len(keys)} keys for {n_items} items")
    return keys


def row_map(parent_keys: list[str], keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(this run's ids, the parent's ids) of the keys in both vocabularies, padding 0 -> 0 first; int64 `(m + 1,)`."""
    parent_ids = {key: i for i, key in enumerate(parent_keys, start=1)}
    pairs = [(0, 0)] + [(i, parent_ids[key]) for i, key in enumerate(keys, start=1) if key in parent_ids]
    ours, theirs = np.array(pairs, np.int64).T
    return ours, theirs


def weight_paths(backbone: Backbone) -> dict[str, tf.Variable]:
    """``{path: weight}`` of a backbone's weights, a path being the attribute names from the backbone down (the
    names a checkpoint's object graph gives them: breadth first, the first path to an object)."""
    weights = {id(v) for v in backbone.weights}
    found: dict[str, tf.Variable] = {}
    seen = {id(backbone)}
    queue = collections.deque([(backbone, "")])
    while queue:
        node, path = queue.popleft()
        for name, child in tf.train.TrackableView(node).children(node).items():
            if id(child) in seen:
                continue
            seen.add(id(child))
            child_path = f"{path}/{name}" if path else name
            if isinstance(child, tf.Variable):
                if id(child) in weights:
                    found[child_path] = child
            else:
                queue.append((child, child_path))
    return found


def _student_variables(graph: Any, name: str) -> dict[str, str] | None:
    """``{path: checkpoint key}`` of the variables under the root's child ``name`` of a checkpoint's object graph
    (paths as `weight_paths` makes them); None when the root has no such child."""
    root = graph.nodes[0]
    start = next((child.node_id for child in root.children if child.local_name == name), None)
    if start is None:
        return None
    found: dict[str, str] = {}
    seen = {start}
    queue = collections.deque([(start, "")])
    while queue:
        node_id, path = queue.popleft()
        for child in graph.nodes[node_id].children:
            if child.node_id in seen:
                continue
            seen.add(child.node_id)
            child_path = f"{path}/{child.local_name}" if path else child.local_name
            node = graph.nodes[child.node_id]
            value = next((a.checkpoint_key for a in node.attributes if a.name == _VALUE), None)
            if value is not None:
                found[child_path] = value
            else:
                queue.append((child.node_id, child_path))
    return found


def _copy(
    backbone: Backbone,
    stored: dict[str, str],
    reader: Any,
    rows: tuple[np.ndarray, np.ndarray],
    parent_items: int,
    where: str,
    config: Config,
    parent_config: Config | None,
) -> None:
    """Checks every weight of ``backbone`` against its stored counterpart, then assigns them all (nothing is
    half-copied when one does not fit)."""
    ours = weight_paths(backbone)
    item_indexed = {id(v) for v in backbone.item_indexed_weights()}
    shapes = reader.get_variable_to_shape_map()
    problem = None
    missing = sorted(set(ours) - set(stored))
    if missing:
        problem = f"this run's weight {missing[0]} is not in it"
    for path, variable in ours.items():
        if problem:
            break
        theirs, mine = tuple(shapes[stored[path]]), tuple(variable.shape)
        fits = theirs == mine
        if id(variable) in item_indexed:
            fits = theirs[1:] == mine[1:] and theirs[0] == parent_items + 1
        if not fits:
            problem = f"{path} is {theirs} there, {mine} here"
    # The stored student may hold more (another num_layers). Only weights sit under a student in a checkpoint: the
    # trainers track the dropout generators at the root.
    extra = sorted(set(stored) - set(ours))
    if not problem and extra:
        problem = f"its weight {extra[0]} has no counterpart here"
    if problem:
        raise ConfigError(f"{KEY}: the weights do not fit ({where}: {problem}){_differences(config, parent_config)}")
    shrink, perturb = config.train.warm_start_shrink, config.train.warm_start_perturb
    for path, variable in ours.items():
        fresh = variable.numpy()
        value = reader.get_tensor(stored[path])
        if id(variable) in item_indexed:
            table = fresh.copy()
            table[rows[0]] = shrink * value[rows[1]] + perturb * fresh[rows[0]]
            value = table
        else:
            value = shrink * value + perturb * fresh
        variable.assign(value)


def _differences(config: Config, parent_config: Config | None) -> str:
    """``"; differing: model.num_layers 2 / 1, ..."`` (parent / this run) over the keys that shape a backbone."""
    if parent_config is None:
        return ""
    ours, theirs = flatten(config.to_dict()), flatten(parent_config.to_dict())
    shaping = sorted(k for k in set(ours) | set(theirs) if k.startswith(SHAPING) and k != "model.dropout")
    differ = [f"{k} {theirs.get(k)!r} / {ours.get(k)!r}" for k in shaping if ours.get(k) != theirs.get(k)]
    return f"; differing (parent / this run): {', '.join(differ)}" if differ else ""


def _value(config: Config, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)


def _read_record(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("run"), dict) else None


def _write_record(path: str, record: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(record, f)
    os.replace(path + ".tmp", path)
