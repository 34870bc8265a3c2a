"""Uniform negatives (RNS): items drawn uniformly from those not in the user's sequence."""

from __future__ import annotations

import tensorflow as tf

from mdcns_tf.samplers.base import Negatives, NegativeSampler, SamplingContext
from mdcns_tf.samplers.candidates import sample_excluding


class UniformSampler(NegativeSampler):
    def sample(self, context: SamplingContext) -> Negatives:
        batch, seq_len = tf.shape(context.target_ids)[0], tf.shape(context.target_ids)[1]
        ids = sample_excluding(self.generator, context.exclusion_ids, self.n_items, seq_len * self.num_negatives)
        return Negatives(ids=tf.reshape(ids, [batch, seq_len, self.num_negatives]))
