"""The measurements behind `cg-bench` (see cli.py for the command line): decisions and accuracy
per runtime, host latency per variant, optional firmware logs and QEMU instruction counts.
"""
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cosinegate import atomic
from cosinegate.bench.cli import BenchError, load_export
from cosinegate.bench.latency import measure
from cosinegate.export.carray import model_id
from cosinegate.train.evaluate import ADAPTIVE_BAND


def routing_summary(gates: np.ndarray, predictions: np.ndarray, labels: np.ndarray, macs: dict,
                    gated_indices: list[int], reference_gates: np.ndarray | None) -> dict:
    """Skip rate, per-block execution, accuracy, executed MACs and adaptivity of hard decisions."""
    from cosinegate.train.model import executed_mac_ratio
    rates = gates.mean(0) if gates.size else np.zeros(0)
    ratio = executed_mac_ratio(macs, torch.from_numpy(gates.astype(np.float64)), gated_indices).numpy()
    lo, hi = ADAPTIVE_BAND
    out = {
        "images": int(len(labels)),
        "accuracy": float(np.mean(predictions == labels)),
        "skip_rate": float(1.0 - rates.mean()) if rates.size else 0.0,
        "exec_rate_per_block": [round(float(r), 6) for r in rates],
        "mac_ratio": float(ratio.mean()),
        "mac_ratio_std": float(ratio.std()),
        "adaptivity": float(np.mean((rates >= lo) & (rates <= hi))) if rates.size else 0.0,
        "distinct_paths": int(len(np.unique(gates, axis=0))) if gates.size else 1,
        "gate_agreement_vs_torch": (float(np.mean(gates == reference_gates))
                                    if reference_gates is not None and gates.size else None),
    }
    return out


def _per_class_macs(ratio: np.ndarray, labels: np.ndarray) -> dict:
    return {int(c): float(ratio[labels == c].mean()) for c in np.unique(labels)}


def _machine() -> dict:
    import onnxruntime
    from cosinegate.version import __version__
    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "cosinegate": __version__}


def _plain_export(ckpt_path: Path, data_dir, work: Path) -> Path:
    """Export the plain ResNet of the same depth (same convolutions, no gates) for the baseline.
    Runs `cg-export` in its own process: stages talk through files."""
    import subprocess
    import sys

    from cosinegate.train import checkpoint
    ckpt = checkpoint.load(ckpt_path)
    model = checkpoint.build_model(ckpt)
    plain_cfg = dict(ckpt["model_config"], gated=False)
    plain_state = {k: v for k, v in model.state_dict().items() if ".controller." not in k and not k.endswith(".gamma")}
    config = dict(ckpt["config"], gated=False)
    plain_ckpt = work / "plain.pt"
    checkpoint.save(plain_ckpt, {k: v for k, v in ckpt.items() if k not in ("kind", "format", "version")}
                    | {"model": plain_state, "model_config": plain_cfg, "config": config})
    out = work / "plain_export"
    argv = [str(plain_ckpt), "--int8", "--out", str(out), "--parity-images", "20", "--no-progress"]
    if data_dir:
        argv += ["--data-dir", str(data_dir)]
    done = subprocess.run([sys.executable, "-m", "cosinegate.export.cli", *argv], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"exporting the plain baseline failed: {last}")
    return out


def run_bench(args, command: str) -> dict:
    from cosinegate.export.onnx_export import force_onnx_gates
    from cosinegate.export.parity import TfliteRunner, float_inputs, pytorch_deploy, quantize_inputs, run_all
    from cosinegate.export.restructure import force_gates
    from cosinegate.export.tflm import TflmRunner
    from cosinegate.train import checkpoint
    from cosinegate.train.data import dataset_info, load_arrays
    from cosinegate.train.model import macs_breakdown
    import onnx
    import onnxruntime as ort

    started = time.perf_counter()
    progress = not args.no_progress
    report = load_export(args.export_dir)
    ckpt_path = Path(args.checkpoint or report["checkpoint"]["path"])
    ckpt = checkpoint.load(ckpt_path)
    model = checkpoint.build_model(ckpt, ckpt_path)
    if report.get("gated_indices") != model.gated_indices:
        raise BenchError(f"{ckpt_path} is not the model of {args.export_dir} (gated blocks "
                         f"{model.gated_indices} vs the report's {report.get('gated_indices')})")
    data_dir = args.data_dir or ckpt["config"].get("data_dir")
    info = dataset_info(report["dataset"])
    images, labels = load_arrays(report["dataset"], data_dir, "test")
    images, labels = images[: args.images], labels[: args.images]
    x = float_inputs(images, info)
    xq = quantize_inputs(x, report["input"]["scale"], report["input"]["zero_point"])
    macs = macs_breakdown(model.cfg)
    # A gate folded at export has no controller left in the int8 model: the device pays nothing for it.
    folded_gates = report.get("folded_gates") or {}
    folded = {*folded_gates.get("always", []), *folded_gates.get("never", [])}
    int8_macs = dict(macs, controllers=[0 if i in folded else c for i, c in enumerate(macs["controllers"])])
    gated = model.gated_indices
    gate_names = [f"gate_{i}" for i in gated]
    print(f"cg-bench: {args.export_dir} | {report['dataset']} | {len(labels)} test images | "
          f"{len(gated)} gated blocks", flush=True)

    def _loop(runner, inputs, desc):
        return run_all(runner, inputs, desc, progress)

    onnx_bytes = (args.export_dir / "model.onnx").read_bytes()
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1

    def onnx_runner(model_bytes):
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        def run(xi):
            out = session.run(None, {"input": xi})
            gates = (out[1].reshape(-1) > 0.5) if len(out) > 1 else np.zeros(0, bool)
            return out[0], gates
        return run

    tflite_bytes = (args.export_dir / "model_int8.tflite").read_bytes()  # load_export checked it
    # -- decisions and accuracy per runtime ------------------------------------------------------
    runtimes = {}
    t_logits, t_gates = pytorch_deploy(model, x)
    runtimes["torch"] = (t_logits.argmax(1), t_gates)
    o_logits, o_gates = _loop(onnx_runner(onnx_bytes), x, "onnxruntime")
    runtimes["onnxruntime"] = (o_logits.argmax(1), o_gates)
    if tflite_bytes:
        l_logits, l_gates = _loop(TfliteRunner(tflite_bytes, gate_names), xq, "tflite int8")
        runtimes["tflite_int8"] = (l_logits.argmax(1), l_gates)
        m_logits, m_gates = _loop(TflmRunner(tflite_bytes, report["tflm_arena_bytes"], 1 + len(gated)),
                                  xq, "tflm")
        runtimes["tflm"] = (m_logits.argmax(1), m_gates)
    results = {name: routing_summary(g, p, labels, int8_macs if name in ("tflite_int8", "tflm") else macs, gated,
                                     t_gates) for name, (p, g) in runtimes.items()}
    if "tflite_int8" in runtimes:  # per image, so two models benched on the same images compare paired
        right = runtimes["tflite_int8"][0] == labels
        results["tflite_int8"]["correct"] = "".join("1" if c else "0" for c in right)
    from cosinegate.train.model import executed_mac_ratio
    ratio = executed_mac_ratio(macs, torch.from_numpy(t_gates.astype(np.float64)), gated).numpy()
    difficulty = {"mac_ratio_by_class": _per_class_macs(ratio, labels),
                  "mac_ratio_histogram": np.histogram(ratio, bins=20, range=(0, 1.2))[0].tolist()}
    # -- firmware logs (QEMU or a board) ----------------------------------------------------------
    firmware = {}
    logs = [(str(p), p.read_text(errors="replace")) for p in args.firmware_log]
    if args.serial:
        from cosinegate.bench.serial_reader import read_serial
        logs.append((args.serial, read_serial(args.serial, args.baud, args.serial_timeout)))
    for source, text in logs:
        firmware[source] = _firmware_summary(text, t_gates, labels, int8_macs, gated,
                                             model_id(tflite_bytes, report), source)
    # -- host latency: gated, every gate on, plain ---------------------------------------------------
    latency = {}
    variants = {"gated": onnx_bytes,
                "all_on": force_onnx_gates(onnx.load_from_string(onnx_bytes), on=True).SerializeToString()}
    tflite_variants = {"gated": tflite_bytes, "all_on": force_gates(tflite_bytes, on=True)} if tflite_bytes else {}
    qemu = None
    with tempfile.TemporaryDirectory() as work:
        plain_dir = None
        if not args.no_plain:
            plain_dir = _plain_export(ckpt_path, data_dir, Path(work))
            variants["plain"] = (plain_dir / "model.onnx").read_bytes()
            if tflite_bytes:
                tflite_variants["plain"] = (plain_dir / "model_int8.tflite").read_bytes()
        n = len(x)
        for name, model_bytes in variants.items():
            run = onnx_runner(model_bytes)
            latency[f"onnxruntime/{name}"] = measure(lambda i: run(x[i % n:i % n + 1]), args.latency_warmup,
                                                     args.latency_runs, f"latency ort {name}", progress)
        for name, model_bytes in tflite_variants.items():
            names = gate_names if name != "plain" else []
            run = TfliteRunner(model_bytes, names)
            latency[f"tflite_int8/{name}"] = measure(lambda i: run(xq[i % n:i % n + 1]), args.latency_warmup,
                                                     args.latency_runs, f"latency tflite {name}", progress)
        # -- QEMU Cortex-M4 instruction counts --------------------------------------------------------
        if args.tflm_root:
            from cosinegate.bench.qemu_bench import qemu_counts
            qemu = qemu_counts(args.export_dir, Path(args.tflm_root), report, macs, gated, progress,
                               images=args.qemu_images, per_block=args.qemu_per_block, data_dir=data_dir,
                               plain_dir=plain_dir)
            for kernels, text in qemu.pop("logs").items():  # raw firmware output, usable as --firmware-log
                atomic.write_text(Path(args.out) / f"qemu_{kernels}.log", text)
    bench = {
        "command": command, "machine": _machine(), "export_dir": str(args.export_dir),
        "checkpoint": str(ckpt_path), "dataset": report["dataset"], "images": int(len(labels)),
        "gated_blocks": len(gated), "macs_plain": macs["plain_total"],
        "folded_gates": folded_gates,
        "runtimes": results, "difficulty": difficulty, "firmware": firmware,
        "latency": latency, "qemu": qemu,
        "qemu_note": None if args.tflm_root else "no TFLM library configured (--tflm-root or CG_TFLM_ROOT): QEMU not run",
        "wall_time_s": time.perf_counter() - started,
    }
    from cosinegate.bench.report import write_outputs
    write_outputs(bench, args.out, ckpt_path, ratio)
    return bench


def _one_row_per_image(inferences, labels: np.ndarray, gated_blocks: int, source: str) -> tuple[list, int]:
    """The log's inference lines for the benched images, one per image, and how many repeated
    an earlier line exactly (a board that restarted prints its images again). A line that
    contradicts the test split (negative idx, another label, another result for the same
    image, a gate string of another length) refuses the whole log."""
    rows, seen, duplicates = [], {}, 0
    for line in inferences:
        if line.idx < 0 or len(line.gates) != gated_blocks:
            raise BenchError(f"{source}: inference line idx={line.idx} gates={line.gates or '-'} does not "
                             f"fit this export (idx >= 0, {gated_blocks} gate digits)")
        if line.idx >= len(labels):
            continue  # an image beyond the benched ones
        if line.label != labels[line.idx]:
            raise BenchError(f"{source}: image {line.idx} has label {line.label}, the test split's is "
                             f"{labels[line.idx]}: the log is of other images")
        earlier = seen.get(line.idx)
        if earlier is not None:
            if (earlier.pred, earlier.gates) != (line.pred, line.gates):
                raise BenchError(f"{source}: image {line.idx} appears twice with different results")
            duplicates += 1
            continue
        seen[line.idx] = line
        rows.append(line)
    if not rows:
        raise BenchError(f"{source} has no complete inference lines for the benched images")
    return rows, duplicates


def _firmware_summary(text: str, torch_gates: np.ndarray, labels: np.ndarray, macs: dict,
                      gated: list[int], expected_model: str, source: str) -> dict:
    from cosinegate.bench.protocol import parse_text
    log = parse_text(text)
    if log.header is not None and (log.header.model, log.header.gated_blocks) != (expected_model, len(gated)):
        raise BenchError(f"{source} is a run of model {log.header.model} ({log.header.gated_blocks} gated "
                         f"blocks), not of this export ({expected_model}, {len(gated)})")
    rows, duplicates = _one_row_per_image(log.inferences, labels, len(gated), source)
    idx = np.array([i.idx for i in rows])
    gates = np.array([[c == "1" for c in i.gates] for i in rows], dtype=bool).reshape(len(rows), len(gated))
    summary = routing_summary(gates, np.array([i.pred for i in rows]), labels[idx], macs, gated,
                              torch_gates[idx])
    summary["repeated_lines"] = duplicates
    costs = [i.cost for i in rows if i.cost is not None]
    summary.update({
        "header": log.header.__dict__ if log.header else None,
        "skipped_lines": log.skipped_lines,
        "cost_unit": rows[0].cost_unit,
        "cost_median": float(np.median(costs)) if costs else None,
        "cost_min": int(min(costs)) if costs else None,
        "cost_max": int(max(costs)) if costs else None,
    })
    if log.header and summary["cost_unit"] == "cycles" and costs:
        summary["latency_ms_median"] = 1e3 * summary["cost_median"] / log.header.clock_hz
    return summary
