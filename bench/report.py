"""Write a bench result: bench.json (machine-readable), BENCH.md (tables a person reads), plots.

Tables are fixed-width, each driven by one column list.
"""
import json
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cosinegate import atomic, errors  # noqa: E402
from cosinegate.bench.errors import BenchError  # noqa: E402
from cosinegate.bench.qemu import KERNELS  # noqa: E402
from cosinegate.train.plots import CURVES  # noqa: E402


def table(columns: list[tuple[str, str]], rows: list[dict]) -> str:
    """Markdown table; `columns` = [(header, format spec or '' for str)], rows keyed by header."""
    def cell(value, spec):
        if value is None:
            return "—"
        return format(value, spec) if spec else str(value)
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(h), spec) for h, spec in columns) + " |" for r in rows]
    return "\n".join(lines)


RUNTIME_COLUMNS = [("runtime", ""), ("images", "d"), ("accuracy", ".4f"), ("skip rate", ".3f"),
                   ("executed MACs", ".3f"), ("MAC std", ".3f"), ("adaptivity", ".2f"),
                   ("paths", "d"), ("gate agreement vs torch", ".4f")]
LATENCY_COLUMNS = [("runtime / variant", ""), ("median ms", ".3f"), ("min ms", ".3f"), ("max ms", ".3f"),
                   ("p90 ms", ".3f"), ("runs", "d")]
QEMU_COLUMNS = [("kernels", ""), ("variant", ""), ("instructions / inference", ",d"),
                ("est. M4 cycles", ",d"), ("est. ms", ".2f"), ("vs all-on", ".3f"), ("executed-MAC ratio", ".3f")]


def render_markdown(bench: dict) -> str:
    m = bench["machine"]
    parts = [f"# Bench: {bench['export_dir']}",
             f"`{bench['command']}`  \nmachine: {m['cpu']}, {m['cores']} cores, python {m['python']}, "
             f"torch {m['torch']}, onnxruntime {m['onnxruntime']}, cosinegate {m['cosinegate']}  \n"
             f"dataset {bench['dataset']}, {bench['images']} test images, {bench['gated_blocks']} gated blocks, "
             f"plain network {bench['macs_plain']:,} MACs",
             "## Decisions, accuracy and executed work per runtime",
             "Skip rate and executed MACs come from each runtime's own gate decisions "
             "(MACs: stem, head and controllers included, ÷ the plain network of the same depth).",
             table(RUNTIME_COLUMNS, [{"runtime": name, "images": r["images"], "accuracy": r["accuracy"],
                                      "skip rate": r["skip_rate"], "executed MACs": r["mac_ratio"],
                                      "MAC std": r["mac_ratio_std"], "adaptivity": r["adaptivity"],
                                      "paths": r["distinct_paths"],
                                      "gate agreement vs torch": r["gate_agreement_vs_torch"]}
                                     for name, r in {**bench["runtimes"], **bench["firmware"]}.items()])]
    rates = {name: r["exec_rate_per_block"] for name, r in bench["runtimes"].items()}
    if any(rates.values()):
        # Gate outputs are named by block ("gate_6"); a bench without the names counts gated blocks from 0.
        blocks = ([name.removeprefix("gate_") for name in bench.get("decision_outputs") or () if name.startswith("gate_")]
                  or [str(i) for i in range(len(next(iter(rates.values()))))])
        cols = [("runtime", "")] + [(f"b{b}", ".2f") for b in blocks]
        parts += ["### Execution rate per gated block",
                  table(cols, [{"runtime": n, **{f"b{b}": v for b, v in zip(blocks, r)}} for n, r in rates.items()])]
    folded = {kind: blocks for kind, blocks in (bench.get("folded_gates") or {}).items() if blocks}
    if folded:
        parts.append("Exported with `--fold-static-gates`: "
                     + "; ".join(f"{kind} {', '.join(map(str, blocks))}" for kind, blocks in folded.items())
                     + " (proven for every input; no IF). Forced variants (`all_on`, `all_off`) force "
                       "only the IFs left: a block proven never to run is not in the model.")
    parts += ["## Host latency (batch 1, single thread)",
              "MLPerf-Tiny style: warm-up runs discarded, then single-image inferences cycling through the test images.",
              table(LATENCY_COLUMNS, [{"runtime / variant": k, "median ms": v["median_ms"], "min ms": v["min_ms"],
                                       "max ms": v["max_ms"], "p90 ms": v["p90_ms"], "runs": v["runs"]}
                                      for k, v in bench["latency"].items()])]
    if bench.get("qemu"):
        q = bench["qemu"]
        parts += ["## TFLM on QEMU Cortex-M4 (mps2-an386): instructions per inference",
                  "Instructions executed inside `Invoke()`, counted by the project's TCG plugin with "
                  "`-icount shift=0` (deterministic; QEMU has no cycle counter). Estimated Cortex-M4 "
                  "cycles: the TRM's instruction timings at zero wait states applied to the executed "
                  f"instructions (docs/latency.md); ms at {q.get('clock_hz', 120e6) / 1e6:g} MHz.",
                  table(QEMU_COLUMNS, q["rows"])]
        if q.get("per_block"):
            parts.append(q["per_block_note"])
            cols = [("kernels", "")] + [(f"b{b['block']}", ",.0f") for b in next(iter(q["per_block"].values()))]
            parts.append(table(cols, [{"kernels": k, **{f"b{b['block']}": b["instructions"] for b in blocks}}
                                      for k, blocks in q["per_block"].items()]))
        for kernels, o in (q.get("skip_overhead") or {}).items():
            parts.append(f"Skipping a block ({kernels}): about {o['instructions_per_skipped_block']:,.0f} "
                         f"instructions (controller, comparison, IF dispatch), "
                         f"{100 * o['share_of_mean_block']:.2f} % of a mean block's own cost "
                         "(estimated from the all-off, plain and per-block counts).")
    else:
        parts.append(f"_QEMU: {bench['qemu_note']}_")
    return "\n\n".join(parts) + "\n"


def training_curves(checkpoint_path: Path) -> dict[str, bytes]:
    """The run's training curves (Fig. 6-8) drawn from the metrics.jsonl beside the checkpoint, as
    {file name: PNG}; none without one. A metrics.jsonl they cannot be drawn from is a BenchError,
    found before the bench measures or writes anything."""
    metrics = Path(checkpoint_path).parent / "metrics.jsonl"
    if not metrics.is_file():
        return {}
    from cosinegate.train.plots import plot_run, read_history
    try:
        history = read_history(metrics)
    except ValueError as e:  # jsonfile's format errors, bad JSON or UTF-8
        raise BenchError(f"training curves: {errors.one_line(e)}") from None
    with tempfile.TemporaryDirectory() as drawn:
        return {path.name: path.read_bytes() for path in plot_run(history, drawn)}


# The bench's own charts, and every file a bench may write: a new bench replaces all of these in
# --out as a whole (plots/ also holds the run's training curves) and leaves any other file alone.
CHARTS = ("exec_rates_by_runtime.png", "latency.png", "mac_ratio_hist.png")
BENCH_FILES = ("bench.json", "BENCH.md", *(f"qemu_{kernels}.log" for kernels in KERNELS),
               *(f"plots/{name}" for name in (*CHARTS, *CURVES)))


def write_outputs(bench: dict, out_dir: Path, curves: dict[str, bytes], mac_ratio: np.ndarray) -> None:
    """bench.json, BENCH.md and the plots, with the run's training curves (`training_curves`)."""
    out_dir = Path(out_dir)
    plots = out_dir / "plots"
    markdown = render_markdown(bench)
    slim = json.loads(json.dumps(bench))
    for v in slim["latency"].values():
        v.pop("samples_ms", None)
    _plot_exec_rates(bench, plots / "exec_rates_by_runtime.png")
    _plot_latency(bench, plots / "latency.png")
    _plot_mac_hist(mac_ratio, plots / "mac_ratio_hist.png")
    for name, png in curves.items():
        atomic.write_bytes(plots / name, png)
    atomic.write_text(out_dir / "BENCH.md", markdown)
    atomic.write_text(out_dir / "bench.json", json.dumps(slim, indent=2) + "\n")  # last: marks completion


def publish(stage_dir: Path, out_dir: Path) -> None:
    """Replace the bench in `out_dir` by the finished one in `stage_dir`, as cg-export does: the old
    bench.json (which marks a finished bench) goes first, with every file of the old bench the new
    one does not write, and the new bench.json comes last; no earlier bench's file stays behind."""
    new = {p.relative_to(stage_dir).as_posix() for p in stage_dir.rglob("*") if p.is_file()}
    blocked = sorted(name for name in new | set(BENCH_FILES) if (out_dir / name).is_dir())
    blocked += ["plots"] if (out_dir / "plots").exists() and not (out_dir / "plots").is_dir() else []
    if blocked:  # refused before the old bench loses anything
        raise BenchError(f"{out_dir / blocked[0]} is in the way of what the bench writes: move it away")
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").unlink(missing_ok=True)
    for name in BENCH_FILES:
        if name not in new:
            (out_dir / name).unlink(missing_ok=True)
    for name in sorted(new - {"bench.json"}) + ["bench.json"]:
        os.replace(stage_dir / name, out_dir / name)
    atomic.fsync_dir(out_dir / "plots")
    atomic.fsync_dir(out_dir)


def _save(fig, path: Path) -> None:
    atomic.save_with(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)


def _plot_exec_rates(bench: dict, path: Path) -> None:
    rates = {n: r["exec_rate_per_block"] for n, r in bench["runtimes"].items() if r["exec_rate_per_block"]}
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    if rates:
        width = 0.8 / len(rates)
        for k, (name, r) in enumerate(rates.items()):
            ax.bar(np.arange(len(r)) + k * width, r, width, label=name)
    ax.set(xlabel="gated block", ylabel="execution rate", ylim=(0, 1.05), title="Blocks computed, per runtime")
    if rates:
        ax.legend(fontsize=7)
    _save(fig, path)


def _plot_latency(bench: dict, path: Path) -> None:
    names = list(bench["latency"])
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(names) + 1.2))
    ax.boxplot([bench["latency"][n]["samples_ms"] for n in names], vert=False, showfliers=True)
    ax.set_yticks(range(1, len(names) + 1), names, fontsize=8)
    ax.set(xlabel="ms per inference (batch 1)", title="Host latency distribution")
    _save(fig, path)


def _plot_mac_hist(ratio: np.ndarray, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    ax.hist(ratio, bins=40, range=(0, max(1.2, float(ratio.max()) + 0.05)))
    ax.set(xlabel="executed MACs / plain network (per test image, deploy gate)", ylabel="images",
           title="Per-sample compute")
    _save(fig, path)
