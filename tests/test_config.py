from __future__ import annotations

from pathlib import Path

import pytest

from hpsearch import config as cfg
from hpsearch.errors import HpsearchError
from hpsearch.problems import PROBLEMS
from hpsearch.search import create_pruner
from hpsearch.space import grid_search_space

STUDIES_DIR = Path(__file__).parent.parent / "studies"
SHIPPED = sorted(STUDIES_DIR.glob("*.toml"))


def test_packaged_studies_are_the_top_level_ones() -> None:
    assert {p.name for p in SHIPPED} >= {
        "usps.toml",
        "usps-report.toml",
        "house-prices.toml",
        "house-prices-report.toml",
        "house-prices-gaussian.toml",
    }
    assert set(cfg.packaged_studies()) == {p.stem for p in SHIPPED}


def _within(spec: cfg.ParamSpec, value: object) -> bool:
    if spec.type == "categorical":
        return value in spec.choices
    assert isinstance(value, int | float)
    return spec.low <= value <= spec.high  # type: ignore[operator]


REPORT_STUDIES = [p for p in SHIPPED if p.stem in ("usps-report", "house-prices-report")]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_study_loads(path: Path) -> None:
    study = cfg.load_study_file(path)
    assert study.problem.name in PROBLEMS and study.metric in study.problem.metrics
    create_pruner(study.pruner, study.pruner_options, study)


@pytest.mark.parametrize("path", REPORT_STUDIES, ids=lambda p: p.name)
def test_report_studies_contain_the_report_best(path: Path) -> None:
    study = cfg.load_study_file(path)
    assert study.problem.name in PROBLEMS
    assert study.metric in study.problem.metrics
    assert study.trials >= 1
    # Every searched value of the report's best configuration lies inside the space.
    defaults = study.problem.defaults
    for name, spec in study.space.items():
        assert _within(spec, defaults[name]), (path.name, name, defaults[name])
    # And the report's configuration is enqueued as the first trial.
    assert study.enqueue and all(study.enqueue[0][k] == defaults[k] for k in study.enqueue[0])


def test_report_study_is_the_report_space() -> None:
    usps = cfg.load_study_file(STUDIES_DIR / "usps-report.toml")
    assert usps.space["channels"].choices == (64, 128, 256)
    assert set(usps.space["activation"].choices) == {"relu", "tanh", "sigmoid"}
    assert (usps.base_params["epochs"], usps.base_params["dropout"]) == (30, 0.1)
    assert usps.base_params["lr_schedule"] == "step"


def test_main_studies_vary_what_the_report_varied() -> None:
    usps = cfg.load_study_file(STUDIES_DIR / "usps.toml")
    assert {
        "n_conv_layers",
        "channels",
        "activation",
        "optimizer",
        "lr",
        "batch_size",
        "epochs",
        "loss",
        "dropout",
        "lr_schedule",
    } <= set(usps.space)
    assert usps.space["channels"].choices == (16, 32, 64)
    assert (usps.space["n_conv_layers"].low, usps.space["n_conv_layers"].high) == (1, 4)
    house = cfg.load_study_file(STUDIES_DIR / "house-prices.toml")
    assert {
        "n_hidden_layers",
        "hidden_units",
        "activation",
        "optimizer",
        "lr",
        "batch_size",
        "epochs",
    } <= set(house.space)
    gaussian = cfg.load_study_file(STUDIES_DIR / "house-prices-gaussian.toml")
    assert gaussian.base_params["loss"] == "gaussian_nll" and gaussian.metric == "val_nll"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[study]\nproblem = 'mnist'\n", r"\[study\] unknown problem 'mnist'"),
        ("[study]\n", r"\[study\] problem is required"),
        ("[study]\nproblem = 'usps'\nmetric = 'val_rmse'\n", r"\[study\] metric 'val_rmse'"),
        ("[study]\nproblem = 'usps'\ntrials = 0\n", r"\[study\] must be an integer >= 1"),
        ("[study]\nproblem = 'usps'\ncolour = 1\n", r"\[study\] unknown key\(s\) colour"),
        ("[stduy]\n", r"\[top level\] unknown key\(s\) stduy"),
        ("[study]\nproblem = 'usps'\n[sampler]\nname = 'bayes'\n", r"\[sampler\] name 'bayes'"),
        (
            "[study]\nproblem = 'usps'\n[space.lr]\ntype = 'float'\nlow = 1\nhigh = 0.1\n",
            r"\[space.lr\] low \(1\) must be < high",
        ),
        (
            "[study]\nproblem = 'usps'\n[space.weight_decay]\ntype = 'float'\nlow = 0\nhigh = 1\n"
            "log = true\n",
            r"\[space.weight_decay\] log scale needs low > 0",
        ),
        (
            "[study]\nproblem = 'usps'\n[space.lr]\ntype = 'float'\nlow = 0\nhigh = 1\n",
            r"\[space.lr\] lr = 0 must be a number > 0",
        ),
        ("[study]\nproblem = 'usps'\n[fixed]\ndropout = 1.5\n", r"\[fixed\] dropout = 1.5 must"),
        ("[study]\nproblem = 'usps'\n[fixed]\nbatch_size = 0\n", r"\[fixed\] batch_size = 0"),
        (
            "[study]\nproblem = 'usps'\n[space.n_conv_layers]\ntype = 'int'\nlow = 1\nhigh = 6\n",
            r"n_conv_layers = 6 must be an integer from 1 to 4",
        ),
        (
            "[study]\nproblem = 'usps'\n[space.width]\ntype = 'int'\nlow = 1\nhigh = 2\n",
            r"\[space.width\] unknown hyperparameter",
        ),
        (
            "[study]\nproblem = 'usps'\n[space.activation]\ntype = 'categorical'\n"
            "choices = ['relu', 'swish2']\n",
            r"\[space.activation\] activation = 'swish2'",
        ),
        ("[study]\nproblem = 'usps'\n[space.lr]\ntype = 'uniform'\n", r"\[space.lr\] type must"),
        ("[study]\nproblem = 'usps'\n[fixed]\nloss = 'gaussian_nll'\n", r"\[fixed\] loss ="),
        ("[study]\nproblem = 'usps'\n[fixed]\npool = 'middle'\n", r"\[fixed\] pool = 'middle'"),
        ("[study]\nproblem = 'usps'\n[fixed]\nhead_units = -1\n", r"head_units = -1 must"),
        (
            "[study]\nproblem = 'usps'\n[data]\nfeatures = ['GrLivArea']\n",
            r"\[data\] unknown key\(s\) features",
        ),
        (
            "[study]\nproblem = 'usps'\n[sampler]\nname = 'grid'\n[space.lr]\ntype = 'float'\n"
            "low = 0.001\nhigh = 0.1\n",
            r"\[sampler\] lr: give a grid",
        ),
        (
            "[study]\nproblem = 'usps'\n[fixed]\nlr = 0.1\n[space.lr]\ntype = 'float'\n"
            "low = 0.001\nhigh = 0.1\n",
            r"lr both fixed and searched",
        ),
        ("[study]\nproblem = 'usps'\n[[enqueue]]\nlr = 0.1\n", r"\[enqueue\] lr not in"),
        ("[study\nproblem = 'usps'\n", r"not valid TOML"),
    ],
)
def test_malformed_files_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(HpsearchError, match=message) as caught:
        cfg.load_study_file(path)
    assert str(path) in str(caught.value)


def test_find_study_file(tmp_path: Path) -> None:
    assert cfg.find_study_file("usps").name == "usps.toml"
    path = _write(tmp_path, "[study]\nproblem = 'usps'\n")
    assert cfg.find_study_file(str(path)) == path
    with pytest.raises(HpsearchError, match="unknown problem 'digits'; choose from ablation-"):
        cfg.find_study_file("digits")
    with pytest.raises(HpsearchError, match="does not exist"):
        cfg.find_study_file(str(tmp_path / "missing.toml"))


def test_settings_precedence() -> None:
    study = cfg.load_study_file(STUDIES_DIR / "usps.toml")
    defaults = cfg.resolve_settings(study)
    # Study file over built-in defaults.
    assert (defaults.sampler, defaults.trials, defaults.study_name) == ("tpe", 30, "usps")
    # Flags (or their environment variables) over the study file.
    chosen = cfg.resolve_settings(study, sampler="random", trials=5, seed=None, study_name="x")
    assert (chosen.sampler, chosen.trials, chosen.seed, chosen.study_name) == ("random", 5, 0, "x")
    for bad, message in [
        ({"trials": 0}, "--trials"),
        ({"timeout": -1.0}, "--timeout"),
        ({"sampler": "bayes"}, "unknown sampler"),
        ({"pruner": "asha"}, "unknown pruner"),
        ({"device": "tpu"}, "device"),
        ({"sampler": "grid"}, "--sampler grid"),
    ]:
        with pytest.raises(HpsearchError, match=message):
            cfg.resolve_settings(study, **bad)


def test_default_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from hpsearch import workers

    study = cfg.load_study_file(STUDIES_DIR / "usps.toml")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(workers, "usable_cores", lambda: 6)
    # CPU: one single-threaded worker per core, never more than the trials.
    assert cfg.resolve_settings(study, device="cpu").workers == 6
    assert cfg.resolve_settings(study, device="auto", trials=4).workers == 4
    assert cfg.resolve_settings(study, device="cpu", threads=2).workers == 3
    assert cfg.resolve_settings(study, device="cpu", workers=1).workers == 1
    assert workers.worker_threads(6) == 1 and workers.worker_threads(2) == 3


def test_default_workers_on_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA probe, with torch.cuda faked: free memory / 2 GiB per GPU, at most 8 each,
    at most one per core, spread over the devices."""
    import torch

    from hpsearch import search, workers

    gib = 1024**3
    free = {0: 70 * gib, 1: 5 * gib}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free[i], 80 * gib))
    assert workers.auto_workers("cuda", cores=16) == 8 + 2
    assert workers.auto_workers("cuda", cores=4) == 4
    free[1] = gib // 2  # a full GPU still gets one worker
    assert workers.auto_workers("cuda", cores=16) == 9
    study = cfg.load_study_file(STUDIES_DIR / "usps.toml")
    monkeypatch.setattr(workers, "usable_cores", lambda: 16)
    assert cfg.resolve_settings(study, device="auto", trials=200).workers == 9
    assert search.worker_devices("auto", 4) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]


def test_grid_search_space(tmp_path: Path) -> None:
    text = (
        "[study]\nproblem = 'usps'\n[sampler]\nname = 'grid'\n"
        "[space.n_conv_layers]\ntype = 'int'\nlow = 1\nhigh = 4\n"
        "[space.lr]\ntype = 'float'\nlow = 0.001\nhigh = 0.1\nlog = true\ngrid = [0.001, 0.01]\n"
        "[space.activation]\ntype = 'categorical'\nchoices = ['relu', 'tanh']\n"
    )
    study = cfg.load_study_file(_write(tmp_path, text))
    assert grid_search_space(study.space) == {
        "n_conv_layers": [1, 2, 3, 4],
        "lr": [0.001, 0.01],
        "activation": ["relu", "tanh"],
    }


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).parent.parent / "benchmarks" / "studies").glob("*.toml")),
    ids=lambda p: p.stem,
)
def test_benchmark_studies_load(path: Path) -> None:
    config = cfg.load_study_file(path)
    assert config.space
