"""A run's output folder and its record.

Owns which run a folder holds and what it may resume (`state`: the config hash kept with the backup and the best
weights), the run's ``metrics.json`` (`metrics_file`), and what produced a result (`provenance`: config hash, data
fingerprint, code, libraries, machine).

May import: the core modules and the components (`metrics`, `config_loader`). Imported by `training`, the entry
points and benchmarks.
"""
