"""The benchmark harness: grid specs parse, the report writer's arithmetic, skips instead of crashes, speed smoke."""

from __future__ import annotations

import argparse
import glob
import json
import os
import pickle
import subprocess
import sys
import zlib

import numpy as np
import pytest

from benchmarks import common, converge, grid_runner, published, report, timing
from benchmarks import grid as grid_mod

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRIDS = sorted(glob.glob(os.path.join(REPO, "configs", "benchmarks", "*.yaml")))


@pytest.mark.parametrize("path", GRIDS, ids=os.path.basename)
def test_grid_specs_parse_and_resolve(path: str, tmp_path) -> None:
    spec = grid_mod.load_grid(path)
    cells = spec.cells()
    assert len(cells) == len(spec.datasets) * len(spec.backbones) * len(spec.methods) * len(spec.seeds)
    # Every method of the grid resolves to a valid config with the grid's one budget.
    for cell in cells[: len(spec.methods)]:
        config = spec.resolve(cell, str(tmp_path / "data"), str(tmp_path / "out"))
        assert config.train.epochs == spec.budget["train.epochs"]
        assert config.seed == cell.seed and config.model.backbone == cell.backbone
        assert config.data.dir == str(tmp_path / "data")


def test_shipped_grids() -> None:
    names = {grid_mod.load_grid(p).name for p in GRIDS}
    assert {"quick", "paper", "mdcns_beauty"} <= names
    paper = grid_mod.load_grid(os.path.join(REPO, "configs", "benchmarks", "paper.yaml"))
    assert set(paper.datasets) == {"beauty_user", "sports_user", "lastfm_user"} and len(paper.seeds) == 3
    assert paper.methods["mdcns"]["mdcns.peer_backbone"] == "mamba4rec"


def _write_grid(tmp_path, methods: dict, extra: str = "") -> str:
    data_cfg = tmp_path / "ds.yaml"
    data_cfg.write_text("data:\n  dir: data/x\n")
    path = tmp_path / "g.yaml"
    path.write_text(
        f"name: t\nbase: {os.path.join(REPO, 'configs', 'base.yaml')}\nbudget: {{train.epochs: 2}}\n"
        f"datasets:\n  toy:\n    input: toy.txt\n    input_format: sequences\n    split: loo\n    config: ds.yaml\n"
        f"methods: {json.dumps(methods)}\nseeds: [1, 2]\n{extra}"
    )
    return str(path)


def test_grid_rejects_a_method_that_changes_the_budget(tmp_path) -> None:
    path = _write_grid(tmp_path, {"long": {"train.epochs": 500}})
    with pytest.raises(grid_mod.GridError, match="budget"):
        grid_mod.load_grid(path)


def test_only_pattern(tmp_path) -> None:
    spec = grid_mod.load_grid(_write_grid(tmp_path, {"uniform": {}, "dns": {"sampler.name": "dns"}}))
    assert [c.id for c in spec.cells("dns")] == ["toy/sasrec/dns/seed1", "toy/sasrec/dns/seed2"]
    assert [c.id for c in spec.cells("*/seed2")] == ["toy/sasrec/uniform/seed2", "toy/sasrec/dns/seed2"]
    # comma-separated: any may match (a pattern with a slash keeps "dns" from matching "gdns" or "dns_plus")
    assert [c.id for c in spec.cells("*/dns/seed1,uniform/seed2")] == [
        "toy/sasrec/dns/seed1",
        "toy/sasrec/uniform/seed2",
    ]


def test_missing_pieces_are_skipped_with_a_note(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MDCNS_DATA_CACHE", str(tmp_path / "cache"))
    spec = grid_mod.load_grid(_write_grid(tmp_path, {"uniform": {}, "future": {"sampler.name": "not_landed_yet"}}))
    # Raw data absent: the dataset is skipped, the grid goes on.
    runner = grid_runner.GridRunner(spec, str(tmp_path / "no_data"), str(tmp_path / "results"), "cmd")
    assert runner.plan(spec.cells()[0], dry_run=True) is None
    assert "absent" in runner.notes["toy"]
    # Data present, a sampler not registered yet: that cell alone is skipped.
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "toy.txt").write_text("1 1 2 3\n")
    runner = grid_runner.GridRunner(spec, str(tmp_path / "raw"), str(tmp_path / "results"), "cmd")
    plans = [runner.plan(c, dry_run=True) for c in spec.cells()]
    assert [p is not None for p in plans] == [True, False, True, False]
    assert "not_landed_yet" in runner.notes["toy/sasrec/future/seed1"]
    assert plans[0]["status"] == "todo"


def test_reuse_runs_from_another_grid_only_with_the_same_config_hash(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MDCNS_DATA_CACHE", str(tmp_path / "cache"))
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "toy.txt").write_text("1 1 2 3\n")
    spec = grid_mod.load_grid(_write_grid(tmp_path, {"uniform": {}}, extra="reuse_runs_from: [older]\n"))
    assert spec.reuse_runs_from == ("older",)
    results = tmp_path / "results"
    runner = grid_runner.GridRunner(spec, str(tmp_path / "raw"), str(results / "t"), "cmd")
    first, second = spec.cells()
    config = runner.plan(first, dry_run=True)["config"]
    # The other grid finished seed 1 with this exact config, and seed 2 with another one (e.g. another budget).
    other_budget = json.loads(json.dumps(runner.plan(second, dry_run=True)["config"]))
    other_budget["train"]["epochs"] += 1
    for cell, cell_config in ((first, config), (second, other_budget)):
        path = grid_runner.run_json_path(str(results / "older"), cell)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump({"status": "done", "grid": "older", "config": cell_config, "metrics": {}}, f)
    assert runner.plan(first, dry_run=True)["status"] == "done"
    assert not os.path.exists(grid_runner.run_json_path(str(results / "t"), first)), "a dry run copies nothing"
    plans = [runner.plan(c, dry_run=False) for c in (first, second)]
    assert [p["status"] for p in plans] == ["done", "todo"]
    with open(grid_runner.run_json_path(str(results / "t"), first)) as f:
        copied = json.load(f)
    assert copied["grid"] == "older" and copied["reused_from"].endswith("older/runs/toy/sasrec/uniform/seed1.json")
    with pytest.raises(grid_mod.GridError, match="own runs"):
        grid_mod.load_grid(_write_grid(tmp_path, {"uniform": {}}, extra="reuse_runs_from: [t]\n"))


def test_config_hash_survives_a_new_default_key_but_not_a_changed_value() -> None:
    from mdcns_tf.config import Config

    config = Config().to_dict()
    config["sampler"]["name"] = "dns"
    digest = grid_runner.config_hash(config, "cache-a")
    # A run stored before a key existed lacks it; today's config holds its default: the same run.
    older = json.loads(json.dumps(config))
    del older["mdcns"]["pool_scope"]
    assert grid_runner.config_hash(older, "cache-a") == digest
    # Any value that differs, a default changed by the user included, is a different run; paths are not.
    changed = json.loads(json.dumps(config))
    changed["mdcns"]["pool_scope"] = "position"
    assert grid_runner.config_hash(changed, "cache-a") != digest
    assert grid_runner.config_hash(config, "cache-b") != digest
    moved = json.loads(json.dumps(config))
    moved["output_dir"] = "/elsewhere"
    assert grid_runner.config_hash(moved, "cache-a") == digest


def _fake_run(method: str, seed: int, ndcg10: float, recall10: float, order: int) -> dict:
    return {
        "status": "done",
        "cell": f"beauty_user/sasrec/{method}/seed{seed}",
        "dataset": "beauty_user",
        "backbone": "sasrec",
        "method": method,
        "seed": seed,
        "order": order,
        "metrics": {
            "test": {"ndcg@10": ndcg10, "recall@10": recall10, "ndcg@20": 0.1, "recall@20": 0.2, "mrr": 0.05},
            "best_epoch": 3 + seed,
            "epochs_run": 10,
            "history": [
                {"epoch": e, "val_ndcg_20": value * seed, "wall_time": 1000.0 + 10.0 * e * seed}
                for e, value in enumerate((0.01, 0.02, 0.048, 0.03, 0.05), start=1)
            ],
        },
        "timings": {
            "wall_seconds": 60.0,
            "train_seconds": 120.0,
            "seconds_per_epoch_median": 2.0 * seed,
            "launched_unix": 1000.0,
        },
        "published": {"ndcg@10": 0.0347, "recall@10": 0.0612, "source": "MDCNS Table 3"},
        "dataset_info": {"input": "Beauty.txt", "split": "user", "n_users": 5, "n_items": 7, "records": {}},
    }


def test_report_mean_std_by_hand(tmp_path) -> None:
    runs_dir = tmp_path / "runs" / "beauty_user" / "sasrec" / "uniform"
    runs_dir.mkdir(parents=True)
    (runs_dir / "seed1.json").write_text(json.dumps(_fake_run("uniform", 1, 0.05, 0.09, 0)))
    (runs_dir / "seed2.json").write_text(json.dumps(_fake_run("uniform", 2, 0.07, 0.10, 0)))
    runs = report.load_runs(str(tmp_path / "runs"))
    assert len(runs) == 2
    header = {
        "grid": "t",
        "command": "python -m benchmarks.quality --grid g.yaml",
        "grid_file": "g.yaml",
        "budget": {"train.epochs": 10},
        "seeds": [1, 2],
        "machine": {"cores": 2, "cpu_model": "cpu"},
        "versions": {"tensorflow": "2.21.0"},
        "updated": "now",
    }
    text = report.write_markdown(str(tmp_path / "results.md"), runs, header, ["a note"])
    # mean(.05, .07) = .06; sample std = sqrt(((-.01)^2 + .01^2) / (2 - 1)) = .0141421
    # mean(.09, .10) = .095; sample std = sqrt(2 * .005^2) = .0070711; best epoch 4, 5 -> 4.5 ± 0.7071;
    # s/epoch 2, 4 -> 3.0 ± 1.4; train minutes 2, 2 -> 2.0 ± 0.0; best validation .05, .10 -> .075 ± .0354, at
    # epoch 5 (50 s, 100 s -> 75 ± 35); 95% of it (.0475, .095) first at epoch 3 (30 s, 60 s -> 45 ± 21)
    row = (
        "| sasrec | uniform | 1,2 | 0.0600 ± 0.0141 | 0.0950 ± 0.0071 | 0.1000 ± 0.0000 | 0.2000 ± 0.0000 | "
        "0.0500 ± 0.0000 | 0.0347 / 0.0612 (MDCNS Table 3) | 4.5 ± 0.7 | 10.0 ± 0.0 | 3.0 ± 1.4 | 2.0 ± 0.0 | "
        "0.0750 ± 0.0354 | 75 ± 35 | 45 ± 21 | v1 (pre-fix) |"
    )
    assert row in text.splitlines()
    assert "- a note" in text
    assert open(tmp_path / "results.md").read() == text
    written = report.write_plots(str(tmp_path), runs)
    assert sorted(os.path.basename(p) for p in written) == ["ndcg10_beauty_user.png", "val_ndcg20_beauty_user.png"]
    assert all(os.path.getsize(p) > 1000 for p in written)


def test_single_seed_has_no_std() -> None:
    assert report.fmt_mean_std([0.5]) == "0.5000"
    assert report.fmt_mean_std([]) == "–"


def test_published_matching_follows_the_config_not_the_name() -> None:
    base = {
        "model": {"backbone": "sasrec"},
        "loss": {"name": "bce"},
        "trainer": "single",
        "sampler": {"name": "uniform", "num_negatives": 1},
        "mdcns": {
            "peer_backbone": "mamba4rec",
            "teacher": "mean",
            "no_distillation": False,
            "no_divergence": False,
            "self_view_only": False,
        },
    }
    assert published.lookup("x/Beauty.txt", "user", base).ndcg10 == 0.0347
    assert published.lookup("x/Beauty.txt", "loo", base).ndcg10 == 0.0318
    mdcns = {**base, "trainer": "mdcns"}
    assert published.lookup("LastFM.txt", "user", mdcns).recall10 == 0.2033
    gru = {**mdcns, "mdcns": {**base["mdcns"], "peer_backbone": "gru4rec"}}
    assert published.lookup("Beauty.txt", "user", gru).ndcg10 == 0.0663
    assert published.lookup("Beauty.txt", "user", {**base, "model": {"backbone": "gru4rec"}}) is None
    bce = (("dns", 0.0335), ("dns_mn", 0.0425), ("srns", 0.0416), ("adasir", 0.0497))
    bpr = (("mixgcf", 0.0297), ("mixgcf_plus", 0.0418), ("gnno", 0.0476))  # the authors' baselines default to BPR
    for loss, table3 in (("bce", bce), ("bpr", bpr)):
        for sampler, ndcg10 in table3:
            config = {**base, "loss": {"name": loss}, "sampler": {"name": sampler, "num_negatives": 1}}
            assert published.lookup("Beauty.txt", "user", config).ndcg10 == ndcg10
            other = {**config, "loss": {"name": "bpr" if loss == "bce" else "bce"}}
            assert published.lookup("Beauty.txt", "user", other) is None, (sampler, "other loss")
    assert published.lookup("Beauty.txt", "user", {**gru, "loss": {"name": "sampled_softmax"}}) is None
    assert published.lookup("Beauty.txt", "user", {**base, "sampler": {"name": "gdns", "num_negatives": 1}}) is None
    # SRNS as its official code runs it (BPR) is not the BCE number of the table.
    srns_bpr = {**base, "loss": {"name": "bpr"}, "sampler": {"name": "srns", "num_negatives": 1}}
    assert published.lookup("Beauty.txt", "user", srns_bpr) is None


def test_report_looks_the_published_number_up_from_the_run_config() -> None:
    run = _fake_run("srns", 1, 0.04, 0.08, 0)
    run["config"] = {
        "model": {"backbone": "sasrec"},
        "loss": {"name": "bce"},
        "trainer": "single",
        "sampler": {"name": "srns", "num_negatives": 1},
        "data": {},
    }
    # The run stored RNS's number (as if recorded before SRNS had one): the table shows what the config trained.
    row = next(line for line in report.results_table([run]).splitlines() if "| srns |" in line)
    assert "0.0416 (MDCNS Table 3 (best-of-grid, single seed), SRNS)" in row and "0.0347" not in row


def test_speed_harness_tiny(tmp_path) -> None:
    from benchmarks import speed

    # Only the reference variant and no pipeline run: a few seconds of tracing on a tiny shape.
    variants = speed.select_variants(speed.default_variants(), only="__nothing__")
    result = speed.run_speed(
        speed.TINY, rounds=2, steps=1, out_dir=str(tmp_path), variants=variants, pipeline_sizes=None, command="test"
    )
    (row,) = result["train_step"]
    assert row["variant"] == "sasrec/uniform" and row["ratio_to_uniform_sasrec"] == 1.0
    assert row["cpu_ratio_to_uniform_sasrec"] == 1.0 and row["step_cpu_ms_median"] > 0
    assert row["sequences_per_s"] > 0 and result["eval"][0]["users_per_s"] > 0
    written = json.load(open(tmp_path / "speed.json"))
    assert written["shape"]["batch"] == speed.TINY.batch
    assert set(ENVELOPE_KEYS) <= set(written) and "load_average_1m_end" in written["machine"]
    assert "| sasrec/uniform | reference |" in open(tmp_path / "speed.md").read()


def test_speed_reports_step_memory_and_the_fused_scan_holds_less_than_the_previous_one() -> None:
    from benchmarks import speed

    variants = speed.select_variants(speed.default_variants(), only="mamba4rec/uniform*")
    assert [v.name for v in variants] == [
        "sasrec/uniform",
        "sasrec/uniform@len12",
        "mamba4rec/uniform",
        "mamba4rec/uniform/previous-scan",
        "mamba4rec/uniform@len12",
    ]
    # TF's CPU allocator keeps statistics only with its oneDNN kernels on (the default on CPUs with AVX-512, not on
    # e.g. AMD EPYC), and they are chosen at import: measure in a process that has them, as the speed table says to.
    code = (
        "import json; from benchmarks import speed; "
        "variants = speed.select_variants(speed.default_variants(), only='mamba4rec/uniform*'); "
        "rows, _, notes = speed.measure_models(speed.TINY, variants[:1] + variants[2:4], rounds=1, steps=1); "
        "print(json.dumps([rows, notes]))"
    )
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows, notes = json.loads(done.stdout.strip().splitlines()[-1])
    assert not notes
    memory = {row["variant"]: row["step_peak_mib"] for row in rows}
    # The previous scan materialises (batch, L, d_inner, d_state) decays, drives and states; the fused one none.
    assert 0 < memory["mamba4rec/uniform"] < memory["mamba4rec/uniform/previous-scan"]


def test_speed_selects_backbones_samplers_and_a_length() -> None:
    from benchmarks import speed

    every = speed.default_variants()
    names = lambda variants: [v.name for v in variants]  # noqa: E731
    assert names(speed.select_variants(every, backbones=["sasrec", "mamba4rec"])) == [
        "sasrec/uniform",
        "mamba4rec/uniform",
    ]
    # Both AutoSample stages; the reference comes first whether or not it was asked for.
    reference, *chosen = names(speed.select_variants(every, samplers=["gnno", "autosample"]))
    assert reference == "sasrec/uniform"
    assert sorted(chosen) == ["sasrec/autosample", "sasrec/autosample/retrain", "sasrec/gnno"]
    # At a length, every variant and its reference are trimmed; the full-length reference is not needed.
    at12 = speed.select_variants(every, backbones=["mamba4rec"], seq_len=12)
    assert names(at12) == ["sasrec/uniform@len12", "mamba4rec/uniform@len12"]
    assert {speed.length_reference(v) for v in at12} == {"sasrec/uniform@len12"}
    # Several --only patterns: any may match.
    assert names(speed.select_variants(every, only="full-softmax,mdcns/sasrec+gru4rec")) == [
        "sasrec/uniform",
        "sasrec/full-softmax",
        "mdcns/sasrec+gru4rec",
        "mdcns/sasrec+gru4rec/position-pools",  # a pattern without wildcards is a substring
    ]
    # --only keeps the same-length reference of what it selects (the suite's own length-12 rows).
    assert names(speed.select_variants(every, only="mamba4rec/uniform@len12")) == [
        "sasrec/uniform",
        "sasrec/uniform@len12",
        "mamba4rec/uniform@len12",
    ]


def test_interleaved_rounds_rotate_and_ratios_are_per_round() -> None:
    calls: list[str] = []
    times = timing.interleaved({name: (lambda n=name: calls.append(n)) for name in "abc"}, rounds=3, units=2)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(times.wall[n]) == 3 and len(times.cpu[n]) == 3 for n in "abc")
    # Round 2 was twice as slow for both: the per-round ratio ignores it.
    samples = {"ref": [1.0, 2.0, 1.0], "x": [3.0, 6.0, 3.0]}
    assert timing.ratios(samples, "ref") == {"ref": 1.0, "x": 3.0}
    if timing.machine_cpu_seconds() is not None:  # Linux: the rest of the machine is recorded for every call
        assert all(len(times.others_cpu[n]) == 3 and min(times.stolen[n]) >= 0 for n in "abc")


def test_machine_cpu_seconds_reads_busy_and_steal_columns(tmp_path) -> None:
    import os

    tick = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text(f"cpu  {100 * tick} {10 * tick} {20 * tick} 999999 55 {tick} {2 * tick} {7 * tick} 0 0\ncpu0 1 2\n")
    assert timing.machine_cpu_seconds(str(stat)) == (133.0, 7.0)  # idle and iowait are not busy
    assert timing.machine_cpu_seconds(str(tmp_path / "absent")) is None
    stat.write_text("intr 1 2 3\n")
    assert timing.machine_cpu_seconds(str(stat)) is None


ENVELOPE_KEYS = ("command", common.TIMESTAMP_KEY, "machine", "versions", "git")


def test_every_result_has_one_envelope_and_old_timestamps_still_read() -> None:
    head = common.envelope("python -m benchmarks.x --y")
    assert list(head) == list(ENVELOPE_KEYS) and "load_average_1m" in head["machine"]
    assert common.close(head)["machine"]["load_average_1m_end"] is not None
    for key in ("measured_at", "when", "date", "finished_at", "updated"):
        assert common.measured_at({key: "2026-01-01T00:00:00+00:00"}) == "2026-01-01T00:00:00+00:00"
    # The committed results of the retired step-time scripts keep their own key.
    with open(os.path.join(REPO, "benchmarks", "results", "sampler_step_time.json")) as f:
        assert common.measured_at(json.load(f)).startswith("2026")


ENTRY_POINT_MODULES = {
    "mdcns_tf.train",
    "mdcns_tf.evaluate",
    "mdcns_tf.recommend",
    "mdcns_tf.export",
    "pipeline.run",
    "serving.client",
} | {f"benchmarks.{os.path.basename(p)[:-3]}" for p in glob.glob(os.path.join(REPO, "benchmarks", "*.py"))}
# The benchmarks' shared modules (no `main`): what the entry points import.
LIBRARY = ("__init__", "common", "commands", "timing", "grid", "grid_runner", "published", "report", "synthetic_steps")
LIBRARY_MODULES = {f"benchmarks.{m}" for m in LIBRARY}


def _imported_modules(path: str) -> set[str]:
    import ast

    with open(path) as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    return found


def test_no_module_imports_an_entry_point() -> None:
    entry_points = ENTRY_POINT_MODULES - LIBRARY_MODULES
    offenders = []
    for package in ("mdcns_tf", "benchmarks", "pipeline", "serving"):
        for path in glob.glob(os.path.join(REPO, package, "**", "*.py"), recursive=True):
            relative = os.path.relpath(path, REPO)
            offenders += [f"{relative} imports {module}" for module in _imported_modules(path) & entry_points]
    assert not offenders


def test_eval_speed_harness_compares_both_orders(tiny_dataset, tmp_path) -> None:
    from benchmarks import eval_speed

    output = str(tmp_path / "eval_speed.json")
    assert eval_speed.main(["--data", tiny_dataset, "--backbones", "sasrec", "--rounds", "1", "--output", output]) == 0
    with open(output) as f:
        result = json.load(f)
    (row,) = result["rows"]
    assert row["backbone"] == "sasrec" and row["file_order_s"] > 0 and row["bucketed_s"] > 0
    assert row["max_metric_difference"] < 1e-6
    assert result["command"].startswith("python -m benchmarks.eval_speed")


def test_eval_speed_ranking_harness_measures_both_kernels_against_the_ceiling(tmp_path) -> None:
    from benchmarks import eval_speed

    output = str(tmp_path / "eval_ranking.json")
    argv = ["--ranking", "--items", "3001", "--batch", "40", "--rounds", "1", "--ceiling-size", "300"]
    assert eval_speed.main([*argv, "--history", "9", "--reference-users", "8", "--output", output]) == 0
    with open(output) as f:
        result = json.load(f)
    (row,) = result["rows"]
    assert (row["n_items"], row["batch"], row["reference_users"]) == (3001, 40, 8)
    assert row["old_users_per_s"] > 0 and row["new_users_per_s"] > 0 and row["ceiling_users_per_s"] > 0
    # users/s ceiling = FLOP/s / (2 n d); shares are per round
    assert row["ceiling_users_per_s"] == pytest.approx(row["ceiling_gflops"] * 1e9 / (2 * 3001 * 64), rel=0.01)
    assert row["ranks_differing_old_new"] == 0 and row["ranks_differing_new_float64"] == 0
    assert result["command"].startswith("python -m benchmarks.eval_speed --ranking")


def test_split_file_is_passed_to_the_pipeline_and_keys_the_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MDCNS_DATA_CACHE", str(tmp_path / "cache"))
    extra = "    split_file: splits/toy_split.tsv\n"
    path = _write_grid(tmp_path, {"uniform": {}})
    text = open(path).read().replace("    config: ds.yaml\n", "    config: ds.yaml\n" + extra)
    open(path, "w").write(text.replace("split: loo", "split: user"))
    spec = grid_mod.load_grid(path)
    toy = spec.datasets["toy"]
    assert toy.split_file == "splits/toy_split.tsv"
    command = grid_runner.pipeline_command(toy, "/data", "/out")
    assert command[command.index("--split_file") + 1] == "/data/splits/toy_split.tsv"
    # Another split file is another dataset: a cached copy made with the seeded split is never reused for it.
    seeded = grid_mod.DatasetSpec("toy", toy.input, toy.input_format, toy.split, toy.configs)
    assert seeded.cache_key() != toy.cache_key()
    # The raw file is present but the split file is not: the dataset is skipped with a note naming the split file.
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "toy.txt").write_text("1 1 2 3\n")
    runner = grid_runner.GridRunner(spec, str(tmp_path / "raw"), str(tmp_path / "results"), "cmd")
    assert runner.plan(spec.cells()[0], dry_run=True) is None
    assert "toy_split.tsv is absent" in runner.notes["toy"]


def test_report_marks_the_metric_version_of_each_row() -> None:
    old = _fake_run("uniform", 1, 0.03, 0.06, 0)
    new = _fake_run("mdcns", 1, 0.05, 0.09, 1)
    new["metrics"]["metric_version"] = 2
    table = report.results_table([old, new])
    uniform_row = next(line for line in table.splitlines() if "| uniform |" in line)
    mdcns_row = next(line for line in table.splitlines() if "| mdcns |" in line)
    assert uniform_row.rstrip(" |").endswith("v1 (pre-fix)") and mdcns_row.rstrip(" |").endswith("v2")
    assert report.metric_versions_label([old, new]) == "metric v1/v2 (pre-fix)"


def test_convergence_curves_count_seconds_from_the_launch_and_steps_per_epoch() -> None:
    run = {
        "metrics": {
            "steps_per_epoch": 65,
            "history": [
                {"epoch": 1, "wall_time": 1000.0 + 30.0, "val_ndcg_20": 0.01},
                {"epoch": 2, "wall_time": 1000.0 + 40.5, "val_ndcg_20": 0.055},
                {"epoch": 3, "wall_time": 1000.0 + 50.0, "val_ndcg_20": 0.054},
                {"epoch": 4, "wall_time": 1000.0 + 61.0, "val_ndcg_20": 0.063},
            ],
        },
        "timings": {"launched_unix": 1000.0},
    }
    points = report.validation_curve(run)
    assert [(p["epoch"], p["steps"], p["seconds"]) for p in points] == [
        (1, 65, 30.0),
        (2, 130, 40.5),
        (3, 195, 50.0),
        (4, 260, 61.0),
    ]
    summary = converge.summarize_curve("mdcns", points, "cell")
    assert summary["reached"]["0.053"]["epoch"] == 2 and summary["reached"]["0.058"]["epoch"] == 4
    assert summary["reached"]["0.062"]["seconds"] == 61.0 and summary["best"]["value"] == 0.063
    assert report.first_reaching(points, 0.07) is None
    # Time to quality in the results table: the best (.063) at 61 s; 80% of it (.0504) first at epoch 2, 40.5 s.
    assert report.seconds_to_quality(run) == 61.0 and report.seconds_to_quality(run, 0.8) == 40.5


def test_a_resumed_run_has_no_seconds_axis_and_no_train_time() -> None:
    from benchmarks import report

    history = [{"epoch": e, "wall_time": 1000.0 + 10 * e, "val_ndcg_20": 0.01 * e} for e in (1, 2, 3)]
    run = {"metrics": {"steps_per_epoch": 5, "history": history}, "timings": {"launched_unix": 1015.0}}
    # Epoch 1 ended (1010) before this process launched (1015): an earlier process trained it.
    assert report.resumed(run) and not report.resumed(run | {"timings": {"launched_unix": 1005.0}})
    assert [p["seconds"] for p in report.validation_curve(run)] == [None, None, None]
    assert [p["steps"] for p in report.validation_curve(run)] == [5, 10, 15]  # steps and epochs still count

    def cell(seed: int, launched: float, train_seconds: float) -> dict:
        metrics = {"history": history, "test": {"ndcg@10": 0.05}, "best_epoch": 3, "epochs_run": 3}
        timings = {"launched_unix": launched, "seconds_per_epoch_median": 10.0, "train_seconds": train_seconds}
        return {"dataset": "d", "backbone": "b", "method": "m", "seed": seed, "metrics": metrics, "timings": timings}

    row = report.results_table([cell(1, 1005.0, 600.0), cell(2, 1015.0, 60.0)], ("ndcg@10",)).splitlines()[-1]
    cells = row.split(" | ")
    assert cells[-5] == "10.0"  # train min: the whole run only, not the resumed run's last 60 s
    assert cells[-3:-1] == ["25", "25"]  # to the best (epoch 3, 1030 s) from the launch (1005 s): the whole run only


def test_authors_curves_count_epochs_from_one_at_121_steps() -> None:
    parsed = {
        "epochs": [
            {"epoch": 0, "valid": {"ndcg@20": 0.006}, "train_seconds": 60.0, "eval_seconds": 5.0},
            {"epoch": 1, "valid": {"ndcg@20": 0.004}, "train_seconds": 50.0, "eval_seconds": None},
        ]
    }
    points = converge.authors_curve(parsed)
    assert [(p["epoch"], p["steps"], p["seconds"], p["value"]) for p in points] == [
        (1, 121, 65.0, 0.006),
        (2, 242, 115.0, 0.004),
    ]
    # A log that prints no timings (their baselines') has no seconds axis, not one stuck at zero.
    untimed = {"epochs": [{"epoch": 0, "valid": {"ndcg@20": 0.01}, "train_seconds": None, "eval_seconds": None}]}
    assert converge.authors_curve(untimed)[0]["seconds"] is None


def test_unfinished_runs_are_drawn_from_their_selection_state(tmp_path) -> None:
    (tmp_path / "best").mkdir()
    history = [{"epoch": 1, "val_ndcg_20": 0.002}, {"epoch": 2, "loss": 1.0}, {"epoch": 3, "val_ndcg_20": 0.03}]
    (tmp_path / "best" / "state.json").write_text(json.dumps({"history": history}))
    (tmp_path / "train.log").write_text("INFO training mdcns (...): 123086 samples, 123 steps/epoch, up to 300\n")
    points = converge.unfinished_curve(str(tmp_path))
    assert points == [
        {"epoch": 1, "steps": 123, "seconds": None, "value": 0.002},
        {"epoch": 3, "steps": 369, "seconds": None, "value": 0.03},
    ]


def test_large_catalog_runs_a_configuration_at_its_own_batch(tmp_path) -> None:
    from benchmarks import large_catalog

    with pytest.raises(SystemExit, match="unknown configuration 'sofmax'"):
        large_catalog.parse_config("sofmax@8")
    with pytest.raises(SystemExit, match="positive integer"):
        large_catalog.parse_config("softmax@0")
    out = tmp_path / "large.json"
    small = ["--n-items", "300", "--n-users", "40", "--steps", "4", "--max-len", "10", "--dim", "8"]
    large_catalog.main(
        [*small, "--batch", "8", "--eval-users", "16", "--eval-batch", "16", "--chunk", "128"]
        + ["--configs", "mdcns,softmax@4", "--data-dir", str(tmp_path / "data"), "--output", str(out)]
    )
    results = json.load(open(out))["results"]
    assert (results["mdcns"]["batch"], results["mdcns"]["steps_per_epoch"]) == (8, 5)  # 40 training sequences
    softmax = results["softmax@4"]
    assert (softmax["batch"], softmax["steps_per_epoch"], softmax["timed_steps"]) == (4, 10, 4)
    assert "loss.name=softmax" in softmax["config_overrides"] and "data.batch_size=4" in softmax["config_overrides"]
    assert softmax["epoch_seconds_at_median_step"] == pytest.approx(10 * softmax["step_ms_median"] / 1000, abs=0.1)
    from mdcns_tf.metrics import METRIC_VERSION

    assert {row["metric_version"] for row in results.values()} == {METRIC_VERSION}  # its NDCG says how it was ranked


def test_breakdown_groups_users_by_target_popularity_and_history_with_paired_gaps() -> None:
    import numpy as np

    from benchmarks.breakdown import UserRanks, compare

    # Six users; targets' training counts 50, 40, 30, 20, 10, 0 -> thirds {0, 1}, {2, 3}, {4, 5}.
    counts = np.array([50, 40, 30, 20, 10, 0])
    lengths = np.array([4, 5, 6, 8, 13, 20])
    a = UserRanks(np.array([0, 1, 0, 100, 100, 3]), counts, lengths)
    b = UserRanks(np.array([0, 1, 100, 100, 0, 0]), counts, lengths)
    rows = {row["group"]: row for row in compare({"a": a, "b": b})}
    # NDCG@10 of ranks 0, 1, 3: 1, 1/log2(3), 1/log2(5); 0 beyond the top 10.
    n0, n1, n3 = 1.0, 1 / np.log2(3), 1 / np.log2(5)
    assert rows["all users"]["ndcg@10:a"] == round((n0 + n1 + n0 + n3) / 6, 4)
    assert rows["popular third"]["users"] == 2 and rows["popular third"]["gap:b"] == 0.0
    assert rows["middle third"]["gap:b"] == round(-n0 / 2, 4)  # user 2 lost its top hit
    assert rows["rare third"]["gap:b"] == round((n0 + n0 - n3) / 2, 4)
    assert rows["rare third"]["target_train_count_range"] == [0, 10]
    assert rows["history 4-6"]["users"] == 3 and rows["history 13+"]["users"] == 2
    assert "history 1-3" not in rows  # an empty group has no row
    assert rows["middle third"]["recall@10:a"] == 0.5


def test_breakdown_table_states_its_metric_version() -> None:
    from benchmarks.breakdown import markdown

    result = {"command": "c", "split": "test", "runs": {"a": "ra", "b": "rb"}, "rows": []}
    result |= {"machine": {"cores": 2, "cpu_model": "x"}, "measured_at": "t"}
    assert "metric version 1" in markdown(result)  # written before the version was recorded: pre-fix
    assert "metric version 2" in markdown(result | {"metric_version": 2})


def test_pipeline_scaling_append_keeps_rows_and_says_whose_skips_are_whose() -> None:
    from benchmarks.pipeline_scaling import merge

    earlier = {"command": "scaling --sizes 1000000", "rows": [{"events": 1_000_000, "runner": "dask"}]}
    earlier["skipped"] = ["sizes above 1000000 events: not run"]
    later = {"command": "scaling --sizes 10000000 --append", "rows": [{"events": 10_000_000, "runner": "direct"}]}
    later["skipped"] = []
    merged = merge(earlier, later)
    assert [row["events"] for row in merged["rows"]] == [1_000_000, 10_000_000]
    assert merged["skipped"] == ["earlier run (scaling --sizes 1000000): sizes above 1000000 events: not run"]
    assert merged["earlier_runs"][0]["command"] == "scaling --sizes 1000000"
    # Merged again, an earlier skip is not prefixed twice.
    assert merge(merged, later)["skipped"] == merged["skipped"]
    # Appended rounds of a size measured before are numbered after its rounds (round-by-round ratios pair them).
    first = {"command": "a", "skipped": [], "rows": [{"events": 10, "runner": r, "repeat": 1} for r in ("x", "y")]}
    again = {"command": "b", "skipped": [], "rows": [{"events": 10, "runner": "x", "repeat": 1}]}
    assert [(row["runner"], row["repeat"]) for row in merge(first, again)["rows"]] == [("x", 1), ("x", 2), ("y", 1)]


def test_convergence_thresholds_are_a_flag_the_table_and_json_follow(tmp_path) -> None:
    from benchmarks import converge

    assert converge.parse_thresholds("0.04,0.045") == (0.04, 0.045)
    for bad in ("0.05,0.04", "x", "", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            converge.parse_thresholds(bad)
    points = [{"epoch": e, "steps": 10 * e, "seconds": None, "value": v} for e, v in ((1, 0.039), (2, 0.041))]
    summary = converge.summarize_curve("rns", points, "cell", thresholds=(0.04, 0.045))
    assert summary["reached"] == {"0.040": points[1], "0.045": None}
    header = {"grid": "toy", "command": "cmd", "metric_version": 2, "thresholds": [0.04, 0.045]}
    table = converge.markdown([summary], header)
    assert "first >= 0.040" in table and "first >= 0.045" in table and "0.053" not in table
    assert "| rns | 2 | 0.0410 (2) | 2 / 20 / – | – / – / – |" in table


def test_convergence_report_draws_only_the_matching_cells(tmp_path) -> None:
    history = [
        {"epoch": 1, "wall_time": 10.0, "val_ndcg_20": 0.05},
        {"epoch": 2, "wall_time": 20.0, "val_ndcg_20": 0.06},
    ]
    for method in ("uniform", "mdcns", "mdcns_pool"):
        path = tmp_path / "runs" / "toy" / "sasrec" / method / "seed1.json"
        path.parent.mkdir(parents=True)
        run = {
            "status": "done",
            "grid": "toy",
            "cell": f"toy/sasrec/{method}/seed1",
            "method": method,
            "seed": 1,
            "metrics": {"steps_per_epoch": 10, "history": history},
            "timings": {"launched_unix": 0.0, "load_average_1m_before": 0.5, "load_average_1m_after": 1.3},
            "machine": {"cores": 2, "cpu_model": "Xeon"},
        }
        path.write_text(json.dumps(run))
    payload = converge.build_report("toy", str(tmp_path), "cmd", "", [], only="*/mdcns/*,uniform")
    assert sorted(c["label"] for c in payload["curves"]) == ["mdcns seed1", "uniform seed1"]
    assert len(converge.build_report("toy", str(tmp_path), "cmd", "", [])["curves"]) == 3
    # Each row says where its run trained (its own JSON), not where the report was written.
    table = (tmp_path / "convergence.md").read_text()
    assert "| 2 cores, Xeon, load 0.5 -> 1.3 |" in table and "Machine:" not in table


def test_epoch_time_times_real_epochs_of_grid_cells_side_by_side(tmp_path, monkeypatch) -> None:
    from benchmarks import epoch_time

    monkeypatch.setenv("MDCNS_DATA_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    (tmp_path / "raw").mkdir()
    lines = [" ".join(map(str, [u, *rng.integers(1, 40, size=rng.integers(4, 12))])) for u in range(1, 61)]
    (tmp_path / "raw" / "toy.txt").write_text("\n".join(lines) + "\n")
    small = {"model.dim": 8, "data.max_len": 10, "data.batch_size": 16}
    methods = {"uniform": small, "pospool": {**small, "trainer": "mdcns", "mdcns.pool_scope": "position"}}
    grid = _write_grid(tmp_path, methods)
    args = ["--grid", grid, "--cells", "uniform,pospool", "--rounds", "2", "--data-root", str(tmp_path / "raw")]
    assert epoch_time.main([*args, "--results", str(tmp_path / "out")]) == 0
    result = json.load(open(tmp_path / "out" / "epoch_time.json"))
    assert result["reference"] == "uniform" and [c["cell"] for c in result["cells"]] == [
        "toy/sasrec/uniform/seed1",
        "toy/sasrec/pospool/seed1",
    ]
    reference, pospool = result["cells"]
    assert reference["ratio_to_reference"] == 1.0 and len(pospool["epoch_s_rounds"]) == 2
    # 60 users, batch 16: at least ceil(60 / 16) batches; length buckets can add partial ones
    assert reference["steps_per_epoch"] == pospool["steps_per_epoch"] >= 4
    assert (
        pospool["ratio_to_reference"] > 0
        and "| toy/sasrec/pospool/seed1 |" in open(tmp_path / "out" / "epoch_time.md").read()
    )
    assert epoch_time.main([*args[:2], "--cells", "uniform,nope"]) == 2


# --- pipeline_scaling, its columnar floor and compare_outputs -----------------------------------------------------


def _tiny_log(folder) -> int:
    """A few hundred rows in two files (+ a hidden file neither reads): integer, negative, zero-padded and word keys,
    ties on the timestamp within and across files, float timestamps, a user with 2 events (dropped). Events."""
    import random

    rng = random.Random(3)
    users = ["1", "2", "10", "-3", "alice", "bob", "007", "7"]
    items = ["5", "12", "x", "007", "7", "-1", "book", "40", "3"]
    rows = [(u, rng.choice(items), str(rng.randint(0, 40) * 10)) for u in users for _ in range(rng.randint(15, 40))]
    rows += [("shortuser", "5", "1"), ("shortuser", "x", "2"), ("alice", "12", "1.5"), ("alice", "3", "1.5")]
    rng.shuffle(rows)
    folder.mkdir()
    half = len(rows) // 2
    for name, part in (("a.tsv", rows[:half]), ("b.tsv", rows[half:])):
        (folder / name).write_text("".join(f"{u}\t{i}\t{t}\n" for u, i, t in part))
    (folder / ".hidden").write_text("99\t99\t99\n")
    return len(rows)


@pytest.fixture(scope="module")
def tiny_outputs(tmp_path_factory):
    """The tiny log, two pipeline runs on it (the direct runner in-process) and the columnar reference's output."""
    from benchmarks import columnar_reference
    from pipeline import run

    root = tmp_path_factory.mktemp("scaling")
    events = _tiny_log(root / "log")
    for name in ("a", "b"):
        argv = ["--input", str(root / "log"), "--input_format", "interactions", "--split", "loo"]
        assert run.main([*argv, "--output", str(root / name)]) == 0
    assert columnar_reference.main(["--input", str(root / "log"), "--output", str(root / "ref")]) == 0
    return root, events


def test_columnar_reference_writes_the_pipelines_records_and_vocabularies(tiny_outputs) -> None:
    from benchmarks import compare_outputs

    root, events = tiny_outputs
    result = compare_outputs.compare(str(root / "a"), str(root / "ref"), parts=("records", "vocabularies"))
    assert result["identical"], compare_outputs.report(result)
    ref, pipe = (json.loads((root / d / "metadata.json").read_text()) for d in ("ref", "a"))
    assert "not the product" in ref["reference"]
    assert ref["item_counts"] == pipe["item_counts"] and ref["records"] == pipe["records"]
    for key in ("rows_read", "rows_written", "rows_filtered", "users_read", "users_written"):
        assert ref["counts"][key] == pipe["counts"][key], key
    assert pipe["counts"]["rows_read"] == events and pipe["counts"]["rows_filtered"] == 2  # "shortuser"


def test_columnar_reference_encodes_like_the_pipeline_and_orders_keys_like_it() -> None:
    from benchmarks import columnar_reference
    from pipeline import encoding, vocabulary

    encoder = columnar_reference.ExampleEncoder(n_items=20000)
    for user, ids, target in ((1, [], 0), (7, [1, 2, 3], 0), (129, [300, 127, 128], 5), (2**40, [16384], 2**33)):
        assert encoder.encode(user, encoder.packed(ids), target) == encoding.encode_example(user, ids, target)
    keys = ["10", "9", "-2", "-10", "007", "7", "0", "-0", "+3", "b", "a", "1e3", "x7", ""]
    assert columnar_reference.vocabulary_order(keys) == vocabulary.vocabulary_order(keys)


def test_compare_outputs_same_folder_two_runs_and_an_altered_record_file(tiny_outputs, tmp_path, capsys) -> None:
    import gzip
    import shutil

    from benchmarks import compare_outputs
    from pipeline import encoding

    root, _ = tiny_outputs
    a, b = str(root / "a"), str(root / "b")
    assert compare_outputs.main([a, a]) == 0
    out = str(tmp_path / "cmp.json")
    assert compare_outputs.main([a, b, "--json", out]) == 0  # two runs: other paths and run, same data
    assert json.load(open(out))["identical"] is True
    assert "identical" in capsys.readouterr().out

    altered = tmp_path / "altered"
    shutil.copytree(b, altered)
    (path,) = glob.glob(str(altered / "valid" / "*.tfrecord.gz"))
    with gzip.open(path, "ab") as f:  # one more record, in a second gzip member
        f.write(_tfrecord(encoding.encode_example(1, [1, 2], 3)))
    assert compare_outputs.main([a, str(altered), "--json", out]) == 1
    result = json.load(open(out))
    (diff,) = [d for d in result["differences"] if d["part"] == "records"]
    assert diff["what"] == "valid records" and diff["only_in_b"] == 1 and diff["only_in_a"] == 0
    assert diff["examples_only_in_b"] == [{"user_index": 1, "item_ids": [1, 2], "target": 3}]
    assert "DIFFERENT" in capsys.readouterr().out

    (altered / "items.txt").write_text("other\n")
    meta = json.loads((altered / "metadata.json").read_text())
    meta["counts"]["rows_read"] += 1
    meta["source"]["input"] = "/elsewhere"  # a path: not content
    (altered / "metadata.json").write_text(json.dumps(meta))
    whats = {d["what"] for d in compare_outputs.compare(a, str(altered))["differences"]}
    assert {"items.txt differs", "metadata.json counts.rows_read"} <= whats
    assert not any("source.input" in w for w in whats)


def _tfrecord(data: bytes) -> bytes:
    import struct

    from apache_beam.io.tfrecordio import _TFRecordUtil

    length = struct.pack("<Q", len(data))
    crc = _TFRecordUtil._masked_crc32c
    return length + struct.pack("<I", crc(length)) + data + struct.pack("<I", crc(data))


def test_compare_outputs_leaves_run_identity_out_of_the_metadata() -> None:
    from benchmarks.compare_outputs import diff_json

    a = {"counts": {"rows_read": 5}, "run_id": "x", "source": {"input": "/a", "files": ["/a/l.tsv"]}}
    b = {"counts": {"rows_read": 5}, "run_id": "y", "source": {"input": "/b", "files": ["/b/l.tsv"]}}
    assert diff_json(a, b) == []
    b["source"]["files"] = ["/b/other.tsv"]
    b["fingerprint"] = {"splits": {"train": {"records": 3, "files": {"p": "h"}}}}
    assert [d["key"] for d in diff_json(a, b)] == ["source.files", "fingerprint.splits.train.records"]
    assert diff_json(a, b, ignore=["source.files", "fingerprint.*"]) == []


def test_pipeline_scaling_counts_the_cpu_of_the_tree_checks_the_metadata_and_keeps_failures(tmp_path) -> None:
    from benchmarks import pipeline_scaling as scaling

    cache, out = tmp_path / "logs", tmp_path / "scaling.json"
    argv = ["--sizes", "600", "--events-per-file", "250", "--runners", "direct1,columnar", "--log-cache", str(cache)]
    assert scaling.main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {row["runner"]: row for row in result["rows"]}
    assert set(rows) == {"direct1", "columnar"}
    for row in rows.values():
        assert row["ok"] and row["metadata_problems"] == [] and row["files"] == 3
        assert row["metadata"]["rows_read"] == 600 and row["metadata"]["records"]["test"] == 30
        # polled: a lower bound (a process that ends between two polls keeps its last value; wait4 has it all)
        assert 0 <= row["cpu"]["polled"] <= row["cpu"]["wait4"] == row["cpu_seconds"] > 0
        assert row["cpu"]["descendants_reaped"]
        assert row["cpu_seconds_per_million_events"] == pytest.approx(row["cpu_seconds"] / 600 * 1e6, abs=10)
        assert row["peak_rss_mb"]["launcher"] > 50 and row["peak_rss_mb_max"] >= row["peak_rss_mb"]["launcher"]
    assert rows["direct1"]["reported_runner"] and rows["direct1"]["peak_rss_mb"]["workers"] == []
    summary = result["summary"]["600"]
    assert summary["runners"]["direct1"]["ok_runs"] == "1 of 1" and "cpu direct1 / columnar" in summary["ratios"]

    # The log is reused; a changed parameter writes another.
    marker = json.loads((cache / "log_600_per250_seed0" / scaling.LOG_MARKER).read_text())
    assert marker["params"]["events"] == 600 and marker["files"] == ["log-0000.tsv", "log-0001.tsv", "log-0002.tsv"]
    assert scaling.cached_log(str(cache), 600, 250, 0)[2] is True
    assert scaling.cached_log(str(cache), 600, 300, 0)[2] is False

    # A failing run is a row, not a crash.
    (tmp_path / "empty").mkdir()
    failed = scaling.run_once("direct1", str(tmp_path / "empty"), str(tmp_path / "o"), timeout=120, events=600)
    assert failed["ok"] is False and failed["exit_code"] == 2 and any("error" in x for x in failed["log_tail"])


def test_pipeline_scaling_runner_names_and_ratios() -> None:
    from benchmarks import pipeline_scaling as scaling

    assert scaling.canonical("direct") == "direct2"
    with pytest.raises(ValueError):
        scaling.canonical("spark")
    rows = [
        {"events": 10, "runner": "direct1", "ok": True, "seconds": 10.0, "events_per_s": 1, "cpu_seconds": 9.0},
        {"events": 10, "runner": "direct", "seconds": 5.0, "events_per_s": 2},  # an older row: no ok field
        {"events": 10, "runner": "dask", "ok": True, "seconds": 20.0, "events_per_s": 1, "cpu_seconds": 30.0},
        {"events": 10, "runner": "dask", "ok": False, "seconds": 1.0, "events_per_s": 9, "cpu_seconds": 1.0},
        {"events": 10, "runner": "columnar", "ok": True, "seconds": 1.0, "events_per_s": 10, "cpu_seconds": 1.5},
    ]
    summary = scaling.summarize(rows)["10"]
    assert summary["runners"]["dask"]["ok_runs"] == "1 of 2" and summary["runners"]["dask"]["seconds"] == 20.0
    assert summary["ratios"]["wall direct / direct1"] == 0.5
    assert summary["ratios"]["events_per_s dask / direct2"] == 0.5  # the older "direct" rows stand for direct2
    assert summary["ratios"]["cpu dask / columnar"] == 20.0
    assert "wall dask / direct1, round by round" not in summary["ratios"]  # no repeat numbers: no rounds
    rounds = [
        {"events": 10, "runner": runner, "repeat": repeat, "ok": ok, "seconds": seconds, "events_per_s": 1}
        for runner, repeat, ok, seconds in (
            ("direct1", 1, True, 10.0),
            ("default", 1, True, 6.0),
            ("direct1", 2, True, 20.0),
            ("default", 2, True, 11.0),
            ("direct1", 3, False, 1.0),  # a failed run pairs with nothing
            ("default", 3, True, 7.0),
        )
    ]
    ratios = scaling.summarize(rounds)["10"]["ratios"]
    assert ratios["wall default / direct1, round by round"] == [0.6, 0.55]
    assert ratios["wall default / direct1"] == round(7.0 / 15.0, 3)  # medians of the ok runs
    # The machine's own ceiling is compared with itself, never with the pipeline.
    ceiling = [
        {"events": 10, "runner": runner, "repeat": 1, "ok": True, "seconds": seconds, "events_per_s": 1}
        for runner, seconds in (("direct1", 10.0), ("ceiling1", 4.0), ("ceiling2", 2.2))
    ]
    ratios = scaling.summarize(ceiling)["10"]["ratios"]
    assert ratios == {"wall ceiling2 / ceiling1": 0.55, "wall ceiling2 / ceiling1, round by round": [0.55]}


def test_parallel_ceiling_splits_the_same_work_over_processes(tmp_path) -> None:
    from benchmarks import parallel_ceiling
    from benchmarks import pipeline_scaling as scaling

    log, files = scaling.cached_log(str(tmp_path), 400, 100, 0)[:2]
    # By hand for one file: its users' groups, each sorted by time, as pickle + zlib.
    groups: dict = {}
    with open(files[0], encoding="utf-8") as f:
        lines = f.read().splitlines()
    for line in lines:
        user, item, ts = line.split()
        groups.setdefault(user, []).append((int(ts), item))
    expected = len(zlib.compress(pickle.dumps({u: sorted(v) for u, v in groups.items()}, protocol=5), 1))
    assert parallel_ceiling.group_file(files[0]) == expected
    each = sum(map(parallel_ceiling.group_file, files))
    assert parallel_ceiling.run(files, 2) == parallel_ceiling.run(files, 1) == each
    row = scaling.run_once("ceiling2", log, str(tmp_path / "out"), timeout=120, events=400)
    assert row["ok"] and row["metadata"] is None, row.get("log_tail")
    with pytest.raises(SystemExit):
        parallel_ceiling.main(["--input", log, "--processes", "3", "--files", "4"])  # 4 files do not split in 3


def test_pipeline_scaling_dask_counts_the_cluster(tmp_path) -> None:
    pytest.importorskip("distributed")
    from benchmarks import pipeline_scaling as scaling

    log, _ = scaling.cached_log(str(tmp_path), 400, 200, 0)[:2]
    row = scaling.run_once("dask", log, str(tmp_path / "out"), timeout=120, events=400)
    assert row["ok"], row.get("log_tail")
    assert row["cpu"]["cluster"] > 0 and len(row["cpu"]["per_process"]["workers"]) == 2
    parts = row["cpu"]["cluster"] + row["cpu"]["scheduler"] + max(row["cpu"]["wait4"], row["cpu"]["polled"])
    assert row["cpu_seconds"] == pytest.approx(parts, abs=0.05) and len(row["peak_rss_mb"]["workers"]) == 2


def test_pipeline_stages_times_every_stage_of_one_run(tmp_path) -> None:
    from benchmarks import pipeline_stages

    events = _tiny_log(tmp_path / "log")
    out = tmp_path / "stages.json"
    flags = [f"--input={tmp_path / 'log'}", f"--output={tmp_path / 'o'}", "--input_format=interactions", "--split=loo"]
    assert pipeline_stages.main(["--out", str(out), "--", *flags]) == 0
    result = json.loads(out.read_text())
    names = [stage["stage"] for stage in result["stages"]]
    assert any("BuildSequences/GroupByBlock/Read" in n for n in names)
    assert any("Finish-WriteMetadata" in n for n in names)
    stage_seconds = sum(stage["seconds"] for stage in result["stages"])
    assert 0 < stage_seconds <= result["stages_s"] + 0.05 <= result["seconds"] + 0.05
    assert json.loads((tmp_path / "o" / "metadata.json").read_text())["counts"]["rows_read"] == events
    # A failed run writes no timeline.
    missing = [f"--input={tmp_path / 'missing.tsv'}", f"--output={tmp_path / 'o2'}", *flags[2:]]
    assert pipeline_stages.main(["--out", str(tmp_path / "bad.json"), "--", *missing]) != 0
    assert not (tmp_path / "bad.json").exists()
    assert pipeline_stages.short_name("((a/Read)+(ref_AppliedPTransform_b-c_17))") == "a/Read + b-c"
