"""Timing several pieces of work side by side on a shared machine: interleaved rounds, per-round ratios.

Every speed benchmark compares variants (samplers, backbones, evaluation orders) on a machine whose load changes
while it measures. Each round runs every variant in turn, the order rotating each round so that none always runs
first or last; a ratio is taken per round (variant / reference in the same round) and the median over rounds is
the result, so load that hits a whole round cancels, unlike a ratio of two medians. Wall time and process CPU time
(all threads) are both kept: on a loaded machine CPU time is the steadier measure of the work itself.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("benchmarks.timing")


@dataclasses.dataclass(frozen=True)
class RoundTimes:
    """Seconds per unit of work, one value a round, per variant: wall clock and process CPU."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]

    def median_wall(self, name: str) -> float:
        return statistics.median(self.wall[name])

    def median_cpu(self, name: str) -> float:
        return statistics.median(self.cpu[name])


def interleaved(work: Mapping[str, Callable[[], object]], rounds: int, units: int = 1) -> RoundTimes:
    """Times each ``work[name]()`` once a round for ``rounds`` rounds, rotating the order every round.

    A call must do ``units`` units of work (steps, batches) and return only once they are finished (read a result
    back); the times are per unit.
    """
    names = list(work)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            wall_started, cpu_started = time.perf_counter(), time.process_time()
            work[name]()
            wall[name].append((time.perf_counter() - wall_started) / units)
            cpu[name].append((time.process_time() - cpu_started) / units)
        log.info("round %d/%d done", r + 1, rounds)
    return RoundTimes(wall, cpu)


def ratios(samples: dict[str, list[float]], reference: str) -> dict[str, float]:
    """Median over rounds of (variant time / reference time in the same round), for every variant."""
    ref = samples[reference]
    return {name: statistics.median(t / r for t, r in zip(times, ref, strict=True)) for name, times in samples.items()}
