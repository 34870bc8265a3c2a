"""The parser of the MDCNS authors' training logs (`benchmarks.authors_logs`): hand-made logs in both formats, the git
helpers on a throw-away repository, the CLI, and one real log when the snapshot is on this machine.

Pure Python: nothing here imports TensorFlow (one test checks that the module does not either).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import authors_logs as al

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A git checkout (or bare snapshot) of Lyz103/SIGIR26-MDCNS, where the machine has one: the last test reads a real log
MIRROR = os.environ.get("MDCNS_AUTHORS_REPO", "")

NAMESPACE = (
    "Namespace(data_dir='./data/', data_name='Beauty', do_eval=False, hidden_size=64, backbone='SASRec', "
    "backbone2='GRU4Rec', K_hns=1, alpha=1.0, d_lambda=3.0, kd_temperature=2.0, kd_gamma=0.01, lr=0.001, "
    "note='a, b', dims=[1, 2], dev=device(type='cuda'), neg_sampler='DNS', loss_type='BCE', N=100, seed=42)"
)


def metric(epoch: int, base: float) -> str:
    """A metric dict as the authors' code prints it (values as 4-decimal strings)."""
    values = [base * f for f in (0.6, 0.4, 1.0, 0.5, 1.4, 0.6)]
    keys = ["HIT@5", "NDCG@5", "HIT@10", "NDCG@10", "HIT@20", "NDCG@20"]
    return f"{{'Epoch': {epoch}, " + ", ".join(f"'{k}': '{v:.4f}'" for k, v in zip(keys, values, strict=True)) + "}"


def bar(phase: str, epoch: int, total: int, elapsed: str) -> str:
    """A tqdm bar redrawn with carriage returns, the way it lands in a log file."""
    steps = [f"DWS-HNS EP_{phase}:{epoch}:   0%|| 0/{total} [00:00<?, ?it/s]"]
    steps.append(f"DWS-HNS EP_{phase}:{epoch}:  50%|| {total // 2}/{total} [00:01<00:01,  2.00it/s]")
    steps += [f"DWS-HNS EP_{phase}:{epoch}: 100%|| {total}/{total} [{elapsed}<00:00,  1.85it/s]"] * 2
    return "\r" + "\r".join(steps) + "\n"


def section(what: str, epoch: int, self_base: float, peer_base: float) -> str:
    phase = "valid" if what == "Validation" else "test"
    dicts = [metric(epoch, self_base), metric(epoch, peer_base), metric(epoch, (self_base + peer_base) / 2)]
    return (
        f"\n{'---' * 10} {what} for Epoch {epoch} {'---' * 10}\n"
        + bar(phase, epoch, 5 if phase == "valid" else 3, "00:09" if phase == "valid" else "00:04")
        + "\n".join(dicts)
        + "\n\n"
        + f"Model 1 (SASRec) Results: {dicts[0]}\nModel 2 (GRU4Rec) Results: {dicts[1]}\n"
        + f"Ensemble Results: {dicts[2]}\n"
    )


def mdcns_epoch(epoch: int, valid: float, test: float, improved: bool, train: str = "01:05") -> str:
    text = bar("train", epoch, 121, train)
    text += f"{{'epoch': {epoch}, 'avg_loss': '6.4393', 'avg_bpr_loss': '6.4200', 'avg_kd_loss': '0.0193'}}\n"
    # The peer scores (0.2) are far from the self model's so that a mix-up cannot pass.
    text += section("Validation", epoch, valid, 0.2) + section("Test", epoch, test, 0.2)
    text += "Validation score increased.  Saving model ...\n" if improved else "EarlyStopping counter: 1 out of 30\n"
    return text


def mdcns_log(final: bool = True) -> str:
    # Data loading bars come first, then the header; valid NDCG@20 = 0.6 * base: .060, .066, .066 (tie), .063.
    text = "\r  0%|          | 0/123086 [00:00<?, ?it/s]\r100%|██████████| 123086/123086 [00:51<00:00]\n"
    text += "Data loaded. Item size: 12103\n" + NAMESPACE + "\nTotal Parameters (Model 1 - SASRec): 877888\n"
    text += mdcns_epoch(0, 0.100, 0.105, True)
    text += mdcns_epoch(1, 0.110, 0.112, True, train="1:01:05")
    text += mdcns_epoch(2, 0.110, 0.120, False)
    text += mdcns_epoch(3, 0.105, 0.118, False)
    if final:
        text += "EarlyStopping counter: 2 out of 30\nEarly stopping triggered.\n"
        text += f"\n{'---' * 10} Best Validation Scores for Test {'---' * 10}\n{metric(1, 0.112)}\n"
    return text


def test_mdcns_format() -> None:
    run = al.parse_log(mdcns_log())
    args = run["args"]
    assert args["d_lambda"] == 3.0 and args["K_hns"] == 1 and args["backbone2"] == "GRU4Rec"
    assert args["note"] == "a, b" and args["dims"] == [1, 2] and args["do_eval"] is False
    assert args["dev"] == "device(type='cuda')"  # not a literal: kept as text, the other arguments survive
    assert [e["epoch"] for e in run["epochs"]] == [0, 1, 2, 3]
    first = run["epochs"][0]
    assert first["valid"]["ndcg@10"] == pytest.approx(0.05) and first["test"]["ndcg@10"] == pytest.approx(0.0525)
    assert set(first["valid"]) == {"hit@5", "ndcg@5", "hit@10", "ndcg@10", "hit@20", "ndcg@20"}
    assert first["train_seconds"] == 65.0 and first["eval_seconds"] == 13.0  # valid 9 s + test 4 s
    assert run["epochs"][1]["train_seconds"] == 3665.0  # H:MM:SS
    assert first["train_loss"] == {"avg_loss": 6.4393, "avg_bpr_loss": 6.42, "avg_kd_loss": 0.0193}
    assert run["best"]["epoch"] == 1 and run["best"]["test"] == run["epochs"][1]["test"]
    assert run["early_stopped"] and run["patience"] == 30 and run["notes"] == []


def test_summarize_mdcns() -> None:
    rows = al.summarize({"a/run.log": al.parse_log(mdcns_log())}, thresholds=(0.06, 0.065, 0.07))
    (row,) = rows
    assert row["method"] == "MDCNS" and row["d_lambda"] == 3.0 and row["kd_temperature"] == 2.0
    # Epochs 1 and 2 tie on valid NDCG@20: the first is kept, as the authors' strict-improvement EarlyStopping does.
    assert row["best_valid_epoch"] == 1 and row["valid_ndcg@20"] == pytest.approx(0.066)
    assert row["test_ndcg@10"] == pytest.approx(0.056) and row["test_hit@10"] == pytest.approx(0.112)
    assert row["logged_best_epoch"] == 1 and row["complete"] and row["epochs_run"] == 4
    assert row["first_epoch_valid_ndcg@20>=0.06"] == 0 and row["first_epoch_valid_ndcg@20>=0.065"] == 1
    assert row["first_epoch_valid_ndcg@20>=0.07"] is None
    assert row["median_train_seconds"] == 65.0 and row["median_eval_seconds"] == 13.0
    # Only 4 epochs: no budget of BUDGETS (10 and more) can be replayed.
    assert all(row[f"test_ndcg@10_at_budget_{b}"] is None for b in al.BUDGETS)


def test_budget_replay(monkeypatch) -> None:
    monkeypatch.setattr(al, "BUDGETS", (1, 2, 3, 5))
    row = al.summarize_run("x.log", al.parse_log(mdcns_log()))
    # Budget 1 keeps epoch 0, 2 and 3 keep epoch 1 (the tie at epoch 2 does not replace it), 5 > epochs run.
    assert row["test_ndcg@10_at_budget_1"] == pytest.approx(0.0525)
    assert row["test_ndcg@10_at_budget_2"] == row["test_ndcg@10_at_budget_3"] == pytest.approx(0.056)
    assert row["test_ndcg@10_at_budget_5"] is None


def test_truncated_mdcns_log() -> None:
    # Killed inside epoch 4's validation: bare dicts printed, the "Model 1" line never came.
    text = mdcns_log(final=False) + "{'epoch': 4, 'avg_loss': '6.0'}\n" + f"{'---' * 10} Validation for Epoch 4 "
    text += f"{'---' * 10}\n{metric(4, 0.130)}\n{metric(4, 0.2)}\n"
    run = al.parse_log(text)
    last = run["epochs"][-1]
    assert last["epoch"] == 4 and last["valid"]["ndcg@10"] == pytest.approx(0.065) and last["test"] is None
    assert run["best"] is None and any("cut short" in note for note in run["notes"])
    row = al.summarize_run("x.log", run)
    assert row["best_valid_epoch"] == 4 and row["test_ndcg@10"] is None and not row["complete"]


BASELINE_NAMESPACE = (
    "Namespace(data_name='Beauty', backbone='SASRec', epochs=500, N=100, M=10, neg_sampler='DNS', loss_type='BCE')"
)


def baseline_log() -> str:
    lines = [BASELINE_NAMESPACE, "neg_sampler:  DNS", "Total Parameters: 877888"]
    for epoch, base, improved in [(0, 0.05, True), (1, 0.09, True), (2, 0.08, False)]:
        lines += [f"{{'epoch': {epoch}, 'loss': '1.4602'}}", metric(epoch, base)]
        lines.append(
            "Validation score increased.  Saving model ..." if improved else "EarlyStopping counter: 1 out of 50"
        )
    lines += ["EarlyStopping counter: 50 out of 50", "Early stopping"]
    # The test of the restored checkpoint is printed twice and always says 'Epoch': 0.
    lines += ["---------------Change to test_rating_matrix!-------------------", metric(0, 0.085)]
    lines += ["SASRec-Beauty-0", metric(0, 0.085), "N_100.xlsx"]
    return "\n".join(lines) + "\n"


def test_baseline_format() -> None:
    run = al.parse_log(baseline_log())
    assert run["args"]["M"] == 10 and "backbone2" not in run["args"]
    assert [e["epoch"] for e in run["epochs"]] == [0, 1, 2]
    assert all(e["test"] is None and e["train_seconds"] is None for e in run["epochs"])
    assert run["epochs"][1]["valid"]["ndcg@20"] == pytest.approx(0.054)
    assert run["best"]["epoch"] == 1 and run["best"]["test"]["ndcg@10"] == pytest.approx(0.0425)
    assert run["patience"] == 50 and run["early_stopped"]
    (row,) = al.summarize({"MDCNS_Code/EXP5/cankao_DNS+/Beauty-SASRec_0_N100_M10.log": run})
    assert row["method"] == "DNS+" and row["best_valid_epoch"] == 1
    assert row["test_ndcg@10"] == pytest.approx(0.0425)  # from the final block: no per-epoch test here
    assert row["median_train_seconds"] is None


def test_headerless_log_file_copy() -> None:
    # MDCNS_Code/output/*.txt: the same dicts without section headers; the first self result is valid, then test.
    lines = [NAMESPACE]
    for epoch, valid, test in [(0, 0.1, 0.11), (1, 0.12, 0.13)]:
        lines.append(f"{{'epoch': {epoch}, 'avg_loss': '6.0'}}")
        for base in (valid, test):
            lines += [metric(epoch, base), metric(epoch, 0.2), metric(epoch, 0.15)]
            lines += [
                f"Model 1 (SASRec) Results: {metric(epoch, base)}",
                f"Model 2 (GRU4Rec) Results: {metric(epoch, 0.2)}",
            ]
            lines.append(f"Ensemble Results: {metric(epoch, 0.15)}")
    run = al.parse_log("\n".join(lines))
    assert [e["valid"]["hit@10"] for e in run["epochs"]] == pytest.approx([0.1, 0.12])
    assert [e["test"]["hit@10"] for e in run["epochs"]] == pytest.approx([0.11, 0.13])


def test_several_runs_and_nul_holes() -> None:
    two = mdcns_log() + mdcns_log()
    run = al.parse_log(two)
    assert len(run["epochs"]) == 4 and any("second run" in note for note in run["notes"])
    pieces = al.split_runs(two)
    assert len(pieces) == 2 and all(len(al.parse_log(p)["epochs"]) == 4 for p in pieces)
    assert al.split_runs("no header\n") == ["no header\n"]
    # Two processes wrote one file: a hole of NULs, then another run's tail without its header.
    holed = mdcns_log() + "\x00" * 50 + mdcns_epoch(154, 0.1, 0.1, False)
    run = al.parse_log(holed)
    assert [e["epoch"] for e in run["epochs"]] == [0, 1, 2, 3] and run["best"]["epoch"] == 1
    assert any("NUL-byte hole" in note and "epochs 154-154" in note for note in run["notes"])
    # Numbering that restarts without a header (concurrent runs appending to one file) stops the parse.
    restarted = al.parse_log(mdcns_log(final=False) + mdcns_epoch(0, 0.1, 0.1, True))
    assert len(restarted["epochs"]) == 4 and any("goes back" in note for note in restarted["notes"])


def test_parse_namespace_edge_cases() -> None:
    assert al.parse_namespace("Namespace()") == {}
    args = al.parse_namespace("Namespace(a=-1.5, b=None, c=True, d=\"it's\", e={'k': (1, 2)}, f=inf)")
    assert args == {"a": -1.5, "b": None, "c": True, "d": "it's", "e": {"k": (1, 2)}, "f": "inf"}
    # A header cut short keeps what is complete; the cut value stays text.
    assert al.parse_namespace("Namespace(a=1, b='x', c='tru") == {"a": 1, "b": "x", "c": "'tru"}


def test_tables_and_json_layout() -> None:
    runs = {"MDCNS_Code/X/a.log": al.parse_log(mdcns_log()), "MDCNS_Code/X/b.log": al.parse_log("")}
    rows = al.summarize(runs)
    assert [r["file"] for r in rows] == ["MDCNS_Code/X/a.log", "MDCNS_Code/X/b.log"]  # no test number: last
    table = al.markdown_table(rows).splitlines()
    assert len(table) == 4 and table[0].startswith("| file | method |") and "| M |" not in table[0]
    assert "| a.log | MDCNS | SASRec | GRU4Rec | BCE | 3 |" in table[2] and "| 0.0560 |" in table[2]
    groups = al.aggregate(rows)
    assert {g["method"] for g in groups} == {"MDCNS", "unknown"}
    mdcns = next(g for g in groups if g["method"] == "MDCNS")
    assert mdcns["valid_selected_test_ndcg@10"] == pytest.approx(0.056) and mdcns["complete"] == 1
    text = al.dumps_result({"source": {"repo": "o/n"}, "runs": runs, "summary": rows})
    assert json.loads(text)["runs"]["MDCNS_Code/X/a.log"]["best"]["epoch"] == 1
    # One line per epoch and per summary row: readable, diffable.
    assert sum(1 for line in text.splitlines() if line.lstrip().startswith('{"epoch":')) == 4


def git(repo: str, *args: str) -> None:
    subprocess.run(
        ["git", "-C", repo, "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True, capture_output=True
    )


@pytest.fixture
def snapshot(tmp_path) -> str:
    """A throw-away repository laid out like the mirror (``owner+name/repo``) with one MDCNS and one baseline log."""
    repo = tmp_path / "Owner+Name" / "repo"
    (repo / "logs" / "cankao_DNS+").mkdir(parents=True)
    (repo / "logs" / "Beauty-SASRec-GRU4Rec_l3.0.log").write_text(mdcns_log())
    (repo / "logs" / "cankao_DNS+" / "Beauty-SASRec_0_N100_M10.log").write_text(baseline_log())
    git(str(repo), "init", "-q")
    git(str(repo), "add", "-A")
    git(str(repo), "commit", "-q", "-m", "logs")
    return str(repo)


def test_git_helpers(snapshot: str) -> None:
    assert al.list_repo_files(snapshot, "logs/*.log") == [
        "logs/Beauty-SASRec-GRU4Rec_l3.0.log",
        "logs/cankao_DNS+/Beauty-SASRec_0_N100_M10.log",
    ]  # fnmatch: '*' crosses '/'
    assert al.list_repo_files(snapshot, "logs/cankao_DNS+/*") == ["logs/cankao_DNS+/Beauty-SASRec_0_N100_M10.log"]
    assert "Namespace(" in al.read_repo_file(snapshot, "logs/Beauty-SASRec-GRU4Rec_l3.0.log")
    with pytest.raises(FileNotFoundError, match="logs/absent.log"):
        al.read_repo_file(snapshot, "logs/absent.log")
    with pytest.raises(FileNotFoundError, match="not found"):
        al.list_repo_files(os.path.join(snapshot, "nope"), "*")
    assert len(al.resolve_commit(snapshot)) == 40 and al.repo_name(snapshot) == "Owner/Name"


def test_cli(snapshot: str, tmp_path, capsys) -> None:
    out = tmp_path / "out" / "logs.json"
    argv = ["--repo", snapshot, "--pattern", "logs/*GRU4Rec*.log", "--pattern", "logs/cankao*/*", "--out", str(out)]
    assert al.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["source"] == {
        "repo": "Owner/Name",
        "commit": al.resolve_commit(snapshot),
        "patterns": ["logs/*GRU4Rec*.log", "logs/cankao*/*"],
    }
    assert set(result["runs"]) == {
        "logs/Beauty-SASRec-GRU4Rec_l3.0.log",
        "logs/cankao_DNS+/Beauty-SASRec_0_N100_M10.log",
    }
    assert [row["method"] for row in result["summary"]] == ["MDCNS", "DNS+"]  # by test NDCG@10: .056 > .0425
    printed = capsys.readouterr().out
    assert printed.startswith("| file | method |") and printed.count("\n") == 4


def test_help_is_fast_and_tensorflow_free() -> None:
    code = (
        "import sys, benchmarks.authors_logs as m; m.build_parser().format_help(); "
        "sys.exit(int('tensorflow' in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(
    not MIRROR or not os.path.isdir(MIRROR),
    reason="set MDCNS_AUTHORS_REPO to a git snapshot of Lyz103/SIGIR26-MDCNS to parse one of its real logs",
)
def test_real_logs_from_the_mirror() -> None:
    path = "MDCNS_Code/Exp6_WeaktoStrong/Beauty-SASRec-GRU4Rec_a1.0_b1.0_l3.0_dwsb1.0_t0.0_k1_N100_kdt2.0_kdg0.01.log"
    run = al.parse_log(al.read_repo_file(MIRROR, path))
    assert run["args"]["d_lambda"] == 3.0 and run["args"]["kd_temperature"] == 2.0 and run["args"]["N"] == 100
    assert len(run["epochs"]) == 141 and run["best"]["epoch"] == 110 and run["notes"] == []
    assert run["best"]["test"] == run["epochs"][110]["test"] and run["best"]["test"]["ndcg@10"] == 0.0663
    assert all(e["valid"] and e["test"] and e["train_seconds"] for e in run["epochs"])
    (row,) = al.summarize({path: run})
    assert row["best_valid_epoch"] == 110 and row["test_hit@10"] == 0.114
    baseline = al.parse_log(al.read_repo_file(MIRROR, "MDCNS_Code/EXP5/cankao_DNS+/Beauty-SASRec_0_N100_M10.log"))
    assert baseline["best"] == {
        "epoch": 159,
        "test": {
            "hit@5": 0.0496,
            "ndcg@5": 0.0322,
            "hit@10": 0.0778,
            "ndcg@10": 0.0413,
            "hit@20": 0.1055,
            "ndcg@20": 0.0482,
        },
    }
