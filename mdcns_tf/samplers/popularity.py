"""Popularity negatives: item i drawn with probability proportional to count(i)^alpha among items not in the
user's sequence (word2vec's unigram^0.75 distribution), with an optional logQ correction."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from mdcns_tf.samplers.base import Negatives, NegativeSampler, SamplingContext
from mdcns_tf.samplers.candidates import draw_cdf, sample_excluding


@dataclasses.dataclass
class PopularityParams:
    """Config block ``sampler.popularity``.

    alpha            exponent on the training interaction count: 1 = raw popularity, 0 = uniform.
    count_offset     added to every count before the power. 0 (the definition) never draws an item without a
                     training interaction; 1 gives such items a small chance (useful under the user split, where
                     items seen only by held-out users have count 0).
    logq_correction  subtract log(k . q(j)) from each negative's score in the loss (Yi et al. 2019): with sampled
                     softmax this makes the negatives an unbiased estimate of the full softmax's partition
                     function. q is the catalogue-wide distribution, not renormalised per user (the user's
                     history is a negligible share of the mass, and renormalising would cost a gather per draw).
    """

    alpha: float = 0.75
    count_offset: float = 0.0
    logq_correction: bool = False


def popularity_log_weights(
    item_counts: list[int], n_items: int, alpha: float, count_offset: float = 0.0, owner: str = "popularity"
) -> tuple[tf.Tensor, tf.Tensor]:
    """``(count + count_offset)^alpha`` over items 1..n_items as (log-weights float64 `(n_items + 1,)` for
    `sample_excluding`, log-probabilities float32 `(n_items + 1,)` for a logQ correction); index 0 (padding) and
    items of weight 0 get -inf. Constants, not variables: they follow from the data and need no checkpoint."""
    counts = np.asarray(item_counts, dtype=np.float64)
    if counts.shape != (n_items + 1,):
        raise ValueError(f"{owner}: item_counts has {counts.shape[0]} entries, expected n_items + 1")
    weights = (counts[1:] + count_offset) ** alpha
    weights[counts[1:] + count_offset <= 0] = 0.0
    if not weights.sum() > 0:
        raise ValueError(f"{owner}: every item has weight 0; give items without training counts an offset")
    log_weights = np.full(n_items + 1, -np.inf)
    with np.errstate(divide="ignore"):
        log_weights[1:] = np.log(weights)
    return tf.constant(log_weights, tf.float64), tf.constant(log_weights - math.log(weights.sum()), tf.float32)


class PopularitySampler(NegativeSampler):
    Params = PopularityParams

    def __init__(self, params: PopularityParams, n_items: int, *args, **kwargs) -> None:
        super().__init__(params, n_items, *args, **kwargs)
        self.log_weights, self.log_probs = popularity_log_weights(
            self.item_counts, n_items, params.alpha, params.count_offset
        )
        self.cdf = draw_cdf(self.log_weights)  # once: O(n_items)

    def sample(self, context: SamplingContext) -> Negatives:
        batch, seq_len = tf.shape(context.target_ids)[0], tf.shape(context.target_ids)[1]
        k = self.num_negatives
        ids = sample_excluding(self.generator, context.exclusion_ids, self.n_items, seq_len * k, probs_cdf=self.cdf)
        ids = tf.reshape(ids, [batch, seq_len, k])
        logq = None
        if self.params.logq_correction:
            logq = tf.gather(self.log_probs, ids) + math.log(k)
        return Negatives(ids=ids, logq=logq)
