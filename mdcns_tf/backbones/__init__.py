"""The one registry of sequence encoders: (B, L) item ids -> (B, L, d) states.

A new backbone is one file in this folder (a `Backbone` with its ``Options``) plus one line in `BACKBONES`.
May import: the core modules (`mdcns_tf.registry`) only.
"""

from __future__ import annotations

from typing import Any

from mdcns_tf.backbones.base import Backbone
from mdcns_tf.backbones.fmlprec import FMLPRec
from mdcns_tf.backbones.gru4rec import GRU4Rec
from mdcns_tf.backbones.linrec import LinRec
from mdcns_tf.backbones.mamba4rec import Mamba4Rec
from mdcns_tf.backbones.sasrec import SASRec
from mdcns_tf.registry import lookup, options_from_block

BACKBONES: dict[str, type[Backbone]] = {
    "sasrec": SASRec,
    "gru4rec": GRU4Rec,
    "fmlprec": FMLPRec,
    "linrec": LinRec,
    "mamba4rec": Mamba4Rec,
}


def get_backbone_class(name: str) -> type[Backbone]:
    return lookup(BACKBONES, name, "backbone")


def backbone_options(name: str, block: dict[str, Any] | None) -> Any:
    """Validates the config block ``model.options.<name>`` against the backbone's ``Options`` dataclass."""
    return options_from_block(get_backbone_class(name).Options, block, f"model.options.{name}")


def build_backbone(model_config: Any, n_items: int, max_len: int, name: str | None = None) -> Backbone:
    """Builds the backbone ``name`` (default ``model_config.backbone``) with the shared sizes of ``model_config``."""
    name = name or model_config.backbone
    cls = get_backbone_class(name)
    return cls(
        n_items=n_items,
        max_len=max_len,
        dim=model_config.dim,
        num_layers=model_config.num_layers,
        num_heads=model_config.num_heads,
        dropout=model_config.dropout,
        options=backbone_options(name, model_config.options.get(name)),
        name=name,
    )


__all__ = ["BACKBONES", "Backbone", "backbone_options", "build_backbone", "get_backbone_class"]
