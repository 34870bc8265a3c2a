"""DNS(M,N) ("DNS+", Shi et al. WWW 2023): per position, one negative drawn uniformly among the top-M of N
uniform candidates. DNS (`dns.py`) is DNS(1,N) and subclasses this; the mechanism (checks, pool, scores, top-M
pick) lives in `candidates.PooledHardNegativeSampler` and `candidates.pooled_hard_negatives`, shared with MixGCF and
MDCNS.
"""

from __future__ import annotations

import dataclasses

from mdcns_tf.samplers.base import Negatives, SamplingContext
from mdcns_tf.samplers.candidates import PooledHardNegativeSampler


@dataclasses.dataclass
class DNSMNParams:
    """Config block ``sampler.dns_mn``.

    pool_size  N, uniform candidates (outside the user's sequence) per negative; 100 matches the MDCNS pool so
               that DNS / DNS(M,N) / MDCNS compare at equal candidate budget.
    top_m      M, the pick is uniform among the M highest-scoring candidates (M = 1 is DNS). 5 is in the
               range DNS+ and MDCNS report (1..5); M trades hardness against false negatives.
    pool_scope as ``mdcns.pool_scope``: ``sequence`` draws one pool per sequence, shared by its positions (each
               ranks it with its own state; with ``train_positions: last`` only one position trains, so this is
               a pool per sample); ``position`` draws a fresh pool for every position, as the authors' prefix
               samples each draw their own: positions stop picking the same hardest item, for seq_len times the
               scored candidates.
    """

    pool_size: int = 100
    top_m: int = 5
    pool_scope: str = "sequence"


class DNSMNSampler(PooledHardNegativeSampler):
    """The picked candidates are the negatives."""

    Params = DNSMNParams

    def sample(self, context: SamplingContext) -> Negatives:
        return Negatives(ids=self.hard_negative_ids(context))
