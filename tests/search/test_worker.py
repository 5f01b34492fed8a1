"""One worker's loop (hpsearch.search.worker) and run_study (hpsearch.search.run): exact totals,
resumes, trial groups, failures in a row, interrupts."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.errors import HpsearchError, TrialsFailing
from hpsearch.search.plan import RunPlan
from hpsearch.search.progress import StudyProgress
from hpsearch.search.run import run_study
from hpsearch.search.study_file import load_study_file
from hpsearch.settings import resolve_settings


def test_trials_is_the_study_total_and_reruns_resume(tiny_usps_file: Path, sqlite_url: str) -> None:
    config = load_study_file(tiny_usps_file)
    seen: list[StudyProgress] = []
    study, progress = run_study(
        RunPlan(config, resolve_settings(config, workers=1, storage=sqlite_url, trials=2)),
        on_progress=seen.append,
    )
    assert progress.finished == 2 and progress.trials_this_run == 2
    assert [p.finished for p in seen] == [0, 1, 2]
    assert seen[-1].best_value == study.best_value
    # Same command, larger total: runs only the difference.
    study, progress = run_study(
        RunPlan(config, resolve_settings(config, workers=1, storage=sqlite_url, trials=3))
    )
    assert progress.finished == 3 and progress.trials_this_run == 1
    # A finished study runs nothing.
    study, progress = run_study(
        RunPlan(config, resolve_settings(config, workers=1, storage=sqlite_url, trials=3))
    )
    assert progress.trials_this_run == 0
    states = [t.state for t in study.trials]
    assert len(states) == 3 and all(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
    assert study.user_attrs["problem"] == "usps"
    # Trial seeds follow study seed + trial number.
    assert [t.user_attrs["seed"] for t in study.trials] == [0, 1, 2]


def test_other_problem_in_same_study_name_is_refused(
    tiny_usps_file: Path, tiny_house_file: Path, sqlite_url: str
) -> None:
    usps = load_study_file(tiny_usps_file)
    run_study(
        RunPlan(
            usps, resolve_settings(usps, workers=1, storage=sqlite_url, trials=1, study_name="s")
        )
    )
    house = load_study_file(tiny_house_file)
    with pytest.raises(HpsearchError, match="holds usps"):
        run_study(
            RunPlan(
                house,
                resolve_settings(house, workers=1, storage=sqlite_url, trials=1, study_name="s"),
            )
        )


@pytest.mark.parametrize("sampler", ["tpe", "random", "gp", "cmaes", "qmc", "nsga2", "nsga3"])
def test_every_sampler_runs(tiny_house_file: Path, sqlite_url: str, sampler: str) -> None:
    config = load_study_file(tiny_house_file)
    study, progress = run_study(
        RunPlan(
            config,
            resolve_settings(config, workers=1, storage=sqlite_url, trials=2, sampler=sampler),
        )
    )
    assert progress.finished == 2
    inner = getattr(study.sampler, "sampler", study.sampler)  # TrialSeededSampler wraps it
    name = type(inner).__name__.lower().replace("nsgaiii", "nsga3").replace("nsgaii", "nsga2")
    assert name.startswith(sampler)


def test_grid_sampler_visits_the_grid(tmp_path: Path, sqlite_url: str) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(
        "[study]\nproblem = 'house-prices'\ntrials = 4\n[sampler]\nname = 'grid'\n"
        "[pruner]\nname = 'none'\n[fixed]\nepochs = 3\nhidden_units = 4\n"
        "[space.n_hidden_layers]\ntype = 'int'\nlow = 1\nhigh = 2\n"
        "[space.activation]\ntype = 'categorical'\nchoices = ['relu', 'tanh']\n"
    )
    config = load_study_file(path)
    study, _ = run_study(RunPlan(config, resolve_settings(config, workers=1, storage=sqlite_url)))
    combos = {(t.params["n_hidden_layers"], t.params["activation"]) for t in study.trials}
    assert combos == {(1, "relu"), (1, "tanh"), (2, "relu"), (2, "tanh")}


def test_enqueued_report_config_runs_first(tmp_path: Path, sqlite_url: str) -> None:
    path = tmp_path / "enq.toml"
    path.write_text(
        "[study]\nproblem = 'house-prices'\ntrials = 2\n[fixed]\nepochs = 2\n"
        "[space.hidden_units]\ntype = 'categorical'\nchoices = [8, 128]\n"
        "[[enqueue]]\nhidden_units = 128\n"
    )
    config = load_study_file(path)
    study, _ = run_study(RunPlan(config, resolve_settings(config, workers=1, storage=sqlite_url)))
    assert study.trials[0].params == {"hidden_units": 128}


@pytest.mark.parametrize("group_size", [1, 3])
def test_failing_trials_stop_the_run(
    tiny_usps_file: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, group_size: int
) -> None:
    def broken_train(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr("hpsearch.training.loop.train_stack", broken_train)
    config = load_study_file(tiny_usps_file)
    settings = resolve_settings(
        config, workers=1, storage=sqlite_url, trials=10, group_size=group_size
    )
    with pytest.raises(TrialsFailing, match="5 trials failed in a row, last: RuntimeError: CUDA"):
        run_study(RunPlan(config, settings))
    study = optuna.load_study(study_name="tiny-usps", storage=sqlite_url)
    # Alone: five trials, each failed. In groups of three: the fifth failure is in the
    # second group, whose last member ends failed too, as the worker stops.
    assert [t.state for t in study.trials] == [TrialState.FAIL] * (5 if group_size == 1 else 6)
    assert study.trials[0].user_attrs["fail_reason"] == "RuntimeError: CUDA out of memory"
    if group_size == 3:
        assert study.trials[5].user_attrs["fail_reason"].startswith("worker stopped: 5 trials")


def test_interrupt_after_another_worker_failed_the_trial(sqlite_url: str) -> None:
    # Another worker found this trial stale, failed it and queued its retry; the interrupt
    # must neither crash on the finished trial nor queue a second retry.
    from hpsearch.search.coordinator import retry_trial
    from hpsearch.search.worker import FunctionObjective, run_trials
    from hpsearch.settings import Settings
    from hpsearch.storage.database import open_storage

    study = optuna.create_study(storage=open_storage(sqlite_url, heartbeat_interval=5))

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0, 1)
        frozen = study._storage.get_trial(trial._trial_id)
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        retry_trial(study, frozen)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_trials(study, FunctionObjective(objective), Settings(storage=sqlite_url, trials=3))
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING]


def test_trial_groups_share_shapes_and_keep_the_total(
    tiny_usps_file: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hpsearch.training.stack.CPU_STACK_FLOATS", 10**9)  # no cache cap here
    config = load_study_file(tiny_usps_file)
    settings = resolve_settings(config, workers=1, storage=sqlite_url, trials=7, group_size=3)
    study, progress = run_study(RunPlan(config, settings))
    assert progress.finished == 7
    trials = study.get_trials(states=[TrialState.COMPLETE, TrialState.PRUNED])
    assert sorted(t.number for t in trials) == list(range(7))
    groups: dict[int, list[optuna.trial.FrozenTrial]] = {}
    for trial in trials:
        groups.setdefault(trial.user_attrs.get("group", trial.number), []).append(trial)
    # Claimed three at a time, the last group cut to the one trial the total leaves (a
    # trial that trained alone has no "group" attribute).
    assert sorted(len(g) for g in groups.values()) == [1, 3, 3]
    for leader, members in groups.items():
        assert min(t.number for t in members) == leader
        # The shape (depth) is the leader's; the rest is each trial's own draw.
        assert len({t.params["n_conv_layers"] for t in members}) == 1
        assert all(t.user_attrs["seed"] == t.number for t in members)  # study seed 0
    assert len({t.params["lr"] for t in trials}) == 7


def test_each_way_a_trial_ends_is_told_as_such(sqlite_url: str) -> None:
    import sqlalchemy

    from hpsearch.search.trial_end import Complete, Failed, Pruned
    from hpsearch.search.worker import FunctionObjective, run_trials
    from hpsearch.settings import Settings
    from hpsearch.storage.database import open_storage

    lost = sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("server closed the connection"))

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 1:
            raise optuna.TrialPruned("too slow")
        if trial.number == 2:
            raise ValueError("a bug")
        if trial.number == 3:
            raise lost
        return x

    plain = FunctionObjective(objective)
    ends = [end for trial in (0, 1, 2, 3) for _, end in plain.train([_asked(trial)])]
    assert isinstance(ends[0], Complete) and len(ends[0].values) == 1
    assert ends[1] == Pruned(None, "too slow")
    assert (
        isinstance(ends[2], Failed) and not ends[2].retry and ends[2].reason == "ValueError: a bug"
    )
    assert isinstance(ends[3], Failed) and ends[3].retry
    assert ends[3].reason.startswith("database connection lost:")

    study = optuna.create_study(storage=open_storage(sqlite_url, heartbeat_interval=5))
    run_trials(study, plain, Settings(storage=sqlite_url, trials=3))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                         TrialState.FAIL, TrialState.COMPLETE]  # fmt: skip
    assert trials[1].user_attrs["pruned_reason"] == "too slow"
    assert trials[2].user_attrs["fail_reason"] == "ValueError: a bug"  # its own: no retry
    assert trials[3].user_attrs["fail_reason"].startswith("database connection lost")
    assert trials[4].user_attrs["retry_of"] == 3 and trials[4].params == trials[3].params


def _asked(number: int) -> optuna.Trial:
    """A trial numbered ``number`` of a study of its own, in memory."""
    study = optuna.create_study()
    for _ in range(number):
        study.tell(study.ask(), 0.0)
    return study.ask()
