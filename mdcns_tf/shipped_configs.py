"""The configs shipped inside the package (``mdcns_tf/configs``), found by name when a path does not exist.

In a checkout the top-level ``configs`` is a symlink to this folder, so every documented ``configs/...`` path works
from the repository root; an installed package has no such folder, so ``--config quickstart`` (or the documented
``configs/quickstart.yaml`` from any other folder) resolves to the copy installed with the package.
"""

from __future__ import annotations

import os

from mdcns_tf.config import ConfigError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
_PREFIX = "configs" + os.sep


def names() -> list[str]:
    """The shipped configs, as names `resolve` accepts (``quickstart``, ``datasets/beauty_loo``)."""
    found = []
    for folder, _, files in os.walk(CONFIG_DIR):
        for name in files:
            if name.endswith(".yaml"):
                found.append(os.path.relpath(os.path.join(folder, name), CONFIG_DIR)[: -len(".yaml")])
    return sorted(found)


def resolve(path: str) -> str:
    """``path`` itself when it exists, else the shipped config it names; raises `ConfigError` when neither exists.

    Accepted names: ``quickstart``, ``quickstart.yaml``, ``datasets/beauty_loo`` and ``configs/quickstart.yaml``
    (the documented path, from a folder that has no ``configs/``).
    """
    if os.path.exists(path):
        return path
    name = os.path.normpath(path)
    if name.startswith(_PREFIX):
        name = name[len(_PREFIX) :]
    if not os.path.isabs(name) and not name.startswith(os.pardir):
        for candidate in (name, name + ".yaml"):
            shipped = os.path.join(CONFIG_DIR, candidate)
            if os.path.isfile(shipped):
                return shipped
    top_level = ", ".join(n for n in names() if os.sep not in n)
    raise ConfigError(f"config file not found: {path} (neither a file nor a shipped config such as {top_level})")
