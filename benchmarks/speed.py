"""Train-step and evaluation speed per sampler and per backbone, as ratios measured side by side in one process.

    python -m benchmarks.speed [--quick] [--tiny] [--only PATTERN] [--no-pipeline] [--out benchmarks/results]
    python -m benchmarks.speed --backbones sasrec mamba4rec --seq-len 12 --no-pipeline   # chosen backbones
    python -m benchmarks.speed --samplers uniform gnno autosample --no-pipeline           # chosen samplers
    python -m benchmarks.speed --backbones linrec --set loss.name=softmax --no-pipeline    # any config override

Shapes are Beauty's (batch 256, max length 50, d 64, 12,101 items + padding, 22,363 users) on synthetic random
batches: the step's cost depends on the shapes, not on the ids. Every variant is built with
`mdcns_tf.training.factory.build_model` from ``configs/base.yaml`` plus overrides and a `Metadata` stub, and its
``model.train_step`` runs inside a `tf.function`; a sampler that builds a statistic of the training data first
(GNNO's item graph) gets Beauty-like synthetic training sequences. The machine is shared and noisy, so absolute
times are only indicative: variants are interleaved in rounds (`benchmarks.timing`: the order rotates every round so
none always runs first or last) and the report gives per-variant medians and ratios to uniform SASRec taken over the
same rounds, in wall time and in process CPU time (the steadier of the two on a loaded machine).

``--backbones`` / ``--samplers`` measure only those (with uniform SASRec, the reference); ``--seq-len N`` trains
every measured variant on the last N positions of each batch, traced with an unknown length as under
``data.bucket_by_length``, against uniform SASRec at the same length. AutoSample is timed in both stages: the
search (``sasrec/autosample``) and the retraining on the selected candidate (``sasrec/autosample/retrain``).

Also measured: full-ranking evaluation throughput (users/s through ``model.test_step``, batch 512, every backbone)
and the Beam pipeline's throughput (events/s on a synthetic log via ``python -m pipeline.run``; the marginal rate
between two sizes cancels the fixed start-up cost).

Writes ``<out>/<name>.json`` and ``<out>/<name>.md`` (``speed`` for the whole suite, ``speed_subset`` for a chosen
subset unless ``--name`` says otherwise) with the command, the machine and the versions.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks import commands, common, timing
from benchmarks.synthetic_steps import Shape, run_steps, stub_metadata, synthetic_batches
from mdcns_tf import cli
from mdcns_tf.batch import POSITION_KEYS

log = logging.getLogger("benchmarks.speed")

BASE_CONFIG = os.path.join(common.REPO, "configs", "base.yaml")
REFERENCE = "sasrec/uniform"
FULL_SOFTMAX = "sasrec/full-softmax"
# Length of the length-bucket rows (``<variant>@len<n>``): a typical trimmed batch on Amazon data (~9 items a user).
BUCKET_LEN = 12


BEAUTY = Shape()
TINY = Shape(batch=8, max_len=8, dim=16, n_items=200, n_users=64, eval_batch=16)


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    group: str  # reference | sampler | loss | backbone | mdcns
    overrides: tuple[str, ...]
    # Train on the last ``seq_len`` positions of each batch, traced with an unknown length, as under
    # ``data.bucket_by_length``; compared with the reference at the same length (see `length_reference`).
    seq_len: int | None = None
    # Run on the built model before tracing: puts a sampler in the state to time (e.g. AutoSample's retrain stage).
    setup: Callable[[Any], None] | None = None


REFERENCE_VARIANT = Variant(REFERENCE, "reference", ("sampler.name=uniform",))


def bucket_variant(variant: Variant, seq_len: int = BUCKET_LEN) -> Variant:
    return dataclasses.replace(variant, name=f"{variant.name}@len{seq_len}", seq_len=seq_len)


def length_reference(variant: Variant) -> str:
    """The variant a row's ratio is taken against: uniform SASRec at the same batch length."""
    return f"{REFERENCE}@len{variant.seq_len}" if variant.seq_len else REFERENCE


def autosample_retrain_stage(model: Any) -> None:
    """AutoSample after its search: the retrain stage, drawing from DNS when it is a candidate (the usual pick)."""
    from mdcns_tf.samplers.autosample import RETRAIN

    sampler = model.sampler
    sampler.phase.assign(RETRAIN)
    sampler.selected.assign(sampler.names.index("dns") if "dns" in sampler.names else 0)


def previous_selective_scan(model: Any) -> None:
    """Mamba4Rec with the scan it had before the fused one (materialised states, odd-even parallel scan): the
    reference for the fused scan's time and memory."""
    from mdcns_tf.backbones.mamba4rec import MambaMixer
    from mdcns_tf.backbones.reference_scans import odd_even_selective_scan

    for layer in model.submodules:
        if isinstance(layer, MambaMixer):
            layer.scan = odd_even_selective_scan


def default_variants() -> list[Variant]:
    """Uniform SASRec (the reference), every sampler on SASRec, every backbone with uniform, MDCNS with two peers.

    Read from the registries, so a sampler or backbone that lands later is measured without touching this file.
    """
    from mdcns_tf.backbones import BACKBONES
    from mdcns_tf.samplers import SAMPLERS

    variants = [REFERENCE_VARIANT]
    variants += [Variant(f"sasrec/{s}", "sampler", (f"sampler.name={s}",)) for s in SAMPLERS if s != "uniform"]
    if "autosample" in SAMPLERS:
        variants.append(
            Variant(
                "sasrec/autosample/retrain", "sampler", ("sampler.name=autosample",), setup=autosample_retrain_stage
            )
        )
    # Full-softmax cross-entropy, the reference a practitioner tries first: scores the whole catalogue per position.
    variants.append(Variant(FULL_SOFTMAX, "loss", ("loss.name=softmax",)))
    variants += [Variant(f"{b}/uniform", "backbone", (f"model.backbone={b}",)) for b in BACKBONES if b != "sasrec"]
    if "mamba4rec" in BACKBONES:
        variants.append(
            Variant(
                "mamba4rec/uniform/previous-scan",
                "backbone",
                ("model.backbone=mamba4rec",),
                setup=previous_selective_scan,
            )
        )
    for peer in ("gru4rec", "mamba4rec"):
        variants.append(Variant(f"mdcns/sasrec+{peer}", "mdcns", ("trainer=mdcns", f"mdcns.peer_backbone={peer}")))
    # The MDCNS authors run their Mamba4Rec peer with d_state 16 (the `Namespace` of every MDCNS_Code log), half of
    # Mamba4Rec's own default (32, measured above as a backbone).
    variants.append(
        Variant(
            "mdcns/sasrec+mamba4rec/d_state16",
            "mdcns",
            ("trainer=mdcns", "mdcns.peer_backbone=mamba4rec", "model.options.mamba4rec.d_state=16"),
        )
    )
    variants.append(
        Variant(
            "mdcns/sasrec+gru4rec/position-pools",
            "mdcns",
            ("trainer=mdcns", "mdcns.peer_backbone=gru4rec", "mdcns.pool_scope=position"),
        )
    )
    # Mamba4Rec's scan cost grows with the length it is run at: also measured at a bucket length, against SASRec
    # at the same length.
    reference, mamba = variants[0], next(v for v in variants if v.name == "mamba4rec/uniform")
    variants += [bucket_variant(reference), bucket_variant(mamba)]
    return variants


def select_variants(
    variants: list[Variant],
    only: str | None = None,
    backbones: Sequence[str] = (),
    samplers: Sequence[str] = (),
    seq_len: int | None = None,
) -> list[Variant]:
    """The variants to measure: those of the chosen ``backbones`` (with uniform negatives) and ``samplers`` (on
    SASRec), or all when neither is given, narrowed by ``only`` (comma-separated fnmatch patterns or substrings, any
    may match); with ``seq_len``, each at that length instead. The reference, at every length measured, always
    runs: every ratio is taken against it."""
    if backbones or samplers:
        wanted = {f"{b}/uniform" for b in backbones} | {f"sasrec/{s}" for s in samplers}
        variants = [v for v in variants if v.name in wanted or v.name.removesuffix("/retrain") in wanted]
    if only:
        patterns = [p if any(c in p for c in "*?[") else f"*{p}*" for p in only.split(",")]
        variants = [v for v in variants if any(fnmatch.fnmatchcase(v.name, p) for p in patterns)]
    if seq_len:
        variants = [bucket_variant(v, seq_len) for v in variants if not v.seq_len]
    lengths = sorted({v.seq_len for v in variants} | {seq_len}, key=lambda n: n or 0)
    needed = [bucket_variant(REFERENCE_VARIANT, n) if n else REFERENCE_VARIANT for n in lengths]
    chosen = {v.name for v in variants}
    return [v for v in needed if v.name not in chosen] + variants


def synthetic_train_sequences(shape: Shape, item_counts: list[int], mean_len: int = 9) -> list[Any]:
    """Beauty-like training sequences (about ``mean_len`` items a user, items drawn by popularity) for samplers that
    build a statistic of the training data first (GNNO's item graph, `NegativeSampler.prepare`)."""
    import numpy as np

    rng = np.random.default_rng(1)
    probabilities = np.asarray(item_counts[1:], np.float64) / sum(item_counts[1:])
    lengths = rng.poisson(mean_len - 2, shape.n_users) + 2
    items = rng.choice(np.arange(1, shape.n_items + 1), int(lengths.sum()), p=probabilities)
    return np.split(items, np.cumsum(lengths)[:-1])


def build(variant: Variant, shape: Shape, metadata: Any, overrides: Sequence[str] = ()) -> tuple[Any, Any]:
    """The compiled model of a variant and its config; ``overrides`` apply to every variant, before the variant's
    own. Raises `ConfigError` when its sampler/backbone is not registered."""
    import tf_keras as keras

    from mdcns_tf.config_loader import load_config
    from mdcns_tf.training.factory import build_model

    config = load_config(
        BASE_CONFIG,
        [
            f"model.dim={shape.dim}",
            f"data.max_len={shape.max_len}",
            f"data.batch_size={shape.batch}",
            f"data.eval_batch_size={shape.eval_batch}",
            "seed=1",
            *overrides,
            *variant.overrides,
        ],
    )
    model = build_model(config, metadata)
    sampler = getattr(model, "sampler", None)
    if sampler is not None and sampler.needs_train_sequences:
        sampler.prepare(synthetic_train_sequences(shape, metadata.item_counts))
    model.build_for_input(shape.max_len)
    model.compile(optimizer=keras.optimizers.Adam(config.train.learning_rate))
    if variant.setup is not None:
        variant.setup(model)
    return model, config


def step_peak_mib(work: Callable[[], None]) -> float | None:
    """The most memory TensorFlow's CPU allocator held during ``work`` beyond what it held before (MiB): the
    step's activations, gradients and temporaries, not the model's variables. None where the allocator keeps no
    statistics."""
    import tensorflow as tf

    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    except (ValueError, tf.errors.OpError):
        return None
    work()
    return round((tf.config.experimental.get_memory_info("CPU:0")["peak"] - before) / 2**20, 1)


def train_function(model: Any, variant: Variant, shape: Shape, batches: list[dict], jit_compile: bool = False) -> Any:
    """``model.train_step`` in a `tf.function`; for a bucket-length variant, traced with an unknown length and fed
    the last ``seq_len`` positions of each batch (precomputed, so the timing excludes the trimming)."""
    import tensorflow as tf

    if not variant.seq_len:
        return tf.function(model.train_step, jit_compile=jit_compile)
    length = min(variant.seq_len, shape.max_len)
    trimmed = {id(batch): {**batch, **{key: batch[key][:, -length:] for key in POSITION_KEYS}} for batch in batches}
    spec = {
        key: tf.TensorSpec([None, None] if key in POSITION_KEYS else value.shape, value.dtype)
        for key, value in batches[0].items()
    }
    step = tf.function(model.train_step, input_signature=[spec], jit_compile=jit_compile)
    return lambda batch: step(trimmed[id(batch)])


def measure_models(
    shape: Shape, variants: list[Variant], rounds: int, steps: int, overrides: Sequence[str] = ()
) -> tuple[list, list, list[str]]:
    import tensorflow as tf

    metadata = stub_metadata(shape)
    batches, eval_batch = synthetic_batches(shape, count=3, seed=0)
    notes: list[str] = []
    train_fns: dict[str, Any] = {}
    eval_fns: dict[str, Any] = {}
    params: dict[str, int] = {}
    step_memory: dict[str, float | None] = {}
    for variant in variants:
        try:
            model, config = build(variant, shape, metadata, overrides)
        except Exception as e:  # noqa: BLE001  (a missing or broken piece is a note, never the end of the run)
            notes.append(f"{variant.name} skipped: {type(e).__name__}: {e}")
            log.warning("%s", notes[-1])
            continue
        fn = train_function(model, variant, shape, batches, config.train.jit_compile)
        started = time.perf_counter()
        try:
            run_steps(fn, batches, 2)  # trace + warm up (first-call allocation) outside the measurement
        except Exception as e:  # noqa: BLE001
            log.debug("train_step of %s failed", variant.name, exc_info=True)
            notes.append(f"{variant.name} skipped: train_step failed: {type(e).__name__}: {str(e)[-400:]}")
            log.warning("%s", notes[-1])
            continue
        log.info("built %s (trace + 2 steps %.1fs)", variant.name, time.perf_counter() - started)
        train_fns[variant.name] = fn
        step_memory[variant.name] = step_peak_mib(lambda fn=fn: run_steps(fn, batches, 1))
        params[variant.name] = int(sum(v.shape.num_elements() for v in model.trainable_variables))
        if variant.group in ("reference", "backbone") and not variant.seq_len:
            eval_fn = tf.function(model.test_step)
            run_steps(eval_fn, [eval_batch], 2)
            eval_fns[variant.name.replace("/uniform", "")] = eval_fn  # sasrec, mamba4rec/previous-scan, ...
    if not any(length_reference(v) in train_fns for v in variants):
        raise RuntimeError(f"the reference variant {REFERENCE} could not be built: {notes}")

    times = timing.interleaved(
        {name: lambda fn=fn: run_steps(fn, batches, steps) for name, fn in train_fns.items()}, rounds, steps
    )
    references = {length_reference(v) for v in variants} & set(train_fns)
    wall_ratios = {ref: timing.ratios(times.wall, ref) for ref in references}
    over_softmax = timing.ratios(times.wall, FULL_SOFTMAX) if FULL_SOFTMAX in train_fns else {}
    cpu_ratios = {ref: timing.ratios(times.cpu, ref) for ref in references}
    rows = []
    for variant in variants:
        reference = length_reference(variant)
        if variant.name not in train_fns or reference not in references:
            continue
        step = times.median_wall(variant.name)
        length = min(variant.seq_len or shape.max_len, shape.max_len)
        rows.append(
            {
                "variant": variant.name,
                "group": variant.group,
                "seq_len": length,
                "step_ms_median": round(1000 * step, 2),
                "step_ms_rounds": [round(1000 * t, 2) for t in times.wall[variant.name]],
                "ratio_to_uniform_sasrec": round(wall_ratios[reference][variant.name], 3),
                "step_cpu_ms_median": round(1000 * times.median_cpu(variant.name), 2),
                "cpu_ratio_to_uniform_sasrec": round(cpu_ratios[reference][variant.name], 3),
                "ratio_reference": reference,
                "sequences_per_s": round(shape.batch / step, 1),
                "tokens_per_s": round(shape.batch * length / step, 0),
                "trainable_parameters": params[variant.name],
                "step_peak_mib": step_memory[variant.name],
            }
        )
        if over_softmax and not variant.seq_len:
            rows[-1]["ratio_to_full_softmax"] = round(over_softmax[variant.name], 3)

    eval_rows = []
    if eval_fns:
        eval_steps = max(1, steps // 2)
        eval_times = timing.interleaved(
            {name: lambda fn=fn: run_steps(fn, [eval_batch], eval_steps) for name, fn in eval_fns.items()},
            rounds,
            eval_steps,
        )
        eval_ratios = timing.ratios(eval_times.wall, "sasrec") if "sasrec" in eval_fns else {}
        for name in eval_fns:
            step = eval_times.median_wall(name)
            eval_rows.append(
                {
                    "backbone": name,
                    "batch_ms_median": round(1000 * step, 2),
                    "users_per_s": round(shape.eval_batch / step, 1),
                    "ratio_to_sasrec": round(eval_ratios.get(name, float("nan")), 3),
                }
            )
    return rows, eval_rows, notes


def measure_pipeline(sizes: tuple[int, int], timeout: float = 900) -> dict[str, Any]:
    """Wall time of ``pipeline.run`` (loo split, interactions format) on two synthetic logs; events/s at each size
    and the marginal rate (extra events / extra seconds), which excludes Beam's start-up."""
    # Looked up, not imported: the pipeline runs in child processes, and `pipeline.run` is an entry point.
    missing = [m for m in ("pipeline.run", "pipeline.synthetic") if importlib.util.find_spec(m) is None]
    if missing:
        return {"skipped": f"pipeline not importable: {missing}"}
    env = commands.child_env()
    out: dict[str, Any] = {"runs": []}
    with tempfile.TemporaryDirectory(prefix="mdcns_speed_") as tmp:
        for events in sizes:
            users = max(10, events // 20)
            raw = os.path.join(tmp, f"log_{events}.tsv")
            gen = commands.module_command(
                "pipeline.synthetic",
                *("--output", raw, "--users", str(users), "--items", str(max(50, events // 50))),
                *("--events", str(events), "--seed", "0"),
            )
            run = commands.pipeline_command(raw, "interactions", "loo", os.path.join(tmp, f"out_{events}"))
            try:
                subprocess.run(gen, cwd=common.REPO, env=env, check=True, capture_output=True, timeout=timeout)
                started = time.perf_counter()
                subprocess.run(run, cwd=common.REPO, env=env, check=True, capture_output=True, timeout=timeout)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
                stderr = getattr(e, "stderr", b"") or b""
                return {"skipped": f"pipeline run failed: {e}; {stderr.decode(errors='replace')[-300:]}"}
            seconds = time.perf_counter() - started
            out["runs"].append(
                {
                    "events": events,
                    "users": users,
                    "seconds": round(seconds, 2),
                    "events_per_s": round(events / seconds, 0),
                }
            )
            log.info("pipeline: %d events in %.1fs", events, seconds)
    (small, large) = out["runs"]
    extra = large["seconds"] - small["seconds"]
    out["marginal_events_per_s"] = round((large["events"] - small["events"]) / extra, 0) if extra > 0 else None
    typed = commands.pipeline_command("<synthetic log>", "interactions", "loo", "<tmp>")[1:]
    out["command"] = " ".join(["python", *typed]) + "   (default FnApiRunner)"
    return out


def write_markdown(path: str, result: dict[str, Any]) -> str:
    shape = result["shape"]
    lines = [
        f"# Speed{'' if result.get('name', 'speed') == 'speed' else ': ' + result['name']}",
        "",
        f"- Command: `{result['command']}`",
        f"- Machine: {common.machine_line(result)}",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in result['versions'].items())}; commit "
        f"`{result['git'].get('commit')}`",
        f"- Shapes: batch {shape['batch']}, max length {shape['max_len']}, d {shape['dim']}, {shape['n_items']} items; "
        f"{result['rounds']} interleaved rounds x {result['steps']} steps; {common.measured_at(result)}",
        "",
        "## Train step (synthetic full-length batches, `model.train_step` in a `tf.function`)",
        "",
        "Ratio = median over rounds of (variant step / uniform SASRec step in the same round), in wall and in process "
        "CPU time; `@len<n>` rows train "
        "on the last n positions, traced with an unknown length (as under `data.bucket_by_length`), and are compared "
        "with `sasrec/uniform@len<n>`. Step peak = the most memory TensorFlow's CPU allocator held during one step "
        "beyond what it held before it (activations, gradients, temporaries; not the variables), "
        "`tf.config.experimental.get_memory_info` (None where that allocator keeps no statistics: TF keeps them "
        "with its oneDNN kernels on, the default only on CPUs with AVX-512; `TF_ENABLE_ONEDNN_OPTS=1` turns them on).",
        "",
        "| variant | group | step ms (median) | x uniform SASRec | step CPU ms (median) | x uniform SASRec (CPU) "
        "| sequences/s | tokens/s | trainable params | step peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["train_step"]:
        lines.append(
            f"| {row['variant']} | {row['group']} | {row['step_ms_median']:.1f} | "
            f"{row['ratio_to_uniform_sasrec']:.2f} | {row['step_cpu_ms_median']:.1f} | "
            f"{row['cpu_ratio_to_uniform_sasrec']:.2f} | {row['sequences_per_s']:.0f} | "
            f"{row['tokens_per_s']:.0f} | {row['trainable_parameters']:,} | {row.get('step_peak_mib')} |"
        )
    if result.get("mdcns_over_uniform"):
        lines += [
            "",
            "MDCNS / uniform SASRec step-time ratio: "
            + ", ".join(f"{k} {v:.2f}x" for k, v in result["mdcns_over_uniform"].items()),
        ]
    over_softmax = {r["variant"]: r.get("ratio_to_full_softmax") for r in result["train_step"] if r["group"] == "mdcns"}
    if over_softmax and all(over_softmax.values()):
        lines += [
            "",
            "MDCNS / full-softmax SASRec step-time ratio (same rounds): "
            + ", ".join(f"{k} {v:.2f}x" for k, v in over_softmax.items()),
        ]
    lines += ["", f"## Full-ranking evaluation (`model.test_step`, batch {shape['eval_batch']}, all items ranked)", ""]
    lines += ["| backbone | batch ms (median) | users/s | x SASRec time |", "|---|---|---|---|"]
    for row in result["eval"]:
        lines.append(
            f"| {row['backbone']} | {row['batch_ms_median']:.1f} | {row['users_per_s']:.0f} | "
            f"{row['ratio_to_sasrec']:.2f} |"
        )
    lines += ["", "## Pipeline (Beam, FnApiRunner, synthetic interactions log, leave-one-out)", ""]
    pipe = result.get("pipeline", {})
    if "skipped" in pipe:
        lines.append(f"Skipped: {pipe['skipped']}")
    else:
        lines += ["| events | users | seconds (wall, incl. start-up) | events/s |", "|---|---|---|---|"]
        for run in pipe.get("runs", []):
            lines.append(f"| {run['events']:,} | {run['users']:,} | {run['seconds']:.1f} | {run['events_per_s']:.0f} |")
        lines += ["", f"Marginal throughput (start-up excluded): {pipe.get('marginal_events_per_s')} events/s."]
    if result.get("notes"):
        lines += ["", "## Notes", "", *[f"- {n}" for n in result["notes"]]]
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return text


def run_speed(
    shape: Shape,
    rounds: int,
    steps: int,
    out_dir: str,
    variants: list[Variant],
    pipeline_sizes: tuple[int, int] | None = (100_000, 500_000),
    command: str = "",
    overrides: Sequence[str] = (),
    name: str = "speed",
) -> dict[str, Any]:
    """Measures ``variants`` (see `select_variants`), writes ``<name>.json`` and ``<name>.md`` into ``out_dir``,
    returns the result."""
    import mdcns_tf  # noqa: F401  (legacy Keras switch before TensorFlow loads)

    result: dict[str, Any] = common.envelope(command)
    rows, eval_rows, notes = measure_models(shape, variants, rounds, steps, overrides)
    result |= {
        "name": name,
        "shape": dataclasses.asdict(shape),
        "overrides": list(overrides),
        "rounds": rounds,
        "steps": steps,
        "train_step": rows,
        "mdcns_over_uniform": {r["variant"]: r["ratio_to_uniform_sasrec"] for r in rows if r["group"] == "mdcns"},
        "eval": eval_rows,
        "pipeline": measure_pipeline(pipeline_sizes) if pipeline_sizes else {"skipped": "not requested"},
        "notes": notes,
    }
    os.makedirs(out_dir, exist_ok=True)
    common.write_result(os.path.join(out_dir, f"{name}.json"), result)
    write_markdown(os.path.join(out_dir, f"{name}.md"), result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("benchmarks.speed", None, __doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and a smaller pipeline log (~5 min)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (tests, smoke checks): seconds, not minutes")
    parser.add_argument(
        "--only", help="fnmatch patterns (or substrings), comma-separated, on variant names; uniform SASRec always runs"
    )
    parser.add_argument("--backbones", nargs="+", default=[], metavar="NAME", help="measure these backbones only")
    parser.add_argument("--samplers", nargs="+", default=[], metavar="NAME", help="measure these samplers only")
    parser.add_argument("--seq-len", type=int, default=None, help="train every variant on the last N positions")
    parser.add_argument("--batch", type=int, default=None, help="sequences a training batch (default: the shape's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, all variants")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the pipeline throughput measurement")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="train steps per variant per round")
    parser.add_argument("--out", default=common.RESULTS, help="output folder (default benchmarks/results)")
    parser.add_argument("--name", default=None, help="file stem (default speed; speed_subset for a chosen subset)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One tf.function per variant is the design; TensorFlow's "excessive retracing" warning counts them all.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    shape = TINY if args.tiny else BEAUTY
    if args.batch:
        shape = dataclasses.replace(shape, batch=args.batch)
    rounds = args.rounds or (2 if args.tiny else 5 if args.quick else 9)
    steps = args.steps or (1 if args.tiny else 3 if args.quick else 5)
    sizes = (
        None
        if args.no_pipeline
        else ((5_000, 20_000) if args.tiny else (50_000, 250_000) if args.quick else (100_000, 1_000_000))
    )
    variants = select_variants(default_variants(), args.only, args.backbones, args.samplers, args.seq_len)
    subset = bool(args.only or args.backbones or args.samplers or args.seq_len)
    # A subset never overwrites the committed results of the whole suite unless named so.
    name = args.name or ("speed_subset" if subset else "speed")
    command = common.command_line("benchmarks.speed", argv)
    result = run_speed(shape, rounds, steps, args.out, variants, sizes, command, args.set, name)
    print(open(os.path.join(args.out, f"{name}.md")).read())
    return 0 if result["train_step"] else 1


if __name__ == "__main__":
    sys.exit(main())
