"""`pipeline.synthetic`: exact sizes, determinism, interleaving and learnable sequential structure."""

from __future__ import annotations

import io
from collections import Counter, defaultdict

import pytest

from pipeline import synthetic


def generate(**kwargs) -> str:
    out = io.StringIO()
    n = synthetic.generate(out, **kwargs)
    assert n == kwargs["events"]
    return out.getvalue()


def sequences(text: str) -> dict[str, list[str]]:
    rows = defaultdict(list)
    for line in text.splitlines():
        user, item, ts = line.split("\t")
        rows[user].append((int(ts), item))
    return {u: [i for _, i in sorted(r)] for u, r in rows.items()}


def test_sizes_determinism_and_interleaving() -> None:
    text = generate(users=200, items=50, events=3001, seed=5)
    assert text == generate(users=200, items=50, events=3001, seed=5)
    assert text != generate(users=200, items=50, events=3001, seed=6)
    lines = text.splitlines()
    assert len(lines) == 3001
    seqs = sequences(text)
    assert set(seqs) == {str(u) for u in range(1, 201)}
    assert min(map(len, seqs.values())) >= 5
    assert {int(i) for s in seqs.values() for i in s} <= set(range(1, 51))
    users_in_file_order = [line.split("\t")[0] for line in lines]
    switches = sum(a != b for a, b in zip(users_in_file_order, users_in_file_order[1:], strict=False))
    assert switches > len(lines) / 2  # users are interleaved like a real log, not grouped


def test_next_item_is_predictable_from_the_last_one() -> None:
    """A bigram model beats popularity by a wide margin on the last item: the structure SASRec should learn."""
    seqs = sequences(generate(users=2000, items=1000, events=30000, seed=1))
    popularity, bigram = Counter(), defaultdict(Counter)
    for s in seqs.values():
        popularity.update(s[:-1])
        for a, b in zip(s[:-2], s[1:-1], strict=True):
            bigram[a][b] += 1
    top = {i for i, _ in popularity.most_common(10)}
    hit_pop = sum(s[-1] in top for s in seqs.values()) / len(seqs)
    hit_bigram = sum(s[-1] in {i for i, _ in bigram[s[-2]].most_common(10)} for s in seqs.values()) / len(seqs)
    assert hit_bigram > 0.6 and hit_bigram > 4 * hit_pop, (hit_bigram, hit_pop)


def test_cli_and_bad_sizes(tmp_path) -> None:
    assert synthetic.main(["--output", str(tmp_path / "s.tsv"), "--users", "3", "--items", "4", "--events", "20"]) == 0
    assert len((tmp_path / "s.tsv").read_text().splitlines()) == 20
    assert synthetic.main(["--output", str(tmp_path / "s.tsv"), "--users", "10", "--items", "4", "--events", "20"]) == 2
    with pytest.raises(ValueError):
        generate(users=0, items=5, events=10)


def test_default_output_is_unchanged() -> None:
    """The file a seed gave before ``--drift`` existed, byte for byte (sha256 of the text)."""
    import hashlib

    text = generate(users=200, items=50, events=3001, seed=5)
    assert hashlib.sha256(text.encode()).hexdigest() == (
        "24ca954bad5e8accffe8c76ec4f29cbbe26ce4be9afadc437eb6dd95f657ded7"
    )


def test_drift_moves_the_items_on_one_clock() -> None:
    """``drift``: one global clock, a catalogue that grows with it, popularity that moves to the new items, users
    on both sides of a time cut, and a chain still learnable from the last item."""
    kwargs = dict(users=1000, items=2000, events=40000, seed=3, drift=0.5)
    text = generate(**kwargs)
    assert text == generate(**kwargs) and text != generate(users=1000, items=2000, events=40000, seed=3)
    rows = [tuple(map(int, line.split("\t"))) for line in text.splitlines()]
    span = 86_400 * synthetic.SPAN_DAYS
    assert all(synthetic.START <= t < synthetic.START + span and 1 <= i <= 2000 for _, i, t in rows)
    early = [i for _, i, t in rows if t < synthetic.START + span // 10]
    late = [i for _, i, t in rows if t >= synthetic.START + 9 * span // 10]
    assert max(early) <= 2000 * (1 - 0.5 + 0.5 * 0.1) + 1  # not yet introduced items never occur
    assert sum(late) / len(late) > sum(early) / len(early) + 400  # popularity moved to newer items
    cut = synthetic.START + 7 * span // 10
    users_before = {u for u, _, t in rows if t < cut}
    users_after = {u for u, _, t in rows if t >= cut}
    assert len(users_before & users_after) > 100  # a global time cut holds out many users
    seqs = sequences(text)
    bigram = defaultdict(Counter)
    for s in seqs.values():
        for a, b in zip(s[:-2], s[1:-1], strict=True):
            bigram[a][b] += 1
    hits = sum(s[-1] in {i for i, _ in bigram[s[-2]].most_common(10)} for s in seqs.values()) / len(seqs)
    assert hits > 0.5, hits
    with pytest.raises(ValueError):
        generate(users=10, items=20, events=100, drift=1.5)
