"""Minimal count check for shuffles on Beam's Python FnApiRunner (multi-process direct runner).

Self-contained (apache_beam + stdlib). Builds a pipeline shaped like `pipeline.records.MakeRecords`:

    Create(range(F) "files") -> FlatMap: N/F events each, event e -> user perm(e) % U, item perm2(e) % I
      gbk    : events keyed by user ("u0000123", (e, item id)) -> GroupByKey -> per-user (count, sum of e)
      gbk2   : events keyed by item -> GroupByKey by item -> re-key by user -> GroupByKey by user -> per user
      cogbk  : like our JoinItemIds + JoinUsers: CoGroupByKey({"id": item vocabulary, "uses": events by item})
               -> (user, (e, item id)) -> CoGroupByKey({"user": user vocabulary, "ids": ...}) -> per user
    per-user result -> checked against the expected count and checksum (closed form: perm is a bijection, so user
    u owns exactly the events perm^-1(u + kU)) -> CombineGlobally(summary) -> one JSON file per variant.

A run is "ok" only if, for every variant, the summary file exists, every user came out of the last shuffle exactly
once (keys == U, no key repeated), with exactly its expected count and checksum, the total is N, and (cogbk) every
item found exactly one vocabulary id. A missing summary, a missing key, a key split into two groups, a lost or a
repeated element: all count as failures. Metrics counters (events generated / grouped) are printed as a cross-check.

    python docs/beam_multiprocess_loss/repro.py --events 1000000 --files 40 --workers 2 \
        --mode multi_processing --variant all --runs 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

VARIANTS = ("gbk", "gbk2", "cogbk")


class Layout:
    """The deterministic synthetic log: N events, U = N/20 users, I = N/50 items, F files of N/F events.

    user(e) = perm(e) % U with perm(e) = (A*e + B) mod N a bijection of [0, N) (gcd(A, N) = 1), so the events of
    user u are exactly perm^-1(p) for p = u, u+U, u+2U, ... < N: its count and the sum of its event indices are
    computable anywhere without a table. item(e) = (C*e + D) mod N % I (no closed form needed: it is recomputed from e).
    """

    def __init__(self, events: int, files: int, users: int | None = None, items: int | None = None) -> None:
        self.n = events
        self.files = files
        self.users = users or max(1, events // 20)
        self.items = items or max(1, events // 50)
        self.a = self._coprime(2654435761)
        self.b = 12345 % events
        self.c = self._coprime(40503)
        self.d = 777 % events
        self.a_inv = pow(self.a, -1, events) if events > 1 else 0

    def _coprime(self, start: int) -> int:
        a = start % self.n or 1
        while math.gcd(a, self.n) != 1:
            a += 1
        return a

    def file_range(self, f: int) -> range:
        per = -(-self.n // self.files)
        return range(f * per, min(self.n, (f + 1) * per))

    def user(self, e: int) -> int:
        return (self.a * e + self.b) % self.n % self.users

    def item(self, e: int) -> int:
        return (self.c * e + self.d) % self.n % self.items

    def expected(self, u: int) -> tuple[int, int]:
        """(count, sum of event indices) of user u."""
        count = total = 0
        for p in range(u, self.n, self.users):
            count += 1
            total += (p - self.b) * self.a_inv % self.n
        return count, total


def user_key(u: int) -> str:
    return f"u{u:07d}"


def item_key(i: int) -> str:
    return f"i{i:07d}"


def parse_user(key: str) -> int:
    return int(key[1:])


# --- sources -------------------------------------------------------------------------------------------------------


def events_of_file(f: int, layout: Layout, by: str, inject: str = "none"):
    """A "file" -> its events, keyed by user or by item, valued like ours (position-like int, id).

    ``inject`` tests the check itself: "drop" leaves out event N/2, "dup" emits it twice."""
    generated = Metrics.counter("repro", "events_generated")
    n = 0
    for e in layout.file_range(f):
        if e == layout.n // 2 and inject != "none":
            if inject == "drop":
                continue
            yield from events_of_file_one(e, layout, by)
        n += 1
        if by == "user":
            yield user_key(layout.user(e)), (e, layout.item(e) + 1)
        else:
            yield item_key(layout.item(e)), (user_key(layout.user(e)), e)
    generated.inc(n)


def events_of_file_one(e: int, layout: Layout, by: str):
    if by == "user":
        yield user_key(layout.user(e)), (e, layout.item(e) + 1)
    else:
        yield item_key(layout.item(e)), (user_key(layout.user(e)), e)


def item_vocab_of_file(f: int, layout: Layout):
    for i in range(f, layout.items, layout.files):
        yield item_key(i), i + 1


def user_vocab_of_file(f: int, layout: Layout):
    for u in range(f, layout.users, layout.files):
        yield user_key(u), u + 1


# --- joins ---------------------------------------------------------------------------------------------------------


def uses_to_users(element):
    """GroupByKey by item -> (user, (e, item id))."""
    item, uses = element
    item_id = int(item[1:]) + 1
    for user, e in uses:
        yield user, (e, item_id)


def ids_by_user(element):
    """CoGroupByKey by item: exactly one vocabulary id per item with events, as in `pipeline.records._ids_by_user`."""
    item, joined = element
    ids, uses = list(joined["id"]), list(joined["uses"])
    if uses and len(ids) != 1:
        Metrics.counter("repro", "items_without_one_id").inc()
        # Keep the events flowing, tagged as unjoined: the per-user check will see a wrong item id.
        ids = [-1]
    for item_id in ids[:1]:
        for user, e in uses:
            yield user, (e, item_id)


def user_result(element, layout: Layout, joined: bool):
    """The last shuffle's group of one user -> (user, count, checksum, problems)."""
    key, value = element
    Metrics.counter("repro", "groups_out").inc()
    problems = []
    if joined:
        users = list(value["user"])
        values = list(value["ids"])
        u = parse_user(key)
        if users != [u + 1]:
            problems.append(f"user side {users[:3]}")
    else:
        values = list(value)
    Metrics.counter("repro", "elements_out").inc(len(values))
    wrong_item = sum(1 for e, item_id in values if item_id != layout.item(e) + 1)
    if wrong_item:
        problems.append(f"{wrong_item} wrong item ids")
    exp_count, _ = layout.expected(parse_user(key))
    if len(values) != exp_count:
        # Which events are missing: their index e, source file and item (to locate the lost chunk).
        u = parse_user(key)
        expected_e = {(p - layout.b) * layout.a_inv % layout.n for p in range(u, layout.n, layout.users)}
        missing = sorted(expected_e - {e for e, _ in values})[:5]
        per = -(-layout.n // layout.files)
        problems.append("missing (e, file, item): " + str([(e, e // per, layout.item(e)) for e in missing]))
    return key, len(values), sum(e for e, _ in values), len(set(e for e, _ in values)), problems


class Summary(beam.CombineFn):
    """Per-user results -> one summary, checked against the closed-form expectation."""

    MAX_SAMPLES = 20

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def create_accumulator(self):
        return {
            "keys": 0,
            "elements": 0,
            "bad_keys": 0,
            "lost": 0,
            "extra": 0,
            "duplicates": 0,
            "samples": [],
            "seen_sum": 0,
        }

    def add_input(self, acc, result):
        key, count, checksum, distinct, problems = result
        acc["keys"] += 1
        acc["elements"] += count
        acc["seen_sum"] += parse_user(key) + 1  # sum over keys of (u+1): equals U(U+1)/2 iff each key once
        exp_count, exp_sum = self.layout.expected(parse_user(key))
        dup = count - distinct
        if count != exp_count or checksum != exp_sum or dup or problems:
            acc["bad_keys"] += 1
            acc["lost"] += max(0, exp_count - count)
            acc["extra"] += max(0, count - exp_count)
            acc["duplicates"] += dup
            if len(acc["samples"]) < self.MAX_SAMPLES:
                acc["samples"].append(
                    {
                        "key": key,
                        "got": count,
                        "expected": exp_count,
                        "distinct": distinct,
                        "checksum_ok": checksum == exp_sum,
                        "problems": problems,
                    }
                )
        return acc

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for acc in accs:
            for k in out:
                if k == "samples":
                    out[k].extend(acc[k])
                else:
                    out[k] += acc[k]
        out["samples"] = out["samples"][: self.MAX_SAMPLES]
        return out

    def extract_output(self, acc):
        return acc


def write_summary(summary, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f)
    os.replace(tmp, path)


# --- pipeline ------------------------------------------------------------------------------------------------------


def build(p: beam.Pipeline, layout: Layout, variants: list[str], out_dir: str, inject: str = "none") -> None:
    files = p | "Files" >> beam.Create(list(range(layout.files)))
    for v in variants:
        if v == "gbk":
            grouped = (
                files
                | "gbk/Events" >> beam.FlatMap(events_of_file, layout, "user", inject)
                | "gbk/GroupByUser" >> beam.GroupByKey()
            )
            joined = False
        elif v == "gbk2":
            grouped = (
                files
                | "gbk2/Events" >> beam.FlatMap(events_of_file, layout, "item", inject)
                | "gbk2/GroupByItem" >> beam.GroupByKey()
                | "gbk2/ByUser" >> beam.FlatMap(uses_to_users)
                | "gbk2/GroupByUser" >> beam.GroupByKey()
            )
            joined = False
        elif v == "cogbk":
            events = files | "cogbk/Events" >> beam.FlatMap(events_of_file, layout, "item", inject)
            item_vocab = files | "cogbk/ItemVocab" >> beam.FlatMap(item_vocab_of_file, layout)
            user_vocab = files | "cogbk/UserVocab" >> beam.FlatMap(user_vocab_of_file, layout)
            ids = (
                {"id": item_vocab, "uses": events}
                | "cogbk/JoinItemIds" >> beam.CoGroupByKey()
                | "cogbk/IdsByUser" >> beam.FlatMap(ids_by_user)
            )
            grouped = {"user": user_vocab, "ids": ids} | "cogbk/JoinUsers" >> beam.CoGroupByKey()
            joined = True
        else:
            raise ValueError(v)
        (
            grouped
            | f"{v}/PerUser" >> beam.Map(user_result, layout, joined)
            | f"{v}/Summary" >> beam.CombineGlobally(Summary(layout))
            | f"{v}/Write" >> beam.Map(write_summary, os.path.join(out_dir, f"{v}.json"))
        )


def judge(layout: Layout, variant: str, out_dir: str) -> tuple[bool, str]:
    path = os.path.join(out_dir, f"{variant}.json")
    if not os.path.exists(path):
        return False, "no summary written (the final combine produced nothing)"
    with open(path) as f:
        s = json.load(f)
    u = layout.users
    ok = s["keys"] == u and s["seen_sum"] == u * (u + 1) // 2 and s["elements"] == layout.n and s["bad_keys"] == 0
    if ok:
        return True, f"ok: {s['elements']} elements, {s['keys']} keys"
    diff = layout.n - s["elements"]
    head = f"LOST {diff} elements" if diff > 0 else (f"EXTRA {-diff} elements" if diff < 0 else "WRONG (total right)")
    msg = (
        f"{head} (total {s['elements']} of {layout.n}); keys out {s['keys']} of "
        f"{u}; bad keys {s['bad_keys']} (lost {s['lost']}, extra {s['extra']}, duplicates {s['duplicates']}); "
        f"samples {s['samples'][:5]}"
    )
    return False, msg


def run_once(args, layout: Layout, variants: list[str]) -> dict:
    out_dir = tempfile.mkdtemp(prefix="beam_repro_", dir=args.out)
    opts = PipelineOptions(
        [
            "--runner=FnApiRunner",
            f"--direct_num_workers={args.workers}",
            f"--direct_running_mode={args.mode}",
        ]
    )
    if args.no_time_flush:
        # Workaround under test: the runner's data server then gives size-based output streams (no periodic flusher
        # thread), see README "Cause".
        from apache_beam.runners.portability.fn_api_runner import worker_handlers

        worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0
    t0 = time.time()
    error = None
    metrics = {}
    try:
        p = beam.Pipeline(options=opts)
        build(p, layout, variants, out_dir, args.inject)
        result = p.run()
        result.wait_until_finish()
        for c in result.metrics().query(MetricsFilter().with_namespace("repro"))["counters"]:
            metrics[c.key.metric.name] = metrics.get(c.key.metric.name, 0) + c.committed
    except Exception as e:  # a failing pipeline is a result too
        error = f"{type(e).__name__}: {str(e)[:500]}"
    wall = time.time() - t0
    verdicts = {}
    for v in variants:
        verdicts[v] = judge(layout, v, out_dir) if error is None else (False, f"pipeline error: {error}")
    return {"wall_s": round(wall, 1), "metrics": metrics, "verdicts": verdicts, "out_dir": out_dir}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--users", type=int, default=None, help="default events/20")
    ap.add_argument("--items", type=int, default=None, help="default events/50")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--mode", choices=("multi_processing", "in_memory", "multi_threading"), default="multi_processing")
    ap.add_argument(
        "--variant",
        choices=VARIANTS + ("both", "all"),
        default="both",
        help="both = gbk + cogbk; all = gbk + gbk2 + cogbk (in one pipeline)",
    )
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--out", default=tempfile.gettempdir(), help="directory for the per-run summary files")
    ap.add_argument(
        "--inject",
        choices=("none", "drop", "dup"),
        default="none",
        help="self-test of the check: drop or duplicate one event (every variant must then fail)",
    )
    ap.add_argument(
        "--no-time-flush",
        action="store_true",
        help="set worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0 in the launcher (workaround under test)",
    )
    ap.add_argument("--log", default=None, help="append one JSON line per run to this file")
    args = ap.parse_args(argv)
    variants = {"both": ["gbk", "cogbk"], "all": list(VARIANTS)}.get(args.variant, [args.variant])
    layout = Layout(args.events, args.files, args.users, args.items)
    print(
        f"beam {beam.__version__}; events={layout.n} files={layout.files} users={layout.users} "
        f"items={layout.items} workers={args.workers} mode={args.mode} variants={variants}",
        flush=True,
    )
    failures = 0
    for r in range(1, args.runs + 1):
        res = run_once(args, layout, variants)
        for v, (ok, msg) in res["verdicts"].items():
            failures += not ok
            print(f"run {r} {v}: {msg}; wall {res['wall_s']} s", flush=True)
        print(f"run {r} metrics: {res['metrics']}", flush=True)
        if args.log:
            with open(args.log, "a") as f:
                f.write(
                    json.dumps(
                        {
                            "run": r,
                            "events": layout.n,
                            "files": layout.files,
                            "workers": args.workers,
                            "mode": args.mode,
                            "no_time_flush": args.no_time_flush,
                            "beam": beam.__version__,
                            **res,
                            "verdicts": {v: {"ok": ok, "msg": msg} for v, (ok, msg) in res["verdicts"].items()},
                        }
                    )
                    + "\n"
                )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
