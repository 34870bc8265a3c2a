"""DNS(M,N) ("DNS+", Shi et al. WWW 2023): per position, one negative drawn uniformly among the top-M of N
uniform candidates. DNS (`dns.py`) is DNS(1,N) and subclasses this; the mechanism (pool, scores, top-M pick)
lives in `candidates.pooled_hard_negatives`, shared with MDCNS.
"""

from __future__ import annotations

import dataclasses

from mdcns_tf.samplers.base import Negatives, NegativeSampler, SamplingContext
from mdcns_tf.samplers.candidates import POOL_SCOPES, pooled_hard_negatives


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


class DNSMNSampler(NegativeSampler):
    Params = DNSMNParams

    def __init__(self, params, n_items: int, *args, **kwargs) -> None:
        super().__init__(params, n_items, *args, **kwargs)
        if params.pool_size < 1 or not 1 <= self.top_m <= params.pool_size:
            raise ValueError(f"{self.name}: need 1 <= top_m <= pool_size, got {self.top_m} and {params.pool_size}")
        if params.pool_scope not in POOL_SCOPES:
            raise ValueError(f"{self.name}: pool_scope must be one of {POOL_SCOPES}, got {params.pool_scope!r}")

    @property
    def top_m(self) -> int:
        return self.params.top_m

    def sample(self, context: SamplingContext) -> Negatives:
        ids = pooled_hard_negatives(
            self.generator,
            context.states,
            context.item_embeddings,
            context.exclusion_ids,
            self.n_items,
            self.params.pool_size,
            self.top_m,
            self.num_negatives,
            self.params.pool_scope,
        )
        return Negatives(ids=ids)
