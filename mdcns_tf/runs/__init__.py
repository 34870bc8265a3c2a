"""A run's output folder and its record.

Owns which run a folder holds and what it may resume (`state`: the run's identity, kept with the backup and the
best weights), what a run may delete or replace there and the lock that keeps two runs out of one folder
(`ownership`), the run's ``metrics.json`` (`metrics_file`), what produced a result (`provenance`: config hash, data
fingerprint, code, libraries, machine) and the checks that a finished run's records and data belong together
(`lineage`).

May import: the core modules and the components (`metrics`, `config_loader`). Imported by `training`, the entry
points and benchmarks.
"""
