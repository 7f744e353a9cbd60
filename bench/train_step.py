"""Training-step time of a gated ResNet over the plain one of the same depth, measured in one run.

    python -m cosinegate.bench.train_step [--depth 20] [--batch 128] [--steps 20] [--threads N] [--device auto]

Burn-in steps are run and discarded first; the measured steps report mean +- std per iteration.
Goal (issue 2): gated / plain <= 1.3x. The hardware, torch version and thread count are printed
with the numbers.
"""
import argparse
import platform
import statistics
import sys
import time

import torch

from cosinegate.train.config import TrainConfig
from cosinegate.train.model import CosineGateResNet, ModelConfig
from cosinegate.train.trainer import loss_terms, total_loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(gated: bool, depth: int, batch: int, steps: int, burn_in: int, device) -> list[float]:
    torch.manual_seed(0)
    cfg = TrainConfig(depth=depth, gated=gated)
    model = CosineGateResNet(ModelConfig(depth=depth, gated=gated)).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    mode = "relaxed" if gated else "full"
    times = []
    for i in range(burn_in + steps):
        _sync(device)
        t0 = time.perf_counter()
        logits, stats = model(x, mode, 1.0)
        loss = total_loss(cfg, loss_terms(cfg, logits, stats, y, 1.0, mode))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i >= burn_in:
            times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--burn-in", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"machine: {hw} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
          f"ResNet-{args.depth}, batch {args.batch}, {args.steps} steps after {args.burn_in} burn-in")
    result = {}
    for gated in (False, True):
        t = time_steps(gated, args.depth, args.batch, args.steps, args.burn_in, device)
        result[gated] = statistics.mean(t)
        name = "gated" if gated else "plain"
        print(f"{name:<6} {1000 * statistics.mean(t):9.1f} ms/step  +- {1000 * statistics.stdev(t):6.1f}")
    print(f"ratio  {result[True] / result[False]:9.3f} x  (goal <= 1.3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
