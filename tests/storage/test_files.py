"""A user's files written so that nothing is lost (hpsearch.storage.files): renamed into place
when complete, a folder of outputs swapped in whole, a folder of the user's never replaced."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpsearch.errors import HpsearchError
from hpsearch.storage.files import check_replaceable, replacing, replacing_folder


def test_a_file_is_replaced_only_when_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    path.write_text("earlier")
    with pytest.raises(KeyboardInterrupt), replacing(path) as partial:
        partial.write_text("half of it")
        raise KeyboardInterrupt
    assert path.read_text() == "earlier" and [p.name for p in tmp_path.iterdir()] == ["out.csv"]
    with replacing(path) as partial:
        partial.write_text("new")
        assert path.read_text() == "earlier"  # readers see the old file until the end
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out.csv"]
    with pytest.raises(HpsearchError, match=r"cannot write .*nowhere/out.csv: No such file"):
        with replacing(tmp_path / "nowhere" / "out.csv") as partial:
            partial.write_text("x")


def test_a_folder_is_swapped_in_whole_and_a_users_is_kept(tmp_path: Path) -> None:
    ours = {"model.pt", "ensemble.pt"}.__contains__
    out = tmp_path / "deep" / "final"
    with replacing_folder(out, ours) as folder:
        (folder / "model.pt").write_text("1")
        (folder / "ensemble.pt").write_text("1")
    assert sorted(p.name for p in out.iterdir()) == ["ensemble.pt", "model.pt"]
    with replacing_folder(out, ours) as folder:  # a second run without an ensemble
        (folder / "model.pt").write_text("2")
    assert [p.name for p in out.iterdir()] == ["model.pt"]  # nothing of the first left
    with pytest.raises(RuntimeError), replacing_folder(out, ours) as folder:
        (folder / "model.pt").write_text("3")
        raise RuntimeError("failed halfway")
    assert (out / "model.pt").read_text() == "2"
    assert sorted(p.name for p in out.parent.iterdir()) == ["final"]  # no temporary left
    (out / "notes.txt").write_text("the user's")
    with pytest.raises(HpsearchError, match=r"final holds files hpsearch did not write \(notes"):
        check_replaceable(out, ours)
    (tmp_path / "file").write_text("")
    with pytest.raises(HpsearchError, match="file is a file"):
        check_replaceable(tmp_path / "file", ours)
