"""The config schema: one typed dataclass per block of a YAML config, and the error every config problem raises.

A field's annotation is its contract: ``Literal[...]`` lists the values a key accepts, and the loader
(`mdcns_tf.config_loader`, which reads YAML and ``--set`` overrides) checks every value against these annotations,
so a choice is written once, here. Ranges and cross-field rules are checked there too (``validate``). This module
imports nothing from the package: every layer may read the schema.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal


class ConfigError(ValueError):
    """A config problem, reported with the offending key."""


@dataclasses.dataclass
class DataConfig:
    dir: str = "data/quickstart"
    max_len: int = 50
    # "all": every position of a training sequence predicts its next item; "last": prefix-augmented samples,
    # only the last position trained (the MDCNS authors' code).
    train_positions: Literal["all", "last"] = "all"
    batch_size: int = 256
    eval_batch_size: int = 512
    shuffle_buffer: int = 100_000
    # Batch training sequences of similar length and trim padding columns (see data.train_dataset): ~3x faster on
    # short-sequence data. With a per-batch mean loss, batches of short sequences would weigh as much as batches of
    # long ones (validation NDCG@20 .035 vs .041 after 21 epochs on Beauty LOO); `loss.reduction: auto` therefore
    # switches to the epoch reduction under buckets. Off here, on in configs/training/fast.yaml.
    bucket_by_length: bool = False
    # tf.data's autotuning of parallelism and buffers. Off: ending a pass over an autotuned pipeline can block until
    # its autotune thread next wakes (its period doubles from 10 ms: at 10.2, 20.5, 41 s), which padded Beauty epochs
    # of 6 s to 10.3 s and of 17 s to 20.6 s (TF 2.21, `benchmarks.epoch_time`); without it an AUTOTUNE map runs at
    # tf.data's initial parallelism, min(16, cores), enough for these light per-element maps. On for heavy inputs.
    autotune: bool = False
    # Limits for quick runs and tests: 0 means everything.
    max_train_sequences: int = 0
    max_eval_users: int = 0
    # A file of user keys, one a line: train on these users' sequences only (`mdcns_tf.data.train_user_indices`;
    # validation and test keep every user). A warm start's increment: the users whose history grew since the parent's
    # data. "": every user.
    train_users: str = ""


@dataclasses.dataclass
class ModelConfig:
    backbone: str = "sasrec"
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.2
    # Backbone-specific options, one block per backbone name: {"mamba4rec": {"d_state": 16}}.
    options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class SamplerConfig:
    """``name`` picks a registered sampler; its hyperparameters live in a block named after it."""

    name: str = "uniform"
    num_negatives: int = 1
    blocks: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class LossConfig:
    # bce | bpr | softmax (full softmax cross-entropy over all items, no sampling) | sampled_softmax (the positive
    # against its sampled negatives; under MDCNS against the whole candidate pool, the view picks weighted up) |
    # gbce (gSASRec's generalised BCE, calibrated for the sampling rate)
    name: Literal["bce", "bpr", "softmax", "sampled_softmax", "gbce"] = "bce"
    # gBCE calibration t in [0, 1]: 0 is plain BCE, 1 fully calibrated to the catalogue (gSASRec's default 0.75)
    gbce_t: float = 0.75
    # How a batch's per-position losses become the step's loss. "batch": their mean over the batch's trained
    # positions. "epoch": their sum divided by the mean number of trained positions a batch holds over the epoch, so
    # every trained position weighs the same whatever batch it lands in (with `data.bucket_by_length`, "batch"
    # gives a batch of short sequences the weight of a batch of long ones). "auto": "epoch" with length buckets,
    # "batch" without (where the two agree in expectation).
    reduction: Literal["auto", "batch", "epoch"] = "auto"


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 200
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10
    # Early stopping / model selection monitor (validation metric, maximised).
    monitor: str = "ndcg@20"
    steps_per_epoch: int = 0  # 0: one pass over the training data
    # Wall-clock budget: training stops after the first epoch that ends past it (validation and the callbacks
    # between epochs included; a resumed run spends what is left). 0: none. Equal-time comparisons
    # (configs/benchmarks/large_catalog.yaml) budget by it.
    max_minutes: float = 0.0
    validation_freq: int = 1
    # XLA-compiles the whole step: full softmax only (every sampler draws by rejection, a data-dependent shape;
    # `config_loader` refuses the others).
    jit_compile: bool = False
    # How item tables are updated (mdcns_tf/training/optimizers.py). "dense": Keras's Adam, which moves every row of
    # a table every step, and a dense table gradient from MDCNS's fused pool scoring (the code before this key).
    # "lazy": table gradients kept sparse and a lazy Adam that updates only the rows a step touched (untouched rows'
    # moments are not decayed: TF1's LazyAdamOptimizer). "auto": lazy from optimizers.LAZY_MIN_ROWS table rows on.
    sparse_updates: Literal["auto", "dense", "lazy"] = "auto"
    distribute: Literal["default", "mirrored", "multi_worker"] = "default"
    verbose: Literal[0, 1, 2] = 2  # Keras fit verbosity: 1 progress bar, 2 one line per epoch
    tensorboard: bool = True
    backup_and_restore: bool = True
    # A finished run's output_dir: its selected weights (best/weights) start this run, item-table rows mapped by item
    # key between the two data folders' vocabularies, new items initialised as in a fresh run, optimizer state not
    # carried (mdcns_tf/training/warm_start.py). "": a fresh start.
    warm_start: str = ""
    # Shrink and perturb (Ash & Adams, NeurIPS 2020, "On Warm-Starting Neural Network Training"): each carried weight
    # starts at shrink x the parent's + perturb x this run's fresh initial value (new item rows: fresh). 1 / 0: a copy.
    warm_start_shrink: float = 1.0
    warm_start_perturb: float = 0.0
    # Rows of items the parent did not have. "fresh": this run's random init. "context": a new item that is a next-item
    # target in this run's training data gets e_j = m_j L / |m_j|^2, m_j the mean warm-started state before it, L the
    # mean positive logit of the parent's items (mdcns_tf/training/new_item_rows.py). Needs train.warm_start.
    warm_start_new_items: Literal["fresh", "context"] = "fresh"


@dataclasses.dataclass
class EvalConfig:
    ks: list = dataclasses.field(default_factory=lambda: [5, 10, 20])
    # Batch evaluation users by history length and trim padding columns (data.eval_dataset): the same metrics up to
    # float rounding, several times less encoder work on short histories (Amazon: ~8 items against max_len 50).
    bucket_by_length: bool = True
    # Evaluate the test split at the end (best weights restored).
    test: bool = True
    # Full ranking scores at most this many items at a time (metrics.target_ranks): memory is eval_batch_size x chunk
    # floats, so a 1M-item catalogue never needs a (batch, n_items) score matrix. Below this cap the scan takes
    # cache-sized blocks of about 1M scores (2,048 items for 512 users); the ranks do not depend on either.
    item_chunk_size: int = 65_536
    # Model selection (early stopping, best epoch) on a fixed sample of this many validation users, drawn from the
    # run's seed (data.sample_users: the same users every epoch and after a resume); 0 = every validation user. The
    # final validation metrics in metrics.json are on every user either way, the test split is always evaluated whole.
    valid_users: int = 0


@dataclasses.dataclass
class ExportConfig:
    enabled: bool = True
    model_name: str = "mdcns"
    top_k: int = 20
    version: int = 0  # 0: next free version number
    # The item index of serving_default / serve_keys. "exact": float32 brute force over the whole table.
    # "bfloat16": brute force over a bfloat16 copy of the table (half the bytes a query reads), its best `rescore`
    # candidates (plus one per history item) re-scored exactly in float32 (mdcns_tf/savedmodel/index.py).
    index: Literal["exact", "bfloat16"] = "exact"
    rescore: int = 0  # bfloat16 index only: candidates re-scored exactly per query; 0 = 4 x top_k


@dataclasses.dataclass
class MDCNSConfig:
    """docs/design.md, section "MDCNS" (each key with its symbol). Used when ``trainer: mdcns``."""

    peer_backbone: str = "gru4rec"
    pool_size: int = 100
    # "sequence": one pool a sequence, shared by its positions (cheapest); "position": a fresh pool for every
    # position, as the authors' prefix samples each draw their own (more distinct hard negatives per sequence).
    pool_scope: Literal["sequence", "position"] = "sequence"
    # Where a pool per position draws from: "catalogue" (every item, each draw independent), or "step": a shared
    # draw of batch_size x pool_size items a step (the rows a pool per sequence touches), from which each position
    # draws its own pool, so a step touches and updates those rows, not most of a large table. Each candidate is
    # still marginally a draw from the catalogue outside the history. "auto": step when the item tables get lazy
    # updates (train.sparse_updates; large catalogues), else catalogue.
    pool_source: Literal["auto", "catalogue", "step"] = "auto"
    # Candidates drawn with probability proportional to (training count + 1)^pool_alpha among items outside the
    # sequence: 0 = uniform (the paper); 0.75 = word2vec's unigram^0.75, more popular items in the pool. With
    # loss.name sampled_softmax the pool's scores get the logQ correction (minus log q(item)).
    pool_alpha: float = 0.0
    top_m: int = 1
    beta_d: float = 1.0
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    tau: float = 1.0
    mu: float = 1.0
    # How the batch is reduced in the distillation loss: "mean" (paper) or "sum" (authors' code).
    distill_reduction: Literal["mean", "sum"] = "mean"
    # Teacher: "mean" or "sum" consensus of self and peer (weight-free), "ema" (EMA copy of the self model),
    # or "frozen" (weights loaded from teacher_checkpoint and never trained).
    teacher: Literal["mean", "sum", "ema", "frozen"] = "mean"
    teacher_ema_decay: float = 0.999
    teacher_checkpoint: str = ""
    peer_learning_rate: float = 0.0  # 0: same as train.learning_rate
    no_distillation: bool = False
    no_divergence: bool = False
    self_view_only: bool = False


@dataclasses.dataclass
class Config:
    seed: int = 42
    output_dir: str = "runs/quickstart"
    trainer: Literal["single", "mdcns"] = "single"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    mdcns: MDCNSConfig = dataclasses.field(default_factory=MDCNSConfig)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        blocks = out["sampler"].pop("blocks")
        out["sampler"].update(blocks)
        return out


# A model name becomes a folder of <output_dir>/export and the name TF Serving serves: one path component, so that
# "../x" or "a/b" cannot write outside the export folder (and no hidden or option-like name).
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def is_safe_model_name(name: str) -> bool:
    """Whether ``name`` is one safe path component (see ``_MODEL_NAME``)."""
    return isinstance(name, str) and _MODEL_NAME.fullmatch(name) is not None
