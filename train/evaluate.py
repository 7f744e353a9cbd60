"""Test-set evaluation under the three inference rules: all blocks (full), the paper's hard gate on
the measured CIR (eq. 16), and the deployable gate decided from x alone.

Counts stay in device tensors and are read once at the end (one sync per evaluation).
"""
import torch

from cosinegate.train import exits as X
from cosinegate.train.gate import THRESHOLD_LOGIT, hard_gate
from cosinegate.train.model import executed_mac_ratio, macs_breakdown

ADAPTIVE_BAND = (0.05, 0.95)  # a block is input-adaptive when its execution rate lies in here


@torch.no_grad()
def collect(model, loader, mode: str, autocast=None):
    """Run `mode` over the loader; return (predictions, labels, gates (N, n_gated) or None, stats)."""
    model.eval()
    preds, labels, gates, cir, cir_hat, logits, paper_rule = [], [], [], [], [], [], []
    for x, y in loader:
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            out, stats = model(x, mode)
        preds.append(out.argmax(1))
        labels.append(y)
        if stats:
            gates.append(torch.stack([s["g"] for s in stats], 1))
            cir.append(torch.stack([s["cir"] for s in stats], 1))
            cir_hat.append(torch.stack([s["cir_hat"] for s in stats], 1))
            logits.append(torch.stack([s["logit_deploy"] for s in stats], 1))
            paper_rule.append(torch.stack([hard_gate(s["logit_paper"]) for s in stats], 1))
    cat = (lambda t: torch.cat(t).float() if t else None)
    extra = {"cir": cat(cir), "cir_hat": cat(cir_hat), "logit_deploy": cat(logits),
             "paper_rule": cat(paper_rule)}
    return torch.cat(preds), torch.cat(labels), cat(gates), extra


def routing_stats(gates: torch.Tensor, macs: dict, gated_indices: list[int],
                  exits_passed: torch.Tensor | None = None) -> dict:
    """Execution rate per block, skip rate, executed-MAC ratio (mean, std over images),
    input-adaptivity and distinct paths of hard gates (N, n_gated) and, for a net with early exits,
    of the exits (`exits_passed` (N,): how many exits each image went past); every runtime's
    decisions are summarised by this one function. A net without gates or exits runs one fixed path.

    An exit is a decision too: `continue_rate[k]` is the share of images that go on past exit k.
    Adaptivity and paths count gates and exits alike; a path is the set of blocks an image runs.
    A gate behind the exit an image left at never runs its block: it counts as closed. A decision
    is input-adaptive when its outcome varies among the images that reach it."""
    out = {}
    reached = torch.ones_like(gates, dtype=torch.bool)
    if exits_passed is not None and macs["exits"]:
        reached = gates_reached(macs, gated_indices, exits_passed)
        gates = gates * reached.to(gates.dtype)
    rates = gates.mean(0)                                      # (n_gated,)
    ratio = executed_mac_ratio(macs, gates, gated_indices, exits_passed)     # (N,)
    decisions = gates.bool()
    if exits_passed is not None and macs["exits"]:
        steps = torch.arange(len(macs["exits"]), device=gates.device).view(1, -1)
        went_on = exits_passed.view(-1, 1) > steps
        out["continue_rate"] = went_on.float().mean(0).tolist()
        decisions = torch.cat([decisions, went_on], 1)
        reached = torch.cat([reached, exits_passed.view(-1, 1) >= steps], 1)
    lo, hi = ADAPTIVE_BAND
    # each decision's outcome rate among the images that reach it (0 where none does)
    decision_rates = (decisions & reached).sum(0).double() / reached.sum(0).clamp(min=1).double()
    any_decision = decision_rates.numel() > 0
    any_gate = rates.numel() > 0
    out.update({
        "exec_rate": rates.tolist(),
        "skip_rate": 1.0 - rates.mean().item() if any_gate else 0.0,
        "mac_ratio": ratio.mean().item(),
        "mac_ratio_std": ratio.std(unbiased=False).item(),
        "adaptivity": (((decision_rates >= lo) & (decision_rates <= hi)).float().mean().item()
                       if any_decision else 0.0),
        "distinct_paths": int(torch.unique(decisions, dim=0).shape[0]) if any_decision else 1,
    })
    return out


def split_decisions(decisions: torch.Tensor, macs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A runtime's decision outputs (N, n_gated + n_exits), as a deployed model reports them (its
    gates, then per exit whether the image went on), as (gates (N, n_gated), exits passed (N,) or
    None without exits). The exit bits are nested: an image goes on past exit k only if it went on
    past every exit before, so their sum counts the exits it passed."""
    n_exits = len(macs.get("exits", []))
    if not n_exits:
        return decisions, None
    return decisions[:, :-n_exits], decisions[:, -n_exits:].sum(1).long()


def gates_reached(macs: dict, gated_indices: list[int], exits_passed: torch.Tensor) -> torch.Tensor:
    """(N, n_gated) bool: the image got as far as gated block i (passed every exit before it)."""
    before = torch.tensor([sum(e < i for e in macs["exit_blocks"]) for i in gated_indices],
                          device=exits_passed.device)
    return before.view(1, -1) <= exits_passed.view(-1, 1)


def _suffixed(stats: dict, suffix: str) -> dict:
    return {f"{key}_{suffix}": value for key, value in stats.items()}


@torch.no_grad()
def collect_exits(model, loader, mode: str, autocast=None):
    """Run `mode` over the loader keeping every head: (classifier logits (N, classes), exits'
    logits [(N, classes)], labels (N,), gates (N, n_gated) under `mode`)."""
    model.eval()
    finals, exits, labels, gates = [], [], [], []
    for x, y in loader:
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            logits, stats, exit_logits = model(x, mode, with_exits=True)
        finals.append(logits.float())
        exits.append([z.float() for z in exit_logits])
        labels.append(y)
        gates.append(torch.stack([s["g"] for s in stats], 1) if stats else torch.zeros(len(y), 0, device=y.device))
    return (torch.cat(finals), [torch.cat(k) for k in zip(*exits)], torch.cat(labels),
            torch.cat(gates).float())


EXIT_ACC = "test_acc_exit_b"  # + the block an exit reads: that exit's own accuracy


def exit_metrics(model, loader, autocast=None) -> dict:
    """The early exits' test metrics: each exit's own accuracy and the deployed rule's (each image
    answered by the first exit confident to `model.exit_thresholds`, else the classifier)."""
    mode = "deploy" if model.gated_indices else "full"
    final, exit_logits, labels, gates = collect_exits(model, loader, mode, autocast)
    out = {f"{EXIT_ACC}{b}": (z.argmax(1) == labels).float().mean().item()
           for b, z in zip(model.cfg.exit_blocks, exit_logits)}
    answer, passed = X.select_logits(exit_logits, final, model.exit_thresholds)
    out["test_acc_deploy"] = (answer.argmax(1) == labels).float().mean().item()
    stats = routing_stats(gates, macs_breakdown(model.cfg), model.gated_indices, passed)
    out.update(_suffixed(stats, "deploy"))
    out["exit_thresholds"] = list(model.exit_thresholds)
    out["adaptivity"] = out["adaptivity_deploy"]
    out["distinct_paths"] = out["distinct_paths_deploy"]
    out["mac_ratio_std"] = out["mac_ratio_std_deploy"]
    return out


def evaluate(model, loader, autocast=None) -> dict:
    """All test metrics of one epoch (fractions in [0, 1]); see README 'metrics.jsonl'."""
    raw = model.module if hasattr(model, "module") else model
    preds_full, labels, _, extra_full = collect(raw, loader, "full", autocast)
    out = {"test_acc_full": (preds_full == labels).float().mean().item()}
    macs = macs_breakdown(raw.cfg)
    if raw.cfg.exit_blocks and not raw.gated_indices:
        return {**out, **exit_metrics(raw, loader, autocast)}
    if not raw.gated_indices:  # plain or statically pruned: one fixed path
        out["test_acc_deploy"] = out["test_acc_full"]
        out["skip_rate_deploy"] = len(macs["removed"]) / len(macs["blocks"])
        out["mac_ratio_deploy"] = macs["full_total"] / macs["plain_total"]
        return out
    preds_paper, _, gates_paper, _ = collect(raw, loader, "paper", autocast)
    preds_deploy, _, gates_deploy, extra = collect(raw, loader, "deploy", autocast)
    out["test_acc_paper"] = (preds_paper == labels).float().mean().item()
    out["test_acc_deploy"] = (preds_deploy == labels).float().mean().item()
    out.update(_suffixed(routing_stats(gates_deploy, macs, raw.gated_indices), "deploy"))
    out.update(_suffixed(routing_stats(gates_paper, macs, raw.gated_indices), "paper"))
    # The deployed rule's figures also under plain names: the ones a reader looks for first.
    out["adaptivity"] = out["adaptivity_deploy"]
    out["distinct_paths"] = out["distinct_paths_deploy"]
    out["mac_ratio_std"] = out["mac_ratio_std_deploy"]
    # Both rules on the same block inputs (the deployed path): does x alone predict eq. 16?
    out["gate_agreement_deploy_vs_paper"] = (extra["paper_rule"] == gates_deploy).float().mean().item()
    out["cir_mae"] = (extra_full["cir"] - extra_full["cir_hat"]).abs().mean().item()
    margin = (extra["logit_deploy"] - THRESHOLD_LOGIT).abs()
    out["deploy_margin_p05"] = margin.quantile(0.05).item()
    if raw.cfg.exit_blocks:  # the deployed rule is gates and exits together
        out.update(exit_metrics(raw, loader, autocast))
    return out
