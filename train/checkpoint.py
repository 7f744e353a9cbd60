"""Checkpoint format: one dict of tensors and plain values, written atomically, read with
`torch.load(weights_only=True)` and refused with one clear line when it is not ours.

Keys: kind, format, version, epoch, config (TrainConfig as dict), model_config, model (state
dict), optimizer, scheduler, rng, history (the per-epoch metrics so far), best_score.
"""
import dataclasses
import hashlib
import io
import json
import math
import pickle
import reprlib
import zipfile
from pathlib import Path

import torch

from cosinegate import atomic, errors
from cosinegate.train.config import ConfigError, check_saved
from cosinegate.version import CHECKPOINT_FORMAT, __version__

KIND = "cosinegate-checkpoint"


class CheckpointError(RuntimeError):
    """Not a checkpoint, a corrupt one, or one of another format."""


# What every reader needs; resuming needs RESUME_KEYS as well.
MODEL_KEYS = {"config": dict, "model_config": dict, "model": dict}
RESUME_KEYS = {"epoch": int, "optimizer": dict, "scheduler": dict, "rng": dict, "history": list,
               "best_score": float}


def encode(state: dict) -> bytes:
    """The checkpoint file's bytes for `state`, marked as ours."""
    state = {"kind": KIND, "format": CHECKPOINT_FORMAT, "version": __version__, **state}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save(path: str | Path, state: dict) -> Path:
    # Serialised in memory first: a failing disk then raises a plain OSError (ENOSPC, EIO) from
    # the file write instead of torch's writer's internal assertion.
    return atomic.write_bytes(path, encode(state))


def require(ckpt: dict, keys: dict, path) -> None:
    """Refuse a checkpoint that lacks one of `keys` {name: type} or holds another type there."""
    bad = [k for k, kind in keys.items()
           if not isinstance(ckpt.get(k), kind if kind is not float else (int, float))]
    if bad:
        raise CheckpointError(f"{path} is incomplete: {', '.join(bad)} missing or of the wrong type")


def check_history(ckpt: dict, path) -> None:
    """Refuse a history that is not the metrics of epochs 1..epoch, one JSON object each: it is
    what a run folder's metrics.jsonl is written from."""
    require(ckpt, {"epoch": int, "history": list}, path)
    history = ckpt["history"]
    for number, metrics in enumerate(history, 1):
        found = metrics.get("epoch") if isinstance(metrics, dict) else None
        if type(found) is not int or found != number:
            what = (f"a dict with epoch {reprlib.repr(found)}" if isinstance(metrics, dict)
                    else f"a {type(metrics).__name__}")
            raise CheckpointError(f"{path}: its history entry {number} is {what}, not the metrics of epoch {number}")
    if len(history) != ckpt["epoch"]:
        raise CheckpointError(f"{path}: its history holds {len(history)} epochs but its epoch is {ckpt['epoch']}")
    try:
        json.dumps(history, allow_nan=False)
    except (TypeError, ValueError) as e:  # metrics.jsonl is JSON, which has no NaN, infinity or tensor
        raise CheckpointError(f"{path}: its history holds a value JSON cannot hold, such as NaN or a "
                              f"tensor ({e})") from None


def check_resumable(ckpt: dict, path, epochs: int) -> None:
    """Refuse resume state a run of `epochs` epochs cannot continue from, before it writes anything:
    what resuming would otherwise overwrite (metrics.jsonl, last.pt, best.pt) stays as it is."""
    require(ckpt, RESUME_KEYS, path)
    if not 0 <= ckpt["epoch"] <= epochs:
        raise CheckpointError(f"{path}: its epoch {ckpt['epoch']} is not one of the run's epochs 0..{epochs}")
    check_history(ckpt, path)
    if math.isnan(ckpt["best_score"]):  # no score compares above NaN: best.pt would never move again
        raise CheckpointError(f"{path}: its best_score is NaN")


def load_weights(model, weights: dict, path) -> None:
    """`model.load_state_dict(weights)`, with a mismatch told in one line (counts, first name)."""
    own = model.state_dict()
    unexpected = sorted(k for k in weights if k not in own)
    missing = sorted(k for k in own if k not in weights)
    reshaped = sorted(k for k in weights if k in own and getattr(weights[k], "shape", None) != own[k].shape)
    if unexpected or missing or reshaped:
        first = (missing or unexpected or reshaped)[0]
        raise CheckpointError(f"{path}: its weights do not fit the model it describes ({len(missing)} "
                              f"missing, {len(unexpected)} unexpected, {len(reshaped)} of another shape; "
                              f"first: {first})")
    model.load_state_dict(weights)


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise CheckpointError(f"{path} is not a readable checkpoint (not a torch.save zip archive)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            reason = ("it holds Python objects other than tensors and plain data; those are never "
                      "unpickled, as they could run code")
        else:
            reason = errors.one_line(e)
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason})") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != KIND:
        raise CheckpointError(f"{path} is not a CosineGate checkpoint (no kind={KIND!r})")
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {ckpt.get('format')!r}, this is "
                              f"version {__version__} which reads format {CHECKPOINT_FORMAT}")
    require(ckpt, MODEL_KEYS, path)
    try:  # every reader takes the dataset, data folder and settings from it
        check_saved(ckpt["config"], f"{path}: its config")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    return ckpt


def build_model(ckpt: dict, path="checkpoint"):
    """The model a checkpoint describes, with its weights, in eval mode; refused if any weight is
    NaN or infinite (nothing downstream can deploy such a model)."""
    from cosinegate.train.model import CosineGateResNet, ModelConfig
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    try:
        model = CosineGateResNet(ModelConfig(**{k: v for k, v in ckpt["model_config"].items() if k in names}))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its model_config does not describe a model ({e})") from None
    load_weights(model, ckpt["model"], path)
    refuse_nonfinite(model.state_dict(), path)
    return model.eval()


def weights_sha256(weights: dict) -> str:
    """A digest of a state dict's names, dtypes, shapes and values: it identifies a trained model
    whichever file holds it (an export records it, `cg-bench --checkpoint` compares it)."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_fits_data(path, info, flag: str) -> None:
    """Refuse a checkpoint to start from or learn from (`flag`: --init-from, --distill-from) whose
    model takes other images or predicts other classes than `info` (a DatasetInfo) describes:
    checked before the run folder exists."""
    cfg = build_model(load(path), path).cfg
    h, _, c = info.shape
    differ = [f"{name} {theirs} vs the data's {ours}" for name, theirs, ours in
              (("in_channels", cfg.in_channels, c), ("input_size", cfg.input_size, h),
               ("num_classes", cfg.num_classes, info.num_classes)) if theirs != ours]
    if differ:
        raise CheckpointError(f"{flag} {path}: its model does not fit the run's dataset ({'; '.join(differ)})")


def refuse_nonfinite(weights: dict, path) -> None:
    """Refuse weights holding NaN or inf: no run can start from them, nothing can deploy them."""
    bad = [name for name, t in weights.items()
           if not isinstance(t, torch.Tensor) or t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"{path} has non-finite weights (NaN, inf or no tensor in {len(bad)} entries, first: "
                              f"{bad[0]}); it cannot be trained from, exported or benched")


# What must agree between a warm-start checkpoint and the model it initialises (depth may grow).
_SHAPE_KEYS = ("in_channels", "num_classes", "input_size", "widths")


def _as_tuple(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value  # widths: list in YAML, tuple here


def _is_gate(name: str) -> bool:
    """A gate's own parameter (controller or scale γ), which a warm start leaves at its initialisation."""
    return "controller." in name or name.endswith(".gamma")


def _is_exit(name: str) -> bool:
    return name.startswith("exits.")


def _grown_weights(weights: dict, own: dict, theirs: int, ours: int) -> tuple[dict, list[int]]:
    """Backbone weights of a net with `theirs` blocks per stage, laid into one (`own`, its state
    dict) with `ours` > theirs.

    Stage s's block j keeps its weights (j < theirs). Each new block j >= theirs copies the
    stage's last trained block (or keeps its own initialisation where shapes differ: a
    downsampling block) and gets its last BatchNorm's scale and shift zeroed, so its residual
    branch is exactly 0 and the block, y = ReLU(x + 0) with x >= 0, is an identity. The grown net
    computes what the source net computed, and training grows the new blocks from there (the
    zero-init residual of Goyal et al. 2017). Returns the weights and the new blocks' indices.
    """
    def split(key, per_stage):  # 'blocks.7.bn2.weight' -> (stage, block in stage, 'bn2.weight')
        _, index, rest = key.split(".", 2)
        return (*divmod(int(index), per_stage), rest)

    out = {k: v for k, v in weights.items() if not k.startswith("blocks.")}
    last_trained = {}  # (stage, tensor name) -> the stage's last trained block's tensor
    for key, value in weights.items():
        if key.startswith("blocks."):
            stage, j, rest = split(key, theirs)
            out[f"blocks.{stage * ours + j}.{rest}"] = value
            if j == theirs - 1:
                last_trained[stage, rest] = value
    new_blocks = set()
    for key, init in own.items():
        if not key.startswith("blocks.") or _is_gate(key):
            continue
        stage, j, rest = split(key, ours)
        if j < theirs:
            continue
        new_blocks.add(stage * ours + j)
        source = last_trained.get((stage, rest))
        value = (source if source is not None and source.shape == init.shape else init).clone()
        out[key] = value.zero_() if rest in ("bn2.weight", "bn2.bias") else value
    return out, sorted(new_blocks)


def _exit_place(cfg, block: int) -> tuple:
    """Where an exit sits, comparable across depths: a stage's end stays its end when a warm start
    grows the net; any other block only matches the same block at the same depth."""
    per_stage = cfg.blocks_per_stage
    return ("end", block // per_stage) if (block + 1) % per_stage == 0 else ("block", block, per_stage)


def _exit_weights(state: dict, theirs, ours) -> dict:
    """The checkpoint's exit-head tensors, renamed to our numbering (exit k of a net reads block
    `exit_blocks[k]`), for the places where both nets have an exit."""
    our_index = {_exit_place(ours, b): k for k, b in enumerate(ours.exit_blocks)}
    renamed = {}
    for name, value in state.items():
        if _is_exit(name):
            index, rest = name[len("exits."):].split(".", 1)
            place = _exit_place(theirs, theirs.exit_blocks[int(index)])
            if place in our_index:
                renamed[f"exits.{our_index[place]}.{rest}"] = value
    return renamed


def load_backbone(model, path: str | Path) -> tuple[int, list[int]]:
    """Copy a checkpoint's convolutions, norms and classifier into `model`; gates and controllers
    keep their initialisation. The checkpoint may be plain or gated, hold blocks that `model`
    deletes, or be shallower than `model` (see `_grown_weights`); any other mismatch is refused with one line. Returns the number of
    tensors copied and the indices of the blocks that were grown (empty at equal depth)."""
    ckpt = load(path)
    # Its model built first: a model_config of the wrong types, or weights that do not fit it,
    # are refused in one line; what is compared below is then typed.
    source_cfg = build_model(ckpt, path).cfg
    theirs, ours = vars(source_cfg), vars(model.cfg)
    differ = [f"{k} {theirs.get(k)!r} vs {ours[k]!r}" for k in _SHAPE_KEYS
              if _as_tuple(theirs.get(k)) != _as_tuple(ours[k])]
    if theirs.get("depth", 0) > ours["depth"]:
        differ.insert(0, f"depth {theirs.get('depth')!r} vs {ours['depth']!r}: a warm start can only grow a net")
    if differ:
        raise CheckpointError(f"{path} is a different network ({'; '.join(differ)}); cannot start from it")
    # Blocks this model deletes (a static twin pruned from a trained net) take none of their weights.
    deleted = tuple(f"blocks.{i}." for i in model.cfg.removed_blocks if i not in theirs.get("removed_blocks", ()))
    own, grown = model.state_dict(), []
    # An exit head is copied where the checkpoint has one after the same block, else starts fresh.
    weights = {k: v for k, v in ckpt["model"].items() if not _is_gate(k) and not k.startswith(deleted)
               and not _is_exit(k)}
    weights.update(_exit_weights(ckpt["model"], source_cfg, model.cfg))
    refuse_nonfinite(weights, path)
    if theirs["depth"] < ours["depth"]:
        if theirs.get("removed_blocks") or model.cfg.removed_blocks:
            raise CheckpointError(f"{path}: a net with removed blocks cannot grow; start from a full one")
        per_stage = (theirs["depth"] - 2) // 6
        weights, grown = _grown_weights(weights, own, per_stage, model.cfg.blocks_per_stage)
    unknown = sorted(k for k in weights if k not in own or own[k].shape != weights[k].shape)
    missing = sorted(k for k in own if k not in weights and not _is_gate(k) and not _is_exit(k))
    if unknown or missing:
        first = (unknown or missing)[0]
        raise CheckpointError(f"{path} does not fit this model ({len(unknown)} unexpected, "
                              f"{len(missing)} missing tensors, first: {first}); cannot start from it")
    model.load_state_dict(weights, strict=False)
    return len(weights), grown
