"""Where a training step's time goes, and what the gates cost: the trainer's own step
(channels-last, bf16 autocast on CUDA, the loss of Algorithm 1, SGD) on random data, for the plain
ResNet (preset `resnet20`) and the gated one (preset `balanced`) of the same depth.

    python -m cosinegate.train.step_profile [--depth 20] [--batch 128] [--steps 20] [--burn-in 10] \
        [--threads N] [--device auto] [--compile]

Variants: `eager` (torch.optim.SGD, every kernel launched by the host), on CUDA `graph` (the
trainer's StaticStep replaying one CUDA graph per step), with --compile `compiled`. Burn-in steps
(and compilation) are run and discarded; each measured step is timed on its own: wall time as mean
+- std per step, and the time the host spends issuing it (equal to the wall time when the host,
not the device, is the bottleneck). On CUDA also kernel launches and device busy time from
torch.profiler. Per variant, the gated step's time over the plain one's (goal: at most 1.3x). The
device, torch version, thread count and settings are printed with the numbers.
"""
import argparse
import platform
import statistics
import time

import numpy as np
import torch

from cosinegate import errors
from cosinegate.train import config as C
from cosinegate.train.data import DeviceLoader, dataset_info
from cosinegate.train.graph_step import StaticStep
from cosinegate.train.model import CosineGateResNet
from cosinegate.train.trainer import loss_terms, step_loss, total_loss

PRESETS = {"plain": "resnet20", "gated": "balanced"}
RATIO_GOAL = 1.3  # gated step time / plain step time
# Random CIFAR-shaped images made up front (--batch times the batches run), held in memory as
# bytes and twice as floats: about 2 GB at most.
MAX_IMAGES = 65_536


def make_step(preset: str, depth: int, device: torch.device, variant: str, like: tuple):
    """One training step of `preset` at `depth` as a function of a batch (x, y)."""
    cfg = C.from_dict({**C.preset_values(preset), "depth": depth})
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
    sums = torch.zeros(2, device=device, dtype=torch.float64)  # the trainer's epoch sums

    def step(x, y):
        tau = torch.full((), 1.0, device=device)  # a tensor: a changing float would recompile
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits, stats = forward(x, mode, tau)
        loss = total_loss(cfg, loss_terms(cfg, logits, stats, y, 0.5, mode))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sums.add_(torch.stack([loss.detach().double(), (logits.argmax(1) == y).sum().double()]))
    return step


def time_steps(step, batches, burn_in: int, sync) -> tuple[float, list[float], list[float]]:
    """(burn-in seconds, host-issue ms per measured step, wall ms per measured step)."""
    t0 = time.perf_counter()
    for x, y in batches[:burn_in]:  # includes compilation, with --compile
        step(x, y)
    sync()
    warm = time.perf_counter() - t0
    issue, wall = [], []
    for x, y in batches:
        t0 = time.perf_counter()
        step(x, y)
        issued = time.perf_counter()
        sync()  # CPU-GPU sync: the step's kernels have finished
        issue.append(1e3 * (issued - t0))
        wall.append(1e3 * (time.perf_counter() - t0))
    return warm, issue, wall


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


def random_batches(count: int, batch: int, device: torch.device) -> list:
    """`count` augmented CIFAR-shaped batches from the trainer's loader, on `device`."""
    rng, n = np.random.default_rng(0), batch * count
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    loader = DeviceLoader(images, rng.integers(0, 10, n), dataset_info("cifar10"), batch, device,
                          train=True, channels_last=True)
    return list(iter(loader))


@errors.command("python -m cosinegate.train.step_profile", expected=(OSError,))
def main(argv=None) -> int:
    parser = errors.ArgumentParser(prog="python -m cosinegate.train.step_profile",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--depth", type=int, default=20, help="ResNet depth, 6n+2 (default 20)")
    parser.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--steps", type=int, default=20, help="measured steps per variant (default 20)")
    parser.add_argument("--burn-in", type=int, default=10, metavar="N",
                        help="steps run and discarded before measuring (default 10)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="(default auto)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile variants")
    args = parser.parse_args(argv)
    # Checked here: a bad value would otherwise surface as a FAILED variant, or a torch error.
    if args.steps < 2 or args.burn_in < 0:
        parser.error("--steps must be at least 2 (for a std) and --burn-in at least 0")
    if (args.depth - 2) % 6 != 0 or args.depth < 8:
        parser.error(f"--depth must be 6n+2 with n >= 1 (20, 32, 56, 110), got {args.depth}")
    if args.batch < 1:
        parser.error(f"--batch must be at least 1, got {args.batch}")
    batch_count = max(args.steps, args.burn_in, 10)
    if args.batch * batch_count > MAX_IMAGES:
        parser.error(f"--batch {args.batch} x {batch_count} batches (--steps or --burn-in) is "
                     f"{args.batch * batch_count:,} random images to hold in memory, more than {MAX_IMAGES:,}")
    if args.threads is not None and not 1 <= args.threads <= C.MAX_THREADS:
        parser.error(f"--threads must be 1..{C.MAX_THREADS}, got {args.threads}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"step_profile: {name} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
          f"ResNet-{args.depth}, batch {args.batch} | channels-last"
          f"{' | bf16 autocast' if device.type == 'cuda' else ''} | "
          f"{args.steps} steps after {args.burn_in} burn-in")
    t0 = time.perf_counter()
    batches = random_batches(batch_count, args.batch, device)
    sync()
    print(f"  data loader (index, crop, flip): {1e3 * (time.perf_counter() - t0) / len(batches):.2f} ms/batch")
    variants = ["eager"] + (["graph"] if device.type == "cuda" else []) + (["compiled"] if args.compile else [])
    for variant in variants:
        means = {}
        for kind, preset in PRESETS.items():
            label = f"  {kind:5s} {variant:8s}"
            try:
                step = make_step(preset, args.depth, device, variant, batches[0])
                warm, issue, wall = time_steps(step, batches[:args.steps], args.burn_in, sync)
            except Exception as e:  # a compiler failure is a result here, not a crash
                print(f"{label}: FAILED ({type(e).__name__}: {str(e).strip().splitlines()[0][:160]})")
                continue
            means[kind] = statistics.mean(wall)
            line = (f"{label}: {means[kind]:7.2f} ms/step +- {statistics.stdev(wall):5.2f}, host issue "
                    f"{statistics.mean(issue):7.2f} ms/step, burn-in {warm:.1f} s")
            if device.type == "cuda":
                launches, busy = launches_and_busy(step, batches, sync)
                line += f" | {launches:.0f} kernel launches, device busy {busy:.2f} ms per step"
            print(line, flush=True)
        if len(means) == 2:
            print(f"  ratio {variant:8s}: {means['gated'] / means['plain']:7.3f} x gated / plain "
                  f"(goal <= {RATIO_GOAL})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
