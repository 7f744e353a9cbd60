"""Checkpoint format: one dict of tensors and plain values, written atomically, read with
`torch.load(weights_only=True)` and refused with one clear line when it is not ours.

Keys: kind, format, version, epoch, config (TrainConfig as dict), model_config, model (state
dict), optimizer, scheduler, rng, history (the per-epoch metrics so far), best_score.
"""
import dataclasses
from pathlib import Path

import torch

from cosinegate import atomic
from cosinegate.version import CHECKPOINT_FORMAT, __version__

KIND = "cosinegate-checkpoint"


class CheckpointError(RuntimeError):
    """Not a checkpoint, a corrupt one, or one of another format."""


def save(path: str | Path, state: dict) -> Path:
    state = {"kind": KIND, "format": CHECKPOINT_FORMAT, "version": __version__, **state}
    return atomic.save_with(path, lambda tmp: torch.save(state, tmp))


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != KIND:
        raise CheckpointError(f"{path} is not a CosineGate checkpoint (no kind={KIND!r})")
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {ckpt.get('format')!r}, this is "
                              f"version {__version__} which reads format {CHECKPOINT_FORMAT}")
    return ckpt


def build_model(ckpt: dict):
    """The model a checkpoint describes, with its weights, in eval mode."""
    from cosinegate.train.model import CosineGateResNet, ModelConfig
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    model = CosineGateResNet(ModelConfig(**{k: v for k, v in ckpt["model_config"].items() if k in names}))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not match its model config: {str(e)[:200]}") from None
    return model.eval()


# What must agree between a warm-start checkpoint and the model it initialises.
_SHAPE_KEYS = ("depth", "in_channels", "num_classes", "input_size", "widths")


def _as_tuple(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value  # widths: list in YAML, tuple here


def _is_gate(name: str) -> bool:
    """A gate's own parameter (controller or scale γ), which a warm start leaves at its initialisation."""
    return "controller." in name or name.endswith(".gamma")


def load_backbone(model, path: str | Path) -> int:
    """Copy a checkpoint's convolutions, norms and classifier into `model`; gates and controllers
    keep their initialisation. Returns the number of tensors copied. The checkpoint may be plain
    or gated; any other mismatch is refused with one line."""
    ckpt = load(path)
    theirs, ours = ckpt["model_config"], vars(model.cfg)
    differ = [f"{k} {theirs.get(k)!r} vs {ours[k]!r}" for k in _SHAPE_KEYS
              if _as_tuple(theirs.get(k)) != _as_tuple(ours[k])]
    if differ:
        raise CheckpointError(f"{path} is a different network ({'; '.join(differ)}); cannot start from it")
    weights = {k: v for k, v in ckpt["model"].items() if not _is_gate(k)}
    own = model.state_dict()
    unknown = sorted(k for k in weights if k not in own or own[k].shape != weights[k].shape)
    missing = sorted(k for k in own if k not in weights and not _is_gate(k))
    if unknown or missing:
        first = (unknown or missing)[0]
        raise CheckpointError(f"{path} does not fit this model ({len(unknown)} unexpected, "
                              f"{len(missing)} missing tensors, first: {first}); cannot start from it")
    model.load_state_dict(weights, strict=False)
    return len(weights)
