"""The one registry of negative samplers for single-model training, chosen by ``sampler.name``.

A new sampler is one file in this folder (a `NegativeSampler` with its ``Params``) plus one line in `SAMPLERS`.
May import: the core modules (`mdcns_tf.registry`, `mdcns_tf.batch`) and `mdcns_tf.losses`.
"""

from __future__ import annotations

from typing import Any

from mdcns_tf.registry import lookup, options_from_block
from mdcns_tf.samplers.adasir import AdaSIRSampler
from mdcns_tf.samplers.autosample import AutoSampleSampler
from mdcns_tf.samplers.base import Negatives, NegativeSampler, SamplingContext
from mdcns_tf.samplers.dns import DNSSampler
from mdcns_tf.samplers.dns_mn import DNSMNSampler
from mdcns_tf.samplers.gdns import GDNSSampler
from mdcns_tf.samplers.gnno import GNNOSampler
from mdcns_tf.samplers.mixgcf import MixGCFPlusSampler, MixGCFSampler
from mdcns_tf.samplers.popularity import PopularitySampler
from mdcns_tf.samplers.srns import SRNSSampler
from mdcns_tf.samplers.uniform import UniformSampler

SAMPLERS: dict[str, type[NegativeSampler]] = {
    "uniform": UniformSampler,
    "popularity": PopularitySampler,
    "dns": DNSSampler,
    "dns_mn": DNSMNSampler,
    "srns": SRNSSampler,
    "gdns": GDNSSampler,
    "autosample": AutoSampleSampler,
    "mixgcf": MixGCFSampler,
    "mixgcf_plus": MixGCFPlusSampler,
    "adasir": AdaSIRSampler,
    "gnno": GNNOSampler,
}


def get_sampler_class(name: str) -> type[NegativeSampler]:
    return lookup(SAMPLERS, name, "sampler")


def sampler_params(name: str, block: dict[str, Any] | None) -> Any:
    """Validates the config block ``sampler.<name>`` against the sampler's ``Params`` dataclass."""
    return options_from_block(get_sampler_class(name).Params, block, f"sampler.{name}")


def build_sampler(config: Any, n_items: int, n_users: int, item_counts: list[int]) -> NegativeSampler:
    """Builds ``config.sampler.name`` from a full `mdcns_tf.config.Config`."""
    name = config.sampler.name
    cls = get_sampler_class(name)
    return cls(
        params=sampler_params(name, config.sampler.blocks.get(name)),
        n_items=n_items,
        n_users=n_users,
        num_negatives=config.sampler.num_negatives,
        item_counts=item_counts,
        loss_name=config.loss.name,
        seed=config.seed,
        name=name,
        gbce_t=config.loss.gbce_t,
        embedding_dim=config.model.dim,
        **({"sampler_class": get_sampler_class, "sampler_params": sampler_params} if cls.composes_samplers else {}),
    )


__all__ = ["SAMPLERS", "NegativeSampler", "Negatives", "SamplingContext", "build_sampler", "get_sampler_class"]
