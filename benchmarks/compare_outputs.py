"""Are two `pipeline.run` output folders the same data? Exit 0 when identical, 1 on any difference, 2 on a usage
error.

    python -m benchmarks.compare_outputs DIR_A DIR_B [--parts records,vocabularies,metadata,rejected] \\
        [--ignore source.options.foo ...] [--show 5] [--json OUT]

What "the same" means, part by part (``--parts`` picks some; default all):

- ``records``: each split's records, read back with `pipeline.readback.read_split` (decoded ``tf.train.Example``s as
  ``(user_index, item_ids, target)``), equal as multisets: how they are cut into files, the order inside a file and
  the bytes of the gzip and of the protobuf map (whose entry order protobuf leaves open) do not matter;
- ``vocabularies``: ``items.txt`` and ``users.txt`` byte for byte;
- ``metadata``: ``metadata.json`` compared key by key, except what names the run rather than the data: the input
  and output paths (``source.input``; ``source.files`` is compared by file names), the record files' names and
  hashes (``fingerprint.splits.<split>.files``: sharding; the records are compared above), the run's flags that do
  not change the data (``source.options.overwrite``, ``source.options.num_shards``) and any key that names a run
  id, runner, host, process, time stamp or duration (`IDENTITY_KEY`), plus ``--ignore`` dotted paths (``*`` matches
  one key);
- ``rejected``: the lines of ``rejected/*.txt`` as a multiset, each line's input path cut to its file name.

Memory: one split of both folders at a time (a 1M-event log's ~50k users: seconds, ~100 MB).
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from mdcns_tf import features

PARTS = ("records", "vocabularies", "metadata", "rejected")
# metadata keys that name the run, not the data (matched against each key name, any depth)
IDENTITY_KEY = re.compile(
    r"(^|_)(run_id|run|runner|runners|host|hostname|pid|pids|measured_at|created|started|finished|timestamp_written|"
    r"wall|seconds|duration|elapsed|temp|tmp|path|paths|output)($|_)"
)
IGNORED_PATHS = (
    "source.input",
    "source.options.overwrite",
    "source.options.num_shards",
    "fingerprint.splits.*.files",
)
REJECTED_DIR = "rejected"
MISSING = "<missing>"


def _shown(values: Iterable[Any], n: int) -> list[Any]:
    out = []
    for value in values:
        if len(out) >= n:
            break
        out.append(value)
    return out


def compare_records(dir_a: str, dir_b: str, show: int) -> list[dict[str, Any]]:
    """One difference per split whose records differ as multisets, with up to ``show`` records only in each."""
    from pipeline import readback

    differences = []
    for split in features.SPLITS:
        a = readback.read_split(dir_a, split)
        b = readback.read_split(dir_b, split)
        if a == b:  # both sorted
            continue
        count_a = Counter((user, tuple(ids), target) for user, ids, target in a)
        count_b = Counter((user, tuple(ids), target) for user, ids, target in b)
        del a, b
        only_a, only_b = count_a - count_b, count_b - count_a
        differences.append(
            {
                "part": "records",
                "what": f"{split} records",
                "records_a": sum(count_a.values()),
                "records_b": sum(count_b.values()),
                "only_in_a": sum(only_a.values()),
                "only_in_b": sum(only_b.values()),
                "examples_only_in_a": [_record(r) for r in _shown(sorted(only_a.elements()), show)],
                "examples_only_in_b": [_record(r) for r in _shown(sorted(only_b.elements()), show)],
            }
        )
    return differences


def _record(record: tuple[int, tuple[int, ...], int]) -> dict[str, Any]:
    user, ids, target = record
    return {features.USER_INDEX: user, features.ITEM_IDS: list(ids), features.TARGET: target}


def _lines(path: str) -> list[bytes] | None:
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return f.read().split(b"\n")


def compare_vocabularies(dir_a: str, dir_b: str, show: int) -> list[dict[str, Any]]:
    differences = []
    for name in (features.ITEMS_FILE, features.USERS_FILE):
        a, b = _lines(os.path.join(dir_a, name)), _lines(os.path.join(dir_b, name))
        if a == b:
            continue
        if a is None or b is None:
            differences.append({"part": "vocabularies", "what": f"{name}: missing in {'a' if a is None else 'b'}"})
            continue
        lines = [
            {"line": n + 1, "a": x.decode(errors="replace"), "b": y.decode(errors="replace")}
            for n, (x, y) in enumerate(zip(a, b, strict=False))
            if x != y
        ]
        differences.append(
            {
                "part": "vocabularies",
                "what": f"{name} differs",
                "lines_a": len(a) - 1,
                "lines_b": len(b) - 1,
                "differing_lines": len(lines) + abs(len(a) - len(b)),
                "first_differences": lines[:show],
            }
        )
    return differences


def _ignored(path: Sequence[str], extra: Sequence[str]) -> bool:
    dotted = ".".join(path)
    if any(fnmatch.fnmatchcase(dotted, pattern) for pattern in (*IGNORED_PATHS, *extra)):
        return True
    return bool(IDENTITY_KEY.search(path[-1])) if path else False


def _comparable(path: Sequence[str], value: Any) -> Any:
    """``source.files``: the file names (the folder is the run's)."""
    if list(path) == ["source", "files"] and isinstance(value, list):
        return [os.path.basename(str(v)) for v in value]
    return value


def diff_json(a: Any, b: Any, path: tuple[str, ...] = (), ignore: Sequence[str] = ()) -> list[dict[str, Any]]:
    """``[{"key": dotted path, "a": ..., "b": ...}]`` of the leaves (or whole lists) that differ, ignored keys
    left out; a key present on one side only has ``"<missing>"`` on the other."""
    if path and _ignored(path, ignore):
        return []
    a, b = _comparable(path, a), _comparable(path, b)
    if isinstance(a, dict) and b == MISSING:  # each of its keys missing: ignored ones stay out
        b = {}
    elif isinstance(b, dict) and a == MISSING:
        a = {}
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in [*a, *(k for k in b if k not in a)]:
            out += diff_json(a.get(key, MISSING), b.get(key, MISSING), (*path, str(key)), ignore)
        return out
    if a == b:
        return []
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and len(a) > 20:
        at = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        return [{"key": ".".join(path), "differing_elements": len(at), "first": [[i, a[i], b[i]] for i in at[:5]]}]
    return [{"key": ".".join(path) or "<root>", "a": _short(a), "b": _short(b)}]


def _short(value: Any) -> Any:
    text = json.dumps(value)
    return value if len(text) <= 300 else text[:300] + f"...({len(text)} characters)"


def compare_metadata(dir_a: str, dir_b: str, ignore: Sequence[str]) -> list[dict[str, Any]]:
    loaded = []
    for d in (dir_a, dir_b):
        path = os.path.join(d, features.METADATA_FILE)
        try:
            with open(path) as f:
                loaded.append(json.load(f))
        except (OSError, ValueError) as e:
            return [{"part": "metadata", "what": f"{path}: {e}"}]
    return [
        {"part": "metadata", "what": "metadata.json " + d.pop("key"), **d} for d in diff_json(*loaded, ignore=ignore)
    ]


def rejected_lines(data_dir: str) -> Counter[str]:
    """The rejected lines, each ``path \\t line \\t reason \\t raw`` with the path cut to its file name."""
    out: Counter[str] = Counter()
    for path in sorted(glob.glob(os.path.join(data_dir, REJECTED_DIR, "*.txt"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                source, sep, rest = line.rstrip("\n").partition("\t")
                out[os.path.basename(source) + sep + rest] += 1
    return out


def compare_rejected(dir_a: str, dir_b: str, show: int) -> list[dict[str, Any]]:
    a, b = rejected_lines(dir_a), rejected_lines(dir_b)
    if a == b:
        return []
    return [
        {
            "part": "rejected",
            "what": "rejected lines differ",
            "lines_a": sum(a.values()),
            "lines_b": sum(b.values()),
            "examples_only_in_a": _shown(sorted((a - b).elements()), show),
            "examples_only_in_b": _shown(sorted((b - a).elements()), show),
        }
    ]


def compare(
    dir_a: str, dir_b: str, parts: Sequence[str] = PARTS, ignore: Sequence[str] = (), show: int = 5
) -> dict[str, Any]:
    """``{"a", "b", "parts", "identical", "differences": [{"part", "what", ...}]}``."""
    for d in (dir_a, dir_b):
        if not os.path.isdir(d):
            raise FileNotFoundError(f"{d!r} is not a folder")
    differences: list[dict[str, Any]] = []
    if "vocabularies" in parts:
        differences += compare_vocabularies(dir_a, dir_b, show)
    if "metadata" in parts:
        differences += compare_metadata(dir_a, dir_b, ignore)
    if "rejected" in parts:
        differences += compare_rejected(dir_a, dir_b, show)
    if "records" in parts:
        differences += compare_records(dir_a, dir_b, show)
    return {"a": dir_a, "b": dir_b, "parts": list(parts), "identical": not differences, "differences": differences}


def report(result: dict[str, Any], show: int = 5) -> str:
    if result["identical"]:
        return f"identical ({', '.join(result['parts'])}): {result['a']} and {result['b']}"
    lines = [f"DIFFERENT: {result['a']} (a) and {result['b']} (b), {len(result['differences'])} difference(s)"]
    for d in result["differences"]:
        details = {k: v for k, v in d.items() if k not in ("part", "what")}
        lines.append(f"- [{d['part']}] {d['what']}")
        for key, value in details.items():
            if isinstance(value, list):
                lines.append(f"    {key}:")
                lines += [f"      {json.dumps(v)}" for v in value[:show]]
            else:
                lines.append(f"    {key}: {json.dumps(value)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir_a")
    parser.add_argument("dir_b")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    parser.add_argument("--ignore", action="append", default=[], help="a metadata.json dotted path to leave out")
    parser.add_argument("--show", type=int, default=5, help="examples shown per difference")
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the result as JSON")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        parser.error(f"--parts: unknown {unknown}; choose from {', '.join(PARTS)}")
    try:
        result = compare(args.dir_a, args.dir_b, parts, args.ignore, args.show)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report(result, args.show))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
