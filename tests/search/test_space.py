from __future__ import annotations

from pathlib import Path

import optuna

from hpsearch.search.space import ParamSpec, grid_search_space, suggest_params
from hpsearch.search.study_file import load_study_file


def test_fixed_trial_params_merge_over_base() -> None:
    space = {
        "lr": ParamSpec(type="float", low=1e-4, high=1e-1, log=True),
        "loss": ParamSpec(type="categorical", choices=("mse", "cross_entropy")),
    }
    trial = optuna.trial.FixedTrial({"lr": 0.01, "loss": "mse"})
    params = suggest_params(trial, space, {"lr": 1.0, "epochs": 3}, {})
    assert params == {"lr": 0.01, "loss": "mse", "epochs": 3}


def test_per_layer_widths_exist_only_for_existing_layers() -> None:
    space = {
        "channels": ParamSpec(type="categorical", choices=(64, 128), per_layer=True),
        "n_conv_layers": ParamSpec(type="int", low=1, high=4),
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        params = suggest_params(trial, space, {"channels": 64}, {"channels": "n_conv_layers"})
        depth = params["n_conv_layers"]
        assert "channels" not in params
        assert {k for k in trial.params if k.startswith("channels_")} == {
            f"channels_{i}" for i in range(depth)
        }
        study.tell(trial, 0.0)


def test_int_step_and_float_step() -> None:
    space = {
        "epochs": ParamSpec(type="int", low=5, high=30, step=5),
        "dropout": ParamSpec(type="float", low=0.0, high=0.5, step=0.05),
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(30):
        params = suggest_params(study.ask(), space, {}, {})
        assert params["epochs"] in range(5, 31, 5)
        assert abs(params["dropout"] / 0.05 - round(params["dropout"] / 0.05)) < 1e-6


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return path


def test_grid_search_space(tmp_path: Path) -> None:
    text = (
        "[study]\nproblem = 'usps'\n[sampler]\nname = 'grid'\n"
        "[space.n_conv_layers]\ntype = 'int'\nlow = 1\nhigh = 4\n"
        "[space.lr]\ntype = 'float'\nlow = 0.001\nhigh = 0.1\nlog = true\ngrid = [0.001, 0.01]\n"
        "[space.activation]\ntype = 'categorical'\nchoices = ['relu', 'tanh']\n"
    )
    study = load_study_file(_write(tmp_path, text))
    assert grid_search_space(study.space) == {
        "n_conv_layers": [1, 2, 3, 4],
        "lr": [0.001, 0.01],
        "activation": ["relu", "tanh"],
    }
