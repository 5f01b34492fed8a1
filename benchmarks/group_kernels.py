"""What a trial group is made of on this CPU: K models' layers one after another against the
same layers as one grouped call (what hpsearch.groups runs), side by side in one run.

    python benchmarks/group_kernels.py [--members 4] [--threads 1]

For each layer of the lab report's USPS net (3 conv x 64 on 16x16 images, batch 50), the
forward and backward pass of K separate calls against one call on K times the channels
(a grouped convolution; batch norm and ReLU over K*C channels), NHWC, and the convolution's
GFLOP/s. A ratio above 1 means the grouped call is faster.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

LAYERS = [(1, 64, 16), (64, 64, 8), (64, 64, 4)]  # (in channels, out channels, map size)
BATCH = 50


def milliseconds(step: Callable[[], None], repeats: int = 20) -> float:
    step()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - started) / repeats * 1e3


def nhwc(shape: tuple[int, ...]) -> torch.Tensor:
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    return x.requires_grad_()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    k = args.members
    print(f"{k} members, batch {BATCH}, {args.threads} thread(s); forward + backward, ms")
    print(f"{'layer':<22}{'one by one':>12}{'grouped':>10}{'ratio':>8}{'GFLOP/s':>10}")
    for c, o, h in LAYERS:
        x, w = nhwc((BATCH, c, h, h)), nhwc((o, c, 3, 3))
        xs, ws = nhwc((BATCH, k * c, h, h)), nhwc((k * o, c, 3, 3))

        def alone(x: torch.Tensor = x, w: torch.Tensor = w) -> None:
            for _ in range(k):
                F.conv2d(x, w, padding=1).sum().backward()

        def grouped(xs: torch.Tensor = xs, ws: torch.Tensor = ws) -> None:
            F.conv2d(xs, ws, padding=1, groups=k).sum().backward()

        one, fused = milliseconds(alone), milliseconds(grouped)
        flop = 3 * 2 * BATCH * o * c * 9 * h * h * k  # forward + two backward convolutions
        name = f"conv {c}->{o} @{h}x{h}"
        print(
            f"{name:<22}{one:>12.2f}{fused:>10.2f}{one / fused:>7.2f}x{flop / fused / 1e6:>10.1f}"
        )
        a, b = nhwc((BATCH, o, h, h)), nhwc((BATCH, k * o, h, h))

        def norm_relu(t: torch.Tensor, channels: int) -> None:
            weight = torch.ones(channels, requires_grad=True)
            stats = torch.zeros(channels), torch.ones(channels)
            out = F.batch_norm(t, *stats, weight, torch.zeros(channels), True, 0.1, 1e-5)
            torch.relu(out).sum().backward()

        def separate(a: torch.Tensor = a, o: int = o) -> None:
            for _ in range(k):
                norm_relu(a, o)

        one = milliseconds(separate)
        fused = milliseconds(lambda b=b, o=o: norm_relu(b, k * o))
        name = f"batch norm + relu @{h}x{h}"
        print(f"{name:<22}{one:>12.2f}{fused:>10.2f}{one / fused:>7.2f}x{'':>10}")


if __name__ == "__main__":
    main()
