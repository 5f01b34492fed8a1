"""A finalized model's files: ``model.pt`` (the chosen model's weights), ``ensemble.pt`` (every
member's params and weights) and ``finalize.json`` (``FinalResult.to_json``), written to a
folder and read back from it or from the artifact store finalize uploaded them to."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpsearch.errors import HpsearchError
from hpsearch.problems import get_problem
from hpsearch.record import FINALIZE
from hpsearch.results.final_result import FinalResult
from hpsearch.settings import resolve_settings
from hpsearch.storage.counts import load_study
from hpsearch.storage.files import replacing_folder
from hpsearch.training.models import Ensemble

MODEL_FILE = "model.pt"
ENSEMBLE_FILE = "ensemble.pt"
RESULT_FILE = "finalize.json"
MODEL_FILES = (MODEL_FILE, ENSEMBLE_FILE, RESULT_FILE)  # what finalize writes, and only that


def is_model_file(name: str) -> bool:
    """Whether a file named ``name`` in a model folder is one finalize writes."""
    return name in MODEL_FILES


def save(
    result: FinalResult,
    model: nn.Module,
    out: Path,
    members: list[tuple[dict[str, Any], nn.Module]] | None = None,
) -> None:
    """Write the model's weights, the ensemble members' params and weights (if any) and
    ``finalize.json`` into the folder ``out``, in place of an earlier finalize's: the three
    are built beside it and swapped in together, so a model, an ensemble and a record of
    two runs never mix.

    Raises:
        HpsearchError: ``out`` holds other files, or cannot be written.
    """
    with replacing_folder(out, is_model_file) as folder:
        torch.save(model.state_dict(), folder / MODEL_FILE)
        if members:
            torch.save(
                [{"params": params, "state": m.state_dict()} for params, m in members],
                folder / ENSEMBLE_FILE,
            )
        (folder / RESULT_FILE).write_text(json.dumps(result.to_json(), indent=2, sort_keys=True))


def load_model(
    folder: str | Path | None = None,
    *,
    study: str | None = None,
    storage: str | None = None,
    artifacts: str | None = None,
    ensemble: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a finalized model: ``(model in eval mode, record)``, the record being
    ``finalize.json`` (configuration, metrics, target scale, data checksums).

    Reads ``folder`` (``finalize --out``), or, given ``study`` instead, the files that
    finalize uploaded to its artifact store (``storage`` defaults to the settings'
    ``$HPSEARCH_STORAGE``, ``artifacts`` to the store finalize used). ``ensemble`` rebuilds the
    combined ensemble instead of the single model. Regression outputs are normalized
    targets: ``record["target"]`` turns them into prices.

    Raises:
        HpsearchError: ``ensemble`` asked of a model finalized without one, or a study not
            finalized into an artifact store.
    """
    if (folder is None) == (study is None):
        raise TypeError("load_model needs a folder or a study, not both")
    read = (
        _folder_reader(Path(folder))
        if folder is not None
        else _store_reader(str(study), storage, artifacts)
    )
    record = json.loads(read(RESULT_FILE) or b"{}")
    if not record:
        raise HpsearchError(f"{folder} holds no {RESULT_FILE}: not a finalize --out folder")
    problem = get_problem(record["problem"])
    shape: Sequence[int] = record["input_shape"]

    def rebuild(params: dict[str, Any], state: dict[str, Any]) -> nn.Module:
        # A folder written before its problem read a value from its data (USPS's class
        # count) lacks it: the problem's defaults hold it.
        model = problem.build_model({**problem.defaults, **params}, shape)
        model.load_state_dict(state)
        return model.eval()

    def load(name: str) -> Any:
        data = read(name)
        if data is None:
            where = folder if folder is not None else f"study {study}"
            raise HpsearchError(f"{where} holds no {name} (finalized with --no-ensemble?)")
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    if ensemble:
        members = [rebuild(m["params"], m["state"]) for m in load(ENSEMBLE_FILE)]
        return Ensemble(members, problem.combine).eval(), record
    return rebuild(record["chosen"]["params"], load(MODEL_FILE)), record


def _folder_reader(folder: Path) -> Callable[[str], bytes | None]:
    def read(name: str) -> bytes | None:
        path = folder / name
        return path.read_bytes() if path.exists() else None

    return read


def _store_reader(
    study_name: str, storage: str | None, artifacts: str | None
) -> Callable[[str], bytes | None]:
    """Reads the files that ``finalize`` uploaded for ``study_name`` (ids on the study)."""
    from hpsearch.storage.artifacts import (
        ArtifactNotFound,
        open_artifact_store,
        read_artifact,
        store_errors,
    )

    url = resolve_settings(storage=storage).storage
    summary = load_study(study_name, url).user_attrs.get(FINALIZE) or {}
    ids: dict[str, str] = summary.get("artifacts") or {}
    where = artifacts or summary.get("artifact_store")
    if not ids or not where:
        raise HpsearchError(f"study {study_name!r} was not finalized into an artifact store")
    store = open_artifact_store(where)
    failures: tuple[type[Exception], ...] = (ArtifactNotFound, *store_errors())

    def read(name: str) -> bytes | None:
        if name not in ids:
            return None
        try:
            return read_artifact(store, ids[name])
        except failures as error:
            raise HpsearchError(
                f"cannot read {name} of study {study_name!r} from {where}: {error}"
            ) from None

    return read
