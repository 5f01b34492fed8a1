"""hpsearch from Python, for notebooks: ``run`` a study (a shipped one, a study file, a study
as a dict, or your own data as a path, a DataFrame or arrays) and ``finalize`` it, with the
command line's settings as keyword arguments.

    import hpsearch
    study = hpsearch.run(data=frame, target="price", trials=30)
    result = hpsearch.finalize(study.study_name)
    hpsearch.load_predictor(result.out).predict(new_rows)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import pandas as pd

from hpsearch.errors import HpsearchError
from hpsearch.storage.files import replacing

if TYPE_CHECKING:
    import optuna

    from hpsearch.results.final_result import FinalResult

Data: TypeAlias = str | Path | pd.DataFrame | tuple[np.ndarray, np.ndarray]


def run(
    study: str | Path | dict[str, Any] | None = None,
    *,
    data: Data | None = None,
    target: str | None = None,
    task: str | None = None,
    metrics: list[str] | None = None,
    **settings: Any,
) -> optuna.Study:
    """Run (or resume) a study, as ``hpsearch run`` does; the Optuna study.

    ``study`` is a shipped study's name, a study file's path or a study file's contents as a
    dict. ``data`` is your own data: a table or image folder's path, a DataFrame (with
    ``target`` its column to predict) or ``(x, y)`` arrays; a DataFrame or arrays are saved
    once, under a name from their contents, in the cache folder, so that workers, reruns and
    ``finalize`` read the same rows. ``metrics`` are the objectives, in place of the
    study's (``--metric``). ``settings`` are ``run``'s options (``trials``, ``storage``,
    ``workers``, ``seed``, ...); every local worker runs the study resolved here.

    Raises:
        HpsearchError: bad input of any kind, in one line.
    """
    from hpsearch.search.plan import resolve_plan
    from hpsearch.search.run import run_study

    given = data
    if isinstance(data, pd.DataFrame):
        data = _saved(data, target)
    elif data is not None and not isinstance(data, str | Path):
        data, target = _saved(data, target), "y"
    try:
        plan = resolve_plan(study, data=data, target=target, task=task, metrics=metrics, **settings)
        opened, _ = run_study(plan)
    except HpsearchError as error:
        if data is given:
            raise
        # Say "the DataFrame", not the cache file it was saved to.
        named = "the DataFrame" if isinstance(given, pd.DataFrame) else "the arrays"
        message = str(error).replace(str(data), named)
        raise HpsearchError(message, exit_code=error.exit_code) from None
    return opened


def finalize(study_name: str, **settings: Any) -> FinalResult:
    """Finalize a study, as ``hpsearch finalize`` does (``settings``: its options,
    ``storage``, ``top_k``, ``seeds``, ``out``, ...); the result, with ``out`` the folder of
    its model files."""
    from hpsearch.results.finalize import finalize_study
    from hpsearch.settings import resolve_settings

    return finalize_study(study_name, resolve_settings(**settings))


def _saved(data: pd.DataFrame | tuple[np.ndarray, np.ndarray], target: str | None) -> Path:
    """A DataFrame (as CSV) or ``(x, y)`` arrays (as ``.npz``) saved in the cache folder under
    the SHA-256 of their contents: the same data, the same file."""
    from hpsearch.problems.splits import cache_dir

    folder = cache_dir() / "data"
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(data, pd.DataFrame):
        if target is None or target not in data.columns:
            raise HpsearchError(f"target {target!r} is not a column of the DataFrame")
        text = data.to_csv(index=False).encode()
        path = folder / f"frame-{hashlib.sha256(text).hexdigest()[:16]}.csv"
        if not path.exists():
            with replacing(path) as partial:  # workers started next read it whole
                partial.write_bytes(text)
        return path
    try:
        x, y = (np.asarray(array) for array in data)
    except (TypeError, ValueError):
        raise HpsearchError("data must be a path, a DataFrame or (x, y) arrays") from None
    digest = hashlib.sha256(x.tobytes() + y.tobytes() + str((x.shape, x.dtype)).encode())
    path = folder / f"arrays-{digest.hexdigest()[:16]}.npz"
    if not path.exists():
        with replacing(path) as partial, partial.open("wb") as file:
            np.savez(file, x=x, y=y)
    return path
