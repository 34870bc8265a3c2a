"""Timing several pieces of work side by side on a shared machine: interleaved rounds, per-round ratios.

Every speed benchmark compares variants (samplers, backbones, evaluation orders) on a machine whose load changes
while it measures. Each round runs every variant in turn, the order rotating each round so that none always runs
first or last; a ratio is taken per round (variant / reference in the same round) and the median over rounds is
the result, so load that hits a whole round cancels, unlike a ratio of two medians. Wall time and process CPU time
(all threads) are both kept: on a loaded machine CPU time is the steadier measure of the work itself. Each call also
records what the rest of the machine did meanwhile (`/proc/stat`, Linux): CPU seconds spent by other processes, and
seconds stolen by the hypervisor, so a slow round can be told from a slow variant.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("benchmarks.timing")


@dataclasses.dataclass(frozen=True)
class RoundTimes:
    """Seconds per unit of work, one value a round, per variant: wall clock and process CPU; and, per call, the CPU
    seconds other processes used and the seconds the hypervisor stole (empty lists where `/proc/stat` is absent)."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    others_cpu: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    stolen: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def median_wall(self, name: str) -> float:
        return statistics.median(self.wall[name])

    def median_cpu(self, name: str) -> float:
        return statistics.median(self.cpu[name])


def machine_cpu_seconds(stat_path: str = "/proc/stat") -> tuple[float, float] | None:
    """(busy, stolen) CPU seconds of the whole machine since boot, summed over cores; None without `/proc/stat`.

    Busy is user + nice + system + irq + softirq (guest time is already inside user and nice); stolen is the
    hypervisor's steal column.
    """
    try:
        with open(stat_path) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def interleaved(work: Mapping[str, Callable[[], object]], rounds: int, units: int = 1) -> RoundTimes:
    """Times each ``work[name]()`` once a round for ``rounds`` rounds, rotating the order every round.

    A call must do ``units`` units of work (steps, batches) and return only once they are finished (read a result
    back); the times are per unit.
    """
    names = list(work)
    times = RoundTimes(*({name: [] for name in names} for _ in range(4)))
    for r in range(rounds):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            machine_started = machine_cpu_seconds()
            wall_started, cpu_started = time.perf_counter(), time.process_time()
            work[name]()
            wall, cpu = time.perf_counter() - wall_started, time.process_time() - cpu_started
            machine = machine_cpu_seconds()
            times.wall[name].append(wall / units)
            times.cpu[name].append(cpu / units)
            if machine_started is not None and machine is not None:
                times.others_cpu[name].append(max(0.0, machine[0] - machine_started[0] - cpu))
                times.stolen[name].append(machine[1] - machine_started[1])
        log.info("round %d/%d done", r + 1, rounds)
    return times


def ratios(samples: dict[str, list[float]], reference: str) -> dict[str, float]:
    """Median over rounds of (variant time / reference time in the same round), for every variant."""
    ref = samples[reference]
    return {name: statistics.median(t / r for t, r in zip(times, ref, strict=True)) for name, times in samples.items()}
