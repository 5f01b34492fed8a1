"""From a study to one trusted model: retrain the best configurations with several seeds,
choose robustly on validation, train the choice on train + validation and score it once on
the held-out test split. Beside it, an ensemble of every retrained configuration x seed
(each trained on train + validation, predictions averaged) is scored once on test too, and a
Gaussian regressor's intervals get a scale factor fitted on validation.

This module is the only code that reads ``Splits.x_test`` / ``y_test``.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from hpsearch.data import Splits
from hpsearch.errors import HpsearchError
from hpsearch.models import Ensemble, ScaledVariance
from hpsearch.problems import Metrics, Problem, r2_score
from hpsearch.training import NonFiniteLossError, TrainConfig, gaussian_nll, predict, train

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
    # Gaussian regressor: mean squared z-score of the validation targets, per seed.
    val_z2: list[float] = field(default_factory=list)
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
    target: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None
    # The ensemble's members as (trial, seed) and its test metrics; None without --ensemble.
    ensemble_members: list[tuple[int, int]] = field(default_factory=list)
    ensemble_test: dict[str, Any] | None = None
    # Gaussian regressor: the validation-fitted sigma scale and the scaled model's test metrics.
    calibration: dict[str, Any] | None = None

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


def test_metrics(problem: Problem, model: nn.Module, splits: Splits) -> dict[str, Any]:
    """The problem's metrics on the test split, plus per-class accuracy (classification),
    R2 (regression) and interval coverage (Gaussian regressor)."""
    x, y = splits.x_test, splits.y_test
    metrics: dict[str, Any] = dict(problem.evaluate(model, x, y, splits))
    output = predict(model, x)
    if problem.model == "conv":
        hits = output.argmax(dim=-1) == y
        metrics["per_class_accuracy"] = {
            str(c): float(hits[y == c].float().mean()) for c in torch.unique(y).tolist()
        }
        return metrics
    mean = output[:, 0] if output.dim() == 2 else output
    metrics["r2"] = r2_score(mean, y, splits)
    if problem.model == "gaussian":
        y64, mean64 = y.double(), mean.double()
        sigma = torch.exp(0.5 * output[:, 1].double())
        z = ((y64 - mean64) / sigma).abs()
        metrics["coverage_68"] = float((z <= 1.0).double().mean())
        metrics["coverage_95"] = float((z <= 1.959964).double().mean())
        metrics["nll_normalized"] = float(gaussian_nll(output.double(), y64))
    return metrics


def fit(
    problem: Problem,
    params: Mapping[str, Any],
    splits: Splits,
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    evaluate: Callable[[nn.Module], Metrics],
) -> tuple[nn.Module, Metrics]:
    """Train a fresh model of ``params`` on ``(x, y)`` with ``seed``; the model and
    ``evaluate``'s metrics after the last epoch."""
    torch.manual_seed(seed)
    model = problem.build_model(params, splits).to(x.device)
    result = train(
        model,
        x,
        y,
        problem.losses[params["loss"]],
        TrainConfig.from_params(params, seed=seed),
        evaluate=evaluate,
        eval_every=max(1, int(params["epochs"])),
    )
    return model, result.metrics


def mean_z2(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean squared z-score of ``y`` under a Gaussian regressor's predictions: 1 when its
    intervals are calibrated, above 1 when they are too narrow."""
    output = predict(model, x).double()
    return float(((y.double() - output[:, 0]) ** 2 / output[:, 1].exp()).mean())


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
    on_candidate: Callable[[Candidate], None] | None = None,
) -> FinalResult:
    """Retrain the study's ``top_k`` configurations with ``seeds`` seeds each on the train
    split, choose by validation mean -/+ std, retrain the choice on train + validation and
    score it once on test. With ``out``, save the weights and ``finalize.json`` there.
    ``with_baseline`` also fits the problem's classic baseline (hpsearch.baselines) on the
    same rows. ``ensemble`` also retrains every finite candidate with every seed on train +
    validation and scores the average of their predictions once on test.

    Raises:
        HpsearchError: the study has no complete trial.
    """
    started = time.perf_counter()
    configs = top_configurations(study, top_k)
    if not configs:
        raise HpsearchError(f"study {study.study_name!r} has no complete trial to finalize")
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    name = metric.removeprefix("val_")

    def validation(model: nn.Module) -> Metrics:
        return problem.evaluate(model, splits.x_val, splits.y_val, splits)

    candidates = []
    for number, params, value in configs:
        candidate = Candidate(trial=number, params=params, search_value=value)
        tic = time.perf_counter()
        for seed in range(seeds):
            try:
                model, metrics = fit(
                    problem, params, splits, splits.x_train, splits.y_train, seed, validation
                )
            except NonFiniteLossError:  # diverged with this seed: the candidate is out
                metrics = {name: math.nan}
            else:
                if problem.model == "gaussian":
                    candidate.val_z2.append(mean_z2(model, splits.x_val, splits.y_val))
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
    model, _ = fit(problem, chosen.params, splits, x_all, y_all, 0, lambda m: {})
    members: list[tuple[Candidate, int, nn.Module]] = [(chosen, 0, model)]
    if ensemble:
        for candidate in finite:
            for seed in range(seeds):
                if candidate is chosen and seed == 0:
                    continue
                try:
                    member, _ = fit(
                        problem, candidate.params, splits, x_all, y_all, seed, lambda m: {}
                    )
                except NonFiniteLossError:  # rare on train + validation: leave it out
                    continue
                members.append((candidate, seed, member))
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
        target={
            "mean": splits.target_mean,
            "std": splits.target_std,
            "log": splits.log_target,
        },
    )
    if ensemble:  # the ensemble's one look at test
        averaged = Ensemble(problem.model, [member for _, _, member in members])
        result.ensemble_members = [(c.trial, seed) for c, seed, _ in members]
        result.ensemble_test = test_metrics(problem, averaged, splits)
    if chosen.val_z2:
        # sigma x scale makes the chosen configuration's validation z-scores unit variance.
        scale = math.sqrt(statistics.fmean(chosen.val_z2))
        result.calibration = {
            "scale": scale,
            "fitted_on": "validation, the chosen configuration's per-seed models",
            "test": test_metrics(problem, ScaledVariance(model, scale), splits),
        }
    if with_baseline:
        from hpsearch.baselines import baseline

        result.baseline = baseline(problem, splits)
    if out is not None:
        saved = [(c.params, member) for c, _, member in members] if ensemble else []
        save(result, model, out, saved)
    # For `hpsearch report` and the dashboard: the answer, stored with the study.
    study.set_user_attr(
        "finalize",
        {
            "trial": chosen.trial,
            "params": chosen.params,
            "val_mean": chosen.mean,
            "val_std": chosen.std,
            "test": result.test_metrics,
            "ensemble_test": result.ensemble_test,
            "ensemble_size": len(result.ensemble_members),
            "calibration": result.calibration,
            "baseline": result.baseline,
            "train_rows": result.train_rows,
            "test_rows": result.test_rows,
            "out": str(out) if out is not None else None,
        },
    )
    return result


def test_columns(summary: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, test metrics) of each model in a stored ``finalize`` summary, in the order
    ``hpsearch finalize`` and ``hpsearch report`` show them: the tuned network, the ensemble,
    the calibrated intervals and the baseline, each where present."""
    columns: list[tuple[str, dict[str, Any]]] = [("tuned network", summary["test"])]
    if summary.get("ensemble_test"):
        columns.append((f"ensemble of {summary['ensemble_size']}", summary["ensemble_test"]))
    if summary.get("calibration"):
        scale = summary["calibration"]["scale"]
        columns.append((f"sigma x {scale:.3f} (val-calibrated)", summary["calibration"]["test"]))
    if summary.get("baseline"):
        columns.append((summary["baseline"]["name"], summary["baseline"]["test"]))
    return columns


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


def _rebuild(kind: str, params: Mapping[str, Any], state: dict[str, Any]) -> nn.Module:
    from hpsearch import models

    kwargs: dict[str, Any] = {}
    if kind != "conv":  # the MLPs' input width is in the first layer's weights
        first = next(key for key in state if key.endswith("weight"))
        kwargs["n_features"] = state[first].shape[1]
    model = models.build_model(kind, params, **kwargs)
    model.load_state_dict(state)
    return model.eval()


def load_model(folder: str | Path, *, ensemble: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a finalized model from ``--out``'s folder: ``(model in eval mode, record)``,
    the record being ``finalize.json`` (configuration, metrics, target scale, data
    checksums). ``ensemble`` rebuilds the averaged ensemble instead of the single model.
    Regression outputs are normalized targets: ``record["target"]`` turns them into prices.

    Raises:
        HpsearchError: ``ensemble`` asked of a folder finalized without one.
    """
    from hpsearch.problems import get_problem

    folder = Path(folder)
    record = json.loads((folder / RESULT_FILE).read_text())
    kind = get_problem(record["problem"]).model
    if ensemble:
        if not (folder / ENSEMBLE_FILE).exists():
            raise HpsearchError(f"{folder} holds no ensemble (finalized with --no-ensemble)")
        saved = torch.load(folder / ENSEMBLE_FILE, map_location="cpu", weights_only=True)
        members = [_rebuild(kind, m["params"], m["state"]) for m in saved]
        return Ensemble(kind, members).eval(), record
    state = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)
    return _rebuild(kind, record["chosen"]["params"], state), record
