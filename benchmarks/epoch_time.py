"""Epoch time of grid cells on their real data, measured side by side: one training epoch of each cell a round.

    python -m benchmarks.epoch_time --grid configs/benchmarks/paper_beauty.yaml \
        --cells softmax,mdcns_gru_l3_t2_pospool_d3,mdcns_gru_l3_t2 --rounds 3

`benchmarks.speed` times steps on synthetic full-length batches. A real epoch is made of length-bucketed batches
(mostly short ones on Beauty), one partial batch per bucket and the input pipeline; this measures that. Each cell
(``--seed`` of the grid's first dataset and backbone, its data preprocessed as the grid does) is built as
`mdcns_tf.train.run` builds it, trains one warm-up epoch (tracing, XLA compiles: reported apart), then one epoch a
round, the cells interleaved with `benchmarks.timing` (order rotating each round). The ratio of a cell to the
reference (the first of ``--cells``) is the median over rounds of the per-round ratio. Training only: no
validation, no checkpoints. Writes ``<results>/epoch_time.json`` and ``.md`` (default ``benchmarks/results/<grid>``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from benchmarks import common, timing
from benchmarks.grid import Cell, GridSpec, load_grid_or_report
from benchmarks.grid_runner import DataMissing, preprocess
from mdcns_tf import cli

log = logging.getLogger("benchmarks.epoch_time")


def build_cell(grid: GridSpec, cell: Cell, data_dir: str) -> tuple[Any, Any, int]:
    """(compiled model, its training batches for one epoch, steps an epoch), as `mdcns_tf.train.run` makes them."""
    import tf_keras as keras

    from mdcns_tf.features import Metadata
    from mdcns_tf.training.batches import seed_process, train_input
    from mdcns_tf.training.factory import build_model, prepare_for_training

    config = grid.resolve(cell, data_dir, os.devnull)
    seed_process(config.seed)
    keras.backend.experimental.enable_tf_random_generator()
    train_ds, steps, _ = train_input(config, first_epoch=0)
    model = build_model(config, Metadata.load(data_dir, verify=False))
    prepare_for_training(model, config)
    return model, train_ds, steps


def measure(grid: GridSpec, methods: list[str], seed: int, rounds: int, data_root: str) -> dict[str, Any]:
    dataset, backbone = next(iter(grid.datasets)), grid.backbones[0]
    data_dir, _ = preprocess(grid.datasets[dataset], data_root)
    epochs: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = {}
    for method in methods:
        model, train_ds, steps = build_cell(grid, Cell(dataset, backbone, method, seed), data_dir)
        started = time.perf_counter()
        model.fit(train_ds, epochs=1, verbose=0)
        rows[method] = {"cell": Cell(dataset, backbone, method, seed).id, "steps_per_epoch": steps}
        rows[method]["warmup_epoch_s"] = round(time.perf_counter() - started, 1)
        log.info("%s: warm-up epoch %.1f s (%d steps)", method, rows[method]["warmup_epoch_s"], steps)
        epochs[method] = lambda model=model, train_ds=train_ds: model.fit(train_ds, epochs=1, verbose=0)
    times = timing.interleaved(epochs, rounds)
    wall, cpu = timing.ratios(times.wall, methods[0]), timing.ratios(times.cpu, methods[0])
    for method, row in rows.items():
        row.update(
            epoch_s_median=round(times.median_wall(method), 2),
            epoch_s_rounds=[round(t, 2) for t in times.wall[method]],
            epoch_cpu_s_median=round(times.median_cpu(method), 2),
            epoch_cpu_s_rounds=[round(t, 2) for t in times.cpu[method]],
            ratio_to_reference=round(wall[method], 3),
            cpu_ratio_to_reference=round(cpu[method], 3),
            others_cpu_s_rounds=[round(t, 1) for t in times.others_cpu.get(method, [])],
            stolen_s_rounds=[round(t, 1) for t in times.stolen.get(method, [])],
        )
    return {"reference": methods[0], "rounds": rounds, "seed": seed, "cells": list(rows.values())}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Epoch time, side by side: grid `{result['grid']}`",
        "",
        f"- Command: `{result['command']}`",
        f"- Machine: {common.machine_line(result)}",
        f"- Code: `{result['git'].get('commit')}`{'+dirty' if result['git'].get('dirty') else ''}; "
        f"{common.measured_at(result)}",
        "",
        f"One training epoch of each cell a round, {result['rounds']} rounds, cells interleaved; ratio = median over "
        f"rounds of (cell / `{result['reference']}` in the same round). Warm-up = the first epoch (tracing, compiles). "
        "Others / stolen: CPU seconds other processes used, and seconds the hypervisor stole, during each epoch.",
        "",
        "| cell | steps/epoch | epoch s (median) | rounds | x reference | CPU s (median) | CPU x reference "
        "| warm-up s | others / stolen s, per round |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["cells"]:
        rounds = ", ".join(f"{t:.1f}" for t in row["epoch_s_rounds"])
        machine = ", ".join(
            f"{o:.1f} / {s:.1f}"
            for o, s in zip(row.get("others_cpu_s_rounds", []), row.get("stolen_s_rounds", []), strict=True)
        )
        lines.append(
            f"| {row['cell']} | {row['steps_per_epoch']} | {row['epoch_s_median']:.1f} | {rounds} | "
            f"{row['ratio_to_reference']:.2f} | {row['epoch_cpu_s_median']:.1f} | "
            f"{row['cpu_ratio_to_reference']:.2f} | {row['warmup_epoch_s']:.1f} | {machine or 'n/a'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("benchmarks.epoch_time", None, __doc__)
    parser.add_argument("--grid", required=True, help="grid spec, e.g. configs/benchmarks/paper_beauty.yaml")
    parser.add_argument("--cells", required=True, help="comma-separated methods of the grid, the reference first")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    common.add_data_root_option(parser)
    parser.add_argument("--results", default=None, help="output folder (default benchmarks/results/<grid>)")
    args = parser.parse_args(argv)
    cli.setup_logging()
    grid = load_grid_or_report(args.grid)
    if grid is None:
        return 2
    methods = [m for m in args.cells.split(",") if m]
    unknown = [m for m in methods if m not in grid.methods]
    if len(methods) < 2 or unknown:
        print(f"epoch_time: need two or more of the grid's methods {sorted(grid.methods)}; unknown: {unknown}")
        return 2
    if args.rounds < 1:
        print("epoch_time: --rounds must be at least 1")
        return 2
    result = common.envelope(common.command_line("benchmarks.epoch_time", argv))
    try:
        result.update(grid=grid.name, **measure(grid, methods, args.seed, args.rounds, args.data_root))
    except DataMissing as e:
        print(f"epoch_time: skipped, the grid's data is absent: {e}")
        return 0
    out = args.results or os.path.join(common.RESULTS, grid.name)
    os.makedirs(out, exist_ok=True)
    common.write_result(os.path.join(out, "epoch_time.json"), result)
    with open(os.path.join(out, "epoch_time.md"), "w") as f:
        f.write(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
