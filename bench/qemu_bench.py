"""TFLM on QEMU Cortex-M4: instructions per inference for the gated model and forced variants.

Variants: `gated` (the export as is), `all_on` and `all_off` (every IF predicate a constant), and
with `per_block` one variant per gated block with only that block on, so each block's own cost
reads as instructions(only i on) - instructions(all off). Each variant is built for reference and
CMSIS-NN kernels (whichever TFLM libraries exist) and run on the first `images` test images.

The prediction to compare against: instructions(gated) / instructions(all_on) should follow the
executed-MAC ratio of the same images, MACs(gated) / MACs(all on), when convolutions dominate.
Each row also carries the Cortex-M4 cycle estimate (cosinegate.bench.m4_timing, zero wait
states) and its milliseconds at `clock_hz`.
"""
import json
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cosinegate.bench.errors import BenchError


def _variant_dir(root: Path, name: str, tflite: bytes, report: dict) -> Path:
    from cosinegate.export.carray import write_model_sources
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_int8.tflite").write_bytes(tflite)
    (folder / "export_report.json").write_text(json.dumps(report))
    write_model_sources(folder / "model_int8.tflite", report, folder)
    return folder


def qemu_counts(export_dir: Path, tflm_root: Path, report: dict, macs: dict, gated: list[int],
                progress: bool, images: int = 10, per_block: bool = False, data_dir=None,
                plain_dir: Path | None = None, clock_hz: int = 120_000_000) -> dict:
    from cosinegate.bench import m4_timing, qemu
    from cosinegate.export.restructure import force_gates
    from cosinegate.export.test_images import load_test_split, make_test_set, write_test_images
    from cosinegate.bench.run import mac_ratios

    missing = qemu.missing_tools()
    if missing:
        raise BenchError(f"QEMU bench needs {', '.join(missing)} on PATH (see firmware/README.md)")
    libraries = {}
    for kernels in qemu.KERNELS:
        try:
            libraries[kernels] = qemu.find_tflm_library(tflm_root, kernels)
        except FileNotFoundError:
            continue
    if not libraries:
        raise BenchError(f"no TFLM library for Cortex-M4 under {tflm_root}/gen (firmware/README.md)")
    tflite = (export_dir / "model_int8.tflite").read_bytes()
    variants = {"gated": tflite, "all_on": force_gates(tflite, on=True), "all_off": force_gates(tflite, on=False)}
    if per_block:
        if any(report.get("folded_gates", {}).values()):
            raise BenchError("the per-block costs need every block behind its IF: bench an export "
                             "made without --fold-static-gates")
        for k in range(len(gated)):
            variants[f"only_{gated[k]}"] = force_gates(tflite, on=[j == k for j in range(len(gated))])
    reports = {name: report for name in variants}
    if plain_dir is not None:  # the plain ResNet of the same depth: no IF, no controllers
        variants["plain"] = (plain_dir / "model_int8.tflite").read_bytes()
        reports["plain"] = json.loads((plain_dir / "export_report.json").read_text())
    rows, logs, per_variant, timings = [], {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="cg-qemu-") as work:
        work = Path(work)
        all_images, all_labels = load_test_split(report["dataset"], data_dir)
        q_images, q_labels = make_test_set(report, all_images, all_labels, images)
        write_test_images(q_images, q_labels, report["dataset"], work / "images")
        plugin = qemu.build_plugin(work / "plugin")
        jobs = [(k, v) for k in libraries for v in variants]
        for kernels, name in tqdm(jobs, desc="qemu", leave=False, disable=not progress):
            folder = _variant_dir(work / "variants", f"{kernels}_{name}", variants[name], reports[name])
            elf = qemu.build_firmware(folder, tflm_root, libraries[kernels], kernels,
                                      work / "build" / f"{kernels}_{name}", work / "images")
            result = qemu.run_firmware(elf, plugin)
            costs = [i.cost for i in result.log.inferences if i.cost is not None]
            if not costs:
                raise BenchError(f"QEMU run of {name} ({kernels}) printed no instruction counts")
            per_variant[(kernels, name)] = float(np.mean(costs))
            timings[(kernels, name)] = m4_timing.summarize(result.timing, clock_hz)
            if name == "gated":
                size = qemu.firmware_size(elf)
                logs[kernels] = {"gates": [i.gates for i in result.log.inferences],
                                 "instructions_per_image": costs,
                                 "predictions": [i.pred for i in result.log.inferences],
                                 "labels": [i.label for i in result.log.inferences],
                                 "flash_bytes": size.flash, "ram_bytes": size.ram,
                                 "arena_used": result.log.header.arena_used if result.log.header else None,
                                 "output": result.output}
    gates = np.array([[c == "1" for c in g] for g in next(iter(logs.values()))["gates"]], dtype=np.float64)
    ratio = mac_ratios(gates, macs, gated)
    mac_vs_all_on = float(ratio.mean() / (macs["full_total"] / macs["plain_total"]))
    for (kernels, name), cost in per_variant.items():
        if name.startswith("only_"):
            continue
        m4 = timings[(kernels, name)]
        rows.append({"kernels": kernels, "variant": name, "instructions / inference": int(round(cost)),
                     "est. M4 cycles": int(round(m4["cycles"])), "est. ms": m4["ms"],
                     "est. ms range": [m4["ms_low"], m4["ms_high"]],
                     "vs all-on": cost / per_variant[(kernels, "all_on")],
                     "executed-MAC ratio": {"gated": mac_vs_all_on, "all_on": 1.0,
                                            "plain": macs["plain_total"] / macs["full_total"]}.get(name)})
    result = {"rows": rows, "images": images, "mac_ratio_vs_all_on": mac_vs_all_on, "clock_hz": clock_hz,
              "m4_timing": {f"{k}/{v}": t for (k, v), t in timings.items() if not v.startswith("only_")},
              "firmware": {k: {key: v for key, v in log.items() if key != "output"} for k, log in logs.items()},
              "logs": {k: log["output"] for k, log in logs.items()}}
    if per_block:
        block_macs = [macs["blocks"][i] for i in gated]
        result["per_block"] = {
            kernels: [{"block": i, "instructions": per_variant[(kernels, f"only_{i}")] - per_variant[(kernels, "all_off")],
                       "macs": m} for i, m in zip(gated, block_macs)]
            for kernels in libraries}
        result["per_block_note"] = "Per-block cost: instructions(only block i on) - instructions(all off)."
        if plain_dir is not None:
            # A skipped block costs its controller, the comparison and the IF's else-branch. Without
            # gates the same network runs stem + blocks + head, so the gated all-off model's excess
            # over (plain - blocks) is what skipping all blocks costs.
            for kernels, blocks in result["per_block"].items():
                block_sum = sum(b["instructions"] for b in blocks)
                overhead = (per_variant[(kernels, "all_off")] - (per_variant[(kernels, "plain")] - block_sum)) / len(blocks)
                result.setdefault("skip_overhead", {})[kernels] = {
                    "instructions_per_skipped_block": overhead,
                    "share_of_mean_block": overhead / (block_sum / len(blocks))}
    return result
