"""hpsearch: hyperparameter search for small PyTorch models, built on Optuna.

The public names below are imported lazily, so ``hpsearch --help`` does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hpsearch.errors import HpsearchError

if TYPE_CHECKING:
    from hpsearch.api import finalize, run
    from hpsearch.problems import PROBLEMS, Problem, Splits, get_problem, register_problem
    from hpsearch.results.finalize import finalize_study
    from hpsearch.results.model_files import load_model
    from hpsearch.results.predict import Predictor, load_predictor
    from hpsearch.search.plan import RunPlan, resolve_plan
    from hpsearch.search.run import run_study
    from hpsearch.search.study_file import StudyConfig, load_study_file
    from hpsearch.settings import Settings, resolve_settings
    from hpsearch.storage.database import open_storage

_LAZY = {
    "run": "hpsearch.api",
    "finalize": "hpsearch.api",
    "finalize_study": "hpsearch.results.finalize",
    "load_model": "hpsearch.results.model_files",
    "Predictor": "hpsearch.results.predict",
    "load_predictor": "hpsearch.results.predict",
    "PROBLEMS": "hpsearch.problems",
    "Problem": "hpsearch.problems",
    "Splits": "hpsearch.problems",
    "get_problem": "hpsearch.problems",
    "register_problem": "hpsearch.problems",
    "run_study": "hpsearch.search.run",
    "RunPlan": "hpsearch.search.plan",
    "resolve_plan": "hpsearch.search.plan",
    "Settings": "hpsearch.settings",
    "resolve_settings": "hpsearch.settings",
    "open_storage": "hpsearch.storage.database",
    "StudyConfig": "hpsearch.search.study_file",
    "load_study_file": "hpsearch.search.study_file",
}

__all__ = [
    "PROBLEMS",
    "HpsearchError",
    "Predictor",
    "Problem",
    "RunPlan",
    "Settings",
    "Splits",
    "StudyConfig",
    "finalize",
    "finalize_study",
    "get_problem",
    "load_model",
    "load_predictor",
    "load_study_file",
    "open_storage",
    "register_problem",
    "resolve_plan",
    "resolve_settings",
    "run",
    "run_study",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hpsearch' has no attribute {name!r}")
