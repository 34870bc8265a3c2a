"""Full-ranking evaluation time of a real split, file-order batches against length-bucketed ones, side by side.

Each backbone is built untrained for the dataset (evaluation cost does not depend on the weights), the split is
evaluated in interleaved rounds (file order, then bucketed, per round) and the median time of each is reported with
their ratio; the metrics of the two orders are checked to agree (they must: trimming left padding does not change
a backbone's states). Writes ``benchmarks/results/eval_speed.json`` (``--output``) with the command and machine.

    python -m benchmarks.eval_speed --data data/beauty_loo [--split valid] [--backbones sasrec gru4rec] [--rounds 3]
"""

from __future__ import annotations

import sys
from typing import Any

import mdcns_tf  # noqa: F401
from benchmarks import common, timing
from mdcns_tf import cli, data
from mdcns_tf.config_loader import load_config
from mdcns_tf.features import Metadata
from mdcns_tf.training.factory import build_model


def measure(data_dir: str, split: str, backbone: str, rounds: int, batch_size: int) -> dict[str, Any]:
    config = load_config(None, [f"data.dir={data_dir}", f"model.backbone={backbone}", "model.dropout=0.5"])
    model = build_model(config, Metadata.load(data_dir))
    model.build_for_input(config.data.max_len)
    model.compile()
    datasets = {
        bucketed: data.eval_dataset(data_dir, split, config.data.max_len, batch_size, bucket_by_length=bucketed)
        for bucketed in (False, True)
    }
    results = {bucketed: model.evaluate(ds, return_dict=True, verbose=0) for bucketed, ds in datasets.items()}
    times = timing.interleaved(
        {
            "file_order": lambda: model.evaluate(datasets[False], verbose=0),
            "bucketed": lambda: model.evaluate(datasets[True], verbose=0),
        },
        rounds,
    )
    gap = max(abs(results[True][k] - results[False][k]) for k in results[False])
    file_order, bucketed = times.median_wall("file_order"), times.median_wall("bucketed")
    return {
        "backbone": backbone,
        "file_order_s": round(file_order, 3),
        "bucketed_s": round(bucketed, 3),
        "speedup": round(file_order / bucketed, 2),
        "max_metric_difference": gap,
        "seconds": times.wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("benchmarks.eval_speed", None, __doc__)
    parser.add_argument("--data", required=True, help="a pipeline output folder (metadata.json + splits)")
    parser.add_argument("--split", default="valid", choices=["valid", "test"])
    parser.add_argument("--backbones", nargs="+", default=["sasrec", "gru4rec"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--output", default="benchmarks/results/eval_speed.json")
    args = parser.parse_args(argv)
    head = common.envelope(common.command_line("benchmarks.eval_speed", argv))
    rows = [measure(args.data, args.split, b, args.rounds, args.batch_size) for b in args.backbones]
    for row in rows:
        print(
            f"{row['backbone']:10} file order {row['file_order_s']:.2f}s  bucketed {row['bucketed_s']:.2f}s  "
            f"{row['speedup']:.2f}x  (metrics differ by at most {row['max_metric_difference']:.1e})"
        )
    common.write_result(args.output, {**head, "data": args.data, "split": args.split, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
