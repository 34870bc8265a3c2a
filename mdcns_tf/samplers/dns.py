"""DNS (Zhang et al. SIGIR 2013): per position, the highest-scoring of N uniform candidates from outside the
user's sequence. It is DNS(M,N) with M = 1, so it reuses `DNSMNSampler` and only fixes ``top_m``."""

from __future__ import annotations

import dataclasses

from mdcns_tf.samplers.dns_mn import DNSMNSampler


@dataclasses.dataclass
class DNSParams:
    """Config block ``sampler.dns``.

    pool_size  N, uniform candidates (outside the user's sequence) per negative; 100 matches the MDCNS pool so
               that DNS / DNS(M,N) / MDCNS compare at equal candidate budget. With ``train_positions: all`` the
               pool is drawn once per sequence and shared by its positions (each position ranks it with its own
               state); with ``last`` only one position trains, so this is a pool per sample.
    """

    pool_size: int = 100


class DNSSampler(DNSMNSampler):
    """DNS = DNS(1, N)."""

    Params = DNSParams

    @property
    def top_m(self) -> int:
        return 1
