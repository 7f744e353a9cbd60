"""The CosineGate gate math: CIR, the controller, relaxed and hard gates, and the deploy-gate fold.

Training (`cosinegate.train`) and export (`cosinegate.export`) both use this module, so the rule a
deployed model applies is, by construction, the rule it was trained and evaluated with.

Two gate logits per block (paper eq. 11 and our deployable variant):
    paper:  l_p = gamma * (CIR(s, r) + c(x))        needs r = F(x): decides only after F ran
    deploy: l_d = gamma * (CIR_hat(x) + c(x))       decided from x alone, before F runs
with c(x) = w_c . h + b_c and CIR_hat(x) = w_cir . h + b_cir two linear heads on the controller's
hidden layer h = ReLU(W1 GAP(x) + b1). With a logit norm (`Controller(logit_norm=True)`, beyond the
paper) l_d is standardised over the batch in training and by running statistics at inference, then
scaled and shifted by learned a, b: l_d' = a (l_d - mu) / sigma + b. Either way the deploy rule
sigmoid(l_d) > 0.45 is one affine function of h compared with zero (`fold_deploy_gate`), which the
exporter turns into the `If` condition.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

THRESHOLD = 0.45  # paper eq. 16: a block runs when sigmoid(logit) > 0.45
THRESHOLD_LOGIT = math.log(THRESHOLD / (1.0 - THRESHOLD))  # sigmoid(l) > 0.45  <=>  l > -0.2007


def inner_products(s: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample <s,s>, <s,r>, <r,r> over phi(.) = flattening. CIR and the consistency term are
    both functions of these three numbers, so a block reads its feature maps once for both."""
    s_flat, r_flat = s.flatten(1).float(), r.flatten(1).float()  # (B, C*H*W)
    dot = torch.linalg.vecdot  # fused multiply-reduce: no (B, C*H*W) temporaries
    return dot(s_flat, s_flat), dot(s_flat, r_flat), dot(r_flat, r_flat)  # 3 x (B,)


def _cos(dot: torch.Tensor, sq_a: torch.Tensor, sq_b: torch.Tensor, eps: float) -> torch.Tensor:
    return dot / (sq_a * sq_b).clamp_min(eps * eps).sqrt()


def cosine_incompatibility(ss, sr, rr, eps: float = 1e-8) -> torch.Tensor:
    """CIR = 1 - cos(phi(s), phi(r)) per sample (paper eq. 6-7) from `inner_products`;
    a zero vector counts as orthogonal (CIR = 1)."""
    return 1.0 - _cos(sr, ss, rr, eps)


class Controller(nn.Module):
    """c(x) = W2 ReLU(W1 GAP(x)) (paper eq. 12) plus a second head on the same hidden layer that
    predicts the block's CIR before F runs. Both heads carry a bias (the paper writes none).

    With `logit_norm`, the deploy logit passes through a one-channel batch norm (`deploy_logit`):
    the batch's common shift is taken out of it, so a loss on the batch's execution rate moves only
    the norm's shift b, and what the controller learns is which inputs run the block, spread by a.

    With `hidden_norm`, the hidden pre-activations pass through a batch norm before the ReLU: in
    training each unit is centred on the batch, so it stays on for some images and off for others,
    whatever its weights' drift (a plain unit can turn negative on every input and stop learning).
    At inference it folds into W1 and b1 (`hidden_affine`)."""

    def __init__(self, channels: int, hidden: int, logit_norm: bool = False, hidden_norm: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.hidden_norm = nn.BatchNorm1d(hidden) if hidden_norm else None
        self.head_c = nn.Linear(hidden, 1)
        self.head_cir = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head_cir.weight)
        nn.init.ones_(self.head_cir.bias)  # an untrained F is near-orthogonal to x: CIR ~ 1
        self.logit_norm = nn.BatchNorm1d(1) if logit_norm else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pre = self.fc1(x.mean(dim=(2, 3)).to(self.fc1.weight.dtype))
        h = F.relu(pre if self.hidden_norm is None else self.hidden_norm(pre))  # (B, hidden)
        return h, self.head_c(h).squeeze(1), self.head_cir(h).squeeze(1)  # (B,hidden), (B,), (B,)

    @torch.no_grad()
    def hidden_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W (hidden, C), b (hidden,)) with the inference hidden layer h = ReLU(W GAP(x) + b): W1
        and b1, with a hidden norm folded in at its running statistics."""
        weight, bias = self.fc1.weight.detach(), self.fc1.bias.detach()
        norm = self.hidden_norm
        if norm is None:
            return weight.clone(), bias.clone()
        scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
        return weight * scale[:, None], (bias - norm.running_mean) * scale + norm.bias.detach()


@torch.no_grad()
def dead_units(controller: Controller, pooled: torch.Tensor) -> torch.Tensor:
    """(hidden,) bool: the controller's hidden units that are zero at inference on every row of
    `pooled` (the block input's global average pool over a set of images, (N, C))."""
    weight, bias = controller.hidden_affine()
    return (F.linear(pooled.to(weight.dtype), weight, bias) <= 0).all(dim=0)


@torch.no_grad()
def revive_dead_units(controller: Controller, pooled: torch.Tensor, generator: torch.Generator | None = None) -> int:
    """Re-draw the controller's hidden units that are zero on every row of `pooled` (the block
    input's global average pool over a set of images, (N, C)); returns how many.

    A unit whose pre-activation is negative on every input passes no gradient, so it stays dead,
    and once every unit of a controller is dead its logit is one constant: the gate takes the same
    decision for every image. The block inputs follow a ReLU, so a unit with mostly negative weights
    dies easily, the more so in a controller of two units. A re-drawn unit gets nn.Linear's initial
    weights and the bias that puts its pre-activation's median over `pooled` at zero: it starts on
    for half the images, input-dependent. The heads keep their weights. `generator` (CPU) draws the
    weights, so processes that share it re-draw the same. A hidden norm's unit restarts as the
    identity on the new pre-activation's spread."""
    dead = dead_units(controller, pooled)
    count = int(dead.sum())
    if count:
        weight = torch.empty(count, controller.fc1.in_features, dtype=controller.fc1.weight.dtype)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)  # nn.Linear's own initialisation
        weight = weight.to(controller.fc1.weight.device)
        pre = pooled.to(weight.dtype) @ weight.T
        controller.fc1.weight[dead] = weight
        controller.fc1.bias[dead] = -pre.median(dim=0).values
        norm = controller.hidden_norm
        if norm is not None:
            norm.weight[dead], norm.bias[dead] = 1.0, 0.0
            norm.running_mean[dead] = 0.0
            norm.running_var[dead] = pre.var(dim=0) if len(pre) > 1 else 1.0
    return count


def gate_logit(gamma: torch.Tensor, cir: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Paper eq. 11: l = gamma * (CIR + c(x)). With gamma < 0 a *high* CIR closes the gate."""
    return gamma * (cir + c)


def deploy_logit(controller: Controller, gamma: torch.Tensor, cir_hat: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The deploy logit l_d = gamma (CIR_hat + c), through the controller's logit norm if it has one."""
    logit = gate_logit(gamma, cir_hat, c)
    if controller.logit_norm is None:
        return logit
    return controller.logit_norm(logit.unsqueeze(1).to(controller.logit_norm.weight.dtype)).squeeze(1)


def relaxed_gate(logit: torch.Tensor, tau: float, hard: bool = False, noise: float = 1.0) -> torch.Tensor:
    """Gumbel-Softmax over [identity=0, residual=logit] (paper eq. 13-15), residual component.

    softmax([0, l] + [g0, g1]) / tau)[1] = sigmoid((l + g1 - g0) / tau), and g1 - g0 of two
    i.i.d. Gumbels is Logistic(0, 1), so one logistic sample per gate suffices. With `hard`, the
    forward value is the 0/1 decision of the noisy logit and the gradient is the relaxed one
    (straight-through), so training sees the same discrete routing the deployed model runs.
    `noise` scales the logistic sample (1: the paper's Gumbel-Softmax; 0: no noise, so a hard gate
    is the deterministic decision l > 0 with the relaxed gradient).
    """
    u = torch.rand_like(logit).clamp_(1e-6, 1 - 1e-6)
    z = torch.sigmoid((logit + noise * (torch.log(u) - torch.log1p(-u))) / tau)
    if not hard:
        return z
    return (z > 0.5).to(z.dtype) + z - z.detach()


def threshold_logit(threshold: float) -> float:
    """The logit at which sigmoid(logit) = threshold: sigmoid(l) > threshold <=> l > this."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"a gate threshold must lie strictly between 0 and 1, got {threshold}")
    return math.log(threshold / (1.0 - threshold))


def hard_gate(logit: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """Deterministic inference gate (paper eq. 16): 1 where sigmoid(logit) > threshold (0.45)."""
    return (logit > threshold_logit(threshold)).to(logit.dtype)


def fold_deploy_gate(controller: Controller, gamma: torch.Tensor, threshold: float = THRESHOLD):
    """Fold gamma, both controller heads and the threshold into (w, b) with

        sigmoid(gamma * (CIR_hat(x) + c(x))) > threshold   <=>   w . h(x) + b > 0

    where h(x) is the controller's hidden layer; a logit norm folds in with its running statistics
    (inference mode). Returns float64 tensors w (hidden,) and b ().
    """
    g = gamma.detach().double()
    w = g * (controller.head_c.weight + controller.head_cir.weight).detach().double().squeeze(0)
    b = g * (controller.head_c.bias + controller.head_cir.bias).detach().double().squeeze(0)
    norm = controller.logit_norm
    if norm is not None:
        scale = norm.weight.detach().double() / torch.sqrt(norm.running_var.double() + norm.eps)
        w = w * scale
        b = ((b - norm.running_mean.double()) * scale + norm.bias.detach().double()).squeeze(0)
    return w, b - threshold_logit(threshold)


def deploy_decision_unfolded(controller: Controller, gamma: torch.Tensor, x: torch.Tensor,
                             threshold: float = THRESHOLD) -> torch.Tensor:
    """The deploy rule as written, sigmoid(gamma (CIR_hat + c)) > threshold; the reference the fold is tested against."""
    _, c, cir_hat = controller(x)
    return torch.sigmoid(deploy_logit(controller, gamma, cir_hat, c)) > threshold


def flops_penalty(gbar: torch.Tensor, target: float, progress: float) -> torch.Tensor:
    """Paper eq. 18-19: prog(t) * max(0, gbar - tau_target)^2."""
    return progress * F.relu(gbar - target).pow(2)


def difficulty_budgets(logits: torch.Tensor, labels: torch.Tensor, target: float,
                       spread: float) -> torch.Tensor:
    """Per-sample compute budgets for the adaptive reading: the batch's samples ranked by
    difficulty (1 - p(true class), detached) get targets spread evenly over
    target +- spread/2, so the batch mean stays `target` while easy samples must skip more."""
    with torch.no_grad():
        p_true = logits.float().softmax(1).gather(1, labels[:, None]).squeeze(1)
        rank = (1.0 - p_true).argsort().argsort().float()        # 0 = easiest
        quantile = rank / max(len(rank) - 1, 1) - 0.5              # in [-0.5, 0.5]
        return (target + spread * quantile).clamp(0.0, 1.0)       # (B,)


def per_sample_flops_penalty(z: torch.Tensor, budgets: torch.Tensor, progress: float) -> torch.Tensor:
    """Adaptive reading of eq. 18: prog(t) * mean_b max(0, mean_i z_bi - budget_b)^2."""
    return progress * F.relu(z.mean(1) - budgets).pow(2).mean()


def routing_information_loss(logit: torch.Tensor) -> torch.Tensor:
    """Negative mutual information between the input and each block's deploy decision, from the
    gate probabilities p = sigmoid(logit) of a batch (B, n_blocks):
        mean_i [ mean_b H(p_bi) - H(mean_b p_bi) ].
    Low when every sample's decision is sure (first term) yet the block is not always on or
    always off (second term): it rewards per-sample routing, not per-block constants."""
    p = torch.sigmoid(logit.float() - THRESHOLD_LOGIT)  # decision probability around the 0.45 threshold

    def entropy(q):
        q = q.clamp(1e-6, 1 - 1e-6)
        return -(q * q.log() + (1 - q) * (1 - q).log())

    return (entropy(p).mean(0) - entropy(p.mean(0))).mean()


def consistency_term(ss, sr, rr, g: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Paper eq. 20 for one block, per sample: ||Norm(s + r) - Norm(s + g r)||^2
    = 2 - 2 cos(s + r, s + g r), expanded in the inner products of s and r."""
    cross = ss + (1.0 + g) * sr + g * rr           # <s + r, s + g r>
    full_sq = ss + 2.0 * sr + rr                    # |s + r|^2
    gated_sq = ss + 2.0 * g * sr + g * g * rr       # |s + g r|^2
    return (2.0 - 2.0 * _cos(cross, full_sq, gated_sq, eps)).clamp_min(0.0)


def margin_penalty(logit: torch.Tensor, margin: float) -> torch.Tensor:
    """Keeps deploy logits at least `margin` away from the threshold, so int8 rounding cannot flip them."""
    return F.relu(margin - (logit - THRESHOLD_LOGIT).abs()).mean()


def deploy_gate_straight_through(logit: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The deterministic deploy decision (eq. 16) in the forward pass, with the gradient of
    sigmoid((logit - threshold) / temperature): the gate the device runs, made trainable."""
    soft = torch.sigmoid((logit - THRESHOLD_LOGIT) / temperature)
    return (logit > THRESHOLD_LOGIT).to(soft.dtype) + soft - soft.detach()


def target_rate_loss(gates: torch.Tensor, target: float) -> torch.Tensor:
    """Per-block execution-rate target (ConvNet-AIG, Veit & Belongie 2018): the mean over blocks of
    (mean_b g_bi - t)^2 for deploy gates g (B, n_blocks). Measured on the deterministic gate, a rate
    strictly between 0 and 1 is reachable only by deciding per input: a block that is always on or
    always off pays for it, and input-independent noise cannot meet it."""
    return (gates.float().mean(0) - target).pow(2).mean()


def beta_quantiles(n: int, alpha: float, beta: float, grid: int = 20001) -> torch.Tensor:
    """The n quantiles k / (n + 1), k = 1..n, of Beta(alpha, beta), from its density integrated on a
    midpoint grid (no special functions needed); float64 (n,)."""
    t = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    log_pdf = (alpha - 1) * torch.log(t) + (beta - 1) * torch.log1p(-t)
    cdf = torch.cumsum(torch.exp(log_pdf - log_pdf.max()), 0)
    cdf = cdf / cdf[-1]
    levels = torch.arange(1, n + 1, dtype=torch.float64) / (n + 1)
    return t[torch.searchsorted(cdf, levels).clamp_max(grid - 1)]


def batch_shaping_loss(logit: torch.Tensor, quantiles: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Batch-shaping (Ehteshami Bejnordi et al. 2020) in its quantile form: each block's deploy
    probabilities p = sigmoid(logit - threshold) over the batch, sorted, are pulled onto the
    quantiles of a Beta prior (`beta_quantiles`), i.e. the batch's distribution of p towards the
    prior in the 2-Wasserstein distance. A U-shaped prior of mean t asks each block to be surely on
    for a fraction t of the inputs and surely off for the rest. A temperature T > 1 measures p as
    sigmoid((logit - threshold) / T), which saturates only far from the threshold."""
    p = torch.sigmoid((logit.float() - THRESHOLD_LOGIT) / temperature)
    return (p.sort(0).values - quantiles.to(p).unsqueeze(1)).pow(2).mean()
