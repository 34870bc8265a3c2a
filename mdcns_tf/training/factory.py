"""Building what a config describes: the trainer model and the evaluation input, and reading its metrics.

Shared by the entry points (`mdcns_tf.train`; `mdcns_tf.evaluate` and `mdcns_tf.export` through
`mdcns_tf.training.finished_run`) and the benchmarks, so none of them imports another entry point.
"""

from __future__ import annotations

import tensorflow as tf

import mdcns_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from mdcns_tf import data
from mdcns_tf.backbones import build_backbone
from mdcns_tf.config import Config
from mdcns_tf.features import Metadata
from mdcns_tf.samplers import build_sampler
from mdcns_tf.training import optimizers
from mdcns_tf.training.retrieval_model import RetrievalModel
from mdcns_tf.training.single_model import SequentialRecommender


def eval_split(config: Config, split: str) -> tf.data.Dataset:
    cfg = config.data
    return data.eval_dataset(
        cfg.dir, split, cfg.max_len, cfg.eval_batch_size, cfg.max_eval_users, config.eval.bucket_by_length, cfg.autotune
    )


def resolved_reduction(config: Config) -> str:
    """``loss.reduction`` with ``auto`` resolved: ``epoch`` under length buckets, ``batch`` otherwise."""
    if config.loss.reduction != "auto":
        return config.loss.reduction
    return "epoch" if config.data.bucket_by_length else "batch"


def build_model(config: Config, metadata: Metadata) -> RetrievalModel:
    """The trainer named by ``config.trainer``, built for the dataset described by ``metadata``."""
    if config.trainer == "mdcns":
        from mdcns_tf.training.mdcns_model import build_mdcns_model

        return build_mdcns_model(config, metadata)
    encoder = build_backbone(config.model, metadata.n_items, config.data.max_len)
    sampler = None
    if config.loss.name != "softmax":
        sampler = build_sampler(config, metadata.n_items, metadata.n_users, metadata.item_counts)
    return SequentialRecommender(
        encoder,
        sampler,
        config.loss.name,
        lazy_updates=optimizers.lazy_updates(config.train.sparse_updates, metadata.n_items),
        ks=config.eval.ks,
        eval_chunk_size=config.eval.item_chunk_size,
        name="single",
    )


def prepare_for_training(model: RetrievalModel, config: Config) -> None:
    """What a built model needs before `fit`: its sampler's view of the training sequences (e.g. GNNO's item
    graph), its variables, and the config's Adam (and ``train.jit_compile``): Keras's, or with lazy updates
    (``train.sparse_updates``, resolved in `build_model`) a `optimizers.LazyAdam`. Under a strategy, call it in the
    scope."""
    cfg = config.data
    sampler = getattr(model, "sampler", None)
    if sampler is not None and sampler.needs_train_sequences:
        sampler.prepare(data.train_sequences(cfg.dir, cfg.max_train_sequences))
    model.build_for_input(cfg.max_len)
    model.compile(
        optimizer=optimizers.adam(
            config.train.learning_rate, config.train.weight_decay, lazy=getattr(model, "lazy_updates", False)
        ),
        jit_compile=config.train.jit_compile,
    )


def evaluate(model: RetrievalModel, dataset: tf.data.Dataset) -> dict[str, float]:
    """Full-ranking metrics of ``dataset``, read from the model's trackers after `evaluate`: the values
    `evaluate` returns are summed over workers under `MultiWorkerMirroredStrategy` (see `WorkerMeanLogs`)."""
    model.evaluate(dataset, verbose=0)
    return named_metrics({t.name: float(t.result()) for t in model.ranking_trackers.values()})


def named_metrics(results: dict[str, float]) -> dict[str, float]:
    """Keras names (``ndcg_10``) back to report names (``ndcg@10``)."""
    out = {}
    for name, value in results.items():
        if name == "loss":
            continue
        out[name.replace("_", "@") if name != "mrr" else name] = float(value)
    return out
