"""hpsearch: hyperparameter search for small PyTorch models, built on Optuna.

The public names below are imported lazily, so ``hpsearch --help`` does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hpsearch.errors import HpsearchError

if TYPE_CHECKING:
    from hpsearch.finalize import finalize_study, load_model
    from hpsearch.problems import PROBLEMS, Problem, get_problem, register_problem
    from hpsearch.search import run_study
    from hpsearch.settings import Settings, resolve_settings
    from hpsearch.storage import open_storage
    from hpsearch.study_file import StudyConfig, load_study_file

_LAZY = {
    "finalize_study": "hpsearch.finalize",
    "load_model": "hpsearch.finalize",
    "PROBLEMS": "hpsearch.problems",
    "Problem": "hpsearch.problems",
    "get_problem": "hpsearch.problems",
    "register_problem": "hpsearch.problems",
    "run_study": "hpsearch.search",
    "Settings": "hpsearch.settings",
    "resolve_settings": "hpsearch.settings",
    "open_storage": "hpsearch.storage",
    "StudyConfig": "hpsearch.study_file",
    "load_study_file": "hpsearch.study_file",
}

__all__ = [
    "PROBLEMS",
    "HpsearchError",
    "Problem",
    "Settings",
    "StudyConfig",
    "finalize_study",
    "get_problem",
    "load_model",
    "load_study_file",
    "open_storage",
    "register_problem",
    "resolve_settings",
    "run_study",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hpsearch' has no attribute {name!r}")
