"""`PipelineConfig`: the pipeline's own flags (not Beam's), validated; the graph is built from it.

The flags themselves (names, defaults, help) are `pipeline.run.build_arg_parser`; this checks what argparse cannot
(ranges, combinations), so a bad combination is a usage error before anything runs.
"""

from __future__ import annotations

import dataclasses
import math

from pipeline import formats, sequences, splits

_DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "whitespace": None, "space": None}

# Bounds of the flags whose size grows the graph or a worker's memory (a usage error beyond them, before anything runs;
# --kcore_rounds: `sequences.sequences.MAX_KCORE_ROUNDS`, --split_file: `splits.MAX_SPLIT_FILE_BYTES`):
# every shard is a file per split, empty ones included (and one fingerprint entry);
MAX_NUM_SHARDS = 10_000
# a line up to this size is held in a worker's memory, a few times over while it is split and decoded.
MAX_LINE_BYTES = 256 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Our (non-Beam) flags, validated."""

    input: str
    input_format: str
    split: str
    output: str
    seed: int = 42
    kcore: int = 0
    kcore_rounds: int = 10
    min_seq_len: int | None = None  # None = the protocol's minimum (3 for loo, 2 for user)
    delimiter: str = "auto"
    columns: str | None = None
    dedupe: bool = False
    valid_fraction: float = 0.2
    test_fraction: float = 0.1
    num_shards: int = 0
    max_line_bytes: int = formats.DEFAULT_MAX_LINE_BYTES
    overwrite: bool = False
    split_file: str | None = None
    cutoff: float | None = None  # --split time: the cut, in the log's timestamp unit
    cutoff_quantile: float | None = None  # --split time: the cut as a fraction of the log's time range
    vocabulary_from: str | None = None  # a previous output whose ids this run keeps (`pipeline.parent`)

    def __post_init__(self) -> None:
        if not self.input.strip():
            raise ValueError("--input is empty: name a file, a glob or a directory")
        if not self.output.strip():
            raise ValueError("--output is empty: name the output directory")
        if self.input_format not in formats.FORMATS:
            raise ValueError(f"--input_format must be one of {formats.FORMATS}, got {self.input_format!r}")
        if self.split not in splits.PROTOCOLS:
            raise ValueError(f"--split must be one of {splits.PROTOCOLS}, got {self.split!r}")
        minimum = splits.MIN_SEQ_LEN[self.split]
        if self.min_seq_len is not None and self.min_seq_len < minimum:
            raise ValueError(
                f"--min_seq_len {self.min_seq_len} is below {minimum}, the minimum for --split {self.split}"
            )
        if self.kcore < 0 or self.kcore_rounds < 1:
            raise ValueError("--kcore must be >= 0 and --kcore_rounds >= 1")
        if self.kcore_rounds > sequences.MAX_KCORE_ROUNDS:
            raise ValueError(
                f"--kcore_rounds {self.kcore_rounds} is above {sequences.MAX_KCORE_ROUNDS}: the rounds are unrolled "
                "into the Beam graph (5 steps each), and real logs reach the k-core's fixed point in far fewer; "
                "metadata.json counts.kcore_items_below_k / kcore_users_below_k say whether the rounds reached it"
            )
        if not self.delimiter:
            raise ValueError("--delimiter is empty: use auto, tab, comma, whitespace or a literal")
        if self.num_shards < 0 or self.max_line_bytes < 1:
            raise ValueError("--num_shards must be >= 0 and --max_line_bytes >= 1")
        if self.num_shards > MAX_NUM_SHARDS:
            raise ValueError(
                f"--num_shards {self.num_shards} is above {MAX_NUM_SHARDS}: every shard is a file in each split, "
                "empty ones included; use fewer, or 0 (one file per bundle, the runner decides)"
            )
        if self.max_line_bytes > MAX_LINE_BYTES:
            raise ValueError(
                f"--max_line_bytes {self.max_line_bytes} is above {MAX_LINE_BYTES} (256 MiB): a line up to this size "
                "is held in a worker's memory, a few times over while it is parsed"
            )
        if self.split == "user":
            splits.split_sizes(0, self.valid_fraction, self.test_fraction)  # validates the fractions
        if self.split_file is not None and self.split != "user":
            raise ValueError("--split_file assigns users to splits: it needs --split user")
        self._check_time_split()
        if self.vocabulary_from is not None and not self.vocabulary_from.strip():
            raise ValueError("--vocabulary_from is empty: name a previous pipeline output folder")
        if self.columns is not None:
            if self.input_format != "interactions":
                raise ValueError("--columns only applies to --input_format interactions")
            formats.parse_columns(self.columns)

    def _check_time_split(self) -> None:
        given = [
            flag
            for flag, value in (("--cutoff", self.cutoff), ("--cutoff_quantile", self.cutoff_quantile))
            if value is not None
        ]
        if self.split != "time":
            if given:
                raise ValueError(f"{given[0]} places the cut of --split time: it needs --split time")
            return
        if self.input_format != "interactions":
            raise ValueError(
                f"--split time cuts on timestamps, and --input_format {self.input_format} has none (only an order): "
                "use --input_format interactions with a timestamp column, or --split loo/user"
            )
        if len(given) != 1:
            raise ValueError("--split time needs exactly one of --cutoff T (a timestamp) or --cutoff_quantile Q")
        if self.cutoff is not None and not math.isfinite(self.cutoff):
            raise ValueError(f"--cutoff {self.cutoff}: give a finite timestamp, in the unit of the log's timestamps")
        if self.cutoff_quantile is not None and not 0 < self.cutoff_quantile < 1:
            raise ValueError(f"--cutoff_quantile {self.cutoff_quantile}: give Q with 0 < Q < 1 (e.g. 0.8)")

    @property
    def effective_min_seq_len(self) -> int:
        return self.min_seq_len if self.min_seq_len is not None else splits.MIN_SEQ_LEN[self.split]

    @property
    def delimiter_value(self) -> tuple[str | None, bool]:
        """``(delimiter, fixed)``; ``fixed=False`` means detect per file."""
        if self.delimiter == "auto":
            return None, False
        return _DELIMITER_NAMES.get(self.delimiter, self.delimiter), True
