from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from hpsearch.search.objective import Objective
from hpsearch.search.study_file import load_study_file


def _objective(path: Path) -> Objective:
    config = load_study_file(path)
    splits = config.problem.load_data(**config.data)
    return Objective(config, splits, torch.device("cpu"), seed=10)


def test_usps_objective_with_fixed_trial(tiny_usps_file: Path) -> None:
    objective = _objective(tiny_usps_file)
    trial = optuna.trial.FixedTrial(
        {"n_conv_layers": 2, "lr": 0.005, "loss": "cross_entropy"}, number=3
    )
    value = objective(trial)
    attrs = trial.user_attrs
    assert 0.5 < value <= 1.0  # two epochs of a tiny conv net already beat chance by far
    assert attrs["val_accuracy"] == value
    assert attrs["epochs_run"] == 2
    assert attrs["seed"] == 13  # study seed + trial number
    assert attrs["params"] > 0 and attrs["train_seconds"] > 0
    # the model's costs, measured before training: 4 bytes per float32 value at least
    assert attrs["size_bytes"] >= 4 * attrs["params"]
    assert attrs["flops"] > attrs["params"]  # each conv weight is used at many positions
    assert attrs["latency_ms"] > 0
    assert attrs["train_loss"] > 0
    assert attrs["config"]["channels"] == 8 and attrs["config"]["n_conv_layers"] == 2


def test_same_trial_number_same_value(tiny_usps_file: Path) -> None:
    objective = _objective(tiny_usps_file)
    params = {"n_conv_layers": 1, "lr": 0.003, "loss": "mse"}
    a = objective(optuna.trial.FixedTrial(params, number=1))
    b = objective(optuna.trial.FixedTrial(params, number=1))
    assert a == b


def test_house_objective_reports_dollars(tiny_house_file: Path) -> None:
    objective = _objective(tiny_house_file)
    trial = optuna.trial.FixedTrial({"n_hidden_layers": 2, "lr": 0.005})
    value = objective(trial)
    attrs = trial.user_attrs
    assert 20_000 < attrs["val_rmse"] < 120_000  # dollars, not normalized units
    assert attrs["val_mse"] == pytest.approx(attrs["val_rmse"] ** 2)
    assert value == attrs[objective.config.metric]
    if objective.config.problem.name == "house-prices-gaussian":
        assert "val_nll" in attrs and 5 < attrs["val_nll"] < 20  # per house, in log-dollars


def test_divergence_ends_trial_pruned_with_reason(tmp_path: Path) -> None:
    path = tmp_path / "sgd.toml"
    path.write_text(
        "[study]\nproblem = 'house-prices'\n[fixed]\noptimizer = 'sgd'\nlr = 100.0\n"
        "epochs = 5\nbatch_size = 32\n[space.n_hidden_layers]\ntype = 'int'\nlow = 1\nhigh = 2\n"
    )
    objective = _objective(path)
    study = optuna.create_study()
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert "non-finite" in trial.user_attrs["pruned_reason"]


def test_pruner_stops_bad_trial(tiny_usps_file: Path) -> None:
    objective = _objective(tiny_usps_file)
    # A threshold pruner that rejects everything after the first report.
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0)
    )
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["epochs_run"] == 1
    assert list(trial.intermediate_values) == [1]
    assert "pruner stopped it" in trial.user_attrs["pruned_reason"]


def _checkpointing_objective(study_file: Path, folder: Path) -> tuple[Objective, Any]:
    """An Objective on the tiny USPS study that checkpoints into ``folder``."""
    from hpsearch.search.checkpoints import CheckpointStore
    from hpsearch.storage.artifacts import FolderArtifactStore

    config = load_study_file(study_file)
    store = CheckpointStore(FolderArtifactStore(folder), "tiny")
    data = config.problem.load_data(**config.data)
    return Objective(config, data, torch.device("cpu"), seed=0, checkpoints=store), store


def test_checkpoint_kept_when_database_is_lost(tiny_usps_file: Path, tmp_path: Path) -> None:
    from sqlalchemy.exc import OperationalError

    objective, store = _checkpointing_objective(tiny_usps_file, tmp_path)

    class LosesDatabase(optuna.trial.FixedTrial):
        def report(self, value: float, step: int) -> None:
            if step == 2:
                raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    trial = LosesDatabase({"n_conv_layers": 1, "lr": 0.005, "loss": "mse"}, number=4)
    with pytest.raises(OperationalError):
        objective(trial)
    saved = torch.load(tmp_path / store.key(4), weights_only=True)
    assert saved["epoch"] == 1  # the retry resumes after epoch 1
    assert '"lr": 0.005' in saved["tag"]

    # An ordinary error leaves nothing behind.
    class Broken(optuna.trial.FixedTrial):
        def report(self, value: float, step: int) -> None:
            raise ValueError("bug")

    with pytest.raises(ValueError):
        objective(Broken({"n_conv_layers": 1, "lr": 0.005, "loss": "mse"}, number=4))
    assert not (tmp_path / store.key(4)).exists()


def test_checkpoints_resume_only_their_own_retry(tiny_usps_file: Path, tmp_path: Path) -> None:
    """A checkpoint file with this trial's number but from another study of the same name
    (another database) is never resumed: only by a retry of the same configuration and
    seed."""
    objective, store = _checkpointing_objective(tiny_usps_file, tmp_path)

    class Dies(optuna.trial.FixedTrial):
        def report(self, value: float, step: int) -> None:
            if step == 2:
                raise KeyboardInterrupt

    params = {"n_conv_layers": 2, "lr": 0.005, "loss": "mse"}
    with pytest.raises(KeyboardInterrupt):
        objective(Dies(params, number=7))
    assert (tmp_path / store.key(7)).exists()

    class Retry(optuna.trial.FixedTrial):
        def __init__(self, params: dict, number: int, retry_of: int | None) -> None:
            super().__init__(params, number=number)
            if retry_of is not None:
                self.set_user_attr("retry_of", retry_of)

    # A fresh trial 7 (another study, same name): starts from scratch.
    fresh = Retry({**params, "n_conv_layers": 1}, number=7, retry_of=None)
    objective(fresh)
    assert "resumed_from_epoch" not in fresh.user_attrs
    # (It finished, so its own checkpoint is gone; make the stale one again.)
    with pytest.raises(KeyboardInterrupt):
        objective(Dies(params, number=7))
    # A retry of series 7 with another configuration: from scratch too.
    other = Retry({**params, "lr": 0.001}, number=9, retry_of=7)
    objective(other)
    assert "resumed_from_epoch" not in other.user_attrs
    # The true retry resumes after epoch 1.
    with pytest.raises(KeyboardInterrupt):
        objective(Dies(params, number=7))
    retry = Retry(params, number=10, retry_of=7)
    objective(retry)
    assert retry.user_attrs["resumed_from_epoch"] == 1
