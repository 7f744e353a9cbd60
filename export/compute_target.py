"""A compute knob at deployment: the one deploy threshold that makes the mean executed MACs hit a target.

Every gated block runs when sigmoid(logit) > threshold (0.45 by default, paper eq. 16); a higher
threshold closes more gates. An early exit lets an image leave when its softmax confidence is at
least its threshold (0.9 by default, `train/exits.py`); a lower threshold lets more images leave.
`threshold_for_target` bisects the threshold (gates: on the logit scale) so that the mean executed-MAC ratio (over plain ResNet's MACs) on *training* images is at most the
target and as close to it as the model allows. It never looks at the test set. The export then
folds the chosen threshold into each `If` condition, so it costs nothing on the device.
"""
from dataclasses import dataclass

import numpy as np
import torch

from cosinegate.train import exits as X
from cosinegate.train.gate import threshold_logit
from cosinegate.train.model import executed_mac_ratio, macs_breakdown

DEFAULT_IMAGES = 2000
_SEED = 1  # not the calibration draw's seed: another sample of the training split
_LOGIT_RANGE = (-12.0, 12.0)  # thresholds sigmoid(-12) ~ 6e-6 (every gate open) .. 1 - 6e-6
_STEPS = 24                   # bisection steps: the logit range resolved to about 1.4e-6


class ComputeTargetError(ValueError):
    """A target the model cannot meet, or a model without gates."""


@dataclass
class ThresholdChoice:
    threshold: float        # the deploy rule becomes sigmoid(logit) > threshold
    target: float           # the asked-for mean executed-MAC ratio
    mac_ratio: float        # what that threshold gives on the images
    mac_ratio_std: float    # its per-image standard deviation there
    images: int             # how many training images it was chosen on

    def report(self) -> dict:
        return {"threshold": self.threshold, "target_mac_ratio": self.target,
                "mac_ratio": self.mac_ratio, "mac_ratio_std": self.mac_ratio_std, "images": self.images}


def training_images(dataset: str, data_dir, count: int, holdout: int = 0) -> tuple[np.ndarray, str]:
    """Up to `count` training images (a fixed seeded draw), uint8 NHWC, and their split: 'holdout',
    the images a run trained with `holdout` > 0 never saw, else 'train'."""
    from cosinegate.train.data import holdout_split, load_arrays
    images, _ = load_arrays(dataset, data_dir, "train")
    pool, split = (holdout_split(len(images), holdout)[1], "holdout") if holdout else (np.arange(len(images)), "train")
    pick = np.sort(np.random.default_rng(_SEED).permutation(pool)[:count])
    return images[pick], split


@torch.no_grad()
def mac_ratios(model, x_nchw: torch.Tensor, threshold: float, batch: int = 500) -> torch.Tensor:
    """Per-image executed-MAC ratio of `model` in deploy mode with `threshold` (N,)."""
    model.set_deploy_threshold(threshold)
    macs, gated = macs_breakdown(model.cfg), model.gated_indices
    ratios = []
    for start in range(0, len(x_nchw), batch):
        _, stats = model(x_nchw[start:start + batch], "deploy")
        ratios.append(executed_mac_ratio(macs, torch.stack([s["g"] for s in stats], 1), gated))
    return torch.cat(ratios)


def _sigmoid(logit: float) -> float:
    return float(1.0 / (1.0 + np.exp(-logit)))


def threshold_for_target(model, x_nchw: torch.Tensor, target: float) -> ThresholdChoice:
    """The lowest threshold (the most compute) whose mean executed-MAC ratio on `x_nchw` is at most
    `target`. The model keeps that threshold. Refuses a target outside what the model can reach."""
    if not 0.0 < target <= 1.0:
        raise ComputeTargetError(f"the compute target is a fraction of plain ResNet's MACs in (0, 1], got {target}")
    if model.exits:  # the exit threshold is the knob; gates keep theirs
        return exit_threshold_for_target(model, x_nchw, target)
    if not model.gated_indices:
        raise ComputeTargetError("a compute target needs gates or early exits; this model has neither")
    lo, hi = _LOGIT_RANGE
    least = mac_ratios(model, x_nchw, _sigmoid(hi)).mean().item()
    if least > target:
        raise ComputeTargetError(f"target {target:.3f} of plain MACs is below the least this model "
                                 f"executes ({least:.3f}, every gate closed)")
    if mac_ratios(model, x_nchw, _sigmoid(lo)).mean().item() <= target:
        hi = lo  # every gate open already meets it
    for _ in range(_STEPS):
        if hi == lo:
            break
        mid = 0.5 * (lo + hi)
        if mac_ratios(model, x_nchw, _sigmoid(mid)).mean().item() <= target:
            hi = mid
        else:
            lo = mid
    threshold = _sigmoid(hi)
    threshold_logit(threshold)  # refuses a threshold that rounded to 0 or 1
    ratios = mac_ratios(model, x_nchw, threshold)
    return ThresholdChoice(threshold, target, ratios.mean().item(), ratios.std(unbiased=False).item(),
                           len(x_nchw))


@torch.no_grad()
def exit_mac_ratios(model, x_nchw: torch.Tensor, batch: int = 500):
    """A function threshold -> per-image executed-MAC ratio (N,) of an early-exit model, its gates
    (if any) deciding under their deploy threshold: the network runs once, every threshold is then
    one comparison per image and exit."""
    macs = macs_breakdown(model.cfg)
    finals, exits, gates = [], [], []
    for start in range(0, len(x_nchw), batch):
        chunk = x_nchw[start:start + batch]
        logits, stats, exit_logits = model(chunk, "deploy", with_exits=True)
        finals.append(logits)
        exits.append(exit_logits)
        gates.append(torch.stack([s["g"] for s in stats], 1) if stats else torch.zeros(len(chunk), 0))
    final, exit_logits = torch.cat(finals), [torch.cat(z) for z in zip(*exits)]
    gates = torch.cat(gates)

    def ratios(threshold: float) -> torch.Tensor:
        _, passed = X.select_logits(exit_logits, final, [threshold] * len(exit_logits))
        return executed_mac_ratio(macs, gates, model.gated_indices, passed)
    return ratios


def exit_threshold_for_target(model, x_nchw: torch.Tensor, target: float) -> ThresholdChoice:
    """The highest exit threshold (the fewest images leaving early) whose mean executed-MAC ratio
    on `x_nchw` is at most `target`; every exit takes it and the model keeps it. The int8 model
    cannot resolve confidences above `exits.INT8_THRESHOLD_LIMIT`, so no threshold goes higher: a
    target above what that threshold executes is met with less compute, and the choice says so."""
    ratios = exit_mac_ratios(model, x_nchw)
    lo, hi = 0.0, X.INT8_THRESHOLD_LIMIT   # confidence >= 0 leaves at the first exit
    least = ratios(lo).mean().item()
    if least > target:
        raise ComputeTargetError(f"target {target:.3f} of plain MACs is below the least this model "
                                 f"executes ({least:.3f}, every image leaving at the first exit)")
    if ratios(hi).mean().item() <= target:
        lo = hi  # as few images leave as int8 can tell apart
    for _ in range(_STEPS):
        if hi == lo:
            break
        mid = 0.5 * (lo + hi)
        if ratios(mid).mean().item() <= target:
            lo = mid
        else:
            hi = mid
    threshold = max(lo, 2.0 ** -_STEPS)  # a threshold of 0 is no rule: every image leaves anyway
    chosen = ratios(threshold)
    model.set_exit_thresholds(threshold)
    return ThresholdChoice(threshold, target, chosen.mean().item(), chosen.std(unbiased=False).item(),
                           len(x_nchw))
