"""Build RESULTS.md and the Pareto plot from the folders `experiments.reproduce` writes.

    python -m cosinegate.experiments.results results/cifar10 --out RESULTS.md [--plots docs/results]

ROOT is a runs root or its archive (`experiments.archive`, the same layout with only the files read here).
Every number comes from a file under ROOT/NAME/{run,export,bench}: metrics.jsonl (the paper's
metrics: test_acc_paper, gbar), export_report.json (int8 parity), bench.json (what each runtime
decided and executed, QEMU instruction ratios). The paper's Table 2 values stand beside ours.
"""
import argparse
import functools
import json
import math
import sys
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from cosinegate import atomic, errors  # noqa: E402
from cosinegate.bench.report import table  # noqa: E402

# Paper Table 2 at epoch 160 (accuracy, "FLOPs" = mean gate) and peak accuracy.
PAPER = {
    "resnet20": {"label": "ResNet-20", "acc": 0.913, "flops": 1.000, "peak": "91.3% (E160)"},
    "aggressive": {"label": "CosineGate Aggressive", "acc": 0.899, "flops": 0.759, "peak": "89.9% (E160)"},
    "balanced": {"label": "CosineGate Balanced", "acc": 0.913, "flops": 0.715, "peak": "91.8% (E154)"},
    "conservative": {"label": "CosineGate Conservative", "acc": 0.822, "flops": 0.888, "peak": "93.2% (E146)"},
}


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _firmware_from_bench(bench: dict | None) -> dict | None:
    """The qemu.json figures ({kernels: flash, RAM, arena, instructions, gates}) from a bench run
    with `--tflm-root`, for configurations without their own qemu.json."""
    qemu = (bench or {}).get("qemu")
    if not qemu:
        return None
    gated = {row["kernels"]: row["instructions / inference"] for row in qemu["rows"] if row["variant"] == "gated"}
    return {kernels: {**{k: log[k] for k in ("flash_bytes", "ram_bytes", "arena_used", "gates")},
                      "instructions_mean": gated[kernels], "images": len(log["gates"])}
            for kernels, log in qemu["firmware"].items()}


def _test_acc(metrics: dict) -> float:
    """An epoch's test accuracy under the deploy gate (every block computed for a plain net)."""
    return metrics.get("test_acc_deploy", metrics["test_acc_full"])


def collect(root: Path) -> list[dict]:
    rows = []
    for folder in sorted(p for p in root.iterdir() if (p / "run" / "metrics.jsonl").is_file()):
        history = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text().splitlines() if line]
        config = yaml.safe_load((folder / "run" / "config.yaml").read_text())
        report = _read_json(folder / "export" / "export_report.json")
        bench = _read_json(folder / "bench" / "bench.json")
        bench_folded = _read_json(folder / "bench_folded" / "bench.json")
        qemu = _read_json(folder / "qemu.json") or _firmware_from_bench(bench)
        # `reproduce --fold-static-gates`: the same model with its proven-constant gates folded
        folded = (_read_json(folder / "export_folded" / "export_report.json"),
                  _read_json(folder / "qemu_folded.json"))
        last = history[-1]
        peak = max(history, key=_test_acc)
        row = {"name": folder.name, "preset": config["preset"], "config": config, "last": last,
               "peak": peak, "epochs_done": len(history), "report": report, "bench": bench,
               "bench_folded": bench_folded, "qemu": qemu,
               "qemu_folded": folded if all(folded) else None}
        rows.append(row)
    return rows


def _source_name(config: dict) -> str | None:
    """The run a warm start began from (`--init-from ROOT/NAME/run/last.pt` -> NAME), or None."""
    source = config.get("init_from")  # runs from before warm starts have no such key
    return Path(source).parent.parent.name if source else None


def _schedule(config: dict, epochs_done: int) -> str:
    text = f"{epochs_done}/{config['epochs']} ep, warm-up {config['warmup_epochs']}"
    if config.get("flops_delay_epochs"):  # runs from before the delay have no such key
        text += f" after {config['flops_delay_epochs']} ep without FLOPs penalty"
    if _source_name(config):
        text += f", lr {config['lr']:g}, warm start from {_source_name(config)}"
    elif config["epochs"] != 160:
        text += " (shortened)"
    return text


def _source_row(row: dict, rows: list[dict]) -> dict | None:
    """The row of the run a warm start began from, where it is among the rows."""
    name = _source_name(row["config"])
    return next((r for r in rows if r["name"] == name), None) if name else None


def _training_label(row: dict, rows: list[dict]) -> str:
    """How much training a row had, for grouping points that compare: '20 epochs', '160 + 24 epochs'."""
    name = _source_name(row["config"])
    source = _source_row(row, rows)
    if source:
        return f"{source['epochs_done']} + {row['epochs_done']} epochs (warm start)"
    return f"{row['epochs_done']} epochs" + (f" (warm start from {name})" if name else "")


def _vs_resnet20(config: dict) -> float:
    """Plain ResNet of the run's depth over plain ResNet-20 on the same input (40,551,040 MACs on
    CIFAR-10): runs record executed MACs against the plain net of their own depth; this puts every
    row on ResNet-20's scale."""
    from cosinegate.train.data import dataset_info
    from cosinegate.train.model import ModelConfig, macs_breakdown
    h, _, c = dataset_info(config["dataset"]).shape
    plain = {d: macs_breakdown(ModelConfig(depth=d, in_channels=c, input_size=h, gated=False))["plain_total"]
             for d in (config["depth"], 20)}
    return plain[config["depth"]] / plain[20]


def _macs(row: dict) -> float | None:
    """Executed MACs / plain ResNet-20: the int8 bench's where there is one, else the float run's."""
    ratio = _int8(row).get("mac_ratio", row["last"].get("mac_ratio_deploy"))
    return None if ratio is None else ratio * _vs_resnet20(row["config"])


def _firmware_mac_ratio(row: dict, qemu: dict) -> float | None:
    """Executed-MAC ratio (vs plain ResNet-20) of the gate strings the firmware printed."""
    report, gates = row["report"], qemu.get("gates")
    if not report or not gates:
        return None
    blocks = [report["macs_per_block"][i] for i in report["gated_indices"]]
    skipped = [sum(m for m, g in zip(blocks, pattern) if g == "0") for pattern in gates]
    return (report["macs_full"] - sum(skipped) / len(skipped)) / report["macs_plain"] * _vs_resnet20(row["config"])


def _static_frontier(rows: list[dict]) -> list[str]:
    """One line per gated run: its deploy accuracy against the static networks of the same
    dataset, depth and schedule that bracket its executed MACs, linearly interpolated."""
    def key(r):
        c = r["config"]
        return c["dataset"], c["depth"], c["epochs"], c["warmup_epochs"], r["epochs_done"]

    lines = []
    for gated in (r for r in rows if r["config"]["gated"]):
        g = gated["last"]
        # Sorted by MACs, then accuracy: at equal MACs the most accurate static network counts.
        scale = _vs_resnet20(gated["config"])  # common to the same-depth networks compared here
        macs = g["mac_ratio_deploy"] * scale
        statics = sorted((r["last"]["mac_ratio_deploy"] * scale, r["last"]["test_acc_full"], r["name"]) for r in rows
                         if not r["config"]["gated"] and key(r) == key(gated))
        below = [t for t in statics if t[0] <= macs]
        above = [t for t in statics if t[0] > macs]
        if not (below and above):
            continue
        (m0, a0, n0) = below[-1]
        (m1, a1, n1) = max((t for t in above if t[0] == above[0][0]), key=lambda t: t[1])
        static_acc = a0 + (a1 - a0) * (macs - m0) / (m1 - m0)
        gap = g["test_acc_deploy"] - static_acc
        lines.append(f"- **{gated['name']}** (adaptivity {g['adaptivity_deploy']:.2f}): {g['test_acc_deploy']:.2%} at "
                     f"{macs:.3f}; static {n0} {a0:.2%} at {m0:.3f} and {n1} {a1:.2%} at {m1:.3f} "
                     f"give {static_acc:.2%} at equal MACs: dynamic {'wins' if gap > 0 else 'loses'} by "
                     f"{abs(gap) * 100:.2f} points.")
    return lines


def _plan_column(row: dict) -> str:
    """Whether the export carries the offline memory plan (exports from before it do not)."""
    report = row["report"] or {}
    if not report.get("gated_blocks"):
        return "—"
    return "yes" if "tflm_arena_bytes_online_plan" in report else "no"


def _folded_column(row: dict) -> str:
    folded = (row["report"] or {}).get("folded_gates") or {}
    parts = [f"{kind} {','.join(map(str, blocks))}" for kind, blocks in folded.items() if blocks]
    return "; ".join(parts) or "—"


def _firmware_rows(rows: list[dict]) -> list[tuple[str, dict, str, dict]]:
    """(label, row with that export's report, kernels, QEMU figures) per firmware measurement."""
    out = []
    for r in rows:
        for kernels, figures in (r["qemu"] or {}).items():
            out.append((r["name"], r, kernels, figures))
        if r["qemu_folded"]:
            report, qemu = r["qemu_folded"]
            out += [(f"{r['name']} (folded)", {**r, "report": report}, kernels, figures)
                    for kernels, figures in qemu.items()]
    return out


def _never_run_bytes(row: dict) -> int | None:
    """Flash held by the then-branches of blocks that ran on none of the bench images (int8)."""
    sizes = (row["report"] or {}).get("branch_weight_bytes")
    rates = _int8(row).get("exec_rate_per_block")
    if sizes is None or rates is None:
        return None
    return sum(size for size, rate in zip(sizes, rates) if rate == 0)


def _int8(row: dict) -> dict:
    return ((row["bench"] or {}).get("runtimes") or {}).get("tflite_int8") or {}


def _folded_runtimes(row: dict) -> dict:
    """The folded export's own bench (NAME/bench_folded), by runtime; empty where not benched."""
    return (row.get("bench_folded") or {}).get("runtimes") or {}


def _folded_point(row: dict) -> tuple[float, float] | None:
    """(executed MACs / plain ResNet-20, int8 accuracy) of the folded export, where benched."""
    int8 = _folded_runtimes(row).get("tflite_int8")
    return (int8["mac_ratio"] * _vs_resnet20(row["config"]), int8["accuracy"]) if int8 else None


def _deployed_runtimes(row: dict) -> dict:
    """The bench, by runtime, of the export to deploy: the folded one where it was benched
    (calibrated without its dead blocks), else the plain export."""
    if _folded_point(row) is not None:
        return _folded_runtimes(row)
    return (row["bench"] or {}).get("runtimes") or {}


def _deployed(row: dict) -> tuple[float, float, str]:
    """(executed MACs / plain ResNet-20, int8 accuracy, how it was read) of the export to deploy
    (`_deployed_runtimes`)."""
    point = _folded_point(row)
    if point is None:
        return _macs(row), _int8(row)["accuracy"], ""
    tflm = _deployed_runtimes(row).get("tflm")
    tflm = f", TFLM {tflm['accuracy']:.2%}" if tflm else ""
    return (*point, f" (folded export, calibrated without its dead blocks{tflm}; "
                    f"unfolded export int8 {_int8(row)['accuracy']:.2%})")


def _exported(row: dict) -> str | None:
    """Which checkpoint the int8 export was made from: 'E147 best.pt'. best.pt is chosen on test
    accuracy, the images the bench then judges it on; last.pt is the final epoch."""
    source = (row.get("report") or {}).get("checkpoint")
    return f"E{source['epoch']} {Path(source['path']).name}" if source else None


# The keys that make a preset what it is (its loss weights, targets and gate readings).
OBJECTIVE_KEYS = ("lambda_flops", "lambda_cons", "tau_target", "gamma0", "gate_init", "routing", "lambda_adapt")


# The loss terms among them: a run that keeps these trains the preset's objective, whatever its
# schedule, start or gate initialisation (which its schedule column and label say).
LOSS_KEYS = ("lambda_flops", "lambda_cons", "tau_target", "routing", "lambda_adapt")


@functools.lru_cache  # asked once per row and section; each call reads the preset's YAML
def _preset_config(name: str) -> dict | None:
    from cosinegate.train.config import ConfigError, TrainConfig, preset_values
    try:
        return {**vars(TrainConfig()), **preset_values(name)}
    except ConfigError:  # a preset this version no longer has
        return None


def _paper_key(row: dict) -> str | None:
    """The paper's Table 2 row a run of ours stands beside: a ResNet-20 of that preset (gated, or
    plain for resnet20) trained with the preset's losses."""
    config, name = row["config"], row["preset"]
    preset = _preset_config(name) if name in PAPER else None
    if (preset is None or config["depth"] != 20 or config["removed_blocks"]
            or config["gated"] != (name != "resnet20")):
        return None
    return name if all(config[k] == preset[k] for k in LOSS_KEYS if k in config) else None


def _changed_from_preset(config: dict) -> str:
    """'tau_target 0.65 (preset 0.70), ...': where a run's objective departs from its named preset."""
    preset = _preset_config(config["preset"])
    if preset is None:
        return ""
    return ", ".join(f"{k} {config[k]:g} (preset {preset[k]:g})" if isinstance(preset[k], float)
                     else f"{k} {config[k]} (preset {preset[k]})"
                     for k in OBJECTIVE_KEYS if k in config and config[k] != preset[k])


def _exported_words(row: dict, before: str, after: str = "") -> str:
    exported = _exported(row)
    return f"{before}exported {exported}{after}" if exported else ""


def _plain_resnet20(rows: list[dict], row: dict) -> dict | None:
    """The deployed plain ResNet-20 to hold the row against: the one it warm-started from, else the
    one trained with the row's dataset and schedule, if there is one."""
    def schedule(r):
        return (r["config"]["dataset"], r["config"]["epochs"], r["config"]["warmup_epochs"], r["epochs_done"],
                _source_name(r["config"]))

    if _source_name(row["config"]):
        return next((r for r in rows if r["name"] == _source_name(row["config"]) and _is_plain_resnet20(r)), None)
    return next((r for r in rows if _is_plain_resnet20(r) and schedule(r) == schedule(row)), None)


def _is_plain_resnet20(row: dict) -> bool:
    """An ungated ResNet-20 with all its blocks and an int8 bench: a baseline a gated row can face."""
    config = row["config"]
    return config["depth"] == 20 and not config["gated"] and not config["removed_blocks"] and bool(_int8(row))


def _baseline_words(row: dict) -> str:
    return ("the plain ResNet-20 it started from" if _source_name(row["config"])
            else "plain ResNet-20 with the same schedule")


def _warm_start_note(rows: list[dict]) -> str | None:
    """What a *warm start from NAME* row is, and, where one grew a deeper net, how it grew."""
    warm = [r for r in rows if _source_name(r["config"])]
    if not warm:
        return None
    note = ("**Warm starts.** Rows whose schedule says *warm start from NAME* began from that run's "
            "final checkpoint (`cg-train --init-from NAME/run/last.pt`: convolutions, norms and "
            "classifier copied, gates and controllers fresh) and then trained the gates with the "
            "schedule shown. That is not the paper's protocol (160 epochs from scratch); their "
            "baseline is the run they started from.")
    grown = [(r["name"], r["config"]["depth"], source["config"]["depth"]) for r in warm
             for source in [_source_row(r, rows)] if source and source["config"]["depth"] < r["config"]["depth"]]
    if grown:
        note += (" A deeper net warm-started from a shallower one (" + ", ".join(
            f"{name}: ResNet-{ours} from ResNet-{theirs}" for name, ours, theirs in grown) +
            ") keeps the source's blocks at the head of each stage and starts each new block as an "
            "identity (a copy of the stage's last block with its last norm zeroed), so it begins "
            "exactly where the source net ended.")
    return note


def _goal_lines(rows: list[dict]) -> list[str]:
    """Every deployed Balanced ResNet-20 (the paper's claim is for ResNet-20; deeper nets have their
    own section) against the bar: int8 accuracy >= the paper's 91.3 % at
    <= 0.70 executed MACs; beside it, what plain ResNet-20 reaches with the same schedule, which
    tells how much of the gap is the schedule's."""
    lines = []
    for r in (r for r in rows if r["preset"] == "balanced" and r["config"]["depth"] == 20 and _int8(r)):
        macs, acc, how = _deployed(r)
        accurate, cheap = acc >= PAPER["balanced"]["acc"], macs <= 0.70
        verdict = {(True, True): "met", (True, False): "not met (accuracy reaches it, compute does not)",
                   (False, True): "not met (compute within it, accuracy below)"}.get((accurate, cheap), "not met")
        changed = _changed_from_preset(r["config"])
        line = (f"- **{r['name']}** ({_schedule(r['config'], r['epochs_done'])}{_exported_words(r, '; ')}"
                f"{'; ' + changed if changed else ''}): "
                f"int8 {acc:.2%} at {macs:.3f} executed MACs on {_int8(r)['images']:,} test images"
                f"{how}: {verdict}")
        base = _plain_resnet20(rows, r)
        if base:
            line += (f"; {_baseline_words(r)}, **{base['name']}**{_exported_words(base, ' (', ')')}: "
                     f"int8 {_int8(base)['accuracy']:.2%} at 1.000")
            paired = _paired(r, base)
            if paired:
                images, wins, losses, p = paired
                line += (f" (on the same {images:,} images: right where it is wrong on {wins}, wrong where "
                         f"it is right on {losses}, exact McNemar p = {p:.2g})")
        lines.append(line + ".")
    return lines


def _noise(acc_a: float, images_a: int, acc_b: float, images_b: int) -> float:
    """Half-width of the 95 % interval of a difference of two test accuracies, treating each as a
    binomial proportion over its own images (unpaired, so on the same images it errs wide)."""
    return 1.96 * math.sqrt(acc_a * (1 - acc_a) / images_a + acc_b * (1 - acc_b) / images_b)


def _deployed_correct(row: dict) -> str | None:
    """Per-image int8 correctness ('1'/'0' per test image) of the export `_deployed` judges."""
    return (_deployed_runtimes(row).get("tflite_int8") or {}).get("correct")


def _mcnemar(a: str, b: str) -> tuple[int, int, float]:
    """Exact two-sided McNemar test of two models on the same images, from their per-image
    correctness: (images only `a` gets right, images only `b` gets right, p-value)."""
    only_a = sum(x == "1" and y == "0" for x, y in zip(a, b))
    only_b = sum(x == "0" and y == "1" for x, y in zip(a, b))
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))
    return only_a, only_b, min(1.0, 2 * tail / 2 ** n) if n else 1.0


def _paired(row: dict, base: dict) -> tuple[int, int, int, float] | None:
    """(images compared, only `row` right, only `base` right, McNemar p) of the two deployed exports,
    where both benches kept per-image results on the same images."""
    ours, theirs = _deployed_correct(row), _deployed_correct(base)
    if not (ours and theirs and len(ours) == len(theirs)):
        return None
    return (len(ours), *_mcnemar(ours, theirs))


def _deeper_lines(rows: list[dict]) -> list[str]:
    """Gated nets deeper than ResNet-20 against plain ResNet-20 of the same schedule, both int8."""
    lines = []
    for r in (r for r in rows if r["config"]["gated"] and r["config"]["depth"] > 20 and _int8(r)):
        base = _plain_resnet20(rows, r)
        macs, acc, how = _deployed(r)
        line = (f"- **{r['name']}** (gated ResNet-{r['config']['depth']}, {_schedule(r['config'], r['epochs_done'])}): "
                f"int8 {acc:.2%} at {macs:.3f} of ResNet-20's MACs{how}")
        if base:
            plain = _int8(base)["accuracy"]
            gap, noise = acc - plain, _noise(acc, _int8(r)["images"], plain, _int8(base)["images"])
            line += f"; {_baseline_words(r)}, **{base['name']}**: int8 {plain:.2%} at 1.000: "
            paired = _paired(r, base)
            if macs > 1.0:
                line += "at more compute, goal not met."
            elif paired:
                images, wins, losses, p = paired
                line += (f"{gap * 100:+.2f} points; on the same {images:,} images it is right where plain "
                         f"is wrong on {wins} and wrong where plain is right on {losses} (exact McNemar "
                         f"p = {p:.3g}): ")
                if p < 0.05:
                    line += (f"{'more' if wins > losses else 'less'} accurate at no more compute, "
                             f"goal {'met' if wins > losses else 'not met'}.")
                else:
                    line += "no difference shown at no more compute; goal not shown (it needs p < 0.05)."
            elif abs(gap) <= noise:
                line += (f"{gap * 100:+.2f} points, within sampling noise (±{noise * 100:.2f} points, 95 %): no "
                         "difference shown at no more compute; goal not shown (it needs a gain beyond the noise).")
            else:
                line += (f"{'more' if gap > 0 else 'less'} accurate by {abs(gap) * 100:.2f} points "
                         f"(noise ±{noise * 100:.2f}, 95 %) at no more compute, goal {'met' if gap > 0 else 'not met'}.")
        control = _fine_tuned_control(rows, r) if base else None
        if control:
            paired = _paired(r, control)
            line += (f" Control: plain ResNet-20 warm-started from the same run for the same {r['epochs_done']} "
                     f"epochs, **{control['name']}**: int8 {_int8(control)['accuracy']:.2%}")
            line += (f"; {paired[1]} images only the deeper net gets right, {paired[2]} only the control "
                     f"(exact McNemar p = {paired[3]:.3g})." if paired else ".")
        lines.append(line if base else line + ".")
    return lines


def _fine_tuned_control(rows: list[dict], row: dict) -> dict | None:
    """A plain ResNet-20 trained from the same source as the warm-started `row` for as many epochs:
    it separates what depth and routing add from what the extra epochs alone do."""
    source = _source_name(row["config"])
    return next((r for r in rows if source and _source_name(r["config"]) == source and _is_plain_resnet20(r)
                 and r["epochs_done"] == row["epochs_done"]), None)


def _epochs_words(row: dict, rows: list[dict]) -> str:
    """'10 ep' for a run from scratch, '160 + 12 ep, warm start' for one that began from another."""
    source = _source_row(row, rows)
    return (f"{source['epochs_done']} + {row['epochs_done']} ep, warm start" if source
            else f"{row['epochs_done']} ep")


def _runs_everything_words(rows: list[dict]) -> str:
    """Runs whose mean relaxed gate says compute was saved while the hard gate skips no block."""
    full = [r for r in rows if r["last"]["gbar"] < 0.95 and (_macs(r) or 0) >= 0.9995]
    if not full:
        return ""
    told = ", ".join(f"{r['name']} (ḡ {r['last']['gbar']:.3f})" for r in full)
    verb = "executes" if len(full) == 1 else "execute"
    return (f" A mean gate below 1 need not skip anything: {told} {verb} every block, since every "
            "hard gate stays above the threshold, so the paper's metric would count compute saved that "
            "the deployed model spends.")


def _not_reproduced_lines(rows: list[dict]) -> list[str]:
    """Where our preset runs part from the paper's Table 2, each point with the measurement that
    shows it; a point is left out when the runs that would show it are missing."""
    presets = [r for r in rows if r["config"]["gated"] and _paper_key(r)]
    lines = []
    # (run, its deployed (MACs, accuracy), plain ResNet-20's int8 accuracy on the same schedule)
    gaps = [(r, _deployed(r)[:2], _int8(base)["accuracy"]) for r in presets
            if _int8(r) and (base := _plain_resnet20(rows, r))]
    if gaps:
        told = "; ".join(f"{r['name']} {(acc - plain) * 100:+.2f} points at {macs:.3f} ({_epochs_words(r, rows)})"
                         for r, (macs, acc), plain in gaps)
        lines.append("- **Accuracy against plain ResNet-20.** The paper's Balanced matches ResNet-20 (91.3 % "
                     f"both) at 0.715 mean gate. Ours, int8 against plain ResNet-20 int8 of the same schedule "
                     f"(for a warm start, the plain run it began from): {told}."
                     + (" Every gated run here trails its plain ResNet-20 (the bar section's paired tests "
                        "say which gaps are beyond noise); whether the gap closes on a gated net trained "
                        "from scratch for the paper's 160 epochs needs that run." if all(
                            acc < plain for _, (_, acc), plain in gaps) else ""))
    gbar = [r for r in presets if "gbar" in r["last"]]
    if gbar:
        told = "; ".join(f"{r['name']} τ_target {r['config']['tau_target']:.2f}, paper {PAPER[r['preset']]['flops']:.3f}, "
                         f"ours {r['last']['gbar']:.3f} (executed MACs {_macs(r):.3f})" for r in gbar)
        lines.append("- **Compute.** The paper's \"FLOPs\" is the mean relaxed gate ḡ in training, and its "
                     "gate needs F(x) before deciding, so as written every block runs (executed MACs 1.000). "
                     "Ours is what the x-only gate executes. With the paper's λ_FLOPs and τ_target, the "
                     "penalty max(0, ḡ − τ_target)² leaves our ḡ "
                     + ("at each preset's target" if all(abs(r["last"]["gbar"] - r["config"]["tau_target"]) < 0.05
                                                         for r in gbar) else "where the list shows")
                     + f", while the paper's Aggressive and Conservative end about 0.16 above theirs: {told}."
                     + _runs_everything_words(gbar))
    if presets:
        told = ", ".join(f"{r['name']} E{r['peak']['epoch']} of {r['epochs_done']} (end "
                         f"{_test_acc(r['last']):.2%})" for r in presets)
        drop = max(_test_acc(r["peak"]) - _test_acc(r["last"]) for r in presets)
        lines.append("- **Peak and final accuracy.** The paper's Conservative peaks at 93.2 % (E146) and ends at "
                     "82.2 % (E160), 11 points lower within the cosine schedule's last 14 epochs, and below "
                     f"its own Aggressive. Our peaks (deploy gate, float) and last epochs: {told}; the largest "
                     f"drop from peak to end is {drop * 100:.2f} points.")
    paths = [r for r in presets if "distinct_paths_deploy" in r["last"]]
    if paths:
        told = ", ".join(f"{r['name']} {r['last']['distinct_paths_deploy']} (adaptivity "
                         f"{r['last']['adaptivity_deploy']:.2f})" for r in paths)
        lines.append("- **Input-adaptive routing.** The paper describes routing that adapts to each input. Distinct "
                     f"gate patterns over the 10,000 test images under the deploy gate: {told}."
                     + (" With the paper's losses the routing settles on one path for every image: static "
                        "pruning" + (" (see the static twins below)." if any(
                            r["name"].endswith("_static") for r in rows) else ".") if all(
                            r["last"]["distinct_paths_deploy"] == 1 for r in paths) else ""))
    return lines


def render(rows: list[dict], root: Path, plot_path: Path | None, earlier: Path | None = None) -> str:
    columns = [("configuration", ""), ("net", ""), ("schedule", ""), ("paper acc", ".1%"), ("paper FLOPs", ".3f"),
               ("ours: acc paper gate", ".2%"), ("ours: peak deploy acc", ""), ("exported", ""), ("ours: gbar", ".3f"), ("deploy float acc", ".2%"),
               ("int8 TFLite acc", ".2%"), ("TFLM acc", ".2%"), ("executed MACs", ".3f"),
               ("skip rate", ".3f"), ("adaptivity", ".2f"), ("bench images", ",d"), ("QEMU M4 instr. ratio", ".3f")]
    body = []
    for r in rows:
        # Not beside a variant of the objective, a static twin or a deeper net.
        paper = PAPER.get(_paper_key(r), {})
        last, bench = r["last"], r["bench"] or {}
        rt = bench.get("runtimes", {})
        qemu = bench.get("qemu") or {}
        instr = next((q["vs all-on"] for q in qemu.get("rows", [])
                      if q["variant"] == "gated" and q["kernels"] == "cmsis_nn"), None)
        body.append({
            "configuration": r["name"], "net": f"ResNet-{r['config']['depth']}",
            "schedule": _schedule(r["config"], r["epochs_done"]),
            "paper acc": paper.get("acc"), "paper FLOPs": paper.get("flops"),
            "ours: acc paper gate": last.get("test_acc_paper"),
            "ours: gbar": last.get("gbar") if r["config"]["gated"] else None,
            "ours: peak deploy acc": f"{_test_acc(r['peak']):.2%} (E{r['peak']['epoch']})",
            "exported": _exported(r),
            "deploy float acc": rt.get("torch", {}).get("accuracy"),
            "int8 TFLite acc": _int8(r).get("accuracy"),
            "TFLM acc": rt.get("tflm", {}).get("accuracy"),
            "executed MACs": _macs(r),
            "skip rate": _int8(r).get("skip_rate", last.get("skip_rate_deploy")),
            "adaptivity": _int8(r).get("adaptivity", last.get("adaptivity_deploy")),
            "bench images": bench.get("images"),
            "QEMU M4 instr. ratio": instr,
        })
    body += [{"configuration": name, "net": "ResNet-20", "schedule": "no run of ours here",
              "paper acc": paper["acc"], "paper FLOPs": paper["flops"]}
             for name, paper in PAPER.items() if name not in {_paper_key(r) for r in rows}]
    parts = [
        "# Results: CIFAR-10, the paper's table next to deployed int8 models",
        f"Generated by `python -m cosinegate.experiments.results {root} --out RESULTS.md` from the run, "
        "export and bench files that `python -m cosinegate.experiments.reproduce` writes, as kept in the "
        "repository by `python -m cosinegate.experiments.archive` (a few kilobytes a run; checkpoints and "
        "models stay in the run folders). The paper's values stand beside every run of ours that trains "
        "a ResNet-20 with that preset's losses, whatever its schedule or start (its schedule column says which); a "
        "Table 2 row with no such run shows the paper's values alone. \"paper\" columns are the "
        "paper's Table 2 at epoch 160 (FLOPs = its mean relaxed gate). \"ours: acc paper gate\" uses the "
        "paper's eq. 16 rule on the measured CIR (not deployable: it needs F(x)); the deploy columns use "
        "the x-only gate, in float (PyTorch) and int8 (TFLite, TFLM); executed MACs include stem, head and "
        "controllers and are divided by plain ResNet-20's 40,551,040. \"exported\" is the checkpoint the int8 "
        "columns come from: best.pt is the best deploy accuracy on the test set after the FLOPs warm-up (so "
        "chosen on the images it is judged on), last.pt the final epoch (what the paper's Table 2 reports; "
        "`reproduce --checkpoint last`). \"QEMU M4 instr. ratio\" is the gated "
        "int8 model's instructions on the QEMU Cortex-M4 (CMSIS-NN kernels) over the same model with every "
        "gate forced on.",
        table(columns, body),
    ]
    warm_starts = _warm_start_note(rows)
    if warm_starts:
        parts.append(warm_starts)
    if any(r["config"]["epochs"] != 160 and not _source_name(r["config"]) for r in rows):
        parts.append("**Not the paper's protocol.** Rows marked *shortened* ran fewer than the paper's 160 "
                     "epochs (on a 2-core CPU), so their accuracies sit far below Table 2: compare our rows "
                     "with each other (same schedule), not with the paper's accuracy. \"ours: acc paper "
                     "gate\" and the peak are on all 10,000 test images; the deploy, int8 and TFLM columns "
                     "come from `cg-bench` on the first \"bench images\" test images.")
    not_reproduced = _not_reproduced_lines(rows)
    if not_reproduced:
        parts += ["## Where the paper's Table 2 is not reproduced, and why", "\n".join(not_reproduced)]
    goal = _goal_lines(rows)
    if goal:
        parts += ["## The bar: int8 Balanced at least 91.3 % at no more than 0.70 executed MACs",
                  "The paper's Balanced ResNet-20 claim (91.3 % at 0.715 mean gate), held against deployed int8 models "
                  "and executed MACs:", "\n".join(goal)]
    deeper = _deeper_lines(rows)
    if deeper:
        parts += ["## Deeper gated networks at ResNet-20's compute",
                  "A gated ResNet-32 or -56 trained to execute no more MACs than plain ResNet-20 "
                  "(`--depth 32 --tau-target T`), against plain ResNet-20 with the same schedule (for a warm "
                  "start, the plain run it began from), both int8 "
                  "on the same bench images. Where both benches kept per-image results the two are compared "
                  "image by image (exact McNemar test on the images only one of them gets right); otherwise "
                  "the noise is the 95 % interval of the difference of two accuracies, each a binomial "
                  "proportion over its test images (unpaired, so wider than a paired test):",
                  "\n".join(deeper)]
    by_name = {r["name"]: r for r in rows}
    pairs = [(by_name[r["name"][: -len("_static")]], r) for r in rows
             if r["name"].endswith("_static") and r["name"][: -len("_static")] in by_name]
    if pairs:
        lines = []
        for gated, static in pairs:
            g, s_ = gated["last"], static["last"]
            lines.append(f"- **{gated['name']}** (gated, adaptivity {g['adaptivity_deploy']:.2f}, "
                         f"{g['distinct_paths_deploy']} distinct paths): {g['test_acc_deploy']:.2%} at "
                         f"{g['mac_ratio_deploy'] * _vs_resnet20(gated['config']):.3f} executed MACs; **{static['name']}** (blocks "
                         f"{static['config']['removed_blocks']} deleted, no gates): {s_['test_acc_full']:.2%} at "
                         f"{s_['mac_ratio_deploy'] * _vs_resnet20(static['config']):.3f}; both {_schedule(static['config'], static['epochs_done'])}, "
                         "all 10,000 test images.")
        parts += ["## Dynamic routing vs static pruning at equal executed MACs",
                  "The static twin deletes the blocks the gated run skips most "
                  "(`python -m cosinegate.train.static_baseline RUN`) and trains with the same schedule.",
                  "\n".join(lines)]
        frontier = _static_frontier(rows)
        if frontier:
            parts += ["Whole blocks rarely give exactly equal MACs, so each gated run is also read against "
                      "the static networks (no gates; blocks deleted, or none: plain ResNet-20) trained with "
                      "the same depth and schedule, interpolating linearly between the two that bracket its "
                      "executed MACs, the most accurate one where several spend the same (float, all 10,000 "
                      "test images):", "\n".join(frontier)]
    firmware = _firmware_rows(rows)
    if firmware:
        # plain ResNet-20's count: the run named resnet20, else any plain ResNet-20 measured
        measured = sorted((r for r in rows if r["qemu"] and not r["config"]["gated"] and r["config"]["depth"] == 20
                           and not r["config"].get("removed_blocks")), key=lambda r: r["name"] != "resnet20")
        plain = {k: v["instructions_mean"] for k, v in measured[0]["qemu"].items()} if measured else {}
        parts += ["## Firmware on QEMU Cortex-M4",
                  "From ROOT/NAME/qemu.json (`python -m cosinegate.bench.qemu EXPORT --json ...`) or else the "
                  "bench's QEMU run (`cg-bench ... --tflm-root`). Instructions inside `Invoke()` on the first "
                  "test images, counted by the project's TCG plugin; \"vs plain\" divides by plain ResNet-20's count with the same kernels, beside the "
                  "executed-MAC ratio of the same images. \"never-run weights\": the flash that the blocks which ran on "
                  "none of the bench images hold (`branch_weight_bytes` in the export report; exports from before "
                  "it leave the column empty). \"offline plan\": the export carries the memory plan "
                  "that lets TFLM's IF share its tensors with the branches (exports made before it do not; "
                  "their arena holds one more activation per gated block). \"(folded)\" rows: the same checkpoint "
                  "exported with `--fold-static-gates` (`reproduce --fold-static-gates`, ROOT/NAME/qemu_folded.json): "
                  "the gates that interval analysis proves constant for every input lose their IF, a block that "
                  "can never run leaves the flash, and the export checks the folded model computes the same "
                  "bytes as the unfolded one on every parity image.",
                  table([("configuration", ""), ("kernels", ""), ("flash B", ",d"), ("never-run weights B", ",d"),
                         ("RAM B", ",d"),
                         ("arena used B", ",d"), ("offline plan", ""), ("gates folded", ""),
                         ("instructions / inference", ",.0f"), ("vs plain", ".3f"),
                         ("executed MACs", ".3f"), ("images", "d")],
                        [{"configuration": label, "kernels": k, "flash B": v["flash_bytes"],
                          "never-run weights B": _never_run_bytes(r),
                          "RAM B": v["ram_bytes"], "arena used B": v["arena_used"],
                          "offline plan": _plan_column(r), "gates folded": _folded_column(r),
                          "instructions / inference": v["instructions_mean"],
                          "vs plain": v["instructions_mean"] / plain[k] if k in plain else None,
                          "executed MACs": _firmware_mac_ratio(r, v), "images": v["images"]}
                         for label, r, k, v in firmware])]
    if earlier:
        parts.append(f"**Earlier runs.** [{earlier.as_posix()}]({earlier.as_posix()}) is this table as last "
                     "generated from run folders that are gone with the machine that held them (made before "
                     "the archive existed), kept as it was: its rows cannot be regenerated, and each names "
                     "the command that would make it again.")
    machines = {json.dumps(r["bench"]["machine"], sort_keys=True) for r in rows if r["bench"]}
    if machines:
        parts.append("Machines: " + "; ".join(
            f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}" for m in map(json.loads, machines)))
    if plot_path:
        parts.append(f"![Pareto]({plot_path.as_posix()})")
        curve_files = [(r["name"], kind, plot_path.parent / f"{r['name']}_{kind}.png")
                       for r in rows for kind in ("accuracy", "compute")]
        curves = [f"![{name} {kind}]({path.as_posix()})" for name, kind, path in curve_files if path.is_file()]
        if curves:
            parts += ["## Training curves (paper Fig. 6-8)", "\n".join(curves)]
    return "\n\n".join(parts) + "\n"


def pareto_plot(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for key, p in PAPER.items():
        ax.scatter(p["flops"], p["acc"], marker="x", color="gray")
        ax.annotate(f"paper {p['label'].replace('CosineGate ', '')}", (p["flops"], p["acc"]), fontsize=7,
                    color="gray", xytext=(3, -9), textcoords="offset points")  # below the mark, clear of our labels
    # One colour per schedule: only points of the same schedule compare.
    training = {r["name"]: _training_label(r, rows) for r in rows}
    schedules = sorted(set(training.values()), key=lambda label: [int(w) for w in label.split() if w.isdigit()])
    colour = {label: f"C{i}" for i, label in enumerate(schedules)}
    stacked: dict[float, tuple[float, int]] = {}   # column -> (top accuracy, labels so far)
    for r in sorted(rows, key=lambda r: -_test_acc(r["last"])):
        last, c = r["last"], colour[training[r["name"]]]
        if _folded_point(r):  # the export to deploy: calibrated without its dead blocks
            point, label, style = _folded_point(r), f"{r['name']} (folded)", {"color": c}
        elif _int8(r):
            point, label, style = (_macs(r), _int8(r)["accuracy"]), r["name"], {"color": c}
        elif "mac_ratio_deploy" in last:  # not exported (a static twin): its float test accuracy
            point = (_macs(r), _test_acc(last))
            label, style = f"{r['name']} (float)", {"facecolors": "none", "edgecolors": c}
        else:
            continue
        ax.scatter(*point, **style)
        # Points at (nearly) the same compute: labels listed beside the column, a thin line to each.
        column = round(point[0], 2)
        top, count = stacked.get(column, (point[1], 0))
        stacked[column] = (top, count + 1)
        ax.annotate(label, point, xytext=(point[0] + 0.03, top + 0.003 - 0.0045 * count), fontsize=7,
                    va="center", arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "gray"})
    handles = [Line2D([], [], marker="o", ls="", color=colour[e], label=f"ours, {e}") for e in schedules]
    handles += [Line2D([], [], marker="o", ls="", markerfacecolor="none", markeredgecolor="gray",
                       label="hollow: float, not exported"),
                Line2D([], [], marker="x", ls="", color="gray", label="paper, 160 epochs")]
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)  # below: hides no point
    ax.set(xlabel="compute: executed MACs / ResNet-20 (ours, int8)  ·  mean gate (paper)",
           ylabel="CIFAR-10 test accuracy", title="Accuracy vs compute")
    ax.grid(alpha=0.3)
    atomic.save_with(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)


@errors.command("python -m cosinegate.experiments.results", expected=(OSError,))
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path, default=Path("RESULTS.md"))
    parser.add_argument("--plots", type=Path, default=Path("docs/results"))
    args = parser.parse_args(argv)
    rows = collect(args.root)
    if not rows:
        print(f"results: error: no run folders with metrics.jsonl under {args.root}", file=sys.stderr)
        return 1
    plot = args.plots / "pareto.png"
    pareto_plot(rows, plot)
    for r in rows:  # the runs' own curves, copied beside the table
        for kind in ("accuracy", "compute"):
            source = args.root / r["name"] / "run" / "plots" / f"{kind}.png"
            if source.is_file():
                atomic.write_bytes(args.plots / f"{r['name']}_{kind}.png", source.read_bytes())
    earlier = args.plots / "earlier" / "RESULTS.md"
    atomic.write_text(args.out, render(rows, args.root, plot, earlier if earlier.is_file() else None))
    print(f"results: wrote {args.out} and {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
