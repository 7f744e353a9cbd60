"""Early exits: a small classifier after a block whose confident answer ends inference.

Exits go at stage ends (`--exits 1,2`) or after any other block but the last (`--exit-after 6,7`).
An exit after block b reads that block's output x_b (B, C, H, W): it averages x_b down to a
`grid` x `grid` map and applies one linear classifier to the whole map (a `grid` x `grid` valid
convolution), after Kaya et al., *Shallow-Deep Networks* (ICML 2019), whose internal classifiers
pool to a small map the same way. On ResNet-20 for CIFAR-10 a head costs 2,560 MACs in stage 1,
5,120 in stage 2 and 10,240 in stage 3, each under 0.03 % of the network.

The exit rule is the one SDN uses: an image leaves at the first exit whose softmax confidence
reaches the threshold, max_c softmax(z_k)_c >= theta; otherwise it continues, and the network's
own classifier answers. The decision reads only logits the exit has already computed, so the
export folds it into one comparison that is the condition of an `IF` whose then-branch is the rest
of the network. Training and export both use this module.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

EXIT_THRESHOLD = 0.9  # confidence an image needs to leave at an exit, unless an export moves it
# The int8 model compares the exit's int8 softmax with the threshold. TFLite fixes that output's
# scale at 1/256 (zero point -128), so it holds confidences k/256 up to 255/256: a threshold above
# the top level lets no image leave, and the top level is as far as an int8 exit can be tightened.
# Midway between the two top levels, the float rule and the int8 one agree on where it lies.
INT8_THRESHOLD_LIMIT = 254.5 / 256


def exit_grid(size: int) -> int:
    """Side of the pooled map: 4 where the stage's output side divides by 4, else 1 (global)."""
    return 4 if size >= 4 and size % 4 == 0 else 1


class ExitHead(nn.Module):
    """avg-pool (B, C, size, size) to (B, C, grid, grid), then one linear map to the classes."""

    def __init__(self, channels: int, num_classes: int, size: int):
        super().__init__()
        grid = exit_grid(size)
        self.pool_kernel = size // grid
        self.classifier = nn.Conv2d(channels, num_classes, grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x, self.pool_kernel) if self.pool_kernel > 1 else x    # (B, C, g, g)
        return self.classifier(pooled.to(self.classifier.weight.dtype)).flatten(1)  # (B, classes)


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x itself in the forward pass; `scale` times the incoming gradient in the backward pass, so an
    exit head trains at full rate while the backbone below it takes only part of its loss."""
    return x if scale == 1.0 else x.detach() + scale * (x - x.detach())


def head_macs(channels: int, num_classes: int, size: int) -> int:
    grid = exit_grid(size)
    return channels * grid * grid * num_classes


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """max_c softmax(z)_c per image (B,)."""
    return F.softmax(logits.float(), dim=1).amax(dim=1)


def exit_taken(exit_logits: list[torch.Tensor], thresholds: list[float]) -> torch.Tensor:
    """(B, n_exits) bool: image b leaves at exit k (the first confident one; at most one True a row)."""
    confident = torch.stack([confidence(z) >= t for z, t in zip(exit_logits, thresholds)], 1)
    earlier = torch.cumsum(confident.int(), dim=1) - confident.int()
    return confident & (earlier == 0)


def select_logits(exit_logits: list[torch.Tensor], final: torch.Tensor, thresholds: list[float]):
    """The deployed answer: the logits of the exit each image leaves at, else the final logits;
    and the number of exits each image passed (B,) long, 0..n_exits (n_exits: ran to the end)."""
    if not exit_logits:
        return final.float(), torch.zeros(len(final), dtype=torch.long, device=final.device)
    taken = exit_taken(exit_logits, thresholds)                                 # (B, n_exits)
    out = final.float()
    for k in reversed(range(len(exit_logits))):
        out = torch.where(taken[:, k:k + 1], exit_logits[k].float(), out)
    first = taken.float().argmax(1)                                             # (B,)
    passed = torch.where(taken.any(1), first, torch.full_like(first, len(exit_logits)))
    return out, passed


def exit_blocks(stages, after, blocks_per_stage: int) -> tuple:
    """The blocks (0-based, ascending) whose outputs the exits read: the last block of each stage in
    `stages` (1-based) and the blocks in `after`. Exits are numbered in this order."""
    return tuple(sorted({k * blocks_per_stage - 1 for k in stages} | {int(b) for b in after}))


def exit_weights(blocks, n_blocks: int) -> list[float]:
    """SDN's weighting: an exit's loss grows with its depth, (b + 1) / n_blocks for an exit after
    block b (k / 3 for the end of stage k of a three-stage net)."""
    return [(b + 1) / n_blocks for b in blocks]
