"""Which gate controllers of a trained network still read their input: per gated block, the hidden
units that are zero on every one of N training images (dead ReLUs), and how the deploy gate then
decides on those images.

    python -m cosinegate.train.controllers runs/x/run/last.pt --data-dir DIR [--images 1024]

A controller whose hidden units are all dead has one constant logit: its gate takes the same
decision for every image, whatever the routing loss asked for (docs/routing.md, "Dead
controllers"). The images are the first N of the training split, as `cg-train --revive-controllers`
checks them; the test set is never read. Nothing is changed in the checkpoint.
"""
import argparse
import sys
from pathlib import Path

import torch

from cosinegate import errors
from cosinegate.train import checkpoint
from cosinegate.train import gate as G
from cosinegate.train.data import DataError, dataset_info, load_arrays, normalize


class ControllersError(ValueError):
    """A checkpoint without gates, or a count the check cannot use."""


def inspect(path, data_dir, images: int) -> list[dict]:
    """One dict per gated block: block, hidden, dead, rate (deploy execution rate on the images),
    logit_mean and logit_std (of the folded deploy logit w . h + b, which the gate compares with 0).
    `data_dir` None: the training run's."""
    ckpt = checkpoint.load(path)
    model = checkpoint.build_model(ckpt, path)
    if not model.gated_indices:
        raise ControllersError(f"{path} has no gated blocks: no controller to inspect")
    dataset = ckpt["config"]["dataset"]
    x, _ = load_arrays(dataset, data_dir if data_dir is not None else ckpt["config"].get("data_dir"), "train")
    pooled = model.controller_inputs(normalize(x[:images], dataset_info(dataset)))
    out = []
    for i, p in pooled.items():
        block = model.blocks[i]
        w, b = G.fold_deploy_gate(block.controller, block.gamma, block.deploy_threshold)
        weight, bias = block.controller.hidden_affine()
        hidden = torch.relu(torch.nn.functional.linear(p, weight, bias)).double()
        logit = hidden @ w + b
        out.append({"block": i, "hidden": block.controller.fc1.out_features,
                    "dead": int(G.dead_units(block.controller, p).sum()),
                    "rate": float((logit > 0).double().mean()), "logit_mean": float(logit.mean()),
                    "logit_std": float(logit.std())})
    return out


def _line(row: dict) -> str:
    text = (f"block {row['block']}: {row['dead']} of {row['hidden']} hidden units dead | deploy gate on for "
            f"{100 * row['rate']:.1f} % | logit std {row['logit_std']:.3g}")
    if row["dead"] == row["hidden"]:
        # The constant logit can sit at the threshold itself, where float32 and int8 rounding decide.
        text += f" | every unit dead: one decision for every image (logit {row['logit_mean']:+.3g})"
    return text


@errors.command("python -m cosinegate.train.controllers",
                expected=(OSError, ControllersError, checkpoint.CheckpointError, DataError))
def main(argv=None) -> int:
    parser = errors.ArgumentParser(prog="python -m cosinegate.train.controllers",
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("checkpoint", type=Path, help="a gated cg-train checkpoint")
    parser.add_argument("--data-dir", help="the dataset folder (default: the training run's)")
    parser.add_argument("--images", type=int, default=1024, help="training images to check on (default 1024)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.images < 1:
        raise ControllersError(f"--images must be >= 1, got {args.images}")
    rows = inspect(args.checkpoint, args.data_dir, args.images)
    print(f"controllers: {args.checkpoint} | first {args.images:,} training images")
    for row in rows:
        print(_line(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
