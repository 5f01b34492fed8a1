"""Studies of several objectives and hard limits: the study file's metrics and
[constraints], the samplers and pruners they take, costs known before training, and a
whole run of one."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from hpsearch.errors import HpsearchError
from hpsearch.search.pareto_pruning import DominatedPruner
from hpsearch.search.plan import RunPlan
from hpsearch.search.run import run_study
from hpsearch.search.samplers import create_pruner, create_sampler
from hpsearch.search.study_file import load_study_file
from hpsearch.settings import resolve_settings
from hpsearch.storage.counts import is_feasible
from tests.conftest import TINY_USPS

# Two conv layers of 8 channels hold 1,986 parameters, one holds 5,226 (its head is larger).
LIMITED = TINY_USPS.replace(
    'problem = "usps"', 'problem = "usps"\nmetrics = ["val_accuracy", "params"]'
).replace('name = "median"', 'name = "none"').replace(
    'name = "tpe"\nn_startup_trials = 2', 'name = "random"'
) + ("\n[constraints]\nparams = { max = 3000 }\n")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


def test_several_objectives_take_their_directions_and_a_pruner_of_their_own(
    tmp_path: Path,
) -> None:
    config = load_study_file(_write(tmp_path, LIMITED.replace('name = "none"\n', "")))
    assert config.metrics == ("val_accuracy", "params")
    assert config.directions == ["maximize", "minimize"]
    assert config.metric == "val_accuracy"  # the learning curve
    assert config.pruner == "dominated"  # the default of a study of several objectives
    assert [limit.describe() for limit in config.limits] == ["params <= 3000"]
    settings = resolve_settings(config)
    assert isinstance(create_pruner(config, settings), DominatedPruner)
    for name in ("hyperband", "median"):
        with pytest.raises(HpsearchError, match=f"pruner {name} prunes on one objective"):
            create_pruner(config, resolve_settings(config, pruner=name))
    with pytest.raises(HpsearchError, match="sampler cmaes optimizes one objective"):
        create_sampler(config, resolve_settings(config, sampler="cmaes"))
    for name in ("tpe", "nsga2", "nsga3", "gp", "random", "qmc"):
        create_sampler(config, resolve_settings(config, sampler=name))


def test_metric_on_the_command_line_replaces_the_files_and_its_pruner(tmp_path: Path) -> None:
    config = load_study_file(
        _write(tmp_path, TINY_USPS), metrics=["val_accuracy", "latency_ms", "flops"]
    )
    assert config.metrics == ("val_accuracy", "latency_ms", "flops")
    assert config.pruner == "dominated"  # the file's median takes one objective
    single = load_study_file(_write(tmp_path, TINY_USPS), metrics=["val_cross_entropy"])
    assert single.metrics == ("val_cross_entropy",) and single.pruner == "median"
    with pytest.raises(HpsearchError, match="pruner dominated prunes studies of several"):
        create_pruner(single, resolve_settings(single, pruner="dominated"))


@pytest.mark.parametrize(
    ("study", "extra", "message"),
    [
        ('metrics = ["val_accuracy", "speed"]', "", r"\[study\] metric 'speed' is not one of"),
        ('metrics = ["params"]', "", r"need one validation metric \(val_accuracy"),
        ('metrics = ["params", "params"]', "", "name one metric twice"),
        ("metrics = []", "", "metrics is empty"),
        ('metric = "val_accuracy"\nmetrics = ["params"]', "", "metric or metrics, not both"),
        ("", "[constraints]\nsize = { max = 1 }", r"\[constraints\] unknown metric 'size'"),
        ("", "[constraints]\nparams = {}", r"\[constraints.params\] give min, max or both"),
        ("", "[constraints]\nparams = { min = 5, max = 1 }", "min 5 > max 1"),
        ("", "[constraints]\nparams = { max = 1, top = 2 }", "unknown key top"),
    ],
)
def test_bad_objectives_and_limits_name_the_key(
    tmp_path: Path, study: str, extra: str, message: str
) -> None:
    text = TINY_USPS.replace('problem = "usps"', f'problem = "usps"\n{study}') + "\n" + extra
    with pytest.raises(HpsearchError, match=message):
        load_study_file(_write(tmp_path, text))


def test_a_limited_study_of_two_objectives_runs_end_to_end(tmp_path: Path, sqlite_url: str) -> None:
    config = load_study_file(_write(tmp_path, LIMITED))
    settings = resolve_settings(config, workers=1, storage=sqlite_url, trials=6)
    study, progress = run_study(RunPlan(config, settings))
    assert progress.finished == 6
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "params"]
    assert study.user_attrs["constraints"] == ["params <= 3000"]
    by_depth: dict[int, list[optuna.trial.FrozenTrial]] = {1: [], 2: []}
    for trial in study.trials:
        by_depth[trial.params["n_conv_layers"]].append(trial)
    assert by_depth[1] and by_depth[2]  # random search drew both depths
    for trial in by_depth[1]:  # 5,226 parameters: stopped before its first epoch
        assert trial.state == TrialState.PRUNED
        assert trial.user_attrs["pruned_reason"] == "not trained: params 5,226 > 3,000"
        assert trial.constraints["params<="] == pytest.approx(5226 / 3000 - 1)
        assert "curve" not in trial.user_attrs and not is_feasible(trial)
    for trial in by_depth[2]:
        assert trial.state == TrialState.COMPLETE
        assert trial.values == [trial.user_attrs["val_accuracy"], 1986]
        # the learning curve, per epoch, where hpsearch's pruner reads it
        assert sorted(trial.user_attrs["curve"]) == ["1", "2"]
        assert trial.user_attrs["curve"]["2"] == trial.user_attrs["val_accuracy"]
        assert is_feasible(trial)
    front = study.best_trials
    assert front and all(is_feasible(t) and t.params["n_conv_layers"] == 2 for t in front)


def _finished(
    study: optuna.Study, curve: dict[int, float], params: float, state: TrialState
) -> None:
    study.add_trial(
        optuna.trial.create_trial(
            state=state,
            values=[curve[max(curve)], params] if state == TrialState.COMPLETE else None,
            params={"x": 0.5},
            distributions={"x": FloatDistribution(0, 1)},
            user_attrs={"params": params, "curve": {str(k): v for k, v in curve.items()}},
        )
    )


def test_a_trial_is_pruned_only_when_trials_no_costlier_were_better() -> None:
    pruner = DominatedPruner(
        ["val_accuracy", "params"],
        ["maximize", "minimize"],
        "val_accuracy",
        n_startup_trials=2,
        min_peers=2,
    )
    study = optuna.create_study(directions=["maximize", "minimize"])
    # Two small trials that learned well, one big that learned badly.
    _finished(study, {1: 0.9, 2: 0.95}, 1000, TrialState.COMPLETE)
    _finished(study, {1: 0.8, 2: 0.9}, 2000, TrialState.COMPLETE)
    _finished(study, {1: 0.3}, 9000, TrialState.PRUNED)

    def at(curve: dict[int, float], params: float) -> bool:
        trial = optuna.trial.create_trial(
            state=TrialState.RUNNING,
            params={"x": 0.5},
            distributions={"x": FloatDistribution(0, 1)},
            user_attrs={"params": params, "curve": {str(k): v for k, v in curve.items()}},
        )
        return pruner.prune(study, trial)

    assert at({1: 0.5}, 3000)  # both cheaper trials were better at epoch 1
    assert not at({1: 0.85}, 3000)  # better than one of two: not dominated by half
    assert not at({1: 0.5}, 1500)  # one trial is no costlier: fewer than min_peers
    assert not at({1: 0.1}, 500)  # the cheapest so far: nothing to compare it with
    assert at({1: 0.4, 2: 0.5}, 9000)  # at epoch 2: both complete trials were better
    assert not at({1: 0.5, 2: 0.99}, 9000)
    assert not at({}, 9000)  # no epoch reported yet
    early = DominatedPruner(
        ["val_accuracy", "params"], ["maximize", "minimize"], "val_accuracy", n_startup_trials=3
    )
    assert not early.prune(study, study.trials[0])  # 2 complete trials, 3 to start
    # The curve is the study's validation metric wherever it stands among the objectives
    # (training seconds, first here, are known only after training).
    later = DominatedPruner(
        ["train_seconds", "val_accuracy"], ["minimize", "maximize"], "val_accuracy"
    )
    assert later.curve == "val_accuracy" and later.maximize and later.costs == []


def test_every_view_shows_the_front_and_finalize_picks_from_it(
    tmp_path: Path, sqlite_url: str
) -> None:
    from tests.test_cli import invoke

    path = _write(tmp_path, LIMITED)
    code, out, err = invoke("run", str(path), "--trials", "6", "--storage", sqlite_url)
    assert code == 0, err
    assert "maximize val_accuracy, minimize params, params <= 3000" in err  # the header
    assert "infeasible" in out and "Pareto front of" in out  # the summary
    code, out, err = invoke("best", "study", "--storage", sqlite_url, "--json")
    assert code == 0, err
    best = json.loads(out)
    assert best["metrics"] == ["val_accuracy", "params"]
    assert best["constraints"] == ["params <= 3000"]
    front = best["front"]
    assert front and all(r["values"]["params"] == 1986 for r in front)
    # same params on the whole front: only the most accurate trials are on it
    accuracy = max(r["values"]["val_accuracy"] for r in front)
    assert all(r["values"]["val_accuracy"] == accuracy for r in front)
    code, out, _ = invoke("best", "study", "--storage", sqlite_url)
    assert code == 0 and "Pareto front of" in out
    code, out, _ = invoke("trials", "study", "--storage", sqlite_url)
    assert code == 0 and "pruned, infeasible" in out and "params" in out
    code, out, err = invoke("studies", "--storage", sqlite_url)
    assert code == 0 and "front of" in out  # in place of a best value

    code, _, err = invoke("report", "study", "--storage", sqlite_url, "--out", "report")
    assert code == 0, err
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Pareto front:" in page and "Limits: params &lt;= 3000" in page
    assert (tmp_path / "report" / "front.png").stat().st_size > 1000
    assert (tmp_path / "report" / "hypervolume.png").stat().st_size > 1000

    bad = invoke("finalize", "study", "--storage", sqlite_url, "--pick", "speed")
    assert bad[0] == 2 and "unknown metric 'speed'" in bad[2]
    none = invoke(
        "finalize", "study", "--storage", sqlite_url, "--pick", "val_accuracy where params < 1000"
    )
    assert none[0] == 2 and "no complete feasible trial that --pick" in none[2]
    study = optuna.load_study(study_name="study", storage=sqlite_url)
    infeasible = next(t.number for t in study.trials if t.params["n_conv_layers"] == 1)
    refused = invoke("finalize", "study", "--storage", sqlite_url, "--trial", str(infeasible))
    assert refused[0] == 2 and "no complete trial" in refused[2]
    args = ["--top-k", "1", "--seeds", "1", "--no-ensemble", "--artifacts", ""]
    code, out, err = invoke(
        "finalize",
        "study",
        "--storage",
        sqlite_url,
        *args,
        "--pick",
        "val_accuracy where params <= 3000",
        "--out",
        "final",
    )
    assert code == 0, err
    assert "chosen by --pick val_accuracy where params <= 3000" in out
    assert "The model: 1,986 parameters" in out
    result = json.loads((tmp_path / "final" / "finalize.json").read_text())
    assert result["chosen"]["trial"] in [r["trial"] for r in front]
    assert result["costs"]["params"] == 1986 and result["costs"]["device"] == "cpu"
    assert 0.5 < result["test"]["accuracy"] <= 1


def test_tpe_learns_from_trials_the_dominated_pruner_stopped(
    tmp_path: Path, sqlite_url: str
) -> None:
    # Eager pruning (one peer, any better one prunes) over TPE: its model sees pruned
    # trials of two objectives, whose learning curves are kept where it does not look.
    text = (
        LIMITED.replace('name = "random"', 'name = "tpe"\nn_startup_trials = 2')
        .replace('name = "none"\nn_startup_trials = 1', 'name = "dominated"\nn_startup_trials = 1')
        .replace("epochs = 2", "epochs = 3")
        + "\n"
    ).replace("[pruner]\n", "[pruner]\nmin_peers = 1\nfraction = 0.0\n")
    config = load_study_file(_write(tmp_path, text))
    assert config.pruner == "dominated" and config.pruner_options["min_peers"] == 1
    study, progress = run_study(
        RunPlan(config, resolve_settings(config, workers=1, storage=sqlite_url, trials=10))
    )
    assert progress.finished == 10 and progress.failed == 0
    stopped = [
        t for t in study.trials if "pruner stopped it" in t.user_attrs.get("pruned_reason", "")
    ]
    assert stopped  # and TPE sampled the trials after them
    assert min(t.number for t in stopped) < max(t.number for t in study.trials)


def test_a_trial_group_of_two_objectives_tells_each_trial_its_own_values(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hpsearch.training.stack.CPU_STACK_FLOATS", 10**9)  # no cache cap here
    config = load_study_file(_write(tmp_path, LIMITED))
    settings = resolve_settings(config, workers=1, storage=sqlite_url, trials=8, group_size=3)
    study, progress = run_study(RunPlan(config, settings))
    assert progress.finished == 8
    grouped = [t for t in study.trials if "group" in t.user_attrs]
    assert grouped  # trained as one stack, told one by one
    for trial in study.trials:
        if trial.state == TrialState.COMPLETE:
            assert trial.values == [trial.user_attrs["val_accuracy"], 1986]
            assert sorted(trial.user_attrs["curve"]) == ["1", "2"]
        else:  # the shape of 5,226 parameters breaks the limit, alone or in a group
            assert trial.params["n_conv_layers"] == 1
