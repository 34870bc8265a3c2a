"""Losses over scores. Shapes: positive `(...)`, negative `(..., k)`; results per position `(...)`."""

from __future__ import annotations

import tensorflow as tf


def bce(positive: tf.Tensor, negative: tf.Tensor, weights: tf.Tensor | None = None) -> tf.Tensor:
    """-log sig(s+) - sum_k w_k log(1 - sig(s-_k)); softplus keeps it finite for large scores."""
    negative_terms = tf.math.softplus(negative)
    if weights is not None:
        negative_terms *= weights
    return tf.math.softplus(-positive) + tf.reduce_sum(negative_terms, axis=-1)


def bpr(positive: tf.Tensor, negative: tf.Tensor, weights: tf.Tensor | None = None) -> tf.Tensor:
    """mean_k w_k . -log sig(s+ - s-_k)."""
    terms = tf.math.softplus(negative - positive[..., tf.newaxis])
    if weights is not None:
        terms *= weights
    return tf.reduce_mean(terms, axis=-1)


def sampled_softmax(positive: tf.Tensor, negative: tf.Tensor, weights: tf.Tensor | None = None) -> tf.Tensor:
    """Cross-entropy of the positive against itself plus the k negatives (weights ignored)."""
    logits = tf.concat([positive[..., tf.newaxis], negative], axis=-1)
    return tf.reduce_logsumexp(logits, axis=-1) - positive


PAIRWISE = {"bce": bce, "bpr": bpr, "sampled_softmax": sampled_softmax}


def pairwise_loss(name: str, positive: tf.Tensor, negative: tf.Tensor, weights: tf.Tensor | None = None) -> tf.Tensor:
    try:
        return PAIRWISE[name](positive, negative, weights)
    except KeyError:
        raise ValueError(f"loss {name!r} does not take sampled negatives; expected one of {sorted(PAIRWISE)}") from None


def full_softmax(states: tf.Tensor, item_embeddings: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """Full softmax cross-entropy over all items (the strong reference, no sampling).

    states `(n, dim)`, item_embeddings `(n_items + 1, dim)`, targets `(n,)` -> `(n,)`. Padding (index 0) is
    excluded from the partition function.
    """
    logits = tf.matmul(states, item_embeddings, transpose_b=True)
    logits = tf.concat([tf.fill([tf.shape(logits)[0], 1], tf.constant(-1e9, logits.dtype)), logits[:, 1:]], axis=1)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)


def kl_distillation(teacher_logits: tf.Tensor, student_logits: tf.Tensor, tau: float) -> tf.Tensor:
    """tau^2 . KL(softmax(teacher / tau) || softmax(student / tau)) over the last axis, teacher without gradient.

    logits `(..., n)` -> `(...)`.
    """
    teacher_log_probs = tf.nn.log_softmax(tf.stop_gradient(teacher_logits) / tau, axis=-1)
    student_log_probs = tf.nn.log_softmax(student_logits / tau, axis=-1)
    kl = tf.reduce_sum(tf.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)
    return (tau**2) * kl
