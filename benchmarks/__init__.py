"""Benchmarks: the quality grid (`benchmarks.quality`) and the speed measurements (`benchmarks.speed`).

Results (JSON, Markdown, PNG) land in ``benchmarks/results/`` with the command, the machine and the versions next
to every number. See ``benchmarks/README.md``.
"""
