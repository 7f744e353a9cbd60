"""Where a training step's time goes: the trainer's own step (channels-last, bf16 autocast on
CUDA, the loss of Algorithm 1, SGD) on random data, plain and gated ResNet-20.

    python -m cosinegate.bench.step_profile [--steps 100] [--compile] [--device auto]

Variants: `eager` (torch.optim.SGD, every kernel launched by the host), on CUDA `graph` (the
trainer's StaticStep replaying one CUDA graph per step), with --compile `compiled`. Reports per step: wall time, the time the host spends issuing it (equal to the wall time when
the host, not the device, is the bottleneck) and, on CUDA, kernel launches and device busy time
from torch.profiler. `--compile` adds torch.compile variants. The device, torch version and
settings are printed with the numbers.
"""
import argparse
import platform
import time

import numpy as np
import torch

from cosinegate.train import config as C
from cosinegate.train.data import DeviceLoader, dataset_info
from cosinegate.train.graph_step import StaticStep
from cosinegate.train.model import CosineGateResNet
from cosinegate.train.trainer import loss_terms, step_loss, total_loss


def make_step(preset: str, device: torch.device, variant: str, like: tuple):
    cfg = C.from_dict(C.preset_values(preset))
    model = CosineGateResNet(cfg.model_config(dataset_info("cifar10"))).to(device)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    mode = "relaxed" if cfg.gated else "full"
    if variant == "graph":
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)  # noqa: E731
        static = StaticStep(model, optimizer, step_loss(cfg), autocast, *like, use_graph=True)
        static.new_epoch(0.1)
        return lambda x, y: static(x, y, 1.0, 0.5, mode)
    forward = torch.compile(model) if variant == "compiled" else model
    sums = torch.zeros(3, device=device, dtype=torch.float64)

    def step(x, y):
        tau = torch.full((), 1.0, device=device)  # a tensor: a changing float would recompile
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits, stats = forward(x, mode, tau)
        loss = total_loss(cfg, loss_terms(cfg, logits, stats, y, 0.5, mode))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sums.add_(torch.stack([loss.detach().double(), (logits.argmax(1) == y).sum().double(),
                               loss.detach().double()]))
    return step


def time_step(step, batches, sync) -> tuple[float, float, float]:
    """(first-10-steps seconds, host-issue ms per step, wall ms per step)."""
    t0 = time.perf_counter()
    for x, y in batches[:10]:  # burn-in (and compilation, with --compile)
        step(x, y)
    sync()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for x, y in batches:
        step(x, y)
    issue = time.perf_counter() - t0
    sync()
    wall = time.perf_counter() - t0
    return warm, 1e3 * issue / len(batches), 1e3 * wall / len(batches)


def launches_and_busy(step, batches, sync) -> tuple[float, float]:
    """CUDA kernel launches per step and device busy milliseconds per step, over 10 steps."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for x, y in batches[:10]:
            step(x, y)
        sync()
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel",
                                                        "cudaLaunchKernelExC", "cuLaunchKernelEx"))
    busy_us = sum(e.self_device_time_total for e in events)
    return launches / 10, busy_us / 1e3 / 10


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile variants")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"step_profile: {name} | torch {torch.__version__} | batch 128 | channels-last"
          f"{' | bf16 autocast' if device.type == 'cuda' else ''} | {args.steps} timed steps")
    rng, n = np.random.default_rng(0), 128 * max(args.steps, 10)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    loader = DeviceLoader(images, rng.integers(0, 10, n), dataset_info("cifar10"), 128, device,
                          train=True, channels_last=True)
    batches = iter(loader)
    t0 = time.perf_counter()
    batches = [next(batches) for _ in range(args.steps)]
    sync()
    print(f"  data loader (index, crop, flip): {1e3 * (time.perf_counter() - t0) / args.steps:.2f} ms/batch")
    variants = [("resnet20", "eager"), ("balanced", "eager")]
    if device.type == "cuda":
        variants += [("resnet20", "graph"), ("balanced", "graph")]
    if args.compile:
        variants += [("resnet20", "compiled"), ("balanced", "compiled")]
    for preset, variant in variants:
        label = f"  {preset:9s} {variant:8s}"
        try:
            step = make_step(preset, device, variant, batches[0])
            warm, issue, wall = time_step(step, batches, sync)
        except Exception as e:  # a compiler failure is a result here, not a crash
            print(f"{label}: FAILED ({type(e).__name__}: {str(e).strip().splitlines()[0][:160]})")
            continue
        line = f"{label}: {wall:6.2f} ms/step, host issue {issue:6.2f} ms/step, first 10 steps {warm:.1f} s"
        if device.type == "cuda":
            launches, busy = launches_and_busy(step, batches, sync)
            line += f" | {launches:.0f} kernel launches, device busy {busy:.2f} ms per step"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
