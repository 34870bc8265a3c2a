"""The one registry of negative samplers for single-model training, chosen by ``sampler.name``."""

from __future__ import annotations

import dataclasses
from typing import Any

from mdcns_tf.samplers.autosample import AutoSampleSampler
from mdcns_tf.samplers.base import Negatives, NegativeSampler, SamplingContext
from mdcns_tf.samplers.dns import DNSSampler
from mdcns_tf.samplers.dns_mn import DNSMNSampler
from mdcns_tf.samplers.gdns import GDNSSampler
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
}


def get_sampler_class(name: str) -> type[NegativeSampler]:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; registered samplers: {sorted(SAMPLERS)}") from None


def sampler_params(name: str, block: dict[str, Any] | None) -> Any:
    """Validates the config block ``sampler.<name>`` against the sampler's ``Params`` dataclass."""
    params_cls = get_sampler_class(name).Params
    block = dict(block or {})
    known = {f.name for f in dataclasses.fields(params_cls)}
    unknown = sorted(set(block) - known)
    if unknown:
        raise ValueError(f"sampler.{name}: unknown parameter(s) {unknown}; known: {sorted(known)}")
    return params_cls(**block)


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
    )


__all__ = ["SAMPLERS", "NegativeSampler", "Negatives", "SamplingContext", "build_sampler", "get_sampler_class"]
