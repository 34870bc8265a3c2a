"""The mechanism behind the backbone and sampler registries: lookup by name, and typed option blocks."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def lookup(registry: dict[str, T], name: str, kind: str) -> T:
    """``registry[name]``, or a `ValueError` that lists the registered names."""
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r}; registered {kind}s: {sorted(registry)}") from None


def options_from_block(options_cls: type, block: dict[str, Any] | None, where: str) -> Any:
    """Builds the dataclass ``options_cls`` from a config block, naming ``where`` and the known keys on a typo."""
    block = dict(block or {})
    known = {f.name for f in dataclasses.fields(options_cls)}
    unknown = sorted(set(block) - known)
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; known: {sorted(known)}")
    try:
        return options_cls(**block)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None
