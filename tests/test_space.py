from __future__ import annotations

import optuna

from hpsearch.config import ParamSpec
from hpsearch.space import suggest_params


def test_fixed_trial_params_merge_over_base() -> None:
    space = {
        "lr": ParamSpec("lr", "float", low=1e-4, high=1e-1, log=True),
        "loss": ParamSpec("loss", "categorical", choices=("mse", "cross_entropy")),
    }
    trial = optuna.trial.FixedTrial({"lr": 0.01, "loss": "mse"})
    params = suggest_params(trial, space, {"lr": 1.0, "epochs": 3})
    assert params == {"lr": 0.01, "loss": "mse", "epochs": 3}


def test_per_layer_widths_exist_only_for_existing_layers() -> None:
    space = {
        "channels": ParamSpec("channels", "categorical", choices=(64, 128), per_layer=True),
        "n_conv_layers": ParamSpec("n_conv_layers", "int", low=1, high=4),
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        params = suggest_params(trial, space, {"channels": 64})
        depth = params["n_conv_layers"]
        assert "channels" not in params
        assert {k for k in trial.params if k.startswith("channels_")} == {
            f"channels_{i}" for i in range(depth)
        }
        study.tell(trial, 0.0)


def test_int_step_and_float_step() -> None:
    space = {
        "epochs": ParamSpec("epochs", "int", low=5, high=30, step=5),
        "dropout": ParamSpec("dropout", "float", low=0.0, high=0.5, step=0.05),
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(30):
        params = suggest_params(study.ask(), space, {})
        assert params["epochs"] in range(5, 31, 5)
        assert abs(params["dropout"] / 0.05 - round(params["dropout"] / 0.05)) < 1e-6
