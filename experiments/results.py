"""Build RESULTS.md and the Pareto plot from the folders `experiments.reproduce` writes.

    python -m cosinegate.experiments.results results/cifar10 [--outside results/outside] --out RESULTS.md [--plots docs/results]

ROOT is a runs root or its archive (`experiments.archive`: the same layout with only the files read
here). `experiments.rows` reads the runs, `experiments.findings` compares them, this module only
renders tables and plots: no interpretation (that is written once, in docs/experiments-log.md).
"""
import json
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from cosinegate import atomic, errors  # noqa: E402
from cosinegate.bench.report import table  # noqa: E402
from cosinegate.experiments import findings as F  # noqa: E402
from cosinegate.experiments import rows as R  # noqa: E402
from cosinegate.experiments.rows import collect  # noqa: E402,F401  (the table's input, for callers)


def _yes_no(flag: bool | None) -> str | None:
    return None if flag is None else ("yes" if flag else "no")


def _points(gap: float | None) -> str | None:
    return None if gap is None else f"{gap * 100:+.2f}"


def _training_tables(rows: list[dict]) -> list[str]:
    columns = [("run", ""), ("net", ""), ("schedule", ""), ("paper acc", ".1%"), ("paper FLOPs", ".3f"),
               ("acc paper gate", ".2%"), ("gbar", ".3f"), ("peak deploy acc", "")]
    body = [{"run": r["name"], "net": f"ResNet-{r['config']['depth']}",
             "schedule": R.schedule(r["config"], r["epochs_done"], r["machines"]),
             "paper acc": R.PAPER.get(R.paper_key(r), {}).get("acc"),
             "paper FLOPs": R.PAPER.get(R.paper_key(r), {}).get("flops"),
             "acc paper gate": r["last"].get("test_acc_paper"),
             "gbar": r["last"].get("gbar") if r["config"]["gated"] else None,
             "peak deploy acc": f"{R.test_acc(r['peak']):.2%} (E{r['peak']['epoch']})"} for r in rows]
    body += [{"run": name, "net": "ResNet-20", "schedule": "no run of ours here", "paper acc": paper["acc"],
              "paper FLOPs": paper["flops"]}
             for name, paper in R.PAPER.items() if name not in {R.paper_key(r) for r in rows}]
    deploy_columns = [("run", ""), ("exported", ""), ("deploy float acc", ".2%"), ("int8 TFLite acc", ".2%"),
                      ("TFLM acc", ".2%"), ("executed MACs", ".3f"), ("skip rate", ".3f"), ("adaptivity", ".2f"),
                      ("bench images", ",d"), ("QEMU M4 instr. ratio", ".3f")]
    deploy = []
    for r in rows:
        bench = r["bench"] or {}
        runtimes = bench.get("runtimes", {})
        qemu = bench.get("qemu") or {}
        deploy.append({
            "run": r["name"], "exported": R.exported(r),
            "deploy float acc": runtimes.get("torch", {}).get("accuracy"),
            "int8 TFLite acc": R.int8(r).get("accuracy"), "TFLM acc": runtimes.get("tflm", {}).get("accuracy"),
            "executed MACs": R.macs(r),
            "skip rate": R.int8(r).get("skip_rate", r["last"].get("skip_rate_deploy")),
            "adaptivity": R.int8(r).get("adaptivity", r["last"].get("adaptivity_deploy")),
            "bench images": bench.get("images"),
            "QEMU M4 instr. ratio": next((q["vs all-on"] for q in qemu.get("rows", [])
                                         if q["variant"] == "gated" and q["kernels"] == "cmsis_nn"), None)})
    return ["## Runs: training", table(columns, body),
            "## Runs: deployment (unfolded export)", table(deploy_columns, deploy)]


def _paper_table(comparisons: list[F.PaperComparison]) -> list[str]:
    columns = [("run", ""), ("training", ""), ("paper acc", ".1%"), ("int8 acc", ".2%"), ("plain int8", ".2%"),
               ("vs plain, points", ""), ("paper FLOPs", ".3f"), ("τ_target", ".2f"), ("gbar", ".3f"),
               ("executed MACs", ".3f"), ("peak", ""), ("last", ".2%"), ("paths", "d"), ("adaptivity", ".2f")]
    return ["## Beside the paper's Table 2",
            "Runs that train a preset's losses on a ResNet-20. int8 accuracy is the deployed export's; "
            "plain int8 is plain ResNet-20 with the same schedule (for a warm start: its source). "
            "peak and last: float deploy gate, all test images.",
            table(columns, [{"run": c.run, "training": c.training, "paper acc": c.paper_accuracy,
                             "int8 acc": c.accuracy, "plain int8": c.plain_accuracy,
                             "vs plain, points": _points(c.gap_to_plain), "paper FLOPs": c.paper_flops,
                             "τ_target": c.tau_target, "gbar": c.gbar, "executed MACs": c.macs,
                             "peak": f"{c.peak_accuracy:.2%} (E{c.peak_epoch} of {c.epochs_done})",
                             "last": c.last_accuracy, "paths": c.distinct_paths, "adaptivity": c.adaptivity}
                            for c in comparisons])]


def _deployed_cells(d: R.Deployed) -> dict:
    return {"export": "folded" if d.folded else "unfolded", "int8 acc": d.accuracy, "TFLM acc": d.tflm_accuracy,
            "unfolded int8 acc": d.unfolded_accuracy, "executed MACs": d.macs}


_DEPLOYED_COLUMNS = [("export", ""), ("int8 acc", ".2%"), ("TFLM acc", ".2%"), ("unfolded int8 acc", ".2%"),
                     ("executed MACs", ".3f")]


def _bar_table(verdicts: list[F.BarVerdict]) -> list[str]:
    def changed(v):
        def value(x):
            return f"{x:g}" if isinstance(x, float) else str(x)
        return ", ".join(f"{k} {value(ours)} (preset {value(preset)})" for k, (ours, preset) in v.changed.items()) or None

    columns = [("run", ""), ("exported", "")] + _DEPLOYED_COLUMNS + [
        ("accuracy ≥ bar", ""), ("MACs ≤ bar", ""), ("met", ""), ("baseline", ""), ("objective changed", "")]
    return [f"## The bar: int8 Balanced at least {F.BAR_ACCURACY:.1%} at no more than {F.BAR_MACS:.2f} executed MACs",
            "The paper's Balanced ResNet-20 claim, held against deployed int8 models and executed MACs. "
            "The baseline's paired test is in the comparisons table.",
            table(columns, [{"run": v.run, "exported": v.exported, **_deployed_cells(v.deployed),
                             "accuracy ≥ bar": _yes_no(v.accurate), "MACs ≤ bar": _yes_no(v.cheap),
                             "met": _yes_no(v.met), "baseline": v.baseline.reference if v.baseline else None,
                             "objective changed": changed(v)} for v in verdicts])]


def _deeper_table(verdicts: list[F.DeeperVerdict]) -> list[str]:
    columns = [("run", ""), ("net", "")] + _DEPLOYED_COLUMNS + [
        ("baseline", ""), ("outcome", ""), ("goal met", ""), ("control", "")]
    return ["## Deeper gated networks at ResNet-20's compute",
            "Goal: more accurate than plain ResNet-20 (the run's source, else the same schedule) at no "
            "more executed MACs, beyond the test set's noise (comparisons table).",
            table(columns, [{"run": v.run, "net": f"ResNet-{v.depth}", **_deployed_cells(v.deployed),
                             "baseline": v.baseline.reference if v.baseline else None, "outcome": v.outcome,
                             "goal met": _yes_no(v.goal_met), "control": v.control.reference if v.control else None}
                            for v in verdicts])]


def _comparison_table(comparisons: list[F.Comparison]) -> list[str]:
    columns = [("model", ""), ("reference", ""), ("relation", ""), ("model int8", ".2%"),
               ("reference int8", ".2%"), ("gap, points", ""), ("noise ±, points", ".2f"), ("images", ",d"),
               ("only model right", "d"), ("only reference right", "d"), ("McNemar p", ".3g")]
    return ["## Paired comparisons",
            "Exact McNemar test on the images only one of the two gets right, where both benches kept "
            "per-image results; noise: the unpaired 95 % half-width of the difference (wider).",
            table(columns, [{"model": c.model, "reference": c.reference, "relation": c.relation,
                             "model int8": c.model_accuracy, "reference int8": c.reference_accuracy,
                             "gap, points": _points(c.gap), "noise ±, points": c.noise * 100,
                             "images": c.paired.images if c.paired else None,
                             "only model right": c.paired.only_a if c.paired else None,
                             "only reference right": c.paired.only_b if c.paired else None,
                             "McNemar p": c.paired.p if c.paired else None} for c in comparisons])]


def _sweep_table(points: list[F.SweepPoint]) -> list[str]:
    columns = [("run", ""), ("point", ""), ("threshold", ".4g"), ("int8 acc", ".2%"), ("executed MACs", ".3f"),
               ("MAC std", ".3f"), ("adaptivity", ".2f"), ("paths", "d"), ("nearest reference", "")]
    return ["## Threshold sweeps",
            "`python -m cosinegate.bench.sweep`: one int8 export per target MAC ratio, all test images in "
            "the TFLite interpreter, each against the reference network nearest in executed MACs.",
            table(columns, [{"run": p.run, "point": p.point, "threshold": p.threshold, "int8 acc": p.accuracy,
                             "executed MACs": p.macs, "MAC std": p.mac_std, "adaptivity": p.adaptivity,
                             "paths": p.distinct_paths, "nearest reference": p.reference.reference
                             if p.reference else None} for p in points])]


def _seed_table(points: list[F.SeedPoint]) -> list[str]:
    def each(values, fmt):
        return " / ".join(format(v, fmt) for v in values)

    columns = [("run", ""), ("point", ""), ("seeds", ""), ("int8 acc", ""), ("executed MACs", ""),
               ("static", ""), ("static int8 acc", ""), ("static MACs", ""), ("mean gap, points", ""),
               ("images", ",d"), ("only model right", "d"), ("only static right", "d"), ("pooled McNemar p", ".3g")]
    return ["## Seeds",
            "Recipes trained with several seeds (`cg-train --seed`), one value per seed: the threshold-sweep "
            "points whose nearest static network in mean executed MACs was trained with the same seeds. "
            "Each seed's model is paired with the static network of its seed, and one exact McNemar test "
            "pools the seeds' discordant images.",
            table(columns, [{"run": p.runs[0], "point": p.point, "seeds": each(p.seeds, "d"),
                             "int8 acc": each((a * 100 for a in p.accuracies), ".2f"),
                             "executed MACs": each(p.macs, ".3f"), "static": p.references[0],
                             "static int8 acc": each((a * 100 for a in p.reference_accuracies), ".2f"),
                             "static MACs": each(p.reference_macs, ".3f"), "mean gap, points": _points(p.gap),
                             "images": p.paired.images if p.paired else None,
                             "only model right": p.paired.only_a if p.paired else None,
                             "only static right": p.paired.only_b if p.paired else None,
                             "pooled McNemar p": p.paired.p if p.paired else None} for p in points])]


def _frontier_references(rows: list[dict]) -> list[dict]:
    """The static networks the sweeps are compared with (`rows.static_references`), as rows."""
    names = {name for r in rows if r["sweep"] for name in R.static_references(r, rows)}
    return [r for r in rows if r["name"] in names and R.int8(r)]


def _frontier_section(rows: list[dict], outside: list[dict], plot: Path | None) -> list[str]:
    columns = [("network", ""), ("kind", ""), ("training", ""), ("int8 acc", ".2%"), ("executed MACs", ".3f"),
               ("images", ",d")]
    body = [{"network": r["name"], "kind": "static", "training": R.training_label(r, rows),
             "int8 acc": R.deployed(r).accuracy, "executed MACs": R.deployed(r).macs,
             "images": (r["bench"] or {}).get("images")} for r in _frontier_references(rows)]
    body += [{"network": o["name"], "kind": "outside reference", "training": "trained elsewhere",
              "int8 acc": o["accuracy"], "executed MACs": o["mac_ratio"], "images": o["images"]} for o in outside]
    parts = ["## Accuracy against compute",
             "Every threshold sweep above against the static networks it is compared with (those trained with "
             "the same recipe from the same start, and those its sweep was drawn against) and the int8 "
             "classifiers trained elsewhere (`python -m cosinegate.bench.classifier`, all test images, "
             "MACs over plain ResNet-20's); the paired tests are in the comparisons table.",
             table(columns, sorted(body, key=lambda b: b["executed MACs"]))]
    if plot:
        parts.append(f"![Accuracy against compute]({plot.as_posix()})")
    return parts


def frontier_plot(rows: list[dict], outside: list[dict], path: Path) -> None:
    """int8 accuracy against executed MACs: one line per swept model, the static networks and outside models."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in (r for r in rows if r["sweep"]):
        scale = R.vs_resnet20(r["config"])
        points = sorted((p["mac_ratio"] * scale, p["accuracy"]) for p in r["sweep"]["points"].values())
        ax.plot(*zip(*points), marker="o", ms=4, lw=1, label=f"{r['name']} (threshold sweep)")
    references = [(r["name"], R.deployed(r)) for r in _frontier_references(rows)]
    statics = sorted(((d.macs, d.accuracy) for _, d in references), key=lambda point: (point[0], -point[1]))
    envelope = [point for i, point in enumerate(statics) if all(point[1] > a for _, a in statics[:i])]
    if envelope:  # the best static network at each compute: what a routed model has to beat
        ax.plot(*zip(*envelope), ls="--", lw=1, color="black", alpha=0.5, label="static frontier")
    labelled: dict[float, int] = {}   # networks at the same compute: labels one under another
    for name, d in references:
        ax.scatter(d.macs, d.accuracy, marker="s", color="black", zorder=3)
        below = labelled.get(round(d.macs, 2), 0)
        labelled[round(d.macs, 2)] = below + 1
        ax.annotate(name, (d.macs, d.accuracy), fontsize=7, xytext=(-6, -10 - 9 * below),
                    textcoords="offset points", ha="right" if d.macs > 0.9 else "left")
    for o in outside:
        ax.scatter(o["mac_ratio"], o["accuracy"], marker="*", s=90, color="C3", zorder=3)
        ax.annotate(o["name"], (o["mac_ratio"], o["accuracy"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    handles, _ = ax.get_legend_handles_labels()
    handles += [Line2D([], [], marker="s", ls="", color="black", label="static network"),
                Line2D([], [], marker="*", ls="", color="C3", ms=9, label="trained elsewhere")]
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    ax.set(xlabel="executed MACs / plain ResNet-20 (mean over test images)", ylabel="int8 accuracy, CIFAR-10 test",
           title="Accuracy against compute, int8 TFLite")
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.save_with(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)


def _static_tables(twins: list[F.StaticTwin], frontier: list[F.FrontierPoint]) -> list[str]:
    parts = ["## Dynamic routing against static pruning at equal executed MACs"]
    if twins:
        parts += ["Static twin: the blocks the gated run skips most deleted, no gates, the same schedule "
                  "(`python -m cosinegate.train.static_baseline RUN`); float, all test images.",
                  table([("gated", ""), ("adaptivity", ".2f"), ("paths", "d"), ("gated acc", ".2%"),
                         ("gated MACs", ".3f"), ("static", ""), ("deleted", ""), ("static acc", ".2%"),
                         ("static MACs", ".3f")],
                        [{"gated": t.gated, "adaptivity": t.adaptivity, "paths": t.distinct_paths,
                          "gated acc": t.gated_accuracy, "gated MACs": t.gated_macs, "static": t.static,
                          "deleted": t.removed_blocks, "static acc": t.static_accuracy,
                          "static MACs": t.static_macs} for t in twins])]
    if frontier:
        parts += ["Each gated run against the static networks of its depth and schedule that bracket its "
                  "executed MACs, interpolated linearly (the most accurate where several spend the same).",
                  table([("gated", ""), ("adaptivity", ".2f"), ("acc", ".2%"), ("MACs", ".3f"), ("below", ""),
                         ("above", ""), ("static acc at equal MACs", ".2%"), ("gap, points", "")],
                        [{"gated": p.run, "adaptivity": p.adaptivity, "acc": p.accuracy, "MACs": p.macs,
                          "below": f"{p.below[0]} {p.below[1]:.2%} at {p.below[2]:.3f}",
                          "above": f"{p.above[0]} {p.above[1]:.2%} at {p.above[2]:.3f}",
                          "static acc at equal MACs": p.static_accuracy, "gap, points": _points(p.gap)}
                         for p in frontier])]
    return parts


def _plan_column(row: dict) -> str | None:
    """Whether the export carries the offline memory plan (exports from before it do not)."""
    report = row["report"] or {}
    if not report.get("gated_blocks"):
        return None
    return _yes_no("tflm_arena_bytes_online_plan" in report)


def _folded_column(row: dict) -> str | None:
    folded = (row["report"] or {}).get("folded_gates") or {}
    return "; ".join(f"{kind} {','.join(map(str, blocks))}" for kind, blocks in folded.items() if blocks) or None


def _plain_instructions(rows: list[dict]) -> dict:
    """Plain ResNet-20's instructions per inference by kernels: the run named resnet20, else any
    plain ResNet-20 measured."""
    measured = sorted((r for r in rows if r["qemu"] and not R.routed(r) and r["config"]["depth"] == 20
                       and not r["config"].get("removed_blocks")), key=lambda r: r["name"] != "resnet20")
    return {k: v["instructions_mean"] for k, v in measured[0]["qemu"].items()} if measured else {}


def _per_image_measurements(rows: list[dict]) -> list[tuple[dict, str, dict]]:
    """(row, kernels, QEMU figures) where the firmware run kept each image's instruction count."""
    return [(r, k, v) for r in rows for k, v in (r["qemu"] or {}).items() if v.get("instructions_per_image")]


def _per_image_table(rows: list[dict]) -> list[str]:
    plain = _plain_instructions(rows)
    columns = [("configuration", ""), ("kernels", ""), ("images", "d"), ("mean", ",.0f"), ("std", ",.0f"),
               ("min", ",.0f"), ("max", ",.0f"), ("executed MACs mean", ".3f"), ("executed MACs std", ".3f"),
               ("predicted mean", ",.0f"), ("measured / predicted", ".4f")]
    body = []
    for r, k, v in _per_image_measurements(rows):
        counts, macs = np.array(v["instructions_per_image"], dtype=float), R.firmware_mac_ratios(r, v)
        predicted = plain[k] * macs.mean() if k in plain else None
        body.append({"configuration": r["name"], "kernels": k, "images": len(counts), "mean": counts.mean(),
                     "std": counts.std(), "min": counts.min(), "max": counts.max(),
                     "executed MACs mean": macs.mean(), "executed MACs std": macs.std(),
                     "predicted mean": predicted, "measured / predicted": counts.mean() / predicted if predicted else None})
    return ["## Per-image cost on the QEMU Cortex-M4",
            "- instructions inside `Invoke()` per test image (`python -m cosinegate.bench.qemu EXPORT "
            "--images-dir IMAGES --json ROOT/NAME/qemu.json`, images from `python -m cosinegate.export.test_images "
            "--count N`)\n"
            "- executed MACs: of the decisions the firmware printed, over plain ResNet-20's\n"
            "- predicted: plain ResNet-20's instructions with the same kernels times the mean executed-MAC ratio",
            table(columns, body)] + [f"![{r['name']} per image](docs/results/{r['name']}_m4_per_image.png)"
                                     for r, _, _ in _per_image_measurements(rows)]


def _decision_names(row: dict) -> str:
    """What the firmware's decision digits stand for, in their order."""
    names = [f"block {i}" for i in row["report"]["gated_indices"]]
    names += [f"exit after block {b}" for b in row["report"].get("exit_blocks", [])]
    return ", ".join(names)


def _per_path_table(rows: list[dict]) -> list[str]:
    """Each decision pattern's instruction count: the per-image spread is the paths' mix, and each
    path's own ratio to plain ResNet-20 says where the MAC ratio under- or over-predicts."""
    plain = _plain_instructions(rows)
    columns = [("configuration", ""), ("decisions", ""), ("images", "d"), ("instructions", ",.0f"),
               ("spread", ",.0f"), ("executed MACs", ".3f"), ("vs plain", ".3f"), ("measured / predicted", ".4f")]
    body, legend = [], []
    for r, k, v in _per_image_measurements(rows):
        if k not in plain:
            continue
        counts, macs = np.array(v["instructions_per_image"], dtype=float), R.firmware_mac_ratios(r, v)
        paths = np.array(v["gates"])
        legend.append(f"- {r['name']}: {_decision_names(r)}")
        groups = [(path, counts[paths == path], macs[paths == path]) for path in set(paths)]
        for path, cost, mac in sorted(groups, key=lambda g: -g[1].mean()):
            body.append({"configuration": r["name"], "decisions": f"`{path}`", "images": len(cost),
                         "instructions": cost.mean(), "spread": np.ptp(cost), "executed MACs": mac.mean(),
                         "vs plain": cost.mean() / plain[k], "measured / predicted": cost.mean() / (plain[k] * mac.mean())})
    if not body:
        return []
    return ["## Per-path cost on the QEMU Cortex-M4",
            "The per-image measurements above grouped by the decisions the firmware printed (1: the block "
            "runs, or the image goes on past the exit), heaviest path first.\n"
            "- instructions: mean over the path's images; spread: largest minus smallest\n"
            "- vs plain: over plain ResNet-20's instructions with the same kernels; measured / predicted: "
            "over plain ResNet-20's instructions times the path's executed-MAC ratio\n"
            "- decisions, in order:\n" + "\n".join(f"  {line}" for line in legend),
            table(columns, body)]


def per_image_plot(row: dict, figures: dict, path: Path) -> None:
    """Histograms of one model's per-image instructions and executed MACs on the Cortex-M4."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.4))
    left.hist(np.array(figures["instructions_per_image"]) / 1e6, bins=30)
    left.set(xlabel="instructions per inference (millions)", ylabel="test images",
             title=f"{row['name']}: QEMU Cortex-M4")
    right.hist(R.firmware_mac_ratios(row, figures), bins=30, range=(0, 1.05))
    right.set(xlabel="executed MACs / plain ResNet-20", title="the same images")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.save_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _firmware_table(rows: list[dict]) -> list[str]:
    plain = _plain_instructions(rows)
    columns = [("configuration", ""), ("kernels", ""), ("flash B", ",d"), ("never-run weights B", ",d"),
               ("RAM B", ",d"), ("arena used B", ",d"), ("offline plan", ""), ("gates folded", ""),
               ("instructions / inference", ",.0f"), ("vs plain", ".3f"), ("executed MACs", ".3f"), ("images", "d")]
    body = [{"configuration": label, "kernels": k, "flash B": v["flash_bytes"],
             "never-run weights B": R.never_run_bytes(r), "RAM B": v["ram_bytes"], "arena used B": v["arena_used"],
             "offline plan": _plan_column(r), "gates folded": _folded_column(r),
             "instructions / inference": v["instructions_mean"],
             "vs plain": v["instructions_mean"] / plain[k] if k in plain else None,
             "executed MACs": R.firmware_mac_ratio(r, v), "images": v["images"]}
            for label, r, k, v in R.firmware_measurements(rows)]
    return ["## Firmware on QEMU Cortex-M4",
            "- source: ROOT/NAME/qemu.json (`python -m cosinegate.bench.qemu EXPORT --json ...`), else the "
            "bench's QEMU run (`cg-bench ... --tflm-root`)\n"
            "- instructions: inside `Invoke()` on the first test images, counted by the project's TCG plugin\n"
            "- vs plain: over plain ResNet-20's count with the same kernels\n"
            "- flash: the firmware with its embedded int8 test images (one image a CIFAR-10 3,072 B; see images)\n"
            "- never-run weights: flash held by blocks that ran on none of the bench images "
            "(`branch_weight_bytes` in the export report)\n"
            "- offline plan: the export carries the memory plan that lets TFLM's IF share tensors with its branches\n"
            "- (folded): the same checkpoint exported with `--fold-static-gates` (ROOT/NAME/qemu_folded.json)",
            table(columns, body)]


def render(rows: list[dict], root: Path, plot_path: Path | None, earlier: Path | None = None,
           outside: list[dict] = (), outside_root: Path | None = None) -> str:
    command = f"python -m cosinegate.experiments.results {root}" + (f" --outside {outside_root}" if outside_root else "")
    parts = ["# Results: CIFAR-10, the paper's table next to deployed int8 models",
             f"Generated by `{command} --out RESULTS.md`; do not edit. "
             "What the numbers mean: [docs/experiments-log.md](docs/experiments-log.md).",
             "- paper: the paper's Table 2 at epoch 160; FLOPs is its mean relaxed gate\n"
             "- acc paper gate: the paper's eq. 16 rule on the measured CIR (needs F(x), not deployable)\n"
             "- deploy, int8, TFLM: the x-only gate in float (PyTorch), int8 TFLite and the TFLM interpreter\n"
             "- executed MACs: stem, head and controllers included, over plain ResNet-20's 40,551,040\n"
             "- exported: best.pt is the best deploy accuracy on the test set after the FLOPs warm-up; "
             "last.pt the final epoch\n"
             "- schedule: *shortened* is fewer than the paper's 160 epochs; *warm start from NAME* began "
             "from NAME's final weights (`cg-train --init-from`); a run warm-started from a published model "
             "continues, in the comparisons, the run whose weights the model holds"]
    parts += _training_tables(rows)
    for section, items in ((_paper_table, F.paper_comparisons(rows)), (_bar_table, F.bar_verdicts(rows)),
                           (_deeper_table, F.deeper_verdicts(rows)), (_sweep_table, F.sweep_points(rows))):
        if items:
            parts += section(items)
    comparisons = ([v.baseline for v in F.bar_verdicts(rows) if v.baseline]
                   + [c for v in F.deeper_verdicts(rows) for c in (v.baseline, v.control) if c]
                   + [p.reference for p in F.sweep_points(rows) if p.reference])
    if any(r["sweep"] for r in rows):
        parts += _frontier_section(rows, outside, plot_path and plot_path.parent / "frontier.png")
    if comparisons:
        parts += _comparison_table(comparisons)
    seeds = F.seed_points(rows)
    if seeds:
        parts += _seed_table(seeds)
    twins, frontier = F.static_twins(rows), F.static_frontier(rows)
    if twins or frontier:
        parts += _static_tables(twins, frontier)
    if R.firmware_measurements(rows):
        parts += _firmware_table(rows)
    if _per_image_measurements(rows):
        parts += _per_image_table(rows)
        parts += _per_path_table(rows)
    if earlier:
        parts.append(f"Earlier runs, whose run folders were not archived: [{earlier.as_posix()}]({earlier.as_posix()}).")
    machines = {json.dumps(r["bench"]["machine"], sort_keys=True) for r in rows if r["bench"]}
    if machines:
        parts.append("Machines: " + "; ".join(
            f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}" for m in map(json.loads, sorted(machines))))
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
    for p in R.PAPER.values():
        ax.scatter(p["flops"], p["acc"], marker="x", color="gray")
        ax.annotate(f"paper {p['label'].replace('CosineGate ', '')}", (p["flops"], p["acc"]), fontsize=7,
                    color="gray", xytext=(3, -9), textcoords="offset points")  # below the mark, clear of our labels
    # One colour per schedule: only points of the same schedule compare.
    training = {r["name"]: R.training_label(r, rows) for r in rows}
    schedules = sorted(set(training.values()), key=lambda label: [int(w) for w in label.split() if w.isdigit()])
    colour = {label: f"C{i}" for i, label in enumerate(schedules)}
    stacked: dict[float, tuple[float, int]] = {}   # column -> (top accuracy, labels so far)
    for r in sorted(rows, key=lambda r: -R.test_acc(r["last"])):
        c = colour[training[r["name"]]]
        if R.int8(r):
            d = R.deployed(r)
            point, label, style = (d.macs, d.accuracy), f"{r['name']} (folded)" if d.folded else r["name"], {"color": c}
        elif "mac_ratio_deploy" in r["last"]:  # not exported (a static twin): its float test accuracy
            point = (R.macs(r), R.test_acc(r["last"]))
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


# ValueError: a run file of another shape (jsonfile.FileFormatError, config.ConfigError)
@errors.command("python -m cosinegate.experiments.results", expected=(OSError, ValueError))
def main(argv=None) -> int:
    parser = errors.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="runs root or its archive (results/cifar10)")
    parser.add_argument("--out", type=Path, default=Path("RESULTS.md"))
    parser.add_argument("--plots", type=Path, default=Path("docs/results"))
    parser.add_argument("--outside", type=Path, metavar="DIR",
                        help="NAME/classifier.json folders of classifiers trained elsewhere, drawn beside the sweeps")
    args = parser.parse_args(argv)
    rows = collect(args.root)
    if not rows:
        raise FileNotFoundError(f"no run folders with run/metrics.jsonl under {args.root}")
    outside = R.collect_outside(args.outside) if args.outside else []
    plot = args.plots / "pareto.png"
    pareto_plot(rows, plot)
    if any(r["sweep"] for r in rows):
        frontier_plot(rows, outside, args.plots / "frontier.png")
    for r in rows:  # the runs' own curves, copied beside the table
        for kind in ("accuracy", "compute"):
            source = args.root / r["name"] / "run" / "plots" / f"{kind}.png"
            if source.is_file():
                atomic.write_bytes(args.plots / f"{r['name']}_{kind}.png", source.read_bytes())
    for r, _, figures in _per_image_measurements(rows):
        per_image_plot(r, figures, args.plots / f"{r['name']}_m4_per_image.png")
    earlier = args.plots / "earlier" / "RESULTS.md"
    atomic.write_text(args.out, render(rows, args.root, plot, earlier if earlier.is_file() else None,
                                       outside, args.outside))
    print(f"results: wrote {args.out} and {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
