"""Which loss terms push the gate controllers' hidden units towards zero: training continued from a
gated checkpoint, in memory, for a few steps, with each step's change to every hidden unit split
among the loss terms.

    python -m cosinegate.train.controller_pushes runs/x/run/last.pt --data-dir DIR \\
        [--steps 200] [--lr 0.02] [--every 50] [--seed 0] [--threads N] [--out pushes.json]

The steps use the run's own loss (cg-train's terms and weights) in the gate mode, FLOPs-penalty
progress and Gumbel temperature of the run's last epoch, with SGD at `--lr` (momentum and weight
decay as trained). Before each step, for every loss term t and hidden unit j of each controller,
the push is the change one plain SGD step on λ_t t alone would make to the unit's pre-activation
W1 GAP(x) + b1, averaged over the batch: −lr (∂(λ_t t)/∂W1_j · mean GAP(x) + ∂(λ_t t)/∂b1_j).
Weight decay counts as one more term. Momentum multiplies every push alike (by up to 1/(1 − μ)).
Every `--every` steps the dead units are counted on the first 1,024 training images, as
`cg-train --revive-controllers` counts them. At the end, per unit, the pushes summed over the
steps, and the steps of the largest single push down with the spread (standard deviation over
the batch) of the block's deploy logit before any logit norm: a norm divides its gradient by that
spread. The checkpoint is not changed; the test set is never read.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cosinegate import atomic, errors
from cosinegate.train import checkpoint
from cosinegate.train import gate as G
from cosinegate.train.config import MAX_THREADS, from_dict
from cosinegate.train.data import DataError, DeviceLoader, dataset_info, load_arrays
from cosinegate.train.trainer import REVIVE_IMAGES, _schedule, gate_mode, loss_terms, term_weights, total_loss

LARGEST = 5  # steps listed per block with the largest single push down


class PushesError(ValueError):
    """A checkpoint without gates, or a count the probe cannot use."""


def step_pushes(terms: dict, weights: dict, controllers: dict, pooled: dict, lr: float,
                weight_decay: float) -> dict:
    """{block: {term: (hidden,) push}}: the change one plain SGD step on each weighted term alone
    (and on weight decay) makes to each hidden unit's pre-activation W1 p + b1 at the batch's mean
    pooled input p. They add up to the whole step's change; the graph is kept for the step."""
    params = [p for ctrl in controllers.values() for p in (ctrl.fc1.weight, ctrl.fc1.bias)]
    pushes = {i: {} for i in controllers}
    for name, weight in weights.items():
        term = terms.get(name)
        if term is None or not term.requires_grad:
            continue
        grads = torch.autograd.grad(weight * term, params, retain_graph=True, allow_unused=True)
        for k, i in enumerate(controllers):
            gw, gb = grads[2 * k], grads[2 * k + 1]
            if gw is not None:
                pushes[i][name] = -lr * (pooled[i].detach().mean(0) @ gw.T + (gb if gb is not None else 0.0))
    with torch.no_grad():
        for i, ctrl in controllers.items():
            pushes[i]["weight_decay"] = -lr * weight_decay * F.linear(pooled[i].detach().mean(0), ctrl.fc1.weight, ctrl.fc1.bias)
    return pushes


def probe(path, data_dir, steps: int, lr: float, every: int, seed: int, progress_bar: bool = True) -> dict:
    """{'blocks': [{block, hidden, pushes {term: [per unit]}, dead [(step, count)], largest [...]}],
    'mode', 'progress', 'tau', 'lr', 'steps'}."""
    ckpt = checkpoint.load(path)
    model = checkpoint.build_model(ckpt, path)
    gated = model.gated_indices
    if not gated:
        raise PushesError(f"{path} has no gated blocks: no controller to probe")
    cfg = from_dict({**ckpt["config"], "data_dir": data_dir if data_dir is not None else ckpt["config"].get("data_dir"),
                     "distill_from": None})  # the teacher's term is left out: it needs another checkpoint
    torch.manual_seed(seed)
    info = dataset_info(cfg.dataset)
    x, y = load_arrays(cfg.dataset, cfg.data_dir, "train")
    loader = DeviceLoader(x, y, info, cfg.batch_size, torch.device("cpu"), train=True, seed=seed, channels_last=True)
    if len(loader) == 0:
        raise PushesError(f"batch_size {cfg.batch_size} is larger than the training set")
    model = model.to(memory_format=torch.channels_last).train()
    model.set_gate_noise(cfg.gate_noise)
    epoch = int(ckpt["epoch"]) - 1
    mode = gate_mode(cfg, epoch)
    progress, tau = _schedule(cfg, epoch)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    weights = {name: w for name, w in term_weights(cfg).items() if w}
    controllers = {i: model.blocks[i].controller for i in gated}
    pooled = {}
    for i, ctrl in controllers.items():
        ctrl.register_forward_pre_hook(lambda module, args, i=i: pooled.__setitem__(i, args[0].mean(dim=(2, 3)).float()))
    sums = {i: {} for i in gated}
    per_step = {i: [] for i in gated}  # (step, largest push down, raw logit spread)
    dead = {i: [] for i in gated}
    probe_x = loader.x[:REVIVE_IMAGES]
    bar = tqdm(total=steps, desc="steps", leave=False, disable=not progress_bar, dynamic_ncols=True)
    step = 0
    while step < steps:
        for xb, yb in loader:
            if step == steps:
                break
            logits, stats, exit_logits = model(xb, mode, tau, with_exits=True)
            terms = loss_terms(cfg, logits, stats, yb, progress, mode, None, exit_logits)
            pushes = step_pushes(terms, weights, controllers, pooled, lr, cfg.weight_decay)
            for i, stat in zip(gated, stats):
                with torch.no_grad():
                    # gamma (CIR_hat + c) = gamma (CIR + c) + gamma (CIR_hat - CIR): the deploy logit before a norm
                    raw = stat["logit_paper"] + model.blocks[i].gamma * (stat["cir_hat"] - stat["cir"])
                total = sum(pushes[i].values())
                for name, push in pushes[i].items():
                    sums[i][name] = sums[i].get(name, 0) + push
                per_step[i].append((step + 1, float(total.min()), float(raw.std())))
            loss = total_loss(cfg, terms)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update()
            if step % every == 0 or step == steps:
                inputs = model.controller_inputs(probe_x)
                model.train()
                for i, ctrl in controllers.items():
                    dead[i].append((step, int(G.dead_units(ctrl, inputs[i]).sum())))
    bar.close()
    blocks = []
    for i, ctrl in controllers.items():
        spreads = [s for _, _, s in per_step[i]]
        largest = sorted(per_step[i], key=lambda r: r[1])[:LARGEST]
        blocks.append({"block": i, "hidden": ctrl.fc1.out_features,
                       "pushes": {n: [float(v) for v in p] for n, p in sums[i].items()},
                       "dead": dead[i], "median_raw_logit_std": statistics.median(spreads),
                       "largest": [{"step": s, "push": p, "raw_logit_std": r} for s, p, r in largest]})
    return {"checkpoint": str(path), "mode": mode, "progress": progress, "tau": tau, "lr": lr, "steps": steps,
            "seed": seed, "blocks": blocks}


def _lines(result: dict) -> list[str]:
    lines = []
    for b in result["blocks"]:
        lines.append(f"block {b['block']}: dead units (of {b['hidden']}) after steps "
                     + ", ".join(f"{s}: {n}" for s, n in b["dead"]))
        names = sorted(b["pushes"])
        for j in range(b["hidden"]):
            total = sum(b["pushes"][n][j] for n in names)
            lines.append(f"  unit {j}: total {total:+.3f} | " + " ".join(f"{n} {b['pushes'][n][j]:+.3f}" for n in names))
        lines.append(f"  largest single pushes down (median raw logit std {b['median_raw_logit_std']:.3g}): "
                     + ", ".join(f"step {r['step']} {r['push']:+.3f} (std {r['raw_logit_std']:.3g})"
                                 for r in b["largest"]))
    return lines


@errors.command("python -m cosinegate.train.controller_pushes",
                expected=(OSError, PushesError, checkpoint.CheckpointError, DataError))
def main(argv=None) -> int:
    parser = errors.ArgumentParser(prog="python -m cosinegate.train.controller_pushes",
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("checkpoint", type=Path, help="a gated cg-train checkpoint")
    parser.add_argument("--data-dir", help="the dataset folder (default: the training run's)")
    parser.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
    parser.add_argument("--lr", type=float, default=0.02, help="SGD learning rate of the steps (default 0.02)")
    parser.add_argument("--every", type=int, default=50, help="count dead units every N steps (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of batch order and Gumbel noise (default 0)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="also write the sums as JSON here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.steps < 1 or args.every < 1:
        raise PushesError(f"--steps and --every must be >= 1, got {args.steps} and {args.every}")
    if not args.lr > 0:
        raise PushesError(f"--lr must be > 0, got {args.lr}")
    if args.threads is not None:
        if not 1 <= args.threads <= MAX_THREADS:
            raise PushesError(f"--threads must be 1..{MAX_THREADS}, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.out:
        atomic.check_writable_as_file(args.out)  # a folder there fails now, not after the work
    result = probe(args.checkpoint, args.data_dir, args.steps, args.lr, args.every, args.seed,
                   progress_bar=not args.no_progress)
    print(f"controller_pushes: {args.checkpoint} | {args.steps} steps at lr {args.lr} | gate mode {result['mode']}, "
          f"penalty progress {result['progress']:.2f}, tau {result['tau']:.3f} | pushes: summed change of each "
          "unit's mean pre-activation")
    print("\n".join(_lines(result)))
    if args.out:
        atomic.write_text(args.out, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
