"""CIFAR-style ResNet (He et al. 2016, option-A shortcuts) whose residual blocks carry CosineGates.

One builder serves the plain baseline and the gated network (`ModelConfig.gated`), at any depth
6n+2 (ResNet-20/32/56/110: n = 3/5/9/18), 1 or 3 input channels and any input size.

A gated block computes r = F(x), s = shortcut(x), y = ReLU(s + g r). Its input x is the output of
a ReLU, so s >= 0 and a skipped block (g = 0) is an exact identity (or the parameter-free
subsample-and-pad shortcut for a downsampling block).
"""
import functools
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cosinegate.train import exits as X
from cosinegate.train import gate as G

GATE_MODES = ("full", "off", "paper", "deploy", "relaxed", "relaxed_deploy")


@dataclass
class ModelConfig:
    depth: int = 20                      # 6n+2 layers: 20, 32, 56, 110
    in_channels: int = 3                 # 1 for MNIST-like data, 3 for CIFAR
    num_classes: int = 10
    input_size: int = 32                 # square inputs, H = W
    widths: tuple = (16, 32, 64)         # channels of the three stages
    gated: bool = True                   # False builds the plain ResNet baseline
    gate_downsample: bool = True         # gate the stride-2 blocks too (CIR against the shortcut)
    controller_ratio: int = 8            # controller hidden width = channels // ratio (>= 2)
    gamma0: float = -2.5                 # initial gate scale (paper Table 1); learnable per block
    open_logit: float | None = None      # None: paper init (gates start near sigmoid(gamma0));
                                         # a value: controller bias set so the initial logit is this
    removed_blocks: tuple = ()           # static pruning baseline: these blocks are deleted
                                         # (only their shortcut remains; no gate, no weights)
    ungated_blocks: tuple = ()           # these blocks of a gated net run for every input (no gate)
    exit_stages: tuple = ()              # early exits after these stages (1-based, before the last)
    exit_after: tuple = ()               # and after these blocks (0-based, before the last block)
    gate_logit_norm: bool = False        # batch-norm the deploy logit (gate.Controller, beyond the paper)
    controller_norm: bool = False        # batch-norm the controller's hidden layer (gate.Controller, beyond the paper)

    def __post_init__(self):
        if (self.depth - 2) % 6 != 0 or self.depth < 8:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (20, 32, 56, 110), got {self.depth}")
        self.widths = tuple(self.widths)
        for name in ("gate_logit_norm", "controller_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        self.removed_blocks = tuple(sorted(int(i) for i in self.removed_blocks))
        n_blocks = 3 * self.blocks_per_stage
        if (any(not 0 <= i < n_blocks for i in self.removed_blocks)
                or len(set(self.removed_blocks)) != len(self.removed_blocks)):
            raise ValueError(f"removed_blocks must index blocks 0..{n_blocks - 1}, each once; got {self.removed_blocks}")
        self.ungated_blocks = tuple(sorted(int(i) for i in self.ungated_blocks))
        if (any(not 0 <= i < n_blocks for i in self.ungated_blocks)
                or len(set(self.ungated_blocks)) != len(self.ungated_blocks)):
            raise ValueError(f"ungated_blocks must index blocks 0..{n_blocks - 1}, each once; got {self.ungated_blocks}")
        if set(self.ungated_blocks) & set(self.removed_blocks):
            raise ValueError(f"blocks {sorted(set(self.ungated_blocks) & set(self.removed_blocks))} are removed, "
                             "so they have no gate to leave out")
        if self.ungated_blocks and not any(
                i not in self.removed_blocks and self.block_gated(i) for i in range(n_blocks)):
            raise ValueError(f"ungated_blocks {self.ungated_blocks} leaves no gated block; build the plain "
                             "network with gated=False instead")
        self.exit_stages = tuple(sorted(int(k) for k in self.exit_stages))
        last = len(self.widths)
        if len(set(self.exit_stages)) != len(self.exit_stages) or any(not 1 <= k < last for k in self.exit_stages):
            raise ValueError(f"exits go at stage boundaries 1..{last - 1} (stage {last} ends in the "
                             f"classifier itself), got {self.exit_stages}")
        self.exit_after = tuple(sorted(int(b) for b in self.exit_after))
        if len(set(self.exit_after)) != len(self.exit_after) or any(not 0 <= b < n_blocks - 1 for b in self.exit_after):
            raise ValueError(f"exit_after must index blocks 0..{n_blocks - 2} (block {n_blocks - 1} ends in the "
                             f"classifier itself), each once; got {self.exit_after}")
        doubled = sorted({self.stage_end_block(k) for k in self.exit_stages} & set(self.exit_after))
        if doubled:
            raise ValueError(f"exit_after {doubled}: those blocks end a stage that exit_stages already gives an exit")

    def block_gated(self, index: int) -> bool:
        """Whether block `index` (not removed) carries a gate. The first block of every stage but the
        first is the stride-2 one that `gate_downsample` covers."""
        downsample = index >= self.blocks_per_stage and index % self.blocks_per_stage == 0
        return self.gated and (not downsample or self.gate_downsample) and index not in self.ungated_blocks

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6

    @property
    def exit_blocks(self) -> tuple:
        """The blocks whose outputs the exits read, ascending: exit k reads block exit_blocks[k]."""
        return X.exit_blocks(self.exit_stages, self.exit_after, self.blocks_per_stage)

    def block_stage(self, index: int) -> int:
        """The stage (1-based) block `index` belongs to."""
        return index // self.blocks_per_stage + 1

    def stage_end_block(self, stage: int) -> int:
        """Index of the last block of `stage` (1-based)."""
        return stage * self.blocks_per_stage - 1

    def stage_output_size(self, stage: int) -> int:
        size = self.input_size
        for _ in range(1, stage):
            size = (size + 1) // 2
        return size


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def option_a_shortcut(x: torch.Tensor, stride: int, out_channels: int) -> torch.Tensor:
    """Parameter-free shortcut: subsample spatially, zero-pad the new channels (He et al. option A)."""
    if stride == 1 and x.shape[1] == out_channels:
        return x
    x = x[:, :, ::stride, ::stride]
    extra = out_channels - x.shape[1]
    return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN residual branch plus, when gated, a controller and a learnable gamma."""

    def __init__(self, cin: int, cout: int, stride: int, cfg: ModelConfig, gated: bool):
        super().__init__()
        self.stride, self.out_channels, self.gated = stride, cout, gated
        # The deploy rule's threshold (paper: 0.45); an export may move it to trade accuracy for
        # compute (`CosineGateResNet.set_deploy_threshold`). Not a weight: checkpoints hold none.
        self.deploy_threshold = G.THRESHOLD
        # Scale of the relaxed gates' logistic noise (`set_gate_noise`); a training setting, not a weight.
        self.gate_noise = 1.0
        self.conv1, self.bn1 = _conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        if gated:
            self.controller = G.Controller(cin, max(2, cin // cfg.controller_ratio), cfg.gate_logit_norm,
                                           cfg.controller_norm)
            self.gamma = nn.Parameter(torch.tensor(float(cfg.gamma0)))
            if cfg.gate_logit_norm and cfg.open_logit is not None:
                # The norm's shift is the batch's mean logit: the controller's weights keep their
                # random start, so the logit varies with the input from the first step.
                nn.init.constant_(self.controller.logit_norm.bias, cfg.open_logit)
            elif cfg.open_logit is not None:
                # Start with l = gamma0 * (1 + c) = open_logit: gates open (paper Phase I) while
                # keeping gamma0's value and sign.
                nn.init.zeros_(self.controller.head_c.weight)
                nn.init.constant_(self.controller.head_c.bias, cfg.open_logit / cfg.gamma0 - 1.0)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return option_a_shortcut(x, self.stride, self.out_channels)

    def forward(self, x: torch.Tensor, mode: str = "full", tau: float = 1.0):
        s, r = self.shortcut(x), self.residual(x)
        if not self.gated:
            return F.relu(s + r), None
        h, c, cir_hat = self.controller(x)
        ss, sr, rr = G.inner_products(s, r)
        cir = G.cosine_incompatibility(ss, sr, rr)
        logit_paper = G.gate_logit(self.gamma, cir, c)
        # The CIR estimate learns only from its own regression loss, so it stays an estimate of CIR.
        logit_deploy = G.deploy_logit(self.controller, self.gamma, cir_hat.detach(), c)
        if mode == "full":
            g = torch.ones_like(c)
        elif mode == "off":
            g = torch.zeros_like(c)
        elif mode == "paper":
            g = G.hard_gate(logit_paper)
        elif mode == "deploy":
            g = G.hard_gate(logit_deploy, self.deploy_threshold)
        elif mode == "relaxed":
            g = G.relaxed_gate(logit_paper, tau, noise=self.gate_noise)
        elif mode == "relaxed_deploy" and self.gate_noise == 0.0:
            # No noise: train on the deploy rule itself, threshold included, so a logit parked
            # between 0 and logit 0.45 cannot be closed in training and open when deployed.
            g = G.deploy_gate_straight_through(logit_deploy, tau)
        elif mode == "relaxed_deploy":
            g = G.relaxed_gate(logit_deploy, tau, hard=True, noise=self.gate_noise)
        else:
            raise ValueError(f"unknown gate mode {mode!r}; expected one of {GATE_MODES}")
        stats = {
            "g": g, "cir": cir, "cir_hat": cir_hat, "logit_paper": logit_paper,
            "logit_deploy": logit_deploy, "cons": G.consistency_term(ss, sr, rr, g),
        }
        return F.relu(torch.addcmul(s, g.view(-1, 1, 1, 1).to(r.dtype), r)), stats


class RemovedBlock(nn.Module):
    """A block deleted by static pruning: only the parameter-free shortcut remains."""

    def __init__(self, stride: int, out_channels: int):
        super().__init__()
        self.stride, self.out_channels, self.gated = stride, out_channels, False

    def forward(self, x: torch.Tensor, mode: str = "full", tau: float = 1.0):
        return option_a_shortcut(x, self.stride, self.out_channels), None


class CosineGateResNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        w0 = cfg.widths[0]
        self.stem = nn.Sequential(_conv3x3(cfg.in_channels, w0), nn.BatchNorm2d(w0), nn.ReLU())
        blocks, cin = [], w0
        for stage, width in enumerate(cfg.widths):
            for i in range(cfg.blocks_per_stage):
                stride = 2 if (stage > 0 and i == 0) else 1
                if len(blocks) in cfg.removed_blocks:
                    blocks.append(RemovedBlock(stride, width))
                else:
                    blocks.append(ResidualBlock(cin, width, stride, cfg, cfg.block_gated(len(blocks))))
                cin = width
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(cin, cfg.num_classes)
        self.exits = nn.ModuleList(
            X.ExitHead(cfg.widths[cfg.block_stage(b) - 1], cfg.num_classes, cfg.stage_output_size(cfg.block_stage(b)))
            for b in cfg.exit_blocks)
        self._exit_after = {b: j for j, b in enumerate(cfg.exit_blocks)}
        # The exit rule's confidence thresholds, one per exit; like deploy_threshold, not a weight.
        self.exit_thresholds = [X.EXIT_THRESHOLD] * len(cfg.exit_blocks)
        # The fraction of the exits' gradient that reaches the backbone (training only; 1: all of it).
        self.exit_grad_scale = 1.0
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def gated_indices(self) -> list[int]:
        return [i for i, b in enumerate(self.blocks) if b.gated]

    def set_deploy_threshold(self, threshold: float) -> None:
        """Every gated block's deploy rule becomes sigmoid(logit) > threshold."""
        G.threshold_logit(threshold)  # refuses a threshold outside (0, 1)
        for i in self.gated_indices:
            self.blocks[i].deploy_threshold = threshold

    def set_gate_noise(self, scale: float) -> None:
        """Every gated block's relaxed gate draws its logistic noise scaled by `scale` (0: none)."""
        if not scale >= 0.0:
            raise ValueError(f"gate noise scale must be >= 0, got {scale}")
        for i in self.gated_indices:
            self.blocks[i].gate_noise = float(scale)

    @torch.no_grad()
    def controller_inputs(self, x: torch.Tensor, chunk: int = 256) -> dict[int, torch.Tensor]:
        """{gated block index: (N, C) global average pool of its input} for the images `x`
        (normalised, NCHW), in eval mode with every block computed: what each controller reads."""
        pooled: dict[int, list[torch.Tensor]] = {i: [] for i in self.gated_indices}
        hooks = [self.blocks[i].controller.register_forward_pre_hook(
            lambda module, args, i=i: pooled[i].append(args[0].mean(dim=(2, 3)).float()))
            for i in self.gated_indices]
        was_training = self.training
        try:
            self.eval()
            for start in range(0, len(x), chunk):
                self(x[start:start + chunk], mode="full")
        finally:
            for hook in hooks:
                hook.remove()
            self.train(was_training)
        return {i: torch.cat(p) for i, p in pooled.items()}

    def revive_controllers(self, x: torch.Tensor, seed: int = 0) -> dict[int, int]:
        """`gate.revive_dead_units` for every gated block, on `controller_inputs(x)`, new weights
        drawn from a generator seeded with `seed`: {block index: units re-drawn}, only blocks with any."""
        generator = torch.Generator().manual_seed(seed)
        revived = {i: G.revive_dead_units(self.blocks[i].controller, p, generator)
                   for i, p in self.controller_inputs(x).items()}
        return {i: n for i, n in revived.items() if n}

    def set_exit_thresholds(self, thresholds) -> None:
        """An image leaves at exit k when its confidence there is >= thresholds[k] (one value: all)."""
        values = [float(thresholds)] * len(self.exits) if isinstance(thresholds, (int, float)) else list(thresholds)
        if len(values) != len(self.exits) or not all(0.0 < t <= 1.0 for t in values):
            raise ValueError(f"expected {len(self.exits)} exit thresholds in (0, 1], got {thresholds}")
        self.exit_thresholds = values

    def forward(self, x: torch.Tensor, mode: str = "full", tau: float = 1.0, with_exits: bool = False,
                left_out: frozenset = frozenset()):
        """Returns logits (B, classes) and one stats dict per gated block (see ResidualBlock). In
        "deploy" mode the logits are those the deployed network answers with: each image's exit
        (`exit_thresholds`), else the classifier's. With `with_exits`, the classifier's logits
        whatever the mode, and the exits' logits (one (B, classes) per exit) as a third value, so
        the caller can apply any exit rule. The blocks in `left_out` compute what a closed gate
        does, ReLU(shortcut), for every image, and report no stats."""
        x = self.stem(x)
        stats, exit_logits = [], []
        for i, block in enumerate(self.blocks):
            if i in left_out:
                x, st = F.relu(option_a_shortcut(x, block.stride, block.out_channels)), None
            else:
                x, st = block(x, mode, tau)
            if st is not None:
                stats.append(st)
            if i in self._exit_after:
                exit_logits.append(self.exits[self._exit_after[i]](X.scale_gradient(x, self.exit_grad_scale)))
        logits = self.fc(x.mean(dim=(2, 3)))
        if with_exits:
            return logits, stats, exit_logits
        if mode == "deploy" and exit_logits:
            logits, _ = X.select_logits(exit_logits, logits, self.exit_thresholds)
        return logits, stats


def macs_breakdown(cfg: ModelConfig) -> dict:
    """Multiply-accumulates of one inference, by part (convolutions and fully connected layers;
    BatchNorm folds into the convolutions, adds and pooling are not counted).

    `blocks[i]` is block i's residual branch, `controllers[i]` its controller as deployed
    (fc1 plus the single folded head; 0 for an ungated block), `exits[k]` the k-th exit head.
    `plain_total` is the plain network of the same depth (40,551,040 for ResNet-20 on 32x32x3);
    `full_total` is this network with every gate open and no image leaving early (controllers and
    exit heads included, removed blocks left out).
    """
    size, w0 = cfg.input_size, cfg.widths[0]
    stem = cfg.in_channels * w0 * 9 * size * size
    blocks, controllers, cin = [], [], w0
    for stage, width in enumerate(cfg.widths):
        for i in range(cfg.blocks_per_stage):
            stride = 2 if (stage > 0 and i == 0) else 1
            out = (size + stride - 1) // stride
            blocks.append(cin * width * 9 * out * out + width * width * 9 * out * out)
            gated = cfg.block_gated(len(controllers)) and len(controllers) not in cfg.removed_blocks
            hidden = max(2, cin // cfg.controller_ratio)
            controllers.append(cin * hidden + hidden if gated else 0)
            size, cin = out, width
    head = cin * cfg.num_classes
    exits = [X.head_macs(cfg.widths[cfg.block_stage(b) - 1], cfg.num_classes, cfg.stage_output_size(cfg.block_stage(b)))
             for b in cfg.exit_blocks]
    plain = stem + sum(blocks) + head
    removed = sum(blocks[i] for i in cfg.removed_blocks)
    return {"stem": stem, "blocks": blocks, "controllers": controllers, "head": head,
            "exits": exits, "exit_blocks": list(cfg.exit_blocks),
            "removed": list(cfg.removed_blocks), "plain_total": plain,
            "full_total": plain - removed + sum(controllers) + sum(exits)}


def executed_mac_ratio(macs: dict, gates: torch.Tensor, gated_indices: list[int],
                       exits_passed: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample executed MACs under `gates` (B, n_gated), divided by the plain network's MACs.

    `exits_passed` (B,): how many exits each image went past (an image that leaves at exit k has
    passed k, one that reaches the classifier all of them); None: every image reaches the end.
    An image runs the blocks, controllers and exit heads up to where it leaves, nothing after."""
    n_blocks, batch = len(macs["blocks"]), gates.shape[0]
    runs = torch.ones(batch, n_blocks, dtype=torch.float64, device=gates.device)
    index = functools.partial(torch.tensor, dtype=torch.long, device=gates.device)
    runs[:, index(macs["removed"])] = 0.0
    runs[:, index(gated_indices)] = gates.double().view(batch, len(gated_indices))
    reached = torch.ones_like(runs)
    exit_blocks = macs.get("exit_blocks", [])
    heads = torch.full((batch,), float(macs["head"]), dtype=torch.float64, device=gates.device)
    if exits_passed is not None and exit_blocks:
        passed = exits_passed.to(gates.device).view(-1, 1)
        # block i runs only if the image passed every exit placed before it
        before = torch.tensor([sum(e < i for e in exit_blocks) for i in range(n_blocks)], device=gates.device)
        reached = (before.view(1, -1) <= passed).double()
        exit_costs = torch.tensor(macs["exits"], dtype=torch.float64, device=gates.device)
        evaluated = (torch.arange(len(exit_blocks), device=gates.device).view(1, -1) <= passed).double()
        heads = evaluated @ exit_costs + (passed.view(-1) == len(exit_blocks)).double() * macs["head"]
    elif exit_blocks:
        heads = heads + sum(macs["exits"])
    blocks = torch.tensor(macs["blocks"], dtype=torch.float64, device=gates.device)
    controllers = torch.tensor(macs["controllers"], dtype=torch.float64, device=gates.device)
    executed = macs["stem"] + (runs * reached) @ blocks + reached @ controllers + heads
    return executed / macs["plain_total"]  # (B,)


def param_counts(model: CosineGateResNet) -> dict:
    total = sum(p.numel() for p in model.parameters())
    ctrl = sum(p.numel() for b in model.blocks if b.gated for p in b.controller.parameters())
    return {"total": total, "controllers": ctrl, "controller_share": ctrl / total}
