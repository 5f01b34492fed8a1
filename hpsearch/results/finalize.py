"""From a study to one trusted model: retrain the best configurations with several seeds,
choose robustly on validation, train the choice on train + validation and score it once on
the held-out test split. Beside it, an ensemble of every retrained configuration x seed
(each trained on train + validation, predictions averaged) is scored once on test too, and a
Gaussian regressor's intervals get a scale factor fitted on validation.

This module, and the baselines it fits, are the only code that reads ``Splits.x_test`` /
``y_test``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import torch
from torch import nn

from hpsearch import record
from hpsearch.errors import HpsearchError
from hpsearch.problems import Problem, get_problem
from hpsearch.problems.metrics import Metrics
from hpsearch.problems.splits import Splits
from hpsearch.results.final_result import Candidate, FinalResult
from hpsearch.results.model_files import MODEL_FILES, is_model_file, save
from hpsearch.results.pick import Pick, parse_pick, top_configurations
from hpsearch.settings import Settings
from hpsearch.storage.counts import load_study
from hpsearch.storage.database import wait_for_database
from hpsearch.storage.files import check_replaceable
from hpsearch.training import Diverged
from hpsearch.training.costs import model_costs
from hpsearch.training.devices import default_group_size, resolve_device
from hpsearch.training.models import Ensemble


def test_metrics(problem: Problem, model: nn.Module, splits: Splits) -> Metrics:
    """The problem's test metrics of ``model``: one look at the held-out split."""
    evaluate = problem.test_metrics or problem.evaluate
    return evaluate(model, splits.x_test, splits.y_test, splits)


def finalize_study(
    study_name: str,
    settings: Settings,
    on_candidate: Callable[[Candidate], None] | None = None,
    on_start: Callable[[], None] | None = None,
) -> FinalResult:
    """The library form of ``hpsearch finalize``: load the study from ``settings.storage``,
    its problem and data (with the options the study was run with), and ``finalize`` it into
    ``settings.out`` (default ``./final-STUDY``). ``on_start`` is called once every input is
    checked, before the data load and the training.

    Raises:
        HpsearchError: no such study, a study not made by ``hpsearch run``, or no complete
            trial.
    """
    from hpsearch.storage.artifacts import open_artifact_store, upload_files

    wait_for_database(settings.storage, settings.db_wait)
    study = load_study(study_name, settings.storage)
    attrs = study.user_attrs
    if not record.is_set_up(study) or record.DATA not in attrs:
        raise HpsearchError(f"study {study_name!r} was not made by hpsearch run")
    artifacts = open_artifact_store(settings.artifacts) if settings.artifacts else None
    problem = get_problem(attrs[record.PROBLEM])
    pick = None
    if settings.pick is not None:
        pick = parse_pick(settings.pick, problem.recorded_metrics)
    out = Path(settings.out or f"final-{study_name}")
    check_replaceable(out, is_model_file)  # before minutes of training, not after
    if on_start is not None:
        on_start()
    splits = problem.load_data(settings.data_dir, **attrs[record.DATA])
    result = finalize(
        study,
        problem,
        splits.to(resolve_device(settings.device)),
        str(attrs[record.METRIC]),
        top_k=settings.top_k,
        seeds=settings.seeds,
        group_size=settings.group_size or default_group_size(settings.device),
        out=out,
        ensemble=settings.ensemble,
        on_candidate=on_candidate,
        pick=pick,
        trial=settings.trial,
    )
    if artifacts is not None:
        result.artifacts = upload_files(
            study, artifacts, [out / n for n in MODEL_FILES if (out / n).exists()]
        )
        result.artifact_store = settings.artifacts
        study.set_user_attr(record.FINALIZE, result.summary())  # now with the files' ids
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
    pick: Pick | None = None,
    trial: int | None = None,
) -> FinalResult:
    """Retrain the study's ``top_k`` configurations with ``seeds`` seeds each on the train
    split, choose by validation mean -/+ std, retrain the choice on train + validation and
    score it once on test. With ``out``, save the weights and ``finalize.json`` there.
    ``with_baseline`` also fits the problem's classic baselines on the same rows. ``ensemble``
    also retrains every finite candidate with every seed on train + validation and scores
    the combination of their predictions once on test. Retrains of one shape train
    ``group_size`` at a time as one model (``Problem.fit_many``). The summary is stored on the study
    (user attribute ``finalize``, and a note the dashboard shows). ``pick`` ranks the
    feasible trials the ``top_k`` come from (default: by ``metric``; ``results.pick``);
    ``trial`` retrains that trial's configuration only. The final model's costs
    (``training.costs``) are measured on ``splits``' device.

    Raises:
        HpsearchError: no complete feasible trial (that ``pick`` admits), or every
            candidate diverged.
    """
    started = time.perf_counter()
    configs = top_configurations(study, top_k, pick, trial)
    if not configs:
        rule = f" that --pick {pick.describe()!r} admits" if pick else ""
        raise HpsearchError(
            f"study {study.study_name!r} has no complete feasible trial{rule} to finalize"
        )
    maximize = problem.metrics[metric] == "maximize"
    name = metric.removeprefix("val_")
    calibration = problem.calibration

    def validation(model: nn.Module) -> Metrics:
        return problem.evaluate(model, splits.x_val, splits.y_val, splits)

    candidates = []
    for number, stored, value in configs:
        # A trial stored before its task read the class count from the data has none.
        params = {**stored, **splits.model_params}
        candidate = Candidate(trial=number, params=params, search_value=value)
        tic = time.perf_counter()
        x, y = splits.x_train, splits.y_train
        jobs = [(params, seed) for seed in range(seeds)]
        fits = problem.fit_many(jobs, x, y, group_size=group_size, evaluate=validation)
        for fit in fits:
            if isinstance(fit, Diverged):  # diverged with this seed: it is out
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
    best_of = max if maximize else min
    chosen = best_of(finite, key=lambda c: c.robust(maximize))
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
    if isinstance(fits[0], Diverged):
        raise HpsearchError(
            f"trial {chosen.trial}'s configuration, chosen, diverged when trained on train + "
            f"validation ({fits[0]}); finalize another with --trial N"
        )
    model = fits[0][0]
    # A member that diverged (rare on train + validation) is left out.
    members: list[tuple[Candidate, int, nn.Module]] = [
        (candidate, seed, fit[0])
        for (candidate, seed), fit in zip(owners, fits, strict=True)
        if not isinstance(fit, Diverged)
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
        preprocess=splits.preprocess,
        pick=(pick.describe() if pick else metric) if trial is None else f"trial {trial}",
        costs={**model_costs(model, splits.x_train[:1]), "device": splits.x_train.device.type},
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
    if with_baseline:
        result.baselines = [fit_baseline(splits) for fit_baseline in problem.baselines]
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

    from hpsearch.results.tables import finalize_note

    summary = result.summary()
    study.set_user_attr(record.FINALIZE, summary)
    save_note(study, finalize_note(summary, result.metric))
