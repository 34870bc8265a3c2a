"""The machine's own ceiling for N processes: the same pure-Python work in one process and split evenly over N.

    python -m benchmarks.parallel_ceiling --input LOG_DIR --processes 2 [--files N]

The work is the pipeline's per-event work without Beam: each file of a `benchmarks.pipeline_scaling` log (or the
first ``--files N``) is read line by line, its rows grouped by user, each user's events sorted by time,
and the groups pickled and compressed (`pipeline.blocks.pack`'s format). With ``--processes N`` the files are dealt to
N forked processes (``files[i::N]``) that share nothing and send back one integer. The wall time of N processes over
that of one is the most any N-process run of this kind of work can gain here: the cores, their shared cache and
memory bandwidth, the clock when both are busy and the neighbours on a shared host. `benchmarks.pipeline_scaling`
runs it in every round beside the pipeline (runners ``ceiling1`` and ``ceiling2``), so that the pipeline's
two-process ratio is read against the machine's of the same minutes. A benchmark, not the product.
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing
import os
import pickle
import sys
import zlib


def group_file(path: str) -> int:
    """One file's rows grouped by user, each group sorted by time, pickled and compressed; the compressed size."""
    groups: dict[str, list[tuple[int, str]]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            user, item, timestamp = line.rstrip("\n").split("\t")[:3]
            groups.setdefault(user, []).append((int(timestamp), item))
    for events in groups.values():
        events.sort()
    return len(zlib.compress(pickle.dumps(groups, protocol=pickle.HIGHEST_PROTOCOL), 1))


def group_files(paths: list[str]) -> int:
    return sum(group_file(path) for path in paths)


def run(paths: list[str], processes: int) -> int:
    """The work over ``paths``, dealt to ``processes`` forked processes (1: this one)."""
    if processes == 1:
        return group_files(paths)
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        return sum(pool.map(group_files, [paths[i::processes] for i in range(processes)], chunksize=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parallel_ceiling", description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="a benchmarks.pipeline_scaling log folder (*.tsv files)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--files", type=int, default=0, help="only the first N of its files (sorted by name); 0: all")
    args = parser.parse_args(argv)
    paths = sorted(glob.glob(os.path.join(args.input, "*.tsv")))[: args.files or None]
    if args.processes < 1 or not paths:
        parser.error(f"need --processes >= 1 and *.tsv files in {args.input}")
    if len(paths) % args.processes:
        parser.error(f"{len(paths)} files do not split evenly over {args.processes} processes")
    print(f"{len(paths)} files over {args.processes} process(es): {run(paths, args.processes):,} compressed bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
