"""DNS (Zhang et al. SIGIR 2013): per position, the highest-scoring of N uniform candidates from outside the
user's sequence. It is DNS(M,N) with M = 1, so it reuses `DNSMNSampler` and only fixes ``top_m``."""

from __future__ import annotations

import dataclasses

from mdcns_tf.samplers.dns_mn import DNSMNSampler


@dataclasses.dataclass
class DNSParams:
    """Config block ``sampler.dns``.

    pool_size  N, uniform candidates (outside the user's sequence) per negative; 100 matches the MDCNS pool so
               that DNS / DNS(M,N) / MDCNS compare at equal candidate budget.
    pool_scope ``sequence`` (one pool per sequence, shared by its positions) or ``position`` (a fresh pool for
               every position, so that positions stop picking the same hardest item); as ``mdcns.pool_scope``
               and DNS(M,N)'s option of the same name.
    """

    pool_size: int = 100
    pool_scope: str = "sequence"


class DNSSampler(DNSMNSampler):
    """DNS = DNS(1, N)."""

    Params = DNSParams

    @property
    def top_m(self) -> int:
        return 1
