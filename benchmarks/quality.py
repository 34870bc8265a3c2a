"""Quality grid: datasets x backbones x methods x seeds, one budget, one JSON per run, then a table and plots.

    python -m benchmarks.quality --grid configs/benchmarks/quick.yaml [--only PATTERN] [--dry-run] [--report-only]

Each dataset is preprocessed once with ``python -m pipeline.run`` into a cache (``$MDCNS_DATA_CACHE``, default
``benchmarks/results/data/``, git-ignored) keyed by what the pipeline is asked to do. Each cell trains in its own
subprocess (``python -m mdcns_tf.train`` on the cell's resolved config), so a crash or a leak in one cell cannot take
the grid down and every cell starts from a fresh TensorFlow runtime. Results:

    benchmarks/results/<grid>/runs/<dataset>/<backbone>/<method>/seed<k>.json   one finished run (committed)
    benchmarks/results/<grid>/results.md, *.png                                    table and plots (committed)
    benchmarks/results/scratch/<grid>/...                                          logs, checkpoints (git-ignored)

Resumable at two levels: a cell whose JSON exists with the same config hash is skipped; a cell killed mid-training
resumes from its Keras ``BackupAndRestore`` checkpoint in the scratch folder. A cell whose config changed since its
JSON was written (e.g. a new budget) is run again. Cells that need a backbone or sampler that is not registered yet,
or a dataset whose raw file is absent, are skipped with a note in ``results.md``.
"""

from __future__ import annotations

import os
import sys

from benchmarks import common
from benchmarks.grid import load_grid_or_report
from benchmarks.grid_runner import run_grid
from mdcns_tf import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("benchmarks.quality", None, __doc__)
    parser.add_argument("--grid", required=True, help="grid spec, e.g. configs/benchmarks/quick.yaml")
    parser.add_argument(
        "--only", help="fnmatch patterns (or substrings), comma-separated, on dataset/backbone/method/seed<k>"
    )
    parser.add_argument("--dry-run", action="store_true", help="list the cells, their status and commands; run nothing")
    parser.add_argument("--report-only", action="store_true", help="rebuild results.md and the plots from the JSONs")
    common.add_data_root_option(parser)
    parser.add_argument("--results", default=None, help="results folder (default benchmarks/results/<grid>)")
    args = parser.parse_args(argv)
    cli.setup_logging()
    grid = load_grid_or_report(args.grid)
    if grid is None:
        return 2
    return run_grid(
        grid,
        args.data_root,
        args.results or os.path.join(common.RESULTS, grid.name),
        common.command_line("benchmarks.quality", argv),
        args.only,
        args.dry_run,
        args.report_only,
    )


if __name__ == "__main__":
    sys.exit(main())
