"""Test-set evaluation under the three inference rules: all blocks (full), the paper's hard gate on
the measured CIR (eq. 16), and the deployable gate decided from x alone.

Counts stay in device tensors and are read once at the end (one sync per evaluation).
"""
import torch

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


def routing_stats(gates: torch.Tensor, macs: dict, gated_indices: list[int]) -> dict:
    """Execution rate per block, skip rate, executed-MAC ratio (mean, std over images),
    input-adaptivity and distinct paths of hard gates (N, n_gated); every runtime's decisions are
    summarised by this one function. A net without gates runs one fixed path."""
    rates = gates.mean(0)                                      # (n_gated,)
    ratio = executed_mac_ratio(macs, gates, gated_indices)     # (N,)
    lo, hi = ADAPTIVE_BAND
    any_gate = rates.numel() > 0
    return {
        "exec_rate": rates.tolist(),
        "skip_rate": 1.0 - rates.mean().item() if any_gate else 0.0,
        "mac_ratio": ratio.mean().item(),
        "mac_ratio_std": ratio.std(unbiased=False).item(),
        "adaptivity": ((rates >= lo) & (rates <= hi)).float().mean().item() if any_gate else 0.0,
        "distinct_paths": int(torch.unique(gates.bool(), dim=0).shape[0]) if any_gate else 1,
    }


def _suffixed(stats: dict, suffix: str) -> dict:
    return {f"{key}_{suffix}": value for key, value in stats.items()}


def evaluate(model, loader, autocast=None) -> dict:
    """All test metrics of one epoch (fractions in [0, 1]); see README 'metrics.jsonl'."""
    raw = model.module if hasattr(model, "module") else model
    preds_full, labels, _, extra_full = collect(raw, loader, "full", autocast)
    out = {"test_acc_full": (preds_full == labels).float().mean().item()}
    macs = macs_breakdown(raw.cfg)
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
    return out
