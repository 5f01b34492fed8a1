"""From a study to one trusted model: retrain the best configurations with several seeds,
choose robustly on validation, train the choice on train + validation and score it once on
the held-out test split. Beside it, an ensemble of every retrained configuration x seed
(each trained on train + validation, predictions averaged) is scored once on test too, and a
Gaussian regressor's intervals get a scale factor fitted on validation.

This module, and the baselines it fits, are the only code that reads ``Splits.x_test`` /
``y_test``.
"""

from __future__ import annotations

import io
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from hpsearch.data import Splits
from hpsearch.errors import HpsearchError
from hpsearch.groups import default_group_size
from hpsearch.metrics import Metrics
from hpsearch.models import Ensemble
from hpsearch.problems import Problem, get_problem
from hpsearch.settings import Settings
from hpsearch.training import NonFiniteLossError, resolve_device

MODEL_FILE = "model.pt"
ENSEMBLE_FILE = "ensemble.pt"
RESULT_FILE = "finalize.json"


@dataclass
class Candidate:
    """One configuration retrained with several seeds, scored on validation."""

    trial: int
    params: dict[str, Any]
    search_value: float
    val_scores: list[float] = field(default_factory=list)
    # The problem's calibration statistic on validation, per seed (Gaussian regressor: the
    # mean squared z-score of the validation targets).
    val_calibration: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def mean(self) -> float:
        return statistics.fmean(self.val_scores)

    @property
    def std(self) -> float:
        return statistics.stdev(self.val_scores) if len(self.val_scores) > 1 else 0.0

    def robust(self, maximize: bool) -> float:
        """Mean minus one standard deviation (plus, when lower is better)."""
        return self.mean - self.std if maximize else self.mean + self.std


@dataclass
class FinalResult:
    study: str
    problem: str
    metric: str
    chosen: Candidate
    candidates: list[Candidate]
    test_metrics: dict[str, Any]
    train_rows: int
    test_rows: int
    seconds: float
    checksums: dict[str, str]
    input_shape: tuple[int, ...] = ()
    target: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None
    # The ensemble's members as (trial, seed) and its test metrics; None without --ensemble.
    ensemble_members: list[tuple[int, int]] = field(default_factory=list)
    ensemble_test: dict[str, Any] | None = None
    # The validation-fitted scale (Gaussian regressor: of sigma) and the scaled model's test
    # metrics; None for problems without a calibration.
    calibration: dict[str, Any] | None = None
    out: str | None = None  # where model.pt and finalize.json were saved
    # The artifact store the files were uploaded to, and their ids there (file name -> id),
    # which the dashboard lists too.
    artifact_store: str | None = None
    artifacts: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What is stored on the study (user attribute ``finalize``) for ``hpsearch report``,
        the dashboard and the ``finalize`` table. (The chosen params are the trial's own, and
        in ``finalize.json``: left out, so the dashboard's attribute table stays short.)"""
        return {
            "trial": self.chosen.trial,
            "val_mean": self.chosen.mean,
            "val_std": self.chosen.std,
            "test": self.test_metrics,
            "ensemble_test": self.ensemble_test,
            "ensemble_size": len(self.ensemble_members),
            "calibration": self.calibration,
            "baseline": self.baseline,
            "train_rows": self.train_rows,
            "test_rows": self.test_rows,
            "out": self.out,
            "artifact_store": self.artifact_store,
            "artifacts": self.artifacts,
        }

    def to_json(self) -> dict[str, Any]:
        def candidate(c: Candidate) -> dict[str, Any]:
            return {**asdict(c), "val_mean": c.mean, "val_std": c.std}

        return {
            "study": self.study,
            "problem": self.problem,
            "metric": self.metric,
            "selection": "top-k trials retrained on train with each seed; chosen by "
            "validation mean -/+ one std; the choice retrained on train + validation "
            "(seed 0) and scored once on test",
            "chosen": candidate(self.chosen),
            "candidates": [candidate(c) for c in self.candidates],
            "test": self.test_metrics,
            "ensemble": {
                "members": [{"trial": t, "seed": seed} for t, seed in self.ensemble_members],
                "test": self.ensemble_test,
            }
            if self.ensemble_test is not None
            else None,
            "calibration": self.calibration,
            "input_shape": list(self.input_shape),
            "target": self.target,
            "baseline": self.baseline,
            "train_rows": self.train_rows,
            "test_rows": self.test_rows,
            "seconds": round(self.seconds, 1),
            "checksums": self.checksums,
            "torch": torch.__version__,
            "optuna": optuna.__version__,
        }


def top_configurations(study: optuna.Study, k: int) -> list[tuple[int, dict[str, Any], float]]:
    """The best ``k`` complete trials with distinct configurations: (number, params, value)."""
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
        if t.value is not None and math.isfinite(t.value) and "config" in t.user_attrs
    ]
    trials.sort(key=lambda t: t.value, reverse=maximize)  # type: ignore[arg-type, return-value]
    chosen: list[tuple[int, dict[str, Any], float]] = []
    seen: set[str] = set()
    for trial in trials:
        key = json.dumps(trial.user_attrs["config"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            chosen.append((trial.number, dict(trial.user_attrs["config"]), float(trial.value)))  # type: ignore[arg-type]
        if len(chosen) == k:
            break
    return chosen


def test_metrics(problem: Problem, model: nn.Module, splits: Splits) -> Metrics:
    """The problem's test metrics of ``model``: one look at the held-out split."""
    evaluate = problem.test_metrics or problem.evaluate
    return evaluate(model, splits.x_test, splits.y_test, splits)


def finalize_study(
    study_name: str,
    settings: Settings,
    on_candidate: Callable[[Candidate], None] | None = None,
) -> FinalResult:
    """The library form of ``hpsearch finalize``: load the study from ``settings.storage``,
    its problem and data (with the options the study was run with), and ``finalize`` it into
    ``settings.out`` (default ``./final-STUDY``).

    Raises:
        HpsearchError: no such study, a study not made by ``hpsearch run``, or no complete
            trial.
    """
    from hpsearch.artifacts import open_artifact_store, upload_files
    from hpsearch.storage import load_study

    study = load_study(study_name, settings.storage)
    attrs = study.user_attrs
    if "problem" not in attrs or "data" not in attrs:
        raise HpsearchError(f"study {study_name!r} was not made by hpsearch run")
    artifacts = open_artifact_store(settings.artifacts) if settings.artifacts else None
    problem = get_problem(attrs["problem"])
    splits = problem.load_data(settings.data_dir, **attrs["data"])
    out = Path(settings.out or f"final-{study_name}")
    result = finalize(
        study,
        problem,
        splits.to(resolve_device(settings.device)),
        str(attrs["metric"]),
        top_k=settings.top_k,
        seeds=settings.seeds,
        group_size=settings.group_size or default_group_size(settings.device),
        out=out,
        ensemble=settings.ensemble,
        on_candidate=on_candidate,
    )
    if artifacts is not None:
        names = (MODEL_FILE, ENSEMBLE_FILE, RESULT_FILE)
        result.artifacts = upload_files(
            study, artifacts, [out / n for n in names if (out / n).exists()]
        )
        result.artifact_store = settings.artifacts
        study.set_user_attr("finalize", result.summary())  # now with the files' ids
    return result


def finalize(
    study: optuna.Study,
    problem: Problem,
    splits: Splits,
    metric: str,
    *,
    top_k: int = 3,
    seeds: int = 3,
    out: Path | None = None,
    with_baseline: bool = True,
    ensemble: bool = True,
    group_size: int = 1,
    on_candidate: Callable[[Candidate], None] | None = None,
) -> FinalResult:
    """Retrain the study's ``top_k`` configurations with ``seeds`` seeds each on the train
    split, choose by validation mean -/+ std, retrain the choice on train + validation and
    score it once on test. With ``out``, save the weights and ``finalize.json`` there.
    ``with_baseline`` also fits the problem's classic baseline on the same rows. ``ensemble``
    also retrains every finite candidate with every seed on train + validation and scores
    the combination of their predictions once on test. Retrains of one shape train
    ``group_size`` at a time as one model (``Problem.fit_many``). The summary is stored on the study
    (user attribute ``finalize``, and a note the dashboard shows).

    Raises:
        HpsearchError: the study has no complete trial, or every candidate diverged.
    """
    started = time.perf_counter()
    configs = top_configurations(study, top_k)
    if not configs:
        raise HpsearchError(f"study {study.study_name!r} has no complete trial to finalize")
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    name = metric.removeprefix("val_")
    calibration = problem.calibration

    def validation(model: nn.Module) -> Metrics:
        return problem.evaluate(model, splits.x_val, splits.y_val, splits)

    candidates = []
    for number, params, value in configs:
        candidate = Candidate(trial=number, params=params, search_value=value)
        tic = time.perf_counter()
        x, y = splits.x_train, splits.y_train
        jobs = [(params, seed) for seed in range(seeds)]
        fits = problem.fit_many(jobs, x, y, group_size=group_size, evaluate=validation)
        for fit in fits:
            if isinstance(fit, NonFiniteLossError):  # diverged with this seed: it is out
                metrics: Metrics = {name: math.nan}
            else:
                model, metrics = fit
                if calibration is not None:
                    statistic = calibration.statistic(model, splits.x_val, splits.y_val)
                    candidate.val_calibration.append(statistic)
            candidate.val_scores.append(float(metrics[name]))
        candidate.seconds = round(time.perf_counter() - tic, 1)
        candidates.append(candidate)
        if on_candidate is not None:
            on_candidate(candidate)
    finite = [c for c in candidates if all(math.isfinite(v) for v in c.val_scores)]
    if not finite:
        raise HpsearchError("every retrained configuration diverged; nothing to finalize")
    pick = max if maximize else min
    chosen = pick(finite, key=lambda c: c.robust(maximize))
    x_all = torch.cat([splits.x_train, splits.x_val])
    y_all = torch.cat([splits.y_train, splits.y_val])
    # The chosen configuration with seed 0 first: it is the final model.
    jobs = [(chosen.params, 0)]
    owners = [(chosen, 0)]
    if ensemble:
        for candidate in finite:
            for seed in range(seeds):
                if not (candidate is chosen and seed == 0):
                    jobs.append((candidate.params, seed))
                    owners.append((candidate, seed))
    fits = problem.fit_many(jobs, x_all, y_all, group_size=group_size)
    if isinstance(fits[0], NonFiniteLossError):
        raise fits[0]
    model = fits[0][0]
    # A member that diverged (rare on train + validation) is left out.
    members: list[tuple[Candidate, int, nn.Module]] = [
        (candidate, seed, fit[0])
        for (candidate, seed), fit in zip(owners, fits, strict=True)
        if not isinstance(fit, NonFiniteLossError)
    ]
    result = FinalResult(
        study=study.study_name,
        problem=problem.name,
        metric=metric,
        chosen=chosen,
        candidates=candidates,
        test_metrics=test_metrics(problem, model, splits),  # the one look at test
        train_rows=len(x_all),
        test_rows=len(splits.x_test),
        seconds=time.perf_counter() - started,
        checksums=dict(splits.checksums),
        input_shape=tuple(splits.x_train.shape[1:]),
        target={"mean": splits.target_mean, "std": splits.target_std, "log": splits.log_target},
    )
    if ensemble:  # the ensemble's one look at test
        combined = Ensemble([member for _, _, member in members], problem.combine)
        result.ensemble_members = [(c.trial, seed) for c, seed, _ in members]
        result.ensemble_test = test_metrics(problem, combined, splits)
    if calibration is not None and chosen.val_calibration:
        scale = calibration.scale(chosen.val_calibration)
        result.calibration = {
            "scale": scale,
            "fitted_on": "validation, the chosen configuration's per-seed models",
            "test": test_metrics(problem, calibration.apply(model, scale), splits),
        }
    if with_baseline and problem.baseline is not None:
        result.baseline = problem.baseline(splits)
    if out is not None:
        saved = [(c.params, member) for c, _, member in members] if ensemble else []
        save(result, model, out, saved)
        result.out = str(out)
    record_on_study(study, result)
    return result


def record_on_study(study: optuna.Study, result: FinalResult) -> None:
    """Store the answer with the study: the ``finalize`` user attribute (read by ``hpsearch
    report``) and a markdown note, which optuna-dashboard shows on the study's page."""
    from optuna_dashboard import save_note

    from hpsearch.report import finalize_note

    summary = result.summary()
    study.set_user_attr("finalize", summary)
    save_note(study, finalize_note(summary, result.metric))


def save(
    result: FinalResult,
    model: nn.Module,
    out: Path,
    members: list[tuple[dict[str, Any], nn.Module]] | None = None,
) -> None:
    """Write the model's weights, the ensemble members' params and weights (if any) and
    ``finalize.json`` into ``out``."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / MODEL_FILE)
        if members:
            torch.save(
                [{"params": params, "state": m.state_dict()} for params, m in members],
                out / ENSEMBLE_FILE,
            )
        (out / RESULT_FILE).write_text(json.dumps(result.to_json(), indent=2, sort_keys=True))
    except OSError as error:
        raise HpsearchError(f"cannot write to {out}: {error.strerror}") from None


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
        model = problem.build_model(params, shape)
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
    from hpsearch.artifacts import (
        ArtifactNotFound,
        open_artifact_store,
        read_artifact,
        store_errors,
    )
    from hpsearch.settings import resolve_settings
    from hpsearch.storage import load_study

    url = resolve_settings(storage=storage).storage
    summary = load_study(study_name, url).user_attrs.get("finalize") or {}
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
