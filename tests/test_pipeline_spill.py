"""`pipeline.spill`: payloads left in one file per bundle, references shuffled, read back whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import spill


def spilled(directory: Path, bundles: list[list[tuple[int, bytes]]]) -> list[tuple[int, spill.Ref]]:
    """Runs `spill.SpillPayloads` over ``bundles`` as a runner would (start, process each element, finish)."""
    writer, out = spill.SpillPayloads(str(directory)), []
    for bundle in bundles:
        writer.start_bundle()
        for element in bundle:
            out += list(writer.process(element))
        writer.finish_bundle()
    return out


def test_each_bundle_writes_one_file_and_references_read_back_its_payloads(tmp_path: Path) -> None:
    bundles = [[(3, b"abc"), (1, b""), (3, b"defg")], [(1, b"xy")]]
    refs = spilled(tmp_path, bundles)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 2  # one per bundle, whatever its keys
    first = refs[0][1][0]
    # Expected by hand: offsets are the running sum of the bundle's payload lengths, in its order.
    assert [(key, ref[1:]) for key, ref in refs] == [(3, (0, 3)), (1, (3, 0)), (3, (3, 4)), (1, (0, 2))]
    assert Path(first).read_bytes() == b"abcdefg"
    by_key: dict[int, list] = {}
    for key, ref in refs:
        by_key.setdefault(key, []).append(ref)
    assert sorted(spill.payloads(by_key[3])) == [b"abc", b"defg"]
    assert sorted(spill.payloads([*by_key[1], b"raw"])) == [b"", b"raw", b"xy"]  # bytes pass through


def test_a_file_cut_short_is_an_error_not_a_short_read(tmp_path: Path) -> None:
    (key, ref), _ = spilled(tmp_path, [[(0, b"12345"), (0, b"678")]])
    Path(ref[0]).write_bytes(b"1234567")
    with pytest.raises(ValueError, match="holds 7 bytes, a reference needs 8"):
        list(spill.payloads([(ref[0], 5, 3)]))


def test_remove_deletes_the_runs_spill_folder_only(tmp_path: Path) -> None:
    folder = Path(spill.spill_dir(str(tmp_path), "run1"))
    spilled(folder, [[(0, b"x")]])  # the folder is made by the first file
    assert len(list(folder.iterdir())) == 1
    (tmp_path / ".temp-run2").mkdir()
    spill.remove(str(tmp_path), "run1")
    spill.remove(str(tmp_path), "absent")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".temp-run2"]


def test_a_failed_run_leaves_no_spill_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import run, sequences

    (tmp_path / "log.tsv").write_text("".join(f"u{u}\ti{u % 3}\t{t}\n" for u in range(5) for t in range(4)))
    output = tmp_path / "out"
    seen = []

    def fail(*args, **kwargs):  # the step after the rows were spilled
        seen.extend(output.glob(".temp-*/spill/*"))
        raise RuntimeError("a step failed")

    monkeypatch.setattr(sequences, "build_sequence", fail)
    with pytest.raises(Exception, match="a step failed"):
        run.run([f"--input={tmp_path / 'log.tsv'}", "--input_format=interactions", "--split=loo", f"--output={output}"])
    assert seen  # the rows were in spill files when the step failed
    assert not list(output.glob(".temp-*"))  # and the launcher removed them
