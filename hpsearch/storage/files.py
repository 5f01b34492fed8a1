"""Writing a user's files so that nothing is lost: each written to a temporary file beside its
place and renamed into it when complete (``replacing``), and a folder of outputs built beside
its place and swapped in (``replacing_folder``). An interrupted write leaves the earlier file
whole and no partial one; a reader never sees half a file.

Written here because the standard library renames but does not pair the rename with the write,
and no small library does both for a folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from hpsearch.errors import HpsearchError


def _temporary(path: Path, kind: str) -> Path:
    # Beside the target, so the rename stays on one file system (and so is atomic).
    return path.with_name(f".{path.name}.{os.getpid()}.{kind}")


def cannot_write(path: Path, error: OSError) -> HpsearchError:
    """``error`` writing ``path`` as one line: why, in the operating system's words."""
    reason = error.strerror or str(error) or type(error).__name__
    return HpsearchError(f"cannot write {path}: {reason}")


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; renamed onto ``path`` when the
    block ends, removed if it raises (``path`` then stays as it was).

    Raises:
        HpsearchError: the file cannot be written (a missing folder, no permission, a full
            disk), in one line.
    """
    path = Path(path)
    partial = _temporary(path, "tmp")
    try:
        yield partial
        os.replace(partial, path)
    except OSError as error:
        raise cannot_write(path, error) from None
    finally:
        partial.unlink(missing_ok=True)


def check_replaceable(path: str | Path, ours: Callable[[str], bool]) -> None:
    """Refuse to replace ``path`` unless it is missing or a folder holding only entries
    ``ours`` accepts (what an earlier run of the same command wrote): a folder of the
    user's is never replaced.

    Raises:
        HpsearchError: naming what ``path`` holds that is not ours.
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise HpsearchError(f"{path} is a file; give a folder to write to")
    others = sorted(entry.name for entry in path.iterdir() if not ours(entry.name))
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise HpsearchError(
            f"{path} holds files hpsearch did not write ({shown}); give a new or empty folder"
        )


@contextlib.contextmanager
def replacing_folder(path: str | Path, ours: Callable[[str], bool]) -> Iterator[Path]:
    """A temporary folder to fill with ``path``'s new content; swapped in for ``path`` when
    the block ends, so no file of an earlier run is left beside the new ones; removed if it
    raises (``path`` then stays as it was). ``path`` must be replaceable
    (``check_replaceable``); missing folders above it are made.

    Raises:
        HpsearchError: ``path`` holds files of the user's, or cannot be written.
    """
    path = Path(path)
    check_replaceable(path, ours)
    building, old = _temporary(path, "tmp"), _temporary(path, "old")
    above = next((a for a in path.parents if a.exists()), None)
    if above is not None and not above.is_dir():
        raise HpsearchError(f"cannot write {path}: {above} is a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        building.mkdir()
        yield building
        earlier = path.exists()
        if earlier:
            os.rename(path, old)
        try:
            os.rename(building, path)
        except OSError:
            if earlier:
                os.rename(old, path)  # put the earlier run's folder back
            raise
        shutil.rmtree(old, ignore_errors=True)
    except OSError as error:
        raise cannot_write(path, error) from None
    finally:
        shutil.rmtree(building, ignore_errors=True)
