"""Seconds per epoch of the lab report's USPS configuration, three ways, in one run.

    python benchmarks/epoch_speed.py [--device cpu|cuda] [--epochs 3] [--threads N]

1. hpsearch's training loop (hpsearch.training.loop.train: whole tensors on the device, index
   slices of one permutation per epoch);
2. a plain hand-written PyTorch loop over the same tensors;
3. the usual torchvision pipeline: datasets.USPS with ToTensor + Normalize transforms and a
   shuffled DataLoader.
Each gets the same model (3 conv x 64, batch norm, ReLU, max-pool, dropout 0.1), batch 50,
Adam lr 0.01 and the one-hot MSE loss. Also prints the achieved FLOP/s (forward + backward,
counted by torch.utils.flop_counter) against a measured float32 matmul peak.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpsearch.problems.registry import get_problem  # noqa: E402
from hpsearch.problems.splits import PACKAGED_DATA_DIR  # noqa: E402
from hpsearch.problems.usps import load_usps  # noqa: E402
from hpsearch.training.config import TrainConfig  # noqa: E402
from hpsearch.training.loop import train  # noqa: E402
from hpsearch.training.losses import CLASSIFICATION_LOSSES  # noqa: E402
from hpsearch.training.models import build_conv_classifier  # noqa: E402

PARAMS = dict(get_problem("usps").defaults)  # the lab report's best configuration
LOSS = CLASSIFICATION_LOSSES[PARAMS["loss"]]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_on(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_conv_classifier(PARAMS).to(device)


def hpsearch_loop(x: torch.Tensor, y: torch.Tensor, epochs: int) -> float:
    model = model_on(x.device)
    config = TrainConfig.from_params({**PARAMS, "epochs": epochs}, seed=0)
    sync(x.device)
    start = time.perf_counter()
    train(model, x, y, LOSS, config, evaluate=lambda m: {})
    sync(x.device)
    return (time.perf_counter() - start) / epochs


def plain_loop(
    x: torch.Tensor, y: torch.Tensor, epochs: int, variant: str = "", fused: bool = False
) -> float:
    """The hand-written loop; ``variant`` tries one speed-up: channels_last memory format,
    bf16 autocast, or torch.compile (its compile time is excluded: a warm-up epoch runs
    first)."""
    model = model_on(x.device)
    autocast = contextlib.nullcontext()
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    elif variant == "bf16":
        autocast = torch.autocast(x.device.type, dtype=torch.bfloat16)
    elif variant == "compile":
        model = torch.compile(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=PARAMS["lr"], fused=fused or None)
    if variant == "compile":  # compile outside the timing
        with autocast:
            LOSS(model(x[: PARAMS["batch_size"]]), y[: PARAMS["batch_size"]]).backward()
        optimizer.zero_grad()
    batch = PARAMS["batch_size"]
    sync(x.device)
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x), device=x.device)
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            if len(idx) < 2:
                continue
            optimizer.zero_grad()
            with autocast:
                loss = LOSS(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
    sync(x.device)
    return (time.perf_counter() - start) / epochs


def dataloader_loop(device: torch.device, epochs: int, mean: float, std: float) -> float:
    transform = torchvision.transforms.Compose(
        [torchvision.transforms.ToTensor(), torchvision.transforms.Normalize((mean,), (std,))]
    )
    dataset = torchvision.datasets.USPS(str(PACKAGED_DATA_DIR / "usps"), transform=transform)
    # The same number of training images as the other two (the search's train split).
    subset = torch.utils.data.Subset(dataset, range(5832))
    loader = torch.utils.data.DataLoader(subset, batch_size=PARAMS["batch_size"], shuffle=True)
    model = model_on(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=PARAMS["lr"])
    sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = LOSS(model(images), labels)
            loss.backward()
            optimizer.step()
    sync(device)
    return (time.perf_counter() - start) / epochs


def epoch_flops(x: torch.Tensor, y: torch.Tensor) -> float:
    """Forward + backward FLOPs of one epoch (full batches of 50)."""
    model = model_on(x.device)
    batch = PARAMS["batch_size"]
    with FlopCounterMode(display=False) as counter:
        LOSS(model(x[:batch]), y[:batch]).backward()
    return counter.get_total_flops() * len(x) / batch


def matmul_peak(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[],
        choices=["fused", "channels_last", "bf16", "compile"],
        help="also time the plain loop with these speed-ups",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    splits = load_usps()
    x, y = splits.x_train.to(device), splits.y_train.to(device)
    train_pixels = x.new_tensor(
        torchvision.datasets.USPS(str(PACKAGED_DATA_DIR / "usps")).data[:5832] / 255.0
    )
    mean, std = float(train_pixels.mean()), float(train_pixels.std())

    runs: dict[str, list[float]] = {"hpsearch loop": [], "plain loop": [], "DataLoader": []}
    runs.update({f"plain + {v}": [] for v in args.variants})
    hpsearch_loop(x, y, 1)  # warm-up: allocator, kernels, thread pool
    for _ in range(args.repeats):  # interleaved, so drift hits all of them alike
        runs["hpsearch loop"].append(hpsearch_loop(x, y, args.epochs))
        runs["plain loop"].append(plain_loop(x, y, args.epochs))
        runs["DataLoader"].append(dataloader_loop(device, args.epochs, mean, std))
        for variant in args.variants:
            fused = variant == "fused"
            seconds = plain_loop(x, y, args.epochs, "" if fused else variant, fused=fused)
            runs[f"plain + {variant}"].append(seconds)

    flops = epoch_flops(x, y)
    peak = matmul_peak(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"USPS, the lab report's configuration, {len(x)} images/epoch, "
        f"batch {PARAMS['batch_size']}, {name}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )
    print(
        f"median of {args.repeats} runs x {args.epochs} epochs; "
        f"{flops / 1e9:.1f} GFLOP per epoch (fwd+bwd); float32 matmul peak "
        f"{peak / 1e9:.1f} GFLOP/s"
    )
    base = statistics.median(runs["hpsearch loop"])
    print(f"{'loop':<22}{'s/epoch':>10}{'vs hpsearch':>13}{'GFLOP/s':>10}{'of peak':>9}")
    for label, times in runs.items():
        seconds = statistics.median(times)
        print(
            f"{label:<22}{seconds:>10.3f}{seconds / base:>12.2f}x"
            f"{flops / seconds / 1e9:>10.1f}{flops / seconds / peak:>9.1%}"
        )


if __name__ == "__main__":
    main()
