from __future__ import annotations

import math

import pytest
import torch

from hpsearch import training
from hpsearch.training import (
    REGRESSION_LOSSES,
    NonFiniteLossError,
    TrainConfig,
    gaussian_nll,
    models,
    train,
)


def _toy_regression(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=generator)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(n, generator=generator)
    return x, y


def _fit(config: TrainConfig, **kwargs: object) -> training.TrainResult:
    x, y = _toy_regression()
    torch.manual_seed(config.seed)
    model = models.build_mlp_regressor(
        {"n_hidden_layers": 1, "hidden_units": 16, "activation": "tanh"}, (3,)
    )

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        return {"mse": float(torch.nn.functional.mse_loss(training.predict(m, x), y))}

    return train(
        model, x, y, training.REGRESSION_LOSSES["mse"], config, evaluate=evaluate, **kwargs
    )  # type: ignore[arg-type]


@pytest.mark.parametrize("optimizer", training.OPTIMIZERS)
def test_every_optimizer_learns(optimizer: str) -> None:
    lr = {"sgd": 0.05, "adam": 0.01, "adamw": 0.01, "rmsprop": 0.005}[optimizer]
    result = _fit(TrainConfig(epochs=30, batch_size=32, optimizer=optimizer, lr=lr))
    assert result.epochs_run == 30
    first, last = result.history[0].metrics["mse"], result.history[-1].metrics["mse"]
    assert last < 0.2 * first
    assert last < 0.2


def test_same_seed_same_result_and_eval_every() -> None:
    config = TrainConfig(epochs=10, batch_size=50, lr=0.01, seed=7)
    a, b = _fit(config), _fit(config, eval_every=5)
    c = _fit(TrainConfig(epochs=10, batch_size=50, lr=0.01, seed=8))
    assert a.train_loss == b.train_loss
    assert a.metrics == b.metrics
    assert a.train_loss != c.train_loss
    assert [r.epoch for r in b.history] == [5, 10]
    assert len(a.history) == 10


def test_divergence_raises_non_finite() -> None:
    # The report's failure: plain SGD with a large step blows up to NaN.
    config = TrainConfig(epochs=20, batch_size=32, optimizer="sgd", lr=50.0, momentum=0.9)
    with pytest.raises(NonFiniteLossError) as caught:
        _fit(config)
    assert caught.value.epoch <= 20
    assert not math.isfinite(caught.value.loss)


def _lrs(schedule: str, epochs: int) -> list[float]:
    """The learning rate of each epoch under ``schedule``, starting from 0.01."""
    model = torch.nn.Linear(2, 1)
    config = TrainConfig(epochs=epochs, batch_size=1, lr=0.01, lr_schedule=schedule)
    optimizer = training.make_optimizer(model.parameters(), config)
    scheduler = training.make_scheduler(optimizer, config, batches_per_epoch=1)
    assert scheduler is not None
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_step_schedule_divides_lr_by_ten_every_ten_epochs() -> None:
    lrs = _lrs("step", 30)
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.01)
    assert lrs[10] == pytest.approx(0.001) and lrs[20] == pytest.approx(0.0001)


def test_cosine_schedule_ends_near_zero_at_the_last_epoch() -> None:
    lrs = _lrs("cosine", 10)
    assert lrs[0] == pytest.approx(0.01) and lrs[5] == pytest.approx(0.005)
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.0003


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_fused_adam_matches_the_default_implementation(optimizer: str) -> None:
    x, y = torch.randn(64, 3), torch.randn(64, 1)
    weights = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        config = TrainConfig(epochs=3, batch_size=16, optimizer=optimizer, fused=fused)
        opt = training.make_optimizer(model.parameters(), config)
        assert bool(opt.defaults.get("fused")) is fused
        training.train(model, x, y, torch.nn.functional.mse_loss, config, evaluate=lambda m: {})
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-4, atol=1e-6)


def test_on_epoch_can_stop_training() -> None:
    seen = []

    def on_epoch(result: training.EpochResult) -> str | None:
        seen.append(result.epoch)
        return "enough" if result.epoch == 3 else None

    result = _fit(TrainConfig(epochs=10, batch_size=64), on_epoch=on_epoch)
    assert seen == [1, 2, 3]
    assert (result.stopped, result.epochs_run, len(result.history)) == ("enough", 3, 3)
    assert result.metrics == result.history[-1].metrics


def test_a_crash_ends_every_model_of_its_stack_and_the_next_stack_trains() -> None:
    x, y = _toy_regression()

    def trainee(lr: float, width: int) -> training.Trainee:
        torch.manual_seed(0)
        model = models.build_mlp_regressor(
            {"n_hidden_layers": 1, "hidden_units": width, "activation": "tanh"}, (3,)
        )
        config = TrainConfig(epochs=2, batch_size=64, lr=lr)
        return training.Trainee(model, REGRESSION_LOSSES["mse"], config, lambda m: {})

    def broken(m: torch.nn.Module) -> dict[str, float]:
        raise MemoryError("out of memory")

    crashing = [trainee(0.01, 8), trainee(0.02, 8)]
    for t in crashing:
        t.evaluate = broken
    other = trainee(0.01, 16)  # another shape: a stack of its own
    outcomes = dict(training.train_many([*crashing, other], x, y, group_size=2))
    assert [type(outcomes[i]).__name__ for i in range(3)] == ["Crashed", "Crashed", "TrainResult"]
    assert str(outcomes[0].error) == "out of memory"  # type: ignore[union-attr]


def test_losses() -> None:
    logits = torch.tensor([[10.0, -10.0], [-10.0, 10.0]])
    target = torch.tensor([0, 1])
    assert float(training.CLASSIFICATION_LOSSES["mse"](logits, target)) < 1e-6
    assert float(training.CLASSIFICATION_LOSSES["cross_entropy"](logits, target)) < 1e-6
    # Gaussian NLL with sigma = 1 is half the squared error plus 0.5 log(2 pi).
    output = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    y = torch.tensor([0.0, 1.0])
    nll = float(training.gaussian_nll(output, y))
    assert nll == pytest.approx(0.5 * (1 + 4) / 2 + 0.5 * math.log(2 * math.pi))
    assert float(training.GAUSSIAN_LOSSES["mse"](output, y)) == pytest.approx(2.5)


def test_batches_cover_every_row_once() -> None:
    generator = torch.Generator().manual_seed(0)
    batches = list(training.batch_indices(100, 30, generator, torch.device("cpu")))
    assert [len(b) for b in batches] == [30, 30, 30, 10]
    assert sorted(torch.cat(batches).tolist()) == list(range(100))
    # A trailing batch of one row is dropped (batch norm cannot train on it).
    batches = list(training.batch_indices(101, 50, generator, torch.device("cpu")))
    assert [len(b) for b in batches] == [50, 50]


def test_predict_restores_mode() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    model.train()
    out = training.predict(model, torch.ones(10, 2))
    assert model.training and out.shape == (10, 2)
    assert torch.equal(out, training.predict(model, torch.ones(10, 2)))  # no dropout in eval


def test_train_config_from_params() -> None:
    config = TrainConfig.from_params(
        {"epochs": 3, "batch_size": 8, "lr": 0.1, "activation": "relu", "loss": "mse"}, seed=5
    )
    assert (config.epochs, config.batch_size, config.lr, config.seed) == (3, 8, 0.1, 5)
    with pytest.raises(ValueError, match="unknown optimizer"):
        training.make_optimizer(
            torch.nn.Linear(1, 1).parameters(), TrainConfig(1, 1, optimizer="lbfgs")
        )


def test_channels_last_trains_the_same_model() -> None:
    from hpsearch.training.models import build_conv_classifier

    x, y = torch.randn(64, 1, 16, 16), torch.randint(0, 10, (64,))
    params = {"n_conv_layers": 2, "channels": 8, "activation": "relu", "dropout": 0.0}
    outputs = []
    for channels_last in (True, False):
        torch.manual_seed(0)
        model = build_conv_classifier(params)
        config = TrainConfig(
            epochs=1, batch_size=16, optimizer="sgd", lr=0.01, channels_last=channels_last
        )
        training.train(
            model,
            x,
            y,
            training.CLASSIFICATION_LOSSES["cross_entropy"],
            config,
            evaluate=lambda m: {},
        )
        conv = [m for m in model if isinstance(m, torch.nn.Conv2d)][1].weight  # 8 in-channels
        assert conv.is_contiguous(memory_format=torch.channels_last) is channels_last
        outputs.append(training.predict(model, x))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-3, atol=1e-4)  # same math


def test_bf16_autocast_trains() -> None:
    x, y = torch.randn(256, 3), torch.randn(256, 1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    before = float(torch.nn.functional.mse_loss(model(x), y).detach())
    config = TrainConfig(epochs=20, batch_size=32, lr=0.01, bf16=True)
    result = training.train(
        model, x, y, torch.nn.functional.mse_loss, config, evaluate=lambda m: {}
    )
    assert result.train_loss < before and model[0].weight.dtype == torch.float32


def test_dollar_nll_with_a_log_target_is_the_log_normal_nll() -> None:
    """Scored in dollars, a Gaussian on normalized log prices is a log-normal on prices."""
    from hpsearch.problems.house_prices import load_house_prices
    from hpsearch.problems.metrics import dollar_nll

    splits = load_house_prices(log_target=True)
    y = splits.y_val
    output = torch.stack([y * 0.9 + 0.05, torch.full_like(y, -1.0)], dim=-1)
    normalized = float(gaussian_nll(output.double(), y.double()))
    mu = output[:, 0].double() * splits.target_std + splits.target_mean
    sigma = torch.exp(0.5 * output[:, 1].double()) * splits.target_std
    prices = splits.to_dollars(y)
    expected = -torch.distributions.LogNormal(mu, sigma).log_prob(prices).mean()
    assert dollar_nll(normalized, y, splits) == pytest.approx(float(expected), rel=1e-6)


def test_huber_is_a_regression_loss() -> None:
    huber = REGRESSION_LOSSES["huber"]
    error = torch.tensor([0.5, 3.0])
    # Half the square within one unit, linear beyond.
    assert torch.allclose(huber(error, torch.zeros(2)), torch.tensor((0.125 + 2.5) / 2))


@pytest.mark.parametrize(
    ("n", "batch_size", "sizes"),
    [
        (100, 30, [30, 30, 30, 10]),
        (101, 50, [50, 50]),  # a trailing batch of one is dropped
        (90, 30, [30, 30, 30]),
        (1, 8, [1]),  # unless it is the whole data set
        (7, 64, [7]),
        (5, 2, [2, 2]),
    ],
)
def test_n_batches_counts_the_batches_of_an_epoch(
    n: int, batch_size: int, sizes: list[int]
) -> None:
    generator = torch.Generator().manual_seed(0)
    batches = list(training.batch_indices(n, batch_size, generator, torch.device("cpu")))
    assert [len(b) for b in batches] == sizes
    assert training.n_batches(n, batch_size) == len(sizes)
    rows = torch.cat(batches).tolist()
    assert len(set(rows)) == len(rows) and set(rows) <= set(range(n))


def test_onecycle_steps_every_batch_up_to_lr_and_down_to_near_zero() -> None:
    # 256 rows in batches of 64: 4 steps an epoch, 40 in all; OneCycleLR raises if stepped
    # past its total, so finishing shows the count is right.
    config = TrainConfig(epochs=10, batch_size=64, lr=0.01, lr_schedule="onecycle")
    lrs: list[float] = []

    def on_checkpoint(state: training.TrainState) -> None:
        lrs.append(state.optimizer["param_groups"][0]["lr"])

    _fit(config, on_checkpoint=on_checkpoint)
    assert len(lrs) == 10
    peak = max(range(10), key=lrs.__getitem__)
    assert 1 <= peak <= 4 and lrs[peak] > 0.008  # the peak (lr) after ~30% of the steps
    # Stepped per batch to the end (stepped per epoch it would still be near the peak); the
    # state after the last batch is one step past the cycle, which no batch trains with.
    assert lrs[-1] < 0.01 / 100
    assert lrs[peak:] == sorted(lrs[peak:], reverse=True)


def test_smoothed_cross_entropy_puts_a_tenth_of_the_target_on_every_class() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    target = torch.tensor([0, 2])
    log_p = logits.log_softmax(dim=-1)
    smooth = torch.full_like(log_p, 0.1 / 3)
    smooth[torch.arange(2), target] += 0.9
    expected = float(-(smooth * log_p).sum(dim=-1).mean())
    smoothed = training.CLASSIFICATION_LOSSES["smoothed_cross_entropy"]
    assert float(smoothed(logits, target)) == pytest.approx(expected)
    # Even a confident, right answer keeps a loss: no push towards infinite logits.
    confident = torch.tensor([[20.0, -20.0, -20.0]])
    assert float(smoothed(confident, target[:1])) > 1
