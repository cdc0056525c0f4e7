"""Issue 27, items 7, 11 and 17: what a resume trusts, a merge that cannot read a part, outputs whose
sources are gone. Each test injects the fault (see README, "What a run guarantees")."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from anonymize.cli import main
from anonymize.io.manifest import read_rows
from anonymize.run import run, run_config
from tests.helpers import crops


def blur(source: Path, out: Path, **overrides):
    return run_config(source, out, **{"method": "blur", "aligned": True, "device": "cpu", **overrides})


def rows_by_source(out: Path) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for row in read_rows(out / "manifest.parquet"):
        grouped.setdefault(row["source_path"], []).append(row)
    return grouped


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- item 7: a resume re-checks each output's bytes against the hash its row recorded ----------------


def test_an_output_replaced_by_its_original_is_redone_on_resume(tmp_path):
    source = crops(tmp_path / "in", ["a.png", "b.png", "c.png"], size=(64, 64))
    out = tmp_path / "out"
    run(blur(source, out))
    rows = rows_by_source(out)
    for name in ("a.png", "b.png", "c.png"):
        assert [row["output_sha256"] for row in rows[name]] == [sha256(out / name)]

    shutil.copyfile(source / "a.png", out / "a.png")  # the original copied over its output
    (out / "b.png").unlink()
    os.link(source / "b.png", out / "b.png")  # the original hard-linked at the output's place
    original_b = (source / "b.png").read_bytes()

    summary = run(blur(source, out))
    assert (summary.redone_outputs, summary.resumed, summary.images) == (2, 1, 2)
    assert (out / "a.png").read_bytes() != (source / "a.png").read_bytes()
    assert not os.path.samefile(out / "b.png", source / "b.png")
    assert (source / "b.png").read_bytes() == original_b  # the rewrite replaced the link, never its target
    rows = rows_by_source(out)
    for name in ("a.png", "b.png"):
        assert rows[name][0]["output_sha256"] == sha256(out / name)
    assert run(blur(source, out)).resumed == 3  # and now the outputs are trusted again


def test_rows_without_a_recorded_hash_redo_an_output_that_is_its_original(tmp_path):
    """Manifests written before ``output_sha256``: an output equal to its source (the original put back)
    is redone; any other output still in place is trusted."""
    source = crops(tmp_path / "in", ["a.png", "b.png"], size=(64, 64))
    out = tmp_path / "out"
    run(blur(source, out))
    manifest = out / "manifest.parquet"
    table = pq.read_table(manifest)
    old = table.drop_columns(["output_sha256"])  # as a manifest of an earlier version
    pq.write_table(old.replace_schema_metadata(table.schema.metadata), manifest)
    shutil.copyfile(source / "a.png", out / "a.png")

    summary = run(blur(source, out))
    assert (summary.redone_outputs, summary.resumed, summary.images) == (1, 1, 1)
    assert (out / "a.png").read_bytes() != (source / "a.png").read_bytes()


# ---- item 11: a part that cannot be read during the final merge is kept, exit 2, merged next time -----


def test_a_part_that_cannot_be_read_in_the_final_merge_is_kept_and_merged_next_time(tmp_path, monkeypatch, capsys):
    import anonymize.io.manifest as manifest

    source = crops(tmp_path / "in", ["a.png", "b.png"], size=(64, 64))
    out = tmp_path / "out"
    real_read = manifest._read_table
    failed: list[Path] = []

    def read_failing_once(path):
        if Path(str(path)).parent.name == "parts" and not failed:
            failed.append(Path(str(path)))
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return real_read(path)

    monkeypatch.setattr(manifest, "_read_table", read_failing_once)
    with pytest.raises(SystemExit) as stopped:
        main([str(arg) for arg in ("run", source, "--out", out, "--method", "blur", "--aligned", "--device", "cpu",
                                   "--quiet", "--batch-size", "1", "--workers", "1")])
    captured = capsys.readouterr()
    assert stopped.value.code == 2
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ") and os.strerror(errno.EIO) in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert failed and failed[0].is_file()  # the part is kept
    monkeypatch.undo()

    summary = run(blur(source, out))  # merged by the next run: nothing lost, nothing redone
    assert (summary.resumed, summary.images) == (2, 0)
    assert sorted(rows_by_source(out)) == ["a.png", "b.png"]
    assert not (out / ".anonymize" / "parts").exists()


# ---- item 17: outputs whose sources are gone are removed with their rows, and nothing else -------------


@pytest.mark.parametrize("overwrite", [False, True], ids=["resume", "overwrite"])
def test_outputs_whose_sources_are_gone_are_removed_with_their_rows(tmp_path, overwrite):
    source = crops(tmp_path / "in", ["a.png", "b.png", "sub/c.png", "d.png"], size=(64, 64))
    out = tmp_path / "out"
    run(blur(source, out))
    (out / "mine.png").write_bytes(b"not written by anonymize")  # the user's own file in the output
    (source / "b.png").unlink()
    shutil.rmtree(source / "sub")
    (source / "d.png").unlink()
    (out / "d.png").write_bytes(b"the user replaced this output")  # no longer what the run wrote

    summary = run(blur(source, out, overwrite=overwrite, resume=not overwrite))
    assert summary.removed_outputs == 2
    assert not (out / "b.png").exists() and not (out / "sub" / "c.png").exists()
    assert (out / "mine.png").read_bytes() == b"not written by anonymize"
    assert (out / "d.png").read_bytes() == b"the user replaced this output"  # not ours any more: left alone
    assert sorted(rows_by_source(out)) == ["a.png"]
    assert (out / "a.png").is_file()
    assert run(blur(source, out)).removed_outputs == 0


def test_a_source_beyond_limit_or_in_an_unlisted_folder_is_not_gone(tmp_path):
    source = crops(tmp_path / "in", ["a.png", "b.png"], size=(64, 64))
    out = tmp_path / "out"
    run(blur(source, out))
    summary = run(blur(source, out, limit=1))  # b.png is still there, only not processed this time
    assert summary.removed_outputs == 0 and (out / "b.png").is_file()
    assert sorted(rows_by_source(out)) == ["a.png", "b.png"]


def test_the_summary_says_how_many_outputs_were_redone_or_removed(tmp_path, capsys):
    source = crops(tmp_path / "in", ["a.png", "b.png"], size=(64, 64))
    out = tmp_path / "out"
    run(blur(source, out))
    shutil.copyfile(source / "a.png", out / "a.png")
    (source / "b.png").unlink()
    with pytest.raises(SystemExit) as stopped:
        main([str(arg) for arg in ("run", source, "--out", out, "--method", "blur", "--aligned", "--device", "cpu")])
    captured = capsys.readouterr()
    assert stopped.value.code == 0
    assert "removed 1 output whose source is gone" in captured.out
    assert "redid 1 image whose output no longer matched the manifest" in captured.out


def test_another_input_into_the_same_output_removes_nothing(tmp_path):
    first = crops(tmp_path / "first", ["a.png"], size=(64, 64))
    second = crops(tmp_path / "second", ["b.png"], size=(64, 64))
    out = tmp_path / "out"
    run(blur(first, out))
    for _ in range(2):  # a's source is not in the second input, but it is not gone: it was never this input's
        assert run(blur(second, out)).removed_outputs == 0
        assert (out / "a.png").is_file() and sorted(rows_by_source(out)) == ["a.png", "b.png"]
    assert run(blur(second, out, overwrite=True, resume=False)).removed_outputs == 0
    assert (out / "a.png").is_file()
