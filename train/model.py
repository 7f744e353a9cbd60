"""CIFAR-style ResNet (He et al. 2016, option-A shortcuts) whose residual blocks carry CosineGates.

One builder serves the plain baseline and the gated network (`ModelConfig.gated`), at any depth
6n+2 (ResNet-20/32/56/110: n = 3/5/9/18), 1 or 3 input channels and any input size.

A gated block computes r = F(x), s = shortcut(x), y = ReLU(s + g r). Its input x is the output of
a ReLU, so s >= 0 and a skipped block (g = 0) is an exact identity (or the parameter-free
subsample-and-pad shortcut for a downsampling block).
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

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

    def __post_init__(self):
        if (self.depth - 2) % 6 != 0 or self.depth < 8:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (20, 32, 56, 110), got {self.depth}")
        self.widths = tuple(self.widths)
        self.removed_blocks = tuple(sorted(int(i) for i in self.removed_blocks))
        n_blocks = 3 * self.blocks_per_stage
        if any(not 0 <= i < n_blocks for i in self.removed_blocks):
            raise ValueError(f"removed_blocks must index blocks 0..{n_blocks - 1}, got {self.removed_blocks}")

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6


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
        self.conv1, self.bn1 = _conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        if gated:
            self.controller = G.Controller(cin, max(2, cin // cfg.controller_ratio))
            self.gamma = nn.Parameter(torch.tensor(float(cfg.gamma0)))
            if cfg.open_logit is not None:
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
        logit_deploy = G.gate_logit(self.gamma, cir_hat.detach(), c)
        if mode == "full":
            g = torch.ones_like(c)
        elif mode == "off":
            g = torch.zeros_like(c)
        elif mode == "paper":
            g = G.hard_gate(logit_paper)
        elif mode == "deploy":
            g = G.hard_gate(logit_deploy, self.deploy_threshold)
        elif mode == "relaxed":
            g = G.relaxed_gate(logit_paper, tau)
        elif mode == "relaxed_deploy":
            g = G.relaxed_gate(logit_deploy, tau, hard=True)
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
                gated = cfg.gated and (stride == 1 or cfg.gate_downsample)
                if len(blocks) in cfg.removed_blocks:
                    blocks.append(RemovedBlock(stride, width))
                else:
                    blocks.append(ResidualBlock(cin, width, stride, cfg, gated))
                cin = width
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(cin, cfg.num_classes)
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

    def forward(self, x: torch.Tensor, mode: str = "full", tau: float = 1.0):
        """Returns logits (B, classes) and one stats dict per gated block (see ResidualBlock)."""
        x = self.stem(x)
        stats = []
        for block in self.blocks:
            x, st = block(x, mode, tau)
            if st is not None:
                stats.append(st)
        return self.fc(x.mean(dim=(2, 3))), stats


def macs_breakdown(cfg: ModelConfig) -> dict:
    """Multiply-accumulates of one inference, by part (convolutions and fully connected layers;
    BatchNorm folds into the convolutions, adds and pooling are not counted).

    `blocks[i]` is block i's residual branch, `controllers[i]` its controller as deployed
    (fc1 plus the single folded head; 0 for an ungated block). `plain_total` is the plain network
    of the same depth (40,551,040 for ResNet-20 on 32x32x3); `full_total` is this network with
    every gate open (controllers included, removed blocks left out).
    """
    size, w0 = cfg.input_size, cfg.widths[0]
    stem = cfg.in_channels * w0 * 9 * size * size
    blocks, controllers, cin = [], [], w0
    for stage, width in enumerate(cfg.widths):
        for i in range(cfg.blocks_per_stage):
            stride = 2 if (stage > 0 and i == 0) else 1
            out = (size + stride - 1) // stride
            blocks.append(cin * width * 9 * out * out + width * width * 9 * out * out)
            gated = (cfg.gated and (stride == 1 or cfg.gate_downsample)
                     and len(controllers) not in cfg.removed_blocks)
            hidden = max(2, cin // cfg.controller_ratio)
            controllers.append(cin * hidden + hidden if gated else 0)
            size, cin = out, width
    head = cin * cfg.num_classes
    plain = stem + sum(blocks) + head
    removed = sum(blocks[i] for i in cfg.removed_blocks)
    return {"stem": stem, "blocks": blocks, "controllers": controllers, "head": head,
            "removed": list(cfg.removed_blocks), "plain_total": plain,
            "full_total": plain - removed + sum(controllers)}


def executed_mac_ratio(macs: dict, gates: torch.Tensor, gated_indices: list[int]) -> torch.Tensor:
    """Per-sample executed MACs under `gates` (B, n_gated), divided by the plain network's MACs."""
    blocks = torch.tensor(macs["blocks"], dtype=torch.float64, device=gates.device)
    always = macs["stem"] + macs["head"] + sum(macs["controllers"])
    skipped_always = set(gated_indices) | set(macs["removed"])
    ungated = [i for i in range(len(macs["blocks"])) if i not in skipped_always]
    always += sum(macs["blocks"][i] for i in ungated)
    executed = always + gates.double() @ blocks[gated_indices]
    return executed / macs["plain_total"]  # (B,)


def param_counts(model: CosineGateResNet) -> dict:
    total = sum(p.numel() for p in model.parameters())
    ctrl = sum(p.numel() for b in model.blocks if b.gated for p in b.controller.parameters())
    return {"total": total, "controllers": ctrl, "controller_share": ctrl / total}
