"""Shim so Beam can stage this project on remote workers with ``--setup_file ./setup.py``.

All metadata (name, version, dependencies, packages) lives in ``pyproject.toml``. Beam 2.77 builds the staged
sdist with ``python -m build --no-isolation`` when the ``build`` package is installed and otherwise falls back to
``python setup.py sdist``, a fallback that exists only for a ``setup.py``: this file keeps staging working without
``build``.
"""

from setuptools import setup

setup()
