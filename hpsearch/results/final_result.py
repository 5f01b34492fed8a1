"""What ``finalize`` returns, stores on the study and writes to ``finalize.json``: each
retrained configuration (``Candidate``) and the whole result (``FinalResult``)."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
import torch


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
    # The seeds of ``val_scores``: the search trial's own first (its score is the search's),
    # then 0, 1, ...
    seeds: list[int] = field(default_factory=list)
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
    # Each classic baseline's {"name", "test", "seconds"} on the same rows.
    baselines: list[dict[str, Any]] = field(default_factory=list)
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
    # What predictions on new inputs need (a user's table: its fitted encoding, target name
    # and class names); empty for the shipped problems.
    preprocess: dict[str, Any] = field(default_factory=dict)
    # How the candidates were chosen (``--pick``'s rule, or ``trial N``), and what the final
    # model costs on the device it was scored on (``training.costs``).
    pick: str = ""
    costs: dict[str, Any] = field(default_factory=dict)
    # What this finalize was (its candidates, seeds, ensemble), as a digest: finalize
    # processes of one identity share their retrains and upload the files once.
    identity: str = ""

    def summary(self) -> dict[str, Any]:
        """What is stored on the study (user attribute ``finalize``) for ``hpsearch report``,
        the dashboard and the ``finalize`` table. (The chosen params are the trial's own, and
        in ``finalize.json``: left out, so the dashboard's attribute table stays short.)"""
        return {
            "trial": self.chosen.trial,
            "val_mean": self.chosen.mean,
            "val_std": self.chosen.std,
            "pick": self.pick,
            "test": self.test_metrics,
            "costs": self.costs,
            "ensemble_test": self.ensemble_test,
            "ensemble_size": len(self.ensemble_members),
            "calibration": self.calibration,
            "baselines": self.baselines,
            "train_rows": self.train_rows,
            "test_rows": self.test_rows,
            "out": self.out,
            "artifact_store": self.artifact_store,
            "artifacts": self.artifacts,
            "identity": self.identity,
        }

    def to_json(self) -> dict[str, Any]:
        def candidate(c: Candidate) -> dict[str, Any]:
            return {**asdict(c), "val_mean": c.mean, "val_std": c.std}

        return {
            "study": self.study,
            "problem": self.problem,
            "metric": self.metric,
            "selection": "top-k trials scored on validation with each seed (the first the "
            "search trial's own, the rest retrained on train); chosen by validation mean -/+ "
            "one std; the choice retrained on train + validation with its first seed and "
            "scored once on test",
            "chosen": candidate(self.chosen),
            "candidates": [candidate(c) for c in self.candidates],
            "pick": self.pick,
            "test": self.test_metrics,
            "costs": self.costs,
            "ensemble": {
                "members": [{"trial": t, "seed": seed} for t, seed in self.ensemble_members],
                "test": self.ensemble_test,
            }
            if self.ensemble_test is not None
            else None,
            "calibration": self.calibration,
            "input_shape": list(self.input_shape),
            "target": self.target,
            "baselines": self.baselines,
            "train_rows": self.train_rows,
            "test_rows": self.test_rows,
            "seconds": round(self.seconds, 1),
            "checksums": self.checksums,
            "preprocess": self.preprocess,
            "torch": torch.__version__,
            "optuna": optuna.__version__,
        }
