"""Benchmarks: the quality grid (`benchmarks.quality`) and the speed measurements (`benchmarks.speed`).

Results (JSON, Markdown, PNG) land in ``benchmarks/results/`` with the command, the machine and the versions next
to every number. See ``benchmarks/README.md``.
"""

import os

# TFRS (imported by some benchmarks) refuses Keras 3: select tf-keras before any submodule imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
