from __future__ import annotations

from pathlib import Path

import pytest

from hpsearch.errors import HpsearchError
from hpsearch.problems.registry import PROBLEMS
from hpsearch.search import study_file as cfg
from hpsearch.search.samplers import create_pruner
from hpsearch.search.space import ParamSpec
from hpsearch.settings import resolve_settings

STUDIES_DIR = Path(__file__).parents[2] / "studies"
SHIPPED = sorted(STUDIES_DIR.glob("*.toml"))


def test_packaged_studies_are_the_top_level_ones() -> None:
    assert {p.name for p in SHIPPED} >= {
        "usps.toml",
        "usps-lab-report.toml",
        "house-prices.toml",
        "house-prices-lab-report.toml",
        "house-prices-gaussian.toml",
    }
    assert set(cfg.packaged_studies()) == {p.stem for p in SHIPPED}


def _within(spec: ParamSpec, value: object) -> bool:
    if spec.type == "categorical":
        return value in spec.choices
    assert isinstance(value, int | float)
    return spec.low <= value <= spec.high  # type: ignore[operator]


LAB_REPORT_STUDIES = [p for p in SHIPPED if p.stem.endswith("-lab-report")]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_study_loads(path: Path) -> None:
    # A task's study (tabular-*, image-classification) is a study of the data it is given.
    table = {"path": "table.csv", "target": "y"} if path.stem.startswith("tabular-") else None
    images = {"path": "images/"} if path.stem == "image-classification" else None
    study = cfg.load_study_file(path, data=table or images)
    assert study.problem.name in PROBLEMS and study.metric in study.problem.metrics
    create_pruner(study, resolve_settings(study, workers=1))


@pytest.mark.parametrize("path", LAB_REPORT_STUDIES, ids=lambda p: p.name)
def test_lab_report_studies_contain_its_best(path: Path) -> None:
    study = cfg.load_study_file(path)
    assert study.problem.name in PROBLEMS
    assert study.metric in study.problem.metrics
    assert study.trials >= 1
    # Every searched value of the lab report's best configuration lies inside the space.
    defaults = study.problem.defaults
    for name, spec in study.space.items():
        assert _within(spec, defaults[name]), (path.name, name, defaults[name])
    # And that configuration is enqueued as the first trial.
    assert study.enqueue and all(study.enqueue[0][k] == defaults[k] for k in study.enqueue[0])


def test_lab_report_study_is_its_space() -> None:
    usps = cfg.load_study_file(STUDIES_DIR / "usps-lab-report.toml")
    assert usps.space["channels"].choices == (64, 128, 256)
    assert set(usps.space["activation"].choices) == {"relu", "tanh", "sigmoid"}
    assert (usps.base_params["epochs"], usps.base_params["dropout"]) == (30, 0.1)
    assert usps.base_params["lr_schedule"] == "step"


def test_main_studies_vary_what_the_lab_report_varied() -> None:
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
        ("[study]\n", r"\[study\] problem: Field required"),
        ("[study]\nproblem = 'usps'\nmetric = 'val_rmse'\n", r"\[study\] metric 'val_rmse'"),
        (
            "[study]\nproblem = 'usps'\ntrials = 0\n",
            r"\[study\] trials: Input should be greater than or equal to 1",
        ),
        ("[study]\nproblem = 'usps'\ncolour = 1\n", r"\[study\] unknown key colour"),
        ("[stduy]\n", r"\[top level\] unknown key stduy"),
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
            r"\[space.lr\] lr = 0.0: Input should be greater than 0",
        ),
        (
            "[study]\nproblem = 'usps'\n[fixed]\ndropout = 1.5\n",
            r"\[fixed\] dropout = 1.5: Input should be less than or equal to 0.95",
        ),
        ("[study]\nproblem = 'usps'\n[fixed]\nbatch_size = 0\n", r"\[fixed\] batch_size = 0"),
        (
            "[study]\nproblem = 'usps'\n[space.n_conv_layers]\ntype = 'int'\nlow = 1\nhigh = 6\n",
            r"\[space.n_conv_layers\] n_conv_layers = 6: Input should be less than or equal to 4",
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
        (
            "[study]\nproblem = 'usps'\n[space.lr]\ntype = 'uniform'\n",
            r"\[space.lr\] type: Input should be 'int', 'float' or 'categorical'",
        ),
        ("[study]\nproblem = 'usps'\n[fixed]\nloss = 'gaussian_nll'\n", r"\[fixed\] loss ="),
        ("[study]\nproblem = 'usps'\n[fixed]\npool = 'middle'\n", r"\[fixed\] pool = 'middle'"),
        (
            "[study]\nproblem = 'usps'\n[fixed]\nhead_units = -1\n",
            r"\[fixed\] head_units = -1: Input should be greater",
        ),
        (
            "[study]\nproblem = 'usps'\n[data]\nfeatures = ['GrLivArea']\n",
            r"\[data\] unknown key features",
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
        ("[study]\nproblem = 'usps'\n[fixed]\nepochs = '10'\n", r"\[fixed\] epochs = '10'"),
        ("[study]\nproblem = 'usps'\n[fixed]\nkernel_size = 4\n", r"kernel_size = 4: .*odd"),
        (
            "[study]\nproblem = 'usps'\n[space.epochs]\ntype = 'float'\nlow = 5\nhigh = 15\n",
            r"\[space.epochs\] epochs = 5.0: Input should be a valid integer",
        ),
        (
            "[study]\nproblem = 'usps'\n[space.dropout]\ntype = 'float'\nlow = 0\nhigh = 0.3\n"
            "per_layer = true\n",
            r"\[space.dropout\] per_layer applies only to channels",
        ),
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
    with pytest.raises(HpsearchError, match="unknown study 'digits'; choose from ablation-"):
        cfg.find_study_file("digits")
    with pytest.raises(HpsearchError, match="does not exist"):
        cfg.find_study_file(str(tmp_path / "missing.toml"))


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).parents[2] / "benchmarks" / "studies").glob("*.toml")),
    ids=lambda p: p.stem,
)
def test_benchmark_studies_load(path: Path) -> None:
    config = cfg.load_study_file(path)
    assert config.space
