"""Freeze a trained CosineGate ResNet into the two batch-1 float networks the exporter converts.

BatchNorm is folded into every convolution, and each gated block's controller, CIR estimate,
gamma and deploy threshold (0.45 unless moved) become one condition computed from the block input x alone,
`w . relu(W1 GAP(x) + b1) + b > 0` (`cosinegate.train.gate.fold_deploy_gate`). Two modules share
those frozen weights:

  DeployNet      one `torch.cond` per gated block (then: convolutions + residual add, else: the
                 shortcut): exported to ONNX with a real `If` per block. Returns (logits, gates).
  AllComputeNet  every block computed, no control flow; besides the logits it exposes, per block,
                 the tensors the int8 flatbuffer surgery needs (see `AllComputeNet.forward`).

    frozen = freeze(build_model(load("runs/demo/best.pt")))
    logits, gates = DeployNet(frozen)(x)      # x (1, C, H, W) float, normalised
"""
import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from cosinegate.train.gate import fold_deploy_gate
from cosinegate.train.model import RemovedBlock, option_a_shortcut


@dataclass
class FrozenConv:
    weight: torch.Tensor   # (cout, cin, 3, 3), BatchNorm scale folded in
    bias: torch.Tensor     # (cout,), BatchNorm shift
    stride: int


@dataclass
class FrozenGate:
    fc1_weight: torch.Tensor   # (hidden, cin)
    fc1_bias: torch.Tensor     # (hidden,)
    weight: torch.Tensor       # (1, hidden): the folded heads, gamma and threshold
    bias: torch.Tensor         # (1,)


@dataclass
class FrozenBlock:
    index: int
    conv1: FrozenConv | None   # None (with conv2): a block deleted by static pruning, only its shortcut left
    conv2: FrozenConv | None
    stride: int
    in_channels: int
    out_channels: int
    gate: FrozenGate | None    # None: an ungated block, always computed

    @property
    def removed(self) -> bool:
        return self.conv1 is None


@dataclass
class FrozenExit:
    after_block: int           # the exit reads this block's output (the end of a stage)
    pool_kernel: int           # average pool to the exit's grid (1: none)
    weight: torch.Tensor       # (classes, channels, grid, grid)
    bias: torch.Tensor         # (classes,)
    threshold: float           # an image leaves when its softmax confidence is >= this


@dataclass
class FrozenModel:
    stem: FrozenConv
    blocks: list
    fc_weight: torch.Tensor    # (classes, channels)
    fc_bias: torch.Tensor      # (classes,)
    exits: list = field(default_factory=list)   # FrozenExit per early exit, shallowest first

    @property
    def gated_indices(self) -> list[int]:
        return [b.index for b in self.blocks if b.gate is not None]

    @property
    def decision_names(self) -> list[str]:
        """The deployed model's decision outputs after the logits: one per gate, then one per exit
        (true: the image went on past that exit)."""
        return [f"gate_{i}" for i in self.gated_indices] + [f"exit_{k}" for k in range(len(self.exits))]


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> FrozenConv:
    """conv followed by eval-mode BN as one convolution with bias (computed in float64)."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)   # (cout,)
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
    bias = bn.bias.double() - bn.running_mean.double() * scale
    if conv.bias is not None:
        bias = bias + conv.bias.double() * scale
    return FrozenConv(weight.float().detach(), bias.float().detach(), conv.stride[0])


def freeze(model) -> FrozenModel:
    """The frozen float weights of a `CosineGateResNet` (in eval mode)."""
    blocks = []
    for i, blk in enumerate(model.blocks):
        if isinstance(blk, RemovedBlock):
            blocks.append(FrozenBlock(i, None, None, blk.stride, blk.out_channels // blk.stride,
                                      blk.out_channels, None))
            continue
        gate = None
        if blk.gated:
            w, b = fold_deploy_gate(blk.controller, blk.gamma, blk.deploy_threshold)
            fc1_weight, fc1_bias = blk.controller.hidden_affine()
            gate = FrozenGate(fc1_weight.float(), fc1_bias.float(),
                              w.float().view(1, -1), b.float().view(1))
        blocks.append(FrozenBlock(i, fold_bn(blk.conv1, blk.bn1), fold_bn(blk.conv2, blk.bn2),
                                  blk.stride, blk.conv1.in_channels, blk.out_channels, gate))
    stem_conv, stem_bn = model.stem[0], model.stem[1]
    exits = [FrozenExit(block, head.pool_kernel,
                        head.classifier.weight.detach().float(), head.classifier.bias.detach().float(),
                        float(threshold))
             for block, head, threshold in zip(model.cfg.exit_blocks, model.exits, model.exit_thresholds)]
    return FrozenModel(fold_bn(stem_conv, stem_bn), blocks, model.fc.weight.detach().float(),
                       model.fc.bias.detach().float(), exits)


def without_residuals(frozen: FrozenModel, indices) -> FrozenModel:
    """A copy in which the listed blocks add nothing to their shortcut (conv2 zeroed, so
    y = relu(s) = s): what the deployed network computes where those blocks never run. Its gates
    are copies too, so `bound_gate_logits` on it leaves `frozen` alone."""
    blocks = []
    for block in frozen.blocks:
        conv2 = block.conv2
        if block.index in indices and not block.removed:
            conv2 = FrozenConv(torch.zeros_like(conv2.weight), torch.zeros_like(conv2.bias), conv2.stride)
        blocks.append(replace(block, conv2=conv2, gate=block.gate and replace(block.gate)))
    return FrozenModel(frozen.stem, blocks, frozen.fc_weight, frozen.fc_bias, frozen.exits)


# Largest |folded logit| a gate head may reach on the calibration images. The int8 logit's scale
# is its calibrated range over 255, and TFLM's int8 GREATER aborts on an input scale of 1 or more.
GATE_LOGIT_LIMIT = 100.0


@torch.no_grad()
def bound_gate_logits(frozen: FrozenModel, images: torch.Tensor, limit: float = GATE_LOGIT_LIMIT) -> dict:
    """Divide, in place, each gate head whose folded logit reaches `limit` on `images` (N, C, H, W;
    every block computed, as the int8 converter calibrates) by the smallest power of two that brings
    it below. Returns {block index: k} for the heads divided by 2**k.

    No decision changes: a power of two scales the float logit exactly, sign included, and the int8
    head keeps the same integers because every scale along it (weights, bias, calibrated output)
    scales with it; only the logit's scale drops below the one TFLM's GREATER accepts."""
    net = _FrozenModule(frozen)
    x = F.relu(net.conv("stem", images))
    shifts = {}
    for block in frozen.blocks:
        s = net.shortcut(block, x)
        if block.gate is not None:
            peak = net.gate_logit(block, x).abs().max().item()
            if peak >= limit:
                k = math.floor(math.log2(peak / limit)) + 1
                block.gate.weight = block.gate.weight * 2.0 ** -k
                block.gate.bias = block.gate.bias * 2.0 ** -k
                shifts[block.index] = k
        x = net.residual_sum(block, x, s)
    return shifts


class _FrozenModule(nn.Module):
    """Holds a FrozenModel's tensors as buffers so the ONNX exporter stores them as initializers."""

    def __init__(self, frozen: FrozenModel):
        super().__init__()
        self.frozen = frozen
        self.gated_indices = frozen.gated_indices
        self._strides = {}
        self._add_conv("stem", frozen.stem)
        for b in frozen.blocks:
            if b.removed:
                continue
            self._add_conv(f"b{b.index}_conv1", b.conv1)
            self._add_conv(f"b{b.index}_conv2", b.conv2)
            if b.gate is not None:
                for name in ("fc1_weight", "fc1_bias", "weight", "bias"):
                    self.register_buffer(f"b{b.index}_gate_{name}", getattr(b.gate, name).clone())
        self.register_buffer("fc_weight", frozen.fc_weight.clone())
        self.register_buffer("fc_bias", frozen.fc_bias.clone())
        for k, e in enumerate(frozen.exits):
            self.register_buffer(f"exit{k}_weight", e.weight.clone())
            self.register_buffer(f"exit{k}_bias", e.bias.clone())
            self.register_buffer(f"exit{k}_threshold", torch.tensor([e.threshold]))
        self.exit_after = {e.after_block: k for k, e in enumerate(frozen.exits)}

    def _add_conv(self, name: str, conv: FrozenConv) -> None:
        self.register_buffer(f"{name}_weight", conv.weight.clone())
        self.register_buffer(f"{name}_bias", conv.bias.clone())
        self._strides[name] = conv.stride

    def conv(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias"),
                        stride=self._strides[name], padding=1)

    def shortcut(self, block: FrozenBlock, x: torch.Tensor) -> torch.Tensor:
        """Option A, as trained: identity, or subsample by 2 and zero-pad the new channels."""
        return option_a_shortcut(x, block.stride, block.out_channels)

    def residual_sum(self, block: FrozenBlock, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The computed block: relu(s + conv2(relu(conv1(x)))); a deleted block is its shortcut."""
        if block.removed:
            return s
        r = self.conv(f"b{block.index}_conv2", F.relu(self.conv(f"b{block.index}_conv1", x)))
        return F.relu(s + r)

    def gate_logit(self, block: FrozenBlock, x: torch.Tensor) -> torch.Tensor:
        """Folded deploy logit (1, 1); the block runs when it is > 0."""
        p = f"b{block.index}_gate_"
        h = F.relu(F.linear(x.mean(dim=(2, 3)), getattr(self, p + "fc1_weight"),
                            getattr(self, p + "fc1_bias")))                      # (1, hidden)
        return F.linear(h, getattr(self, p + "weight"), getattr(self, p + "bias"))  # (1, 1)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.mean(dim=(2, 3)), self.fc_weight, self.fc_bias)        # (1, classes)

    def exit_logits(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Exit k's logits (1, classes): pool to its grid, one linear map (a valid convolution)."""
        kernel = self.frozen.exits[k].pool_kernel
        pooled = F.avg_pool2d(x, kernel) if kernel > 1 else x                     # (1, C, g, g)
        z = F.conv2d(pooled, getattr(self, f"exit{k}_weight"), getattr(self, f"exit{k}_bias"))
        return z.reshape(1, -1)                                                  # (1, classes)

    def exit_continues(self, k: int, z: torch.Tensor) -> torch.Tensor:
        """(1,) bool: the image goes on past exit k, threshold > max softmax (`train.exits`)."""
        confidence = F.softmax(z, dim=1).amax(dim=1)                             # (1,)
        return torch.gt(getattr(self, f"exit{k}_threshold"), confidence)


class DeployNet(_FrozenModule):
    """Batch-1 deploy network: a gated block runs its convolutions only when its gate opens, and
    an image that leaves at an early exit runs nothing after it. Returns (logits (1, classes),
    decisions (1, n_gated + n_exits) float 0/1: the gates, then per exit whether the image went on),
    or only the logits for a plain ResNet without exits."""

    def forward(self, x: torch.Tensor):
        x = F.relu(self.conv("stem", x))                                         # (1, C, H, W)
        logits, decisions = self.run_from(0, x)
        if decisions is None:
            return logits
        # run_from lists decisions in network order; the outputs hold the gates, then the exits
        order = self.network_order()
        ranked = sorted(range(len(order)), key=lambda n: (order[n][0] == "exit", order[n][1]))
        if ranked != list(range(len(order))):
            decisions = decisions[torch.tensor(ranked)]
        return logits, decisions.reshape(1, -1)                                  # (1, n_decisions)

    def network_order(self, start: int = 0) -> list[tuple[str, int]]:
        """The decisions of blocks `start`.. in the order an image meets them: ("gate", block
        index) and ("exit", exit number)."""
        order = []
        for block in self.frozen.blocks[start:]:
            if block.gate is not None:
                order.append(("gate", block.index))
            if block.index in self.exit_after:
                order.append(("exit", self.exit_after[block.index]))
        return order

    def run_from(self, start: int, x: torch.Tensor):
        """Blocks `start`.. and the head: (logits, decisions (n,) float in network order, or
        None). At an exit the rest of the network is one `torch.cond` (exported as a nested `If`)."""
        gates = []
        for block in self.frozen.blocks[start:]:
            s = self.shortcut(block, x)
            if block.gate is None:
                x = self.residual_sum(block, x, s)
            else:
                pred = (self.gate_logit(block, x) > 0).reshape(())               # bool scalar
                x = torch.cond(pred, _Branch(self, block, True), _Branch(self, block, False), (x, s))
                gates.append(pred.to(torch.float32).reshape(1))
            if block.index in self.exit_after:
                k = self.exit_after[block.index]
                z = self.exit_logits(k, x)
                went_on = self.exit_continues(k, z)                             # (1,) bool
                later = len(self.network_order(block.index + 1))  # decisions an exiting image never meets
                logits, taken = torch.cond(went_on.reshape(()), _Rest(self, block.index + 1, k),
                                           _ExitAnswer(k, later), (x, z))
                return logits, torch.cat([*gates, went_on.to(torch.float32), *([taken] if later else [])])
        return self.head(x), (torch.cat(gates) if gates else None)


class _Branch(nn.Module):
    """One side of a block's `If`; the module name becomes the subgraph's name in the export."""

    def __init__(self, net: _FrozenModule, block: FrozenBlock, computed: bool):
        super().__init__()
        self.net, self.block, self.computed = net, block, computed
        self.__name__ = f"block{block.index}_{'then' if computed else 'else'}"

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        if self.computed:
            return self.net.residual_sum(self.block, x, s)
        # relu(s) == s (s >= 0): a skipped block's output, and not an alias of the input,
        # which torch.cond refuses.
        return F.relu(s)


class _Rest(nn.Module):
    """Then-branch of exit k's `If`: the rest of the network, and the deeper exits' decisions."""

    def __init__(self, net: DeployNet, start: int, k: int):
        super().__init__()
        self.net, self.start = net, start
        self.__name__ = f"exit{k}_then"

    def forward(self, x: torch.Tensor, z: torch.Tensor):
        logits, later = self.net.run_from(self.start, x)
        return logits, (later if later is not None else torch.zeros(0))


class _ExitAnswer(nn.Module):
    """Else-branch of exit k's `If`: the exit's logits; no later gate or exit was reached, so
    each of the `later` decisions is 0."""

    def __init__(self, k: int, later: int):
        super().__init__()
        self.later = later
        self.__name__ = f"exit{k}_else"

    def forward(self, x: torch.Tensor, z: torch.Tensor):
        return z.clone(), torch.zeros(self.later)


class AllComputeNet(_FrozenModule):
    """Every block computed; the source of the int8 model before its `IF`s are carved out.

    Returns a dict: `logits` (1, classes), `stem` (the stem output), and per block i `y{i}` (its
    output; none for a deleted identity block, whose output is its input); per gated block also
    `pred{i}` (bool (1,), folded logit > 0) and, when its shortcut is not the identity, `s{i}`;
    per early exit k `exit{k}` (its logits (1, classes)) and `cont{k}` (bool (1,), the image goes on).
    Block i's input is the last `y{j}` with j < i (or `stem`): see `restructure.block_input`.
    """

    def forward(self, x: torch.Tensor) -> dict:
        x = F.relu(self.conv("stem", x))
        out = {"stem": x}
        for block in self.frozen.blocks:
            s = self.shortcut(block, x)
            if block.gate is not None:
                out[f"pred{block.index}"] = self.gate_logit(block, x).reshape(1) > 0
                if s is not x:
                    out[f"s{block.index}"] = s
            y = self.residual_sum(block, x, s)
            if y is not x:  # the same tensor twice would be two graph outputs of one value
                out[f"y{block.index}"] = y
            x = y
            if block.index in self.exit_after:
                k = self.exit_after[block.index]
                out[f"exit{k}"] = self.exit_logits(k, x)
                out[f"cont{k}"] = self.exit_continues(k, out[f"exit{k}"])
        out["logits"] = self.head(x)
        return out

