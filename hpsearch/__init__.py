"""hpsearch: hyperparameter search for small PyTorch models, built on Optuna.

The public names below are imported lazily, so ``hpsearch --help`` does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hpsearch.errors import HpsearchError

if TYPE_CHECKING:
    from hpsearch.config import RunSettings, StudyConfig, load_study_file, resolve_settings
    from hpsearch.models import build_model
    from hpsearch.problems import PROBLEMS, Problem, get_problem
    from hpsearch.search import run_study
    from hpsearch.storage import open_storage

_LAZY = {
    "RunSettings": "hpsearch.config",
    "StudyConfig": "hpsearch.config",
    "load_study_file": "hpsearch.config",
    "resolve_settings": "hpsearch.config",
    "build_model": "hpsearch.models",
    "PROBLEMS": "hpsearch.problems",
    "Problem": "hpsearch.problems",
    "get_problem": "hpsearch.problems",
    "run_study": "hpsearch.search",
    "open_storage": "hpsearch.storage",
}

__all__ = [
    "PROBLEMS",
    "HpsearchError",
    "Problem",
    "RunSettings",
    "StudyConfig",
    "build_model",
    "get_problem",
    "load_study_file",
    "open_storage",
    "resolve_settings",
    "run_study",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hpsearch' has no attribute {name!r}")
