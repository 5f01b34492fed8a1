"""From a study to one trusted model: retrain the best configurations with several seeds,
choose robustly on validation, train the choice on train + validation and score it once on
the held-out test split. Beside it, an ensemble of every retrained configuration x seed
(each trained on train + validation, predictions averaged) is scored once on test too, and a
Gaussian regressor's intervals get a scale factor fitted on validation.

The retrains are units of work of the search's engine (``results.retrains``): spread over
``--workers`` local processes, joined by the same command on other machines, resumed from
their checkpoints when a worker dies; the classic baselines are fitted meanwhile.

This module, and the baselines it fits, are the only code that reads ``Splits.x_test`` /
``y_test``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from threadpoolctl import threadpool_limits
from torch import nn

from hpsearch import record
from hpsearch.errors import HpsearchError
from hpsearch.problems import Problem, get_problem
from hpsearch.problems.metrics import Metrics
from hpsearch.problems.splits import Splits
from hpsearch.results.final_result import Candidate, FinalResult
from hpsearch.results.model_files import MODEL_FILES, is_model_file, save
from hpsearch.results.pick import Pick, parse_pick, top_configurations
from hpsearch.results.retrains import (
    ALL,
    TRAIN,
    Retrain,
    companion_name,
    failed_retrains,
    finished_retrains,
    model_of,
    open_retrains,
    queue_retrains,
    retrain_worker_main,
    run_retrains,
)
from hpsearch.search.local_workers import helping_processes
from hpsearch.settings import Settings
from hpsearch.storage.artifacts import ArtifactStore, open_artifact_store
from hpsearch.storage.counts import load_study
from hpsearch.storage.database import wait_for_database
from hpsearch.storage.files import check_replaceable
from hpsearch.storage.lock import StudyLock
from hpsearch.storage.urls import parse_url
from hpsearch.training.costs import model_costs
from hpsearch.training.devices import (
    default_group_size,
    default_workers,
    resolve_device,
    usable_cores,
    worker_devices,
    worker_threads,
)
from hpsearch.training.models import Ensemble

# A retrain as finalize sees it: its finished trial (COMPLETE, or PRUNED: it diverged).
Done = dict[tuple[int, int, str], FrozenTrial]


def test_metrics(problem: Problem, model: nn.Module, splits: Splits) -> Metrics:
    """The problem's test metrics of ``model``: one look at the held-out split."""
    evaluate = problem.test_metrics or problem.evaluate
    return evaluate(model, splits.x_test, splits.y_test, splits)


def finalize_study(
    study_name: str,
    settings: Settings,
    on_candidate: Callable[[Candidate], None] | None = None,
    on_start: Callable[[], None] | None = None,
    on_retrain: Callable[[FrozenTrial, str], None] | None = None,
) -> FinalResult:
    """The library form of ``hpsearch finalize``: load the study from ``settings.storage``,
    its problem and data (with the options the study was run with), and ``finalize`` it into
    ``settings.out`` (default ``./final-STUDY``). ``on_start`` is called once every input is
    checked, before the data load and the training.

    Raises:
        HpsearchError: no such study, a study not made by ``hpsearch run``, no complete
            trial, or an ``--out`` folder holding files of the user's.
    """
    from hpsearch.storage.artifacts import upload_files

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
    with _retrain_store(settings, artifacts) as (store, store_settings):
        result = finalize(
            study,
            problem,
            splits.to(resolve_device(settings.device)),
            str(attrs[record.METRIC]),
            store_settings,
            store=store,
            out=out,
            on_candidate=on_candidate,
            on_retrain=on_retrain,
            pick=pick,
        )
    if artifacts is not None:
        # Once however many finalize processes end together (a Job's pods): the first
        # uploads, the rest find its files of the same finalize and reuse them.
        with StudyLock(parse_url(settings.storage), companion_name(study_name)).hold():
            stored = load_study(study_name, settings.storage).user_attrs.get(record.FINALIZE)
            stored = stored if isinstance(stored, dict) else {}
            if stored.get("identity") == result.identity and stored.get("artifacts"):
                result.artifacts = dict(stored["artifacts"])
            else:
                result.artifacts = upload_files(
                    study, artifacts, [out / n for n in MODEL_FILES if (out / n).exists()]
                )
            result.artifact_store = settings.artifacts
            study.set_user_attr(record.FINALIZE, result.summary())  # with the files' ids
    return result


@contextlib.contextmanager
def _retrain_store(
    settings: Settings, artifacts: ArtifactStore | None
) -> Iterator[tuple[ArtifactStore, Settings]]:
    """Where the retrains keep their checkpoints and models: ``artifacts``, the artifact
    store already opened, or without one (``--artifacts ''``) a temporary folder of this
    machine's, removed at the end."""
    if artifacts is not None:
        yield artifacts, settings
        return
    folder = tempfile.mkdtemp(prefix="hpsearch-retrains-")
    try:
        yield open_artifact_store(folder), replace(settings, artifacts=folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def finalize(
    study: optuna.Study,
    problem: Problem,
    splits: Splits,
    metric: str,
    settings: Settings,
    *,
    store: ArtifactStore | None = None,
    out: Path | None = None,
    with_baseline: bool = True,
    on_candidate: Callable[[Candidate], None] | None = None,
    on_retrain: Callable[[FrozenTrial, str], None] | None = None,
    pick: Pick | None = None,
) -> FinalResult:
    """Retrain the study's ``settings.top_k`` configurations with ``settings.seeds`` seeds
    each on the train split, choose by validation mean -/+ std, retrain the choice on train +
    validation and score it once on test. With ``out``, save the weights and
    ``finalize.json`` there. ``with_baseline`` also fits the problem's classic baselines on
    the same rows, while the retrains train. ``settings.ensemble`` also retrains every
    candidate with every seed on train + validation and scores the combination of the
    finite candidates' predictions once on test. The retrains run on ``settings.workers``
    workers (``results.retrains``; models kept in ``store``, default: the artifact store);
    retrains of one shape train ``settings.group_size`` at a time as one model. The summary
    is stored on the study (user attribute ``finalize``, and a note the dashboard shows).
    ``pick`` ranks the feasible trials the ``top_k`` come from (default: by ``metric``;
    ``results.pick``); ``settings.trial`` retrains that trial's configuration only. The final
    model's costs (``training.costs``) are measured on ``splits``' device.

    Raises:
        HpsearchError: no complete feasible trial (that ``pick`` admits), every candidate
            diverged, or a retrain failed twice.
    """
    started = time.perf_counter()
    configs = top_configurations(study, settings.top_k, pick, settings.trial)
    if not configs:
        rule = f" that --pick {pick.describe()!r} admits" if pick else ""
        raise HpsearchError(
            f"study {study.study_name!r} has no complete feasible trial{rule} to finalize"
        )
    store = store if store is not None else open_artifact_store(settings.artifacts)
    maximize = problem.metrics[metric] == "maximize"
    name = metric.removeprefix("val_")
    calibration = problem.calibration
    # A trial stored before its task read the class count from the data has none.
    candidates = [
        Candidate(trial=number, params={**stored, **splits.model_params}, search_value=value)
        for number, stored, value in configs
    ]
    trials = study.get_trials(deepcopy=False)
    known: dict[int, float] = {}  # a candidate's score with its first seed, from the search
    for candidate in candidates:
        attrs = trials[candidate.trial].user_attrs
        candidate.seeds = _seeds(attrs, settings.seeds)
        # The search trained the configuration with that seed on the same rows already; a
        # calibrated problem needs the model itself, so retrains it.
        if record.SEED in attrs and f"val_{name}" in attrs and calibration is None:
            known[candidate.trial] = float(attrs[f"val_{name}"])
    retrains = [
        Retrain(c.trial, c.params, seed, TRAIN)
        for c in candidates
        for i, seed in enumerate(c.seeds)
        if not (i == 0 and c.trial in known)
    ]
    if settings.ensemble:  # wanted whatever is chosen: queued with the rest
        retrains += [Retrain(c.trial, c.params, seed, ALL) for c in candidates for seed in c.seeds]
    identity = _identity(candidates, settings)
    # Longest first (as the search trial took, train + validation a third longer), so the
    # last to end is a short one; a configuration's seeds stay together, for a group.
    grown = (len(splits.x_train) + len(splits.x_val)) / max(len(splits.x_train), 1)

    def expected(retrain: Retrain) -> float:
        seconds = float(trials[retrain.trial].user_attrs.get(record.TRAIN_SECONDS, 0.0))
        return seconds * (grown if retrain.rows == ALL else 1.0)

    retrains.sort(key=lambda r: (-expected(r), r.trial, r.rows, r.seed))
    settings = _for_retrains(settings, len(retrains), sum(map(expected, retrains)))
    fitted: list[dict[str, Any]] = []
    spare, workers = _spare_cores(settings), settings.workers or 1

    def fit_baselines() -> None:
        if with_baseline and not fitted:
            # On the cores they have to themselves, not against the workers' threads.
            with threadpool_limits(max(spare, settings.threads or worker_threads(workers))):
                fitted.extend(fit(splits) for fit in problem.baselines)

    with ThreadPoolExecutor(1) as pool:
        # The baselines are fitted while the retrains train: on a core the workers leave
        # free, else by this process before it joins the workers (its helpers train
        # meanwhile).
        baselines: Future[None] | None = pool.submit(fit_baselines) if spare > 0 else None
        first = None if spare > 0 else fit_baselines
        done = _run(study, retrains, identity, settings, splits, on_retrain, first)
        for candidate in candidates:
            for i, seed in enumerate(candidate.seeds):
                if i == 0 and candidate.trial in known:
                    candidate.val_scores.append(known[candidate.trial])
                    continue
                trial = done[(candidate.trial, seed, TRAIN)]
                diverged = trial.state == TrialState.PRUNED  # this seed is out
                score = math.nan if diverged else float(trial.user_attrs[f"val_{name}"])
                candidate.val_scores.append(score)
                if calibration is not None and not diverged:
                    candidate.val_calibration.append(float(trial.user_attrs[record.CALIBRATION]))
                candidate.seconds += float(trial.user_attrs.get(record.TRAIN_SECONDS, 0.0))
            candidate.seconds = round(candidate.seconds, 1)
            if on_candidate is not None:
                on_candidate(candidate)
        finite = [c for c in candidates if all(math.isfinite(v) for v in c.val_scores)]
        if not finite:
            raise HpsearchError("every retrained configuration diverged; nothing to finalize")
        best_of = max if maximize else min
        chosen = best_of(finite, key=lambda c: c.robust(maximize))
        final = Retrain(chosen.trial, chosen.params, chosen.seeds[0], ALL)
        if final.key not in done:  # without an ensemble: the one retrain the choice needs
            done = _run(study, [*retrains, final], identity, settings, splits, on_retrain)
        shape = tuple(splits.x_train.shape[1:])
        device = splits.x_train.device
        if done[final.key].state == TrialState.PRUNED:
            raise HpsearchError(
                f"trial {chosen.trial}'s configuration, chosen, diverged when trained on train "
                f"+ validation ({done[final.key].user_attrs.get(record.PRUNED_REASON)}); "
                "finalize another with --trial N"
            )
        model = model_of(done[final.key], problem, shape, store).to(device)
        # A member that diverged (rare on train + validation) is left out.
        members: list[tuple[Candidate, int, nn.Module]] = []
        if settings.ensemble:
            for candidate in finite:
                for seed in candidate.seeds:
                    trial = done[(candidate.trial, seed, ALL)]
                    if trial.state == TrialState.COMPLETE:
                        member = model_of(trial, problem, shape, store).to(device)
                        members.append((candidate, seed, member))
        if baselines is not None:
            baselines.result()
    x_all_rows = len(splits.x_train) + len(splits.x_val)
    result = FinalResult(
        study=study.study_name,
        problem=problem.name,
        metric=metric,
        chosen=chosen,
        candidates=candidates,
        test_metrics=test_metrics(problem, model, splits),  # the one look at test
        train_rows=x_all_rows,
        test_rows=len(splits.x_test),
        seconds=time.perf_counter() - started,
        checksums=dict(splits.checksums),
        input_shape=shape,
        target={"mean": splits.target_mean, "std": splits.target_std, "log": splits.log_target},
        preprocess=splits.preprocess,
        pick=(pick.describe() if pick else metric)
        if settings.trial is None
        else f"trial {settings.trial}",
        costs={**model_costs(model, splits.x_train[:1]), "device": device.type},
        baselines=fitted,
        identity=identity,
    )
    if settings.ensemble:  # the ensemble's one look at test
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
    if out is not None:
        saved = [(c.params, member) for c, _, member in members] if settings.ensemble else []
        save(result, model, out, saved)
        result.out = str(out)
    record_on_study(study, result)
    return result


# Retrains expected to take less than this in all run in finalize's own process alone: a
# helper process takes about 5 s to start (torch's import, the data) on a 2-core machine,
# and this process gives up a thread to it (benchmarks/finalize.py).
HELPERS_PAY_S = 30.0


def _for_retrains(settings: Settings, retrains: int, work_s: float) -> Settings:
    """``settings`` with the retrains' worker count (as ``run``'s: one per core, or per
    GPU memory, never more than the retrains; one for less than ``HELPERS_PAY_S`` of
    ``work_s``, the retrains' expected seconds) and group size (by device) resolved."""
    workers = settings.workers or (
        1
        if work_s < HELPERS_PAY_S
        else default_workers(settings.device, threads=settings.threads, trials=max(retrains, 1))
    )
    group_size = settings.group_size or default_group_size(settings.device)
    return replace(settings, workers=workers, group_size=group_size)


def _spare_cores(settings: Settings) -> int:
    """CPU cores the retrains' workers leave free (on a GPU, they keep few busy). The
    baselines fit there while the workers train: on cores the workers use they would take
    turns with the training, and gain nothing (measured: benchmarks/finalize.py)."""
    if resolve_device(settings.device).type == "cuda":
        return usable_cores() - 1
    workers = settings.workers or 1
    return usable_cores() - workers * (settings.threads or worker_threads(workers))


def _seeds(attrs: dict[str, Any], count: int) -> list[int]:
    """A candidate's ``count`` seeds: its search trial's own first (``record.SEED``), then
    0, 1, ... (another trial's seed where they meet)."""
    first = int(attrs.get(record.SEED, 0))
    return [first, *[seed for seed in range(count + 1) if seed != first][: count - 1]]


def _identity(candidates: Sequence[Candidate], settings: Settings) -> str:
    """What one finalize is: its candidates' configurations, seeds and whether it keeps an
    ensemble; a finalize of the same identity, rerun or joined elsewhere, shares retrains."""
    text = json.dumps(
        [[(c.trial, c.params, c.seeds) for c in candidates], settings.ensemble],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _run(
    study: optuna.Study,
    retrains: Sequence[Retrain],
    identity: str,
    settings: Settings,
    splits: Splits,
    on_retrain: Callable[[FrozenTrial, str], None] | None,
    first: Callable[[], None] | None = None,
) -> Done:
    """Queue ``retrains`` (those not queued yet) and run them: in this process, helped by
    ``settings.workers`` - 1 local processes; workers that other machines started with the
    same command take part too. ``first`` is what this process does before it joins the
    workers. Each retrain's finished trial, by ``Retrain.key``.

    Raises:
        HpsearchError: a retrain failed on its last attempt.
    """
    url, name = settings.storage, study.study_name
    total = queue_retrains(study, retrains, identity, settings)
    companion = open_retrains(name, url)  # one handle to read: opening one costs ~60 ms
    left = total - len(finished_retrains(companion))
    workers = min(settings.workers or 1, left)
    watch = _Watcher(companion, str(study.user_attrs.get(record.METRIC, "")), on_retrain)
    if left == 0 or workers <= 1:
        if first is not None:
            first()
        if left > 0:
            run_retrains(name, settings, splits, on_progress=watch)
    else:
        # This process is one of the workers (it has the data, and no start-up to pay); the
        # rest are processes that help it, stopped once nothing is left.
        threads = settings.threads or worker_threads(workers)
        own, *others = [
            replace(settings, threads=threads, device=device)
            for device in worker_devices(settings.device, workers)
        ]
        helpers = [(retrain_worker_main, (name, each, i + 1)) for i, each in enumerate(others)]
        with helping_processes(helpers):
            if first is not None:
                first()
            run_retrains(name, own, splits, on_progress=watch)
    watch()
    failed = failed_retrains(companion)
    if failed:
        trial = failed[0]
        raise HpsearchError(
            f"the retrain of trial {trial.user_attrs[record.RETRAIN_OF]} (seed "
            f"{trial.user_attrs[record.SEED]}, {trial.user_attrs[record.ROWS]}) failed: "
            f"{trial.user_attrs.get(record.FAIL_REASON, 'no reason recorded')}"
        )
    return finished_retrains(companion)


class _Watcher:
    """Reports each retrain once as it starts and once as it ends (``on_retrain``, with its
    trial, RUNNING then finished or failed, and the study's validation metric), however
    many workers, here or elsewhere, run it: read from the ``companion`` study."""

    def __init__(
        self,
        companion: optuna.Study,
        metric: str,
        on_retrain: Callable[[FrozenTrial, str], None] | None,
    ) -> None:
        self.companion, self.metric, self.on_retrain = companion, metric, on_retrain
        self.reported: set[tuple[int, bool]] = set()  # (trial number, ended)

    def __call__(self) -> None:
        if self.on_retrain is None:
            return
        for trial in self.companion.get_trials(deepcopy=False):
            if trial.state == TrialState.WAITING or record.is_yielded(trial):
                continue
            seen = (trial.number, trial.state != TrialState.RUNNING)
            if seen not in self.reported:
                self.reported.add(seen)
                self.on_retrain(trial, self.metric)


def record_on_study(study: optuna.Study, result: FinalResult) -> None:
    """Store the answer with the study: the ``finalize`` user attribute (read by ``hpsearch
    report``) and a markdown note, which optuna-dashboard shows on the study's page."""
    from optuna_dashboard import save_note

    from hpsearch.results.tables import finalize_note

    summary = result.summary()
    study.set_user_attr(record.FINALIZE, summary)
    save_note(study, finalize_note(summary, result.metric))
