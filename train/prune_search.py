"""Which blocks to delete for a static network of a given size: every way of deleting k blocks of a
trained plain ResNet, ranked by accuracy on training images, without retraining.

    python -m cosinegate.train.prune_search models/cifar10-resnet20-e160/model.pt --delete 4 --data-dir DIR

Candidates are the blocks whose shortcut is the identity; `--include-downsampling` adds the
stride-2 blocks (deleted, they leave the parameter-free subsample-and-pad shortcut). Deleting a
block changes what every later BatchNorm sees, so each candidate's BatchNorm statistics
are re-estimated on `--calibration` training images before it is scored on `--images` others; the
test set is never read. The ranking only orders candidates for fine-tuning; the `cg-train` command
that fine-tunes the best one is printed last.
"""
import argparse
import dataclasses
import itertools
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from cosinegate import errors
from cosinegate.train import checkpoint
from cosinegate.train.data import DataError, dataset_info, load_arrays, normalize
from cosinegate.train.model import CosineGateResNet, ModelConfig, macs_breakdown

_SEED = 2  # a draw of the training split of its own, not the export's calibration or threshold draws
_BATCH = 250


class PruneSearchError(ValueError):
    """A checkpoint or deletion count the search cannot rank."""


def _plain_config(ckpt: dict, path) -> ModelConfig:
    cfg = checkpoint.build_model(ckpt, path).cfg
    if cfg.gated or cfg.exit_blocks or cfg.removed_blocks:
        raise PruneSearchError(f"{path} is not a full plain ResNet (gates, exits or deleted blocks); "
                               "rank deletions of one trained with --preset resnet20")
    return cfg


@torch.no_grad()
def accuracy_without(cfg: ModelConfig, path, removed: tuple, calibration: torch.Tensor,
                     images: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of the network with `removed` blocks deleted, BatchNorm re-estimated on `calibration`."""
    model = CosineGateResNet(dataclasses.replace(cfg, removed_blocks=removed))
    checkpoint.load_backbone(model, path)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over every calibration batch
    model.train()
    for start in range(0, len(calibration), _BATCH):
        model(calibration[start:start + _BATCH])
    model.eval()
    correct = sum(int((model(images[s:s + _BATCH])[0].argmax(1) == labels[s:s + _BATCH]).sum())
                  for s in range(0, len(images), _BATCH))
    return correct / len(images)


def deletable_blocks(cfg: ModelConfig, include_downsampling: bool) -> list[int]:
    per_stage = cfg.blocks_per_stage
    return [i for i in range(len(cfg.widths) * per_stage)
            if include_downsampling or i < per_stage or i % per_stage != 0]


def rank(path, delete: int, data_dir, calibration: int, images: int, include_downsampling: bool = False,
         progress: bool = True) -> list[dict]:
    """Every set of `delete` deletable blocks, best first: {"removed", "accuracy", "mac_ratio"}."""
    ckpt = checkpoint.load(path)
    cfg = _plain_config(ckpt, path)
    blocks = deletable_blocks(cfg, include_downsampling)
    if not 1 <= delete <= len(blocks):
        raise PruneSearchError(f"--delete must be 1..{len(blocks)}: this network has {len(blocks)} deletable "
                               f"blocks ({','.join(map(str, blocks))}"
                               f"{'' if include_downsampling else '; --include-downsampling adds the stride-2 ones'})"
                               f", got {delete}")
    dataset = ckpt["config"]["dataset"]
    x, y = load_arrays(dataset, data_dir, "train")
    if calibration + images > len(x):
        raise PruneSearchError(f"--calibration {calibration} + --images {images} exceed the "
                               f"{len(x)} training images")
    pick = np.random.default_rng(_SEED).permutation(len(x))[:calibration + images]
    info = dataset_info(dataset)
    batch = normalize(x[pick], info)
    labels = torch.as_tensor(y[pick[calibration:]])
    full = macs_breakdown(cfg)["plain_total"]
    candidates = list(itertools.combinations(blocks, delete))
    out = []
    for i, removed in enumerate(candidates, 1):
        acc = accuracy_without(cfg, path, removed, batch[:calibration], batch[calibration:], labels)
        macs = macs_breakdown(dataclasses.replace(cfg, removed_blocks=removed))["full_total"] / full
        out.append({"removed": list(removed), "accuracy": acc, "mac_ratio": macs})
        if progress:
            print(f"\rprune_search: {i}/{len(candidates)} deletions scored", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return sorted(out, key=lambda r: (-r["accuracy"], r["removed"]))


@errors.command("python -m cosinegate.train.prune_search",
                expected=(OSError, PruneSearchError, checkpoint.CheckpointError, DataError))
def main(argv=None) -> int:
    parser = errors.ArgumentParser(prog="python -m cosinegate.train.prune_search",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("checkpoint", type=Path, help="a trained plain ResNet (cg-train --preset resnet20)")
    parser.add_argument("--delete", type=int, required=True, help="how many blocks to delete")
    parser.add_argument("--data-dir", help="the dataset folder (default: $CG_DATA_DIR, else ./data)")
    parser.add_argument("--calibration", type=int, default=2000, help="training images for BatchNorm statistics")
    parser.add_argument("--images", type=int, default=4000, help="other training images to score on")
    parser.add_argument("--include-downsampling", action="store_true",
                        help="let the stride-2 blocks be deleted too")
    parser.add_argument("--top", type=int, default=5, help="rows to print")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.calibration < 1 or args.images < 1 or args.top < 1:
        parser.error("--calibration, --images and --top must be positive")
    ranked = rank(args.checkpoint, args.delete, args.data_dir, args.calibration, args.images,
                  args.include_downsampling, progress=not args.no_progress)
    print(f"| deleted blocks | accuracy on {args.images} training images | MACs |\n|---|---|---|")
    for r in ranked[:args.top]:
        print(f"| {','.join(map(str, r['removed']))} | {r['accuracy']:.2%} | {r['mac_ratio']:.3f} |")
    best = ",".join(map(str, ranked[0]["removed"]))
    print(shlex.join(["cg-train", "--preset", "resnet20", "--init-from", str(args.checkpoint),
                      "--removed-blocks", best]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
