"""Quality-grid specs: datasets x backbones x methods x seeds under one shared training budget.

A grid file (``configs/benchmarks/<name>.yaml``)::

    name: quick                       # results go to benchmarks/results/<name>/
    description: what the grid answers
    expected_minutes: 25              # measured on the 2-core reference machine (README)
    base: [../base.yaml]              # training config(s) every cell starts from, relative to this file
    overrides: {loss.name: bce, export.enabled: false}   # shared settings (dotted keys)
    budget: {train.epochs: 20, train.patience: 5}        # the one budget of the grid, applied after overrides
    datasets:
      lastfm_user:
        input: amazon_lastfm_s3rec/LastFM.txt            # relative to the data root (../shared/data)
        input_format: sequences                          # pipeline.run --input_format
        split: user                                      # pipeline.run --split
        pipeline_args: [--seed, "42"]                    # optional extra pipeline.run flags
        split_file: mdcns_authors_split/Beauty_split.tsv # optional, relative to the data root: --split_file
        config: [../datasets/lastfm_user.yaml]           # dataset config(s); data.dir is replaced by the cache
        overrides: {data.max_train_sequences: 0}         # optional, per dataset
    backbones: [sasrec]
    methods:                                             # name -> dotted overrides
      uniform: {sampler.name: uniform}
      mdcns: {trainer: mdcns, mdcns.peer_backbone: gru4rec}
    seeds: [1, 2]
    reuse_runs_from: [mdcns_beauty]                      # optional: other grids whose finished runs count here

Per cell the layers are: base configs, dataset configs, ``overrides``, ``budget``, dataset ``overrides``,
``model.backbone``, the method's overrides, then ``seed``, ``data.dir`` and ``output_dir``. The budget is applied
after the shared overrides so that no method can quietly train longer than another; a method that sets a budget
key is rejected for the same reason.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import sys
from typing import Any

from mdcns_tf import config_loader
from mdcns_tf.config import is_safe_model_name

BUDGET_KEYS = ("train.epochs", "train.patience", "train.monitor", "train.steps_per_epoch", "train.validation_freq")


def cell_matches(cell_id: str, only: str | None) -> bool:
    """``only``: fnmatch patterns on the cell id (``dataset/backbone/method/seed<k>``), comma-separated; a pattern
    without wildcards matches as a substring; None or empty matches every cell."""
    if not only:
        return True
    patterns = [p if any(c in p for c in "*?[") else f"*{p}*" for p in only.split(",") if p]
    return any(fnmatch.fnmatchcase(cell_id, p) for p in patterns)


class GridError(ValueError):
    """A grid spec problem, reported with the offending key."""


def _path_component(value: object, where: str) -> str:
    """A grid, dataset, backbone or method name becomes a folder under benchmarks/results: one safe path component
    (letters, digits, '.', '_', '-'; not '.' or '..', not starting with '.' or '-'), so that no name can write
    outside the results folder."""
    if not is_safe_model_name(value) or value in (".", ".."):
        raise GridError(
            f"{where}: {value!r} is not a single folder name of letters, digits, '.', '_' or '-' (not starting "
            "with '.' or '-'): it becomes a folder under benchmarks/results"
        )
    return value


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    input: str
    input_format: str
    split: str
    configs: tuple[str, ...]
    pipeline_args: tuple[str, ...] = ()
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    split_file: str | None = None  # relative to the data root, like ``input``

    def cache_key(self) -> str:
        """Directory name of the preprocessed copy: changes whenever what the pipeline is asked to do changes."""
        fields = [self.input, self.input_format, self.split, list(self.pipeline_args)]
        if self.split_file is not None:  # appended only when set: the cache keys of older grids stay valid
            fields.append(self.split_file)
        payload = json.dumps(fields)
        return f"{self.name}-{hashlib.sha256(payload.encode()).hexdigest()[:10]}"


@dataclasses.dataclass(frozen=True)
class Cell:
    dataset: str
    backbone: str
    method: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.backbone}/{self.method}/seed{self.seed}"


@dataclasses.dataclass
class GridSpec:
    name: str
    path: str
    description: str
    expected_minutes: float | None
    base: tuple[str, ...]
    overrides: dict[str, Any]
    budget: dict[str, Any]
    datasets: dict[str, DatasetSpec]
    backbones: tuple[str, ...]
    methods: dict[str, dict[str, Any]]
    seeds: tuple[int, ...]
    # Grids whose finished run of the same cell with the same config hash is taken instead of training it again.
    reuse_runs_from: tuple[str, ...] = ()

    def cells(self, only: str | None = None) -> list[Cell]:
        """Every cell in a stable order (dataset, backbone, seed, method), those `cell_matches` ``only`` if given.

        Seeds are the outer loop over methods so that an interrupted grid has comparable methods for the first seeds
        rather than all seeds of the first method.
        """
        out = []
        for dataset in self.datasets:
            for backbone in self.backbones:
                for seed in self.seeds:
                    for method in self.methods:
                        cell = Cell(dataset, backbone, method, seed)
                        if cell_matches(cell.id, only):
                            out.append(cell)
        return out

    def overrides_for(self, cell: Cell, data_dir: str, output_dir: str) -> list[str]:
        """The dotted ``key=value`` overrides of one cell, in the order they apply."""
        layers: list[dict[str, Any]] = [
            self.overrides,
            self.budget,
            self.datasets[cell.dataset].overrides,
            {"model.backbone": cell.backbone},
            self.methods[cell.method],
            {"seed": cell.seed, "data.dir": data_dir, "output_dir": output_dir},
        ]
        # JSON is valid YAML, and load_config parses each value with config_loader.load_yaml: strings stay strings.
        return [f"{key}={json.dumps(value)}" for layer in layers for key, value in layer.items()]

    def config_files(self, cell: Cell) -> list[str]:
        return [*self.base, *self.datasets[cell.dataset].configs]

    def resolve(self, cell: Cell, data_dir: str, output_dir: str) -> Any:
        """The cell's validated `mdcns_tf.config.Config`; raises `ConfigError` (e.g. an unregistered sampler)."""
        from mdcns_tf.config_loader import load_config

        return load_config(self.config_files(cell), self.overrides_for(cell, data_dir, output_dir))


def _mapping(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise GridError(f"{where}: expected a mapping of dotted keys to values, got {raw!r}")
    return dict(raw)


def _paths(raw: Any, where: str, folder: str) -> tuple[str, ...]:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items or not all(isinstance(p, str) for p in items):
        raise GridError(f"{where}: expected a file name or a non-empty list of file names, got {raw!r}")
    out = tuple(os.path.normpath(os.path.join(folder, p)) for p in items)
    for path in out:
        if not os.path.exists(path):
            raise GridError(f"{where}: {path} does not exist")
    return out


def load_grid(path: str) -> GridSpec:
    """Parses and checks a grid file (file references, shapes, budget discipline); does not touch TensorFlow."""
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise GridError(f"grid file not found: {path}")
    with open(path) as f:
        raw = config_loader.load_yaml(f) or {}
    known = {
        "name",
        "description",
        "expected_minutes",
        "base",
        "overrides",
        "budget",
        "datasets",
        "backbones",
        "methods",
        "seeds",
        "reuse_runs_from",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise GridError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
    folder = os.path.dirname(path)
    name = _path_component(raw.get("name") or os.path.splitext(os.path.basename(path))[0], "name")
    budget = _mapping(raw.get("budget"), "budget")
    if "train.epochs" not in budget:
        raise GridError(f"{path}: budget must set train.epochs (one budget for every cell of the grid)")

    datasets = {}
    for ds_name, ds in _mapping(raw.get("datasets"), "datasets").items():
        where = f"datasets.{ds_name}"
        _path_component(ds_name, where)
        if not isinstance(ds, dict):
            raise GridError(f"{where}: expected a mapping")
        missing = [k for k in ("input", "input_format", "split", "config") if k not in ds]
        if missing:
            raise GridError(f"{where}: missing {missing}")
        extra = sorted(
            set(ds) - {"input", "input_format", "split", "config", "pipeline_args", "overrides", "split_file"}
        )
        if extra:
            raise GridError(f"{where}: unknown key(s) {extra}")
        datasets[ds_name] = DatasetSpec(
            name=ds_name,
            input=ds["input"],
            input_format=ds["input_format"],
            split=ds["split"],
            configs=_paths(ds["config"], f"{where}.config", folder),
            pipeline_args=tuple(str(a) for a in ds.get("pipeline_args") or ()),
            overrides=_mapping(ds.get("overrides"), f"{where}.overrides"),
            split_file=ds.get("split_file"),
        )
    if not datasets:
        raise GridError(f"{path}: no datasets")

    methods = {}
    for method, overrides in _mapping(raw.get("methods"), "methods").items():
        overrides = _mapping(overrides, f"methods.{method}")
        clash = sorted(set(overrides) & set(BUDGET_KEYS))
        if clash:
            raise GridError(f"methods.{method} sets budget key(s) {clash}: the budget is shared by the whole grid")
        methods[_path_component(method, f"methods.{method}")] = overrides
    if not methods:
        raise GridError(f"{path}: no methods")

    backbones = [_path_component(b, "backbones") for b in raw.get("backbones") or ["sasrec"]]
    seeds = raw.get("seeds") or [42]
    if not all(isinstance(s, int) for s in seeds):
        raise GridError(f"seeds: integers expected, got {seeds!r}")
    expected = raw.get("expected_minutes")
    reuse = raw.get("reuse_runs_from") or []
    if not isinstance(reuse, list):
        raise GridError(f"reuse_runs_from: a list of grid names expected, got {reuse!r}")
    for other in reuse:
        _path_component(other, "reuse_runs_from")
    if name in reuse:
        raise GridError(f"reuse_runs_from: a grid cannot reuse its own runs ({name!r})")
    return GridSpec(
        name=name,
        path=path,
        description=str(raw.get("description") or "").strip(),
        expected_minutes=float(expected) if expected is not None else None,
        base=_paths(raw.get("base") or "../base.yaml", "base", folder),
        overrides=_mapping(raw.get("overrides"), "overrides"),
        budget=budget,
        datasets=datasets,
        backbones=tuple(backbones),
        methods=methods,
        seeds=tuple(seeds),
        reuse_runs_from=tuple(reuse),
    )


def load_grid_or_report(path: str) -> GridSpec | None:
    """`load_grid` for a command line: the problem printed as one ``error:`` line, None instead of a traceback."""
    try:
        return load_grid(path)
    except GridError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
