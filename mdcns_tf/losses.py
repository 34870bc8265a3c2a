"""Losses over scores. Shapes: positive `(...)`, negative `(..., k)`; results per position `(...)`."""

from __future__ import annotations

import tensorflow as tf


def negatives_bce(negative: tf.Tensor, weights: tf.Tensor | None = None) -> tf.Tensor:
    """-sum_k w_k log(1 - sig(s-_k)) `(..., k)` -> `(...)`; softplus keeps it finite for large scores."""
    negative_terms = tf.math.softplus(negative)
    if weights is not None:
        negative_terms *= weights
    return tf.reduce_sum(negative_terms, axis=-1)


def bce(positive: tf.Tensor, negative: tf.Tensor, weights: tf.Tensor | None = None) -> tf.Tensor:
    """-log sig(s+) - sum_k w_k log(1 - sig(s-_k))."""
    return tf.math.softplus(-positive) + negatives_bce(negative, weights)


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


# gSASRec's calibration default (Petrov and Macdonald, RecSys 2023; asash/gsasrec `gbce_t`).
GBCE_T = 0.75


def gbce_beta(num_negatives: int, n_items: int, t: float = GBCE_T) -> float:
    """gSASRec's positive-term exponent beta = alpha (t (1 - 1/alpha) + 1/alpha), alpha = k / (n_items - 1) the
    negative sampling rate: t = 0 gives beta = 1 (plain BCE); t = 1 gives beta = alpha, the exponent under which
    the sigmoid of a model trained on k sampled negatives is calibrated to the full catalogue."""
    alpha = num_negatives / max(n_items - 1, 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def gbce(positive: tf.Tensor, negative: tf.Tensor, weights: tf.Tensor | None = None, beta: float = 1.0) -> tf.Tensor:
    """Generalised BCE (gSASRec): -beta log sig(s+) - sum_k w_k log(1 - sig(s-_k)), i.e. BCE with the positive's
    probability raised to beta (`gbce_beta`); beta < 1 stops k negatives from over-confidently pushing scores down.
    gSASRec writes it as BCE on a transformed positive logit; -log sig(logit(p^beta)) = -beta log p is the same."""
    return beta * tf.math.softplus(-positive) + negatives_bce(negative, weights)


PAIRWISE = {"bce": bce, "bpr": bpr, "sampled_softmax": sampled_softmax, "gbce": gbce}


def pairwise_loss(
    name: str,
    positive: tf.Tensor,
    negative: tf.Tensor,
    weights: tf.Tensor | None = None,
    n_items: int | None = None,
    gbce_t: float = GBCE_T,
) -> tf.Tensor:
    """Per-position loss of ``name`` for positive `(...)` and negative `(..., k)` scores. ``gbce`` calibrates for
    k uniform negatives out of ``n_items``."""
    if name == "gbce":
        if n_items is None:
            raise ValueError("loss 'gbce' needs the catalogue size (n_items) for its sampling rate")
        return gbce(positive, negative, weights, gbce_beta(int(negative.shape[-1]), n_items, gbce_t))
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
