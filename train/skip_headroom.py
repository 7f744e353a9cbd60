"""Where per-image skipping has room: for each block of a trained network, how many images keep
their answer when the block is left out, and how well what a gate controller reads tells them apart.

    python -m cosinegate.train.skip_headroom runs/x/run/last.pt --data-dir DIR [--images 4096] [--out F.json]

The network runs in eval mode on 2N training images (`--images N`): the first 2N the run never
trained on where it held some out (`cg-train --holdout`), else the first 2N; once with every block,
and once per block with that block left out for every image (it computes ReLU(shortcut), what a
closed gate computes; every other block runs, exits are not taken). An image is *skippable* at a
block when the classifier's answer stays the same. Per block:

- `unchanged`: the share of images skippable there;
- `accuracy_left_out`: the accuracy with the block left out for every image (`accuracy` with none);
- `probe_auc`: how well a logistic regression on the block input's global average pool, the
  controller's input, ranks skippable images above the rest: fitted on the first N images, scored
  on the other N (0.5: no better than chance; 1: a perfect ranking);
- `gate_auc`, for gated blocks: the same ranking by the trained gate's deploy logit, low first;
- for blocks behind an early exit, among the images that go on past every exit before the block
  at the run's exit threshold (`reaching`, their share): `unchanged_reaching`, and `exit_auc`,
  the same ranking by the confidence of the last exit before the block, high first (a gate there
  could read it for free);
- `mac_share`: the block's share of the plain network's MACs, what skipping it saves.

A block few images can skip (`unchanged` low) costs accuracy wherever a gate closes it, and one
whose skippable images the probe cannot tell apart (`probe_auc` near 0.5) leaves a controller
nothing to learn from. Images the run trained on overstate the room (it answers them from memory
as well); `cg-train --holdout` keeps some it never sees. The test set is never read; the
checkpoint is not changed.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cosinegate import atomic, errors
from cosinegate.train import checkpoint
from cosinegate.train import exits as X
from cosinegate.train.config import MAX_THREADS
from cosinegate.train.data import DataError, dataset_info, holdout_split, load_arrays, normalize
from cosinegate.train.model import RemovedBlock, macs_breakdown

CHUNK = 256


class HeadroomError(ValueError):
    """A count the probe cannot use."""


@torch.no_grad()
def _answers(model, x: torch.Tensor, left_out: frozenset = frozenset(), pooled: dict | None = None):
    """Classifier answers (N,) and, for `pooled` given, each block input's GAP, each gated block's
    deploy logit and each exit's confidence collected into it:
    {"gap": {block: [(B, C)]}, "logit": {block: [(B,)]}, "exit_conf": {exit: [(B,)]}}."""
    answers = []
    hooks = []
    if pooled is not None:
        for i, block in enumerate(model.blocks):
            pooled["gap"].setdefault(i, [])
            hooks.append(block.register_forward_pre_hook(
                lambda module, args, i=i: pooled["gap"][i].append(args[0].mean(dim=(2, 3)).float())))
    try:
        for start in range(0, len(x), CHUNK):
            logits, stats, exit_logits = model(x[start:start + CHUNK], mode="full", with_exits=True,
                                               left_out=left_out)
            answers.append(logits.argmax(1))
            if pooled is not None:
                for i, st in zip(model.gated_indices, stats):
                    pooled["logit"].setdefault(i, []).append(st["logit_deploy"].float())
                for k, z in enumerate(exit_logits):
                    pooled["exit_conf"].setdefault(k, []).append(X.confidence(z))
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cat(answers)


def _auc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """Probability that a positive image scores above a negative one (ties: half); None with only one class."""
    from sklearn.metrics import roc_auc_score
    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive, score))


def _probe_auc(gap: np.ndarray, skippable: np.ndarray, half: int) -> float | None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    fit_x, fit_y = gap[:half], skippable[:half]
    if fit_y.all() or not fit_y.any():
        return None
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(fit_x, fit_y)
    return _auc(probe.predict_proba(gap[half:])[:, 1], skippable[half:])


def measure(path, data_dir, images: int, progress: bool = True) -> dict:
    ckpt = checkpoint.load(path)
    model = checkpoint.build_model(ckpt, path)
    dataset, holdout = ckpt["config"]["dataset"], ckpt["config"].get("holdout", 0)
    x, y = load_arrays(dataset, data_dir if data_dir is not None else ckpt["config"].get("data_dir"), "train")
    pool, split = (holdout_split(len(x), holdout)[1], "held-out") if holdout else (np.arange(len(x)), "training")
    n = min(2 * images, len(pool))
    if n < 4:
        raise HeadroomError(f"{dataset} has {len(pool)} {split} images; the probe needs at least 4")
    half = n // 2
    x, y = normalize(x[pool[:n]], dataset_info(dataset)), torch.as_tensor(y[pool[:n]])
    pooled = {"gap": {}, "logit": {}, "exit_conf": {}}
    full = _answers(model, x, pooled=pooled)
    macs = macs_breakdown(model.cfg)
    threshold = ckpt["config"].get("exit_threshold", X.EXIT_THRESHOLD)
    confidences = [torch.cat(pooled["exit_conf"][k]) for k in range(len(macs["exit_blocks"]))]
    rows = []
    present = [i for i, b in enumerate(model.blocks) if not isinstance(b, RemovedBlock)]
    for i in tqdm(present, desc="blocks", disable=not progress):
        without = _answers(model, x, left_out=frozenset({i}))
        skippable = without == full
        gap = torch.cat(pooled["gap"][i]).numpy()
        row = {"block": i, "gated": model.blocks[i].gated, "stride": model.blocks[i].stride,
               "mac_share": macs["blocks"][i] / macs["plain_total"],
               "unchanged": float(skippable.double().mean()),
               "accuracy_left_out": float((without == y).double().mean()),
               "probe_auc": _probe_auc(gap, skippable.numpy(), half)}
        if i in pooled["logit"]:
            logit = torch.cat(pooled["logit"][i]).numpy()
            row["gate_auc"] = _auc(-logit[half:], skippable.numpy()[half:])
        before = [k for k, b in enumerate(macs["exit_blocks"]) if b < i]
        if before:
            reach = torch.stack([confidences[k] < threshold for k in before], 1).all(1).numpy()
            row["reaching"] = float(reach.mean())
            row["unchanged_reaching"] = float(skippable.numpy()[reach].mean()) if reach.any() else None
            evaluated = reach[half:]
            row["exit_auc"] = _auc(confidences[before[-1]].numpy()[half:][evaluated],
                                   skippable.numpy()[half:][evaluated])
        rows.append(row)
    return {"checkpoint": str(path), "images": n, "split": split, "accuracy": float((full == y).double().mean()), "blocks": rows}


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _line(row: dict) -> str:
    text = (f"block {row['block']} ({'gated' if row['gated'] else 'ungated'}, stride {row['stride']}, "
            f"{100 * row['mac_share']:.1f} % of the MACs): unchanged {100 * row['unchanged']:.1f} % | "
            f"accuracy left out {100 * row['accuracy_left_out']:.2f} % | probe AUC {_fmt(row['probe_auc'])}")
    if "gate_auc" in row:
        text += f" | gate AUC {_fmt(row['gate_auc'])}"
    if "reaching" in row:
        share = row["unchanged_reaching"]
        text += (f" | past the exit: {100 * row['reaching']:.1f} % of the images, unchanged "
                 f"{'-' if share is None else f'{100 * share:.1f} %'}, exit-confidence AUC {_fmt(row['exit_auc'])}")
    return text


@errors.command("python -m cosinegate.train.skip_headroom",
                expected=(OSError, HeadroomError, checkpoint.CheckpointError, DataError))
def main(argv=None) -> int:
    parser = errors.ArgumentParser(prog="python -m cosinegate.train.skip_headroom",
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("checkpoint", type=Path, help="a cg-train checkpoint, gated or not")
    parser.add_argument("--data-dir", help="the dataset folder (default: the training run's)")
    parser.add_argument("--images", type=int, default=4096,
                        help="N: the probe fits on N training images and scores on the next N (default 4096)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="also write the report as JSON here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.images < 2:
        raise HeadroomError(f"--images must be >= 2, got {args.images}")
    if args.threads is not None:
        if not 1 <= args.threads <= MAX_THREADS:
            raise HeadroomError(f"--threads must be 1..{MAX_THREADS}, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.out:
        atomic.check_writable_as_file(args.out)  # a folder there fails now, not after the work
    report = measure(args.checkpoint, args.data_dir, args.images, progress=not args.no_progress)
    print(f"skip headroom: {args.checkpoint} | {report['images']:,} {report['split']} images | "
          f"accuracy with every block {100 * report['accuracy']:.2f} %")
    for row in report["blocks"]:
        print(_line(row))
    if args.out:
        atomic.write_text(args.out, json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
