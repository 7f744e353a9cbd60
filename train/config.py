"""Training configuration: one dataclass, YAML presets whose values become argparse defaults.

Precedence, lowest first: the dataclass defaults (the paper's protocol) < `--preset NAME`
(train/presets/NAME.yaml) < `--config FILE.yaml` < explicit flags. The resolved config is saved as
`config.yaml` in the run folder and inside every checkpoint.
"""
import argparse
import dataclasses
import math
import reprlib
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from cosinegate import errors, jsonfile

PRESET_DIR = Path(__file__).parent / "presets"


ROUTING_MODES = ("faithful", "adaptive", "target_rate", "batch_shape")
STAGES = 3  # the CIFAR ResNet's stages (ModelConfig.widths)
MAX_THREADS = 1024  # far above any CPU here; a larger count makes torch's thread pool fail to start


class ConfigError(ValueError):
    """Unknown preset or key, or a value of the wrong kind."""


@dataclass
class TrainConfig:
    """Every training setting; what each means (and its flag's help) is in FIELD_HELP."""
    preset: str = "balanced"
    # data
    dataset: str = "cifar10"
    data_dir: str | None = None
    download: bool = False
    # model (see model.ModelConfig)
    depth: int = 20
    gated: bool = True
    gate_downsample: bool = True
    controller_ratio: int = 8
    removed_blocks: str = ""
    ungated_blocks: str = ""
    gamma0: float = -2.5
    gate_init: str = "faithful"
    open_logit: float = 3.0
    gate_logit_norm: bool = False
    controller_norm: bool = False
    # paper objective (eq. 18-21) and Table 1
    lambda_flops: float = 3.0
    lambda_cons: float = 0.01
    tau_target: float = 0.70
    warmup_epochs: int = 40
    flops_delay_epochs: int = 0
    routing: str = "faithful"
    target_rate: float = 0.6
    lambda_routing: float = 2.0
    routing_temperature: float = 1.0
    shape_concentration: float = 1.0
    adaptive_spread: float = 0.4
    lambda_adapt: float = 0.0
    # early exits (beyond the paper; none unless exits is set)
    exits: str = ""
    exit_after: str = ""
    lambda_exit: float = 1.0
    exit_grad_scale: float = 1.0
    exit_threshold: float = 0.9
    tau_start: float = 1.0
    tau_end: float = 0.5
    gate_noise: float = 1.0
    revive_controllers: bool = False
    # deployable gate
    gate_train: str = "deploy"
    handover_epoch: int | None = None
    lambda_cir: float = 1.0
    lambda_margin: float = 0.1
    margin: float = 1.0
    # optimisation (paper section 4.1)
    epochs: int = 160
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    holdout: int = 0
    init_from: str | None = None
    # knowledge distillation (beyond the paper; off unless distill_from is set)
    distill_from: str | None = None
    lambda_distill: float = 1.0
    distill_temperature: float = 4.0
    # execution
    device: str = "auto"
    amp: bool = True
    threads: int | None = None

    def __post_init__(self):
        _check_types(self)
        if self.handover_epoch is None:
            self.handover_epoch = self.penalty_full_epoch
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ConfigError(f"depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), got {self.depth}")
        checks = [
            (self.gate_init in ("faithful", "open"), "gate_init must be 'faithful' or 'open'"),
            (self.gate_train in ("deploy", "paper"), "gate_train must be 'deploy' or 'paper'"),
            (self.routing in ROUTING_MODES, f"routing must be one of {', '.join(ROUTING_MODES)}"),
            (self.gated or not self.gate_logit_norm,
             "gate_logit_norm normalises gate logits, but the net is not gated (--gated)"),
            (self.gated or not self.controller_norm,
             "controller_norm normalises gate controllers, but the net is not gated (--gated)"),
            (self.gated or not self.ungated_blocks,
             "ungated_blocks leaves gates out, but the net is not gated (--gated)"),
            (self.gated or not self.revive_controllers,
             "revive_controllers re-draws gate controllers, but the net is not gated (--gated)"),
            (self.gated or self.routing in ("faithful",),
             f"routing {self.routing!r} shapes gate decisions, but the net is not gated (--gated)"),
            (0.0 < self.target_rate < 1.0, "target_rate must lie strictly between 0 and 1"),
            (self.distill_temperature > 0, "distill_temperature must be > 0"),
            (self.lambda_distill >= 0, "lambda_distill must be >= 0"),
            (self.shape_concentration > 0, "shape_concentration must be > 0"),
            (self.routing_temperature > 0, "routing_temperature must be > 0"),
            (all(1 <= k < STAGES for k in self.exit_stage_list) and
             len(set(self.exit_stage_list)) == len(self.exit_stage_list),
             f"exits go at stage boundaries 1..{STAGES - 1} (stage {STAGES} ends in the classifier "
             f"itself), each once; got {self.exits!r}"),
            (all(0 <= b < self.blocks - 1 for b in self.exit_after_list) and
             len(set(self.exit_after_list)) == len(self.exit_after_list),
             f"exit_after indexes blocks 0..{self.blocks - 2} (block {self.blocks - 1} ends in the classifier "
             f"itself), each once; got {self.exit_after!r}"),
            (not (self.exit_stage_list and self.exit_after_list) or
             len(self.exit_block_list) == len(self.exit_stage_list) + len(self.exit_after_list),
             f"exit_after {self.exit_after!r} names a block that ends a stage exits {self.exits!r} already "
             "gives an exit"),
            (self.lambda_exit >= 0, "lambda_exit must be >= 0"),
            (0.0 <= self.exit_grad_scale <= 1.0, f"exit_grad_scale must lie in [0, 1], got {self.exit_grad_scale}"),
            (self.exit_grad_scale == 1.0 or self.exit_block_list,
             "exit_grad_scale scales the exits' gradient, but the net has no exits (--exits, --exit-after)"),
            (0.0 < self.exit_threshold <= 1.0, "exit_threshold must lie in (0, 1]"),
            (self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1"),
            (self.holdout >= 0, f"holdout must be >= 0, got {self.holdout}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0.0 <= self.momentum < 1.0, f"momentum must lie in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.flops_delay_epochs >= 0, "flops_delay_epochs must be >= 0"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (self.controller_ratio >= 1, "controller_ratio must be >= 1"),
            (self.threads is None or 1 <= self.threads <= MAX_THREADS,
             f"threads must be 1..{MAX_THREADS} (or null: torch's choice)"),
            (0.0 < self.tau_target <= 1.0, "tau_target must lie in (0, 1]"),
            (self.tau_start > 0 and self.tau_end > 0, "Gumbel temperatures must be > 0"),
            (self.gate_noise >= 0, "gate_noise must be >= 0"),
            (self.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    @property
    def penalty_full_epoch(self) -> int:
        """First epoch with the FLOPs penalty at full weight: after the delay and the warm-up."""
        return self.flops_delay_epochs + self.warmup_epochs

    @property
    def removed_block_list(self) -> tuple:
        return _index_list(self.removed_blocks, "removed_blocks", "block indices")

    @property
    def ungated_block_list(self) -> tuple:
        return _index_list(self.ungated_blocks, "ungated_blocks", "block indices")

    @property
    def exit_stage_list(self) -> tuple:
        return _index_list(self.exits, "exits", "stage numbers")

    @property
    def exit_after_list(self) -> tuple:
        return _index_list(self.exit_after, "exit_after", "block indices")

    @property
    def exit_block_list(self) -> tuple:
        """The blocks the exits read, in exit order (`exits.exit_blocks`)."""
        from cosinegate.train.exits import exit_blocks
        return exit_blocks(self.exit_stage_list, self.exit_after_list, self.blocks // STAGES)

    @property
    def blocks(self) -> int:
        """Residual blocks of the ResNet: 3 stages of (depth - 2) / 6."""
        return STAGES * ((self.depth - 2) // 6)

    def model_config(self, dataset_info):
        from cosinegate.train.model import ModelConfig
        h, w, c = dataset_info.shape
        return ModelConfig(
            depth=self.depth, in_channels=c, num_classes=dataset_info.num_classes, input_size=h,
            gated=self.gated, gate_downsample=self.gate_downsample,
            controller_ratio=self.controller_ratio, gamma0=self.gamma0,
            removed_blocks=self.removed_block_list, ungated_blocks=self.ungated_block_list, exit_stages=self.exit_stage_list,
            exit_after=self.exit_after_list,
            open_logit=self.open_logit if self.gate_init == "open" else None,
            gate_logit_norm=self.gate_logit_norm, controller_norm=self.controller_norm)


def _index_list(value, name: str, what: str) -> tuple:
    """A comma-separated string (or a YAML list, or one integer) of indices as a tuple of ints."""
    items = value if isinstance(value, (list, tuple)) else str(value).replace(" ", "").split(",")
    try:
        return tuple(int(i) for i in items if str(i))
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated {what}, got {value!r}") from None


# Declared type -> the Python types a value may have (a YAML file can hold any of them).
_ACCEPTED = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,),
             "str | None": (str, type(None)), "int | None": (int, type(None))}


def _check_types(cfg: TrainConfig) -> None:
    for f in fields(cfg):
        check_value(f.name, getattr(cfg, f.name))


def check_value(name: str, value) -> None:
    """Refuse a value of another type than field `name`'s (no coercion: `epochs: "1"` is no count)."""
    kind = _KINDS[name]
    # bool is an int subclass: `depth: true` is no depth
    if not isinstance(value, _ACCEPTED[kind]) or (isinstance(value, bool) and kind != "bool"):
        if name in ("removed_blocks", "ungated_blocks", "exits", "exit_after") and value is not True and (
                isinstance(value, int) or isinstance(value, (list, tuple)) and all(type(i) is int for i in value)):
            return  # one index or a YAML list of them, read by removed_block_list
        # reprlib: a YAML alias bomb is small as a file, and astronomically long as text
        raise ConfigError(f"{name} must be {kind.replace(' | None', ' or null')}, "
                          f"got {type(value).__name__} {reprlib.repr(value)[:60]}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value}")


CONFIG_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}
_KINDS = {f.name: getattr(f.type, "__name__", str(f.type)) for f in fields(TrainConfig)}

# Fields added after the first release: a config saved before them lacks them, and their defaults
# are what it was trained with. Every other field must be in a saved config.
LATER_FIELDS = ("controller_norm", "distill_from", "distill_temperature", "exit_after", "exit_grad_scale",
                "exit_threshold", "exits", "flops_delay_epochs",
                "gate_logit_norm", "gate_noise", "holdout", "init_from", "lambda_distill", "lambda_exit",
                "lambda_routing", "revive_controllers", "routing_temperature", "shape_concentration", "target_rate",
                "ungated_blocks")


# One help line per TrainConfig field: the flag's help and the only description of the field. A new
# field adds its line here (tests/test_train.py checks that every field has one).
FIELD_HELP = {
    "preset": "named preset (train/presets/NAME.yaml) whose values replace the dataclass defaults",
    "dataset": "cifar10 | mnist | fashion-mnist | digits (digits ships with scikit-learn: offline)",
    "data_dir": "dataset root; default: $CG_DATA_DIR, else ./data",
    "download": "fetch CIFAR-10 through torchvision when it is missing (online only)",
    "depth": "ResNet depth 6n+2 (20, 32, 44, 56, ...)",
    "gated": "give the residual blocks CosineGates (--no-gated: the plain ResNet baseline)",
    "gate_downsample": "gate the stride-2 blocks too (their CIR is measured against the shortcut)",
    "controller_ratio": "gate controller hidden width = block input channels // ratio (at least 2)",
    "removed_blocks": "static baseline: comma-separated block indices to delete (their shortcut remains)",
    "ungated_blocks": "comma-separated block indices that keep no gate and run for every input (gated nets)",
    "gamma0": "initial gamma of every gate, the scale of its logit gamma * (CIR + c(x)) (paper eq. 11)",
    "gate_init": "faithful: initial logit ~ gamma0 (gates near closed); "
                 "open: controller bias set so the initial logit is --open-logit",
    "open_logit": "initial gate logit with --gate-init open",
    "gate_logit_norm": "batch-norm each deploy logit (running statistics at inference, folded into "
                       "the IF): a rate term then moves only the norm's shift, and the controller "
                       "learns which inputs run the block; --gate-init open sets the shift to --open-logit",
    "controller_norm": "batch-norm each controller's hidden pre-activations before the ReLU "
                       "(running statistics at inference, folded into W1): no unit can turn "
                       "negative for every image and stop learning (beyond the paper)",
    "lambda_flops": "weight of the FLOPs penalty (paper eq. 18, Table 1)",
    "lambda_cons": "weight of the consistency term (paper eq. 20, Table 1)",
    "tau_target": "target mean execution rate of the gates (paper eq. 18, Table 1)",
    "warmup_epochs": "epochs over which the FLOPs penalty ramps to full weight (T_warmup)",
    "flops_delay_epochs": "epochs with no FLOPs penalty before its warm-up starts "
                          "(0 = paper; lets a grown net train its new blocks first)",
    "routing": "faithful: hinge on the batch-mean gate (eq. 18); adaptive: per-sample hinge, budget "
               "grows with difficulty; target_rate: + each block's deploy-gate rate pulled to "
               "--target-rate; batch_shape: + each block's deploy probabilities shaped to a Beta prior",
    "target_rate": "target_rate: per-block execution rate; batch_shape: the prior's mean",
    "lambda_routing": "weight of the target_rate / batch_shape term (ramped like eq. 19)",
    "routing_temperature": "T of the routing term: target_rate's straight-through gradient is "
                           "sigmoid'((l_d - logit 0.45) / T) / T, batch_shape's probabilities "
                           "sigmoid((l_d - logit 0.45) / T); T > 1 reaches saturated gates",
    "shape_concentration": "batch_shape: prior Beta(k t, k (1 - t)); k <= 1 is U-shaped",
    "adaptive_spread": "adaptive: budgets span tau_target +- spread/2 over a batch",
    "lambda_adapt": "weight of the routing-information term (0 = paper)",
    "exits": "early exits after these stages, comma-separated (1,2 on a ResNet): an image whose "
             "exit is confident enough stops there (default: none)",
    "exit_after": "early exits after these blocks too (0-based, before the last), comma-separated: "
                  "6,7 puts two inside stage 3 of a ResNet-20",
    "lambda_exit": "weight of the exits' cross-entropy, each exit's scaled by its depth "
                   "(block number / blocks: stage / 3 at a stage end)",
    "exit_grad_scale": "fraction of the exits' loss gradient that reaches the backbone; the exit heads "
                       "take all of it (1 = joint training, 0 = heads on a backbone the exits do not shape)",
    "exit_threshold": "softmax confidence an image needs to leave at an exit, in the test metrics "
                      "(cg-export --exit-threshold / --target-macs set the deployed one)",
    "tau_start": "Gumbel temperature at the first step, annealed geometrically per step",
    "tau_end": "Gumbel temperature at the last step",
    "gate_noise": "scale of the relaxed gates' logistic (Gumbel-difference) noise: 1 = paper; "
                  "0 = none: after the hand-over the training gate is the deploy rule itself",
    "revive_controllers": "before each epoch, re-draw every controller hidden unit that is zero on all of "
                          "1,024 training images (a dead ReLU makes its gate input-independent), its bias "
                          "set so that it is on for half of them (beyond the paper)",
    "gate_train": "deploy: hand over to the x-only gate (hard, straight-through); "
                  "paper: train with the CIR gate throughout, as written",
    "handover_epoch": "epoch of the hand-over to the deploy gate; default: flops_delay_epochs + warmup_epochs",
    "lambda_cir": "weight of the regression of the CIR estimate onto the measured CIR",
    "lambda_margin": "weight of the term keeping deploy logits --margin away from the threshold",
    "margin": "distance of the deploy logits from the threshold that --lambda-margin asks for",
    "epochs": "training epochs (paper: 160)",
    "batch_size": "images per step, over all processes",
    "lr": "initial SGD learning rate, cosine-annealed to 0",
    "momentum": "SGD momentum",
    "weight_decay": "SGD weight decay",
    "seed": "seed of weights, Gumbel noise and batch order",
    "holdout": "training images kept out of training (a fixed seeded draw), on which cg-export "
               "--target-macs then chooses its threshold: images the network has not fitted",
    "init_from": "warm start: checkpoint (best.pt/last.pt) whose convolutions, norms and classifier "
                 "start this run (gates and controllers keep their initialisation)",
    "distill_from": "teacher checkpoint whose logits the run also learns from (knowledge distillation); "
                    "default: none",
    "lambda_distill": "weight of the distillation term T^2 KL(teacher || student) (with --distill-from)",
    "distill_temperature": "softmax temperature T of the distillation term",
    "device": "auto | cpu | cuda",
    "amp": "bf16 autocast (CUDA only)",
    "threads": "torch CPU threads; default: torch's choice (one per core)",
}


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_yaml(path: Path, what: str) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not text (not UTF-8)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of config keys")
    _refuse_unknown_keys(data, f" in {path}")
    for key, value in data.items():  # checked here: argparse would convert a string, or blame a flag
        try:
            check_value(key, value)
        except ConfigError as e:
            raise ConfigError(f"{what} {path}: {e}") from None
    return data


def _refuse_unknown_keys(values: dict, where: str) -> None:
    names = [k for k in values if not isinstance(k, str)]
    if names:  # YAML reads `1:` or `~:` as a number or null
        raise ConfigError(f"config keys are names, got {reprlib.repr(names[0])[:40]}{where}")
    unknown = sorted(set(values) - set(CONFIG_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown config key(s){where}: {', '.join(unknown)}")


# Where and how fast a run executes, not what it trains: `--resume` may change these (a run
# started on a GPU machine can finish on another machine with the data elsewhere).
MACHINE_KEYS = ("data_dir", "download", "device", "threads")


def check_preset(name, where: str = "") -> None:
    if name not in presets():
        raise ConfigError(f"{where}unknown preset {reprlib.repr(name)[:60]}; choose one of {', '.join(presets())}")


def preset_values(name: str) -> dict:
    check_preset(name)
    return {"preset": name, **read_yaml(PRESET_DIR / f"{name}.yaml", "preset")}


def _optional(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "null") else kind(text)
    return parse


METAVARS = {"exit_after": "BLOCKS", "exits": "STAGES"}  # where the field name's last word says less


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (`--lambda-flops 3.0`; on/off fields as `--gated`/`--no-gated`)."""
    group = parser.add_argument_group("training config (defaults: dataclass < preset < --config)")
    for f in fields(TrainConfig):
        flag, help_text = "--" + f.name.replace("_", "-"), FIELD_HELP.get(f.name, "")
        if f.name == "preset":
            help_text += f"; one of: {', '.join(presets())}"
        help_text += " (default: %(default)s)"
        if f.type in (bool, "bool"):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                               help=help_text)
            continue
        kind = {"int": int, "float": float, "str": str, "str | None": _optional(str),
                "int | None": _optional(int)}[getattr(f.type, "__name__", str(f.type))]
        group.add_argument(flag, dest=f.name, type=kind, default=f.default,
                           metavar=METAVARS.get(f.name, f.name.split("_")[-1].upper()), help=help_text)


def resolve(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    return TrainConfig(**values)


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(values: dict) -> TrainConfig:
    _refuse_unknown_keys(values, "")
    return TrainConfig(**values)


def check_saved(values, where) -> dict:
    """`values` if they are a config a run saved (config.yaml, a checkpoint's), else a ConfigError
    naming `where` and the field: every field but LATER_FIELDS present, each of its type and range."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: the config is a {type(values).__name__}, not a mapping of config keys")
    missing = sorted(set(CONFIG_DEFAULTS) - set(values) - set(LATER_FIELDS)) if all(
        isinstance(k, str) for k in values) else []
    try:
        if missing:
            raise ConfigError(f"missing key(s) {', '.join(missing[:4])}"
                              + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""))
        from_dict({**CONFIG_DEFAULTS, **values})
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return values


def read_run(run: Path, metrics_shape) -> tuple[dict, list[dict]]:
    """A run folder's config.yaml and metrics.jsonl, checked (each epoch's metrics against
    `metrics_shape`, a `cosinegate.jsonfile` shape): (config, one dict per epoch)."""
    try:
        config = yaml.safe_load((run / "config.yaml").read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise jsonfile.FileFormatError(f"{run / 'config.yaml'} is not valid YAML ({errors.one_line(e)})") from None
    check_saved(config, run / "config.yaml")
    return config, jsonfile.read_lines(run / "metrics.jsonl", metrics_shape)
