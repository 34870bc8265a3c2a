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
