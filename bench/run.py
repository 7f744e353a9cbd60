"""The measurements behind `cg-bench` (see cli.py for the command line): decisions and accuracy
per runtime, host latency per variant, optional firmware logs and QEMU instruction counts.
"""
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cosinegate import atomic
from cosinegate.bench.errors import BenchError
from cosinegate.bench.latency import measure
from cosinegate.train.model import executed_mac_ratio
from cosinegate.train.evaluate import routing_stats, split_decisions
from cosinegate.export.carray import model_id


REQUIRED_FILES = ("export_report.json", "model.onnx", "model_int8.tflite")


def load_export(export_dir: Path) -> dict:
    """The export's report, after checking that it and every file it lists are the ones the
    export wrote (content hashes) and that its input is the int8 model's."""
    from cosinegate.export import integrity
    from cosinegate.version import EXPORT_FORMAT
    report = integrity.load_report(export_dir)
    if report.get("format") != EXPORT_FORMAT:
        raise BenchError(f"{export_dir} has export format {report.get('format')!r}; this cg-bench reads "
                         f"format {EXPORT_FORMAT}: export the checkpoint again")
    for name in REQUIRED_FILES:
        if not (export_dir / name).is_file():
            hint = "export with --int8" if name == "model_int8.tflite" else "run cg-export first"
            raise BenchError(f"{export_dir} has no {name}: {hint}")
    integrity.verify(export_dir, report)
    integrity.check_model_input(report, (export_dir / "model_int8.tflite").read_bytes())
    return report


def routing_summary(gates: np.ndarray, predictions: np.ndarray, labels: np.ndarray, macs: dict,
                    gated_indices: list[int], reference_gates: np.ndarray | None) -> dict:
    """Accuracy, skip rate, per-block execution, executed MACs and adaptivity of hard decisions
    (gates, then early exits: see `split_decisions`)."""
    decided, passed = _split(gates, macs)
    stats = routing_stats(decided, macs, gated_indices, passed)
    return {
        "images": int(len(labels)),
        "accuracy": float(np.mean(predictions == labels)),
        "skip_rate": stats["skip_rate"],
        "exec_rate_per_block": [round(r, 6) for r in stats["exec_rate"]],
        "mac_ratio": stats["mac_ratio"],
        "mac_ratio_std": stats["mac_ratio_std"],
        "adaptivity": stats["adaptivity"],
        "distinct_paths": stats["distinct_paths"],
        **({"continue_rate_per_exit": [round(r, 6) for r in stats["continue_rate"]]}
           if "continue_rate" in stats else {}),
        "gate_agreement_vs_torch": (float(np.mean(gates == reference_gates))
                                    if reference_gates is not None and gates.size else None),
    }


def _per_class_macs(ratio: np.ndarray, labels: np.ndarray) -> dict:
    return {int(c): float(ratio[labels == c].mean()) for c in np.unique(labels)}


def _split(decisions: np.ndarray, macs: dict) -> tuple:
    """(gates, exits passed) as tensors from a runtime's decision matrix (`split_decisions`)."""
    return split_decisions(torch.from_numpy(decisions.astype(np.float64)), macs)


def mac_ratios(decisions: np.ndarray, macs: dict, gated_indices: list[int]) -> np.ndarray:
    """Per-image executed-MAC ratio of a decision matrix (N, n_gated + n_exits)."""
    gates, passed = _split(decisions, macs)
    return executed_mac_ratio(macs, gates, gated_indices, passed).numpy()


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


@dataclass
class Subject:
    """What is benched: the export, the checkpoint it came from, and the test images."""
    export_dir: Path
    report: dict
    ckpt_path: Path
    model: object            # CosineGateResNet
    data_dir: str | None
    labels: np.ndarray
    x: np.ndarray            # float NCHW test images
    xq: np.ndarray           # the same, int8 NHWC with the model's input quantisation
    macs: dict               # macs_breakdown of the float model
    int8_macs: dict          # the same, without the controllers of gates folded at export
    onnx_bytes: bytes
    tflite_bytes: bytes | None

    @property
    def gated(self) -> list[int]:
        return self.model.gated_indices

    @property
    def gate_names(self) -> list[str]:
        """The int8 model's decision outputs: its gates, then its early exits."""
        return self.report.get("decision_outputs", [f"gate_{i}" for i in self.gated])


def run_bench(args, command: str) -> dict:
    """Every measurement in order; writes bench.json, BENCH.md and plots into args.out."""
    from cosinegate.bench.report import publish, training_curves, write_outputs
    started = time.perf_counter()
    progress = not args.no_progress
    subject = _load_subject(args)
    curves = training_curves(subject.ckpt_path)  # a broken metrics.jsonl stops the bench before it measures
    runtimes, t_gates = _decisions(subject, progress)
    firmware = _firmware_logs(args, subject, t_gates)
    qemu, qemu_logs = None, {}
    with tempfile.TemporaryDirectory() as work:
        plain_dir = None if args.no_plain else _plain_export(subject.ckpt_path, subject.data_dir, Path(work))
        latency = _latency(args, subject, plain_dir, progress)
        if args.tflm_root:
            qemu, qemu_logs = _qemu(args, subject, plain_dir, progress)
    ratio = mac_ratios(t_gates, subject.macs, subject.gated)
    bench = {
        "command": command, "machine": _machine(), "export_dir": str(args.export_dir),
        "checkpoint": str(subject.ckpt_path), "dataset": subject.report["dataset"],
        "images": int(len(subject.labels)), "gated_blocks": len(subject.gated),
        "decision_outputs": subject.gate_names,
        "macs_plain": subject.macs["plain_total"],
        "folded_gates": subject.report.get("folded_gates") or {},
        "runtimes": runtimes,
        "difficulty": {"mac_ratio_by_class": _per_class_macs(ratio, subject.labels),
                       "mac_ratio_histogram": np.histogram(ratio, bins=20, range=(0, 1.2))[0].tolist()},
        "firmware": firmware, "latency": latency, "qemu": qemu,
        "qemu_note": None if args.tflm_root else "no TFLM library configured (--tflm-root or CG_TFLM_ROOT): QEMU not run",
        "wall_time_s": time.perf_counter() - started,
    }
    with atomic.staging(args.out) as stage_dir:  # built beside --out, then replaces the bench there
        write_outputs(bench, stage_dir, curves, ratio)
        for kernels, text in qemu_logs.items():
            atomic.write_text(stage_dir / f"qemu_{kernels}.log", text)
        publish(stage_dir, args.out)
    print(f"cg-bench: wrote {args.out / 'bench.json'}, {args.out / 'BENCH.md'} and {args.out / 'plots'}/")
    return bench


def _load_subject(args) -> Subject:
    from cosinegate.export.parity import float_inputs, quantize_inputs
    from cosinegate.train import checkpoint
    from cosinegate.train.data import dataset_info, load_arrays
    from cosinegate.train.gate import THRESHOLD
    from cosinegate.train.model import macs_breakdown
    report = load_export(args.export_dir)
    ckpt_path = Path(args.checkpoint or report["checkpoint"]["path"])
    ckpt = checkpoint.load(ckpt_path)
    model = checkpoint.build_model(ckpt, ckpt_path)
    if report.get("gated_indices") != model.gated_indices:
        raise BenchError(f"{ckpt_path} is not the model of {args.export_dir} (gated blocks "
                         f"{model.gated_indices} vs the report's {report.get('gated_indices')})")
    recorded = (report.get("checkpoint") or {}).get("weights_sha256")  # exports before it record none
    if recorded is not None and recorded != checkpoint.weights_sha256(ckpt["model"]):
        raise BenchError(f"{ckpt_path} is not the checkpoint {args.export_dir} was exported from (its "
                         "weights differ from those the export report records)")
    threshold = report.get("deploy_threshold", {})
    if model.gated_indices:  # the rule the export folded into its If conditions
        gate_key = "gate_threshold" if model.exits else "threshold"
        model.set_deploy_threshold(threshold.get(gate_key, THRESHOLD))
    if model.exits:
        model.set_exit_thresholds(threshold["threshold"])
    data_dir = args.data_dir or ckpt["config"].get("data_dir")
    images, labels = load_arrays(report["dataset"], data_dir, "test")
    images, labels = images[: args.images], labels[: args.images]
    x = float_inputs(images, dataset_info(report["dataset"]))
    macs = macs_breakdown(model.cfg)
    # A gate folded at export has no controller left in the int8 model: the device pays nothing for it.
    folded_gates = report.get("folded_gates") or {}
    folded = {*folded_gates.get("always", []), *folded_gates.get("never", [])}
    tflite_path = args.export_dir / "model_int8.tflite"
    subject = Subject(
        export_dir=args.export_dir, report=report, ckpt_path=ckpt_path, model=model, data_dir=data_dir,
        labels=labels, x=x, xq=quantize_inputs(x, report["input"]["scale"], report["input"]["zero_point"]),
        macs=macs, int8_macs=dict(macs, controllers=[0 if i in folded else c
                                                     for i, c in enumerate(macs["controllers"])]),
        onnx_bytes=(args.export_dir / "model.onnx").read_bytes(),
        tflite_bytes=tflite_path.read_bytes() if tflite_path.is_file() else None)
    print(f"cg-bench: {args.export_dir} | {report['dataset']} | {len(labels)} test images | "
          f"{len(subject.gated)} gated blocks", flush=True)
    return subject


def _onnx_runner(model_bytes: bytes):
    """Batch-1 onnxruntime on one thread: x -> (logits, gates bool (n_gated,))."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])

    def run(xi):
        out = session.run(None, {"input": xi})
        gates = (out[1].reshape(-1) > 0.5) if len(out) > 1 else np.zeros(0, bool)
        return out[0], gates
    return run


def _decisions(subject: Subject, progress: bool) -> tuple[dict, np.ndarray]:
    """Per runtime, the routing summary of its own decisions; and torch's gates, the reference."""
    from cosinegate.export.parity import TfliteRunner, pytorch_deploy, run_all
    from cosinegate.export.tflm import TflmRunner
    decisions = {}
    t_logits, t_gates = pytorch_deploy(subject.model, subject.x)
    decisions["torch"] = (t_logits.argmax(1), t_gates)
    o_logits, o_gates = run_all(_onnx_runner(subject.onnx_bytes), subject.x, "onnxruntime", progress)
    decisions["onnxruntime"] = (o_logits.argmax(1), o_gates)
    if subject.tflite_bytes:
        runner = TfliteRunner(subject.tflite_bytes, subject.gate_names)
        l_logits, l_gates = run_all(runner, subject.xq, "tflite int8", progress)
        decisions["tflite_int8"] = (l_logits.argmax(1), l_gates)
        runner = TflmRunner(subject.tflite_bytes, subject.report["tflm_arena_bytes"], 1 + len(subject.gate_names))
        m_logits, m_gates = run_all(runner, subject.xq, "tflm", progress)
        decisions["tflm"] = (m_logits.argmax(1), m_gates)
    results = {name: routing_summary(g, p, subject.labels,
                                     subject.int8_macs if name in ("tflite_int8", "tflm") else subject.macs,
                                     subject.gated, t_gates) for name, (p, g) in decisions.items()}
    if "tflite_int8" in decisions:  # per image, so two models benched on the same images compare paired
        right = decisions["tflite_int8"][0] == subject.labels
        results["tflite_int8"]["correct"] = "".join("1" if c else "0" for c in right)
    return results, t_gates


def _firmware_logs(args, subject: Subject, t_gates: np.ndarray) -> dict:
    """The summary of each firmware log (QEMU or a board, from files or a serial port)."""
    logs = [(str(p), p.read_text(errors="replace")) for p in args.firmware_log]
    if args.serial:
        from cosinegate.bench.serial_reader import read_serial
        logs.append((args.serial, read_serial(args.serial, args.baud, args.serial_timeout)))
    expected_model = model_id(subject.tflite_bytes, subject.report)
    return {source: _firmware_summary(text, t_gates, subject.labels, subject.int8_macs, subject.gated,
                                      len(subject.gate_names), expected_model, source)
            for source, text in logs}


def _latency(args, subject: Subject, plain_dir: Path | None, progress: bool) -> dict:
    """Host latency of the gated model, the same with every gate on, and the plain ResNet."""
    import onnx
    from cosinegate.export.onnx_export import force_onnx_gates
    from cosinegate.export.parity import TfliteRunner
    from cosinegate.export.restructure import force_gates
    variants = {"gated": subject.onnx_bytes,
                "all_on": force_onnx_gates(onnx.load_from_string(subject.onnx_bytes), on=True).SerializeToString()}
    tflite_variants = ({"gated": subject.tflite_bytes, "all_on": force_gates(subject.tflite_bytes, on=True)}
                       if subject.tflite_bytes else {})
    if plain_dir is not None:
        variants["plain"] = (plain_dir / "model.onnx").read_bytes()
        if subject.tflite_bytes:
            tflite_variants["plain"] = (plain_dir / "model_int8.tflite").read_bytes()
    x, xq, n = subject.x, subject.xq, len(subject.x)
    latency = {}
    for name, model_bytes in variants.items():
        run = _onnx_runner(model_bytes)
        latency[f"onnxruntime/{name}"] = measure(lambda i: run(x[i % n:i % n + 1]), args.latency_warmup,
                                                 args.latency_runs, f"latency ort {name}", progress)
    for name, model_bytes in tflite_variants.items():
        run = TfliteRunner(model_bytes, subject.gate_names if name != "plain" else [])
        latency[f"tflite_int8/{name}"] = measure(lambda i: run(xq[i % n:i % n + 1]), args.latency_warmup,
                                                 args.latency_runs, f"latency tflite {name}", progress)
    return latency


def _qemu(args, subject: Subject, plain_dir: Path | None, progress: bool) -> tuple[dict, dict]:
    """QEMU Cortex-M4 instruction counts, and the raw firmware output per kernel set (the bench
    keeps it as qemu_KERNELS.log, usable as --firmware-log)."""
    from cosinegate.bench.qemu_bench import qemu_counts
    qemu = qemu_counts(args.export_dir, Path(args.tflm_root), subject.report, subject.macs, subject.gated,
                       progress, images=args.qemu_images, per_block=args.qemu_per_block,
                       data_dir=subject.data_dir, plain_dir=plain_dir,
                       clock_hz=int(args.clock_mhz * 1e6))
    return qemu, qemu.pop("logs")


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
                      gated: list[int], decisions: int, expected_model: str, source: str) -> dict:
    """`decisions`: how many bool outputs the model has (its gates and exits), one digit each."""
    from cosinegate.bench.protocol import parse_text
    log = parse_text(text)
    if log.header is not None and (log.header.model, log.header.gated_blocks) != (expected_model, decisions):
        raise BenchError(f"{source} is a run of model {log.header.model} ({log.header.gated_blocks} gated "
                         f"blocks), not of this export ({expected_model}, {decisions})")
    rows, duplicates = _one_row_per_image(log.inferences, labels, decisions, source)
    idx = np.array([i.idx for i in rows])
    gates = np.array([[c == "1" for c in i.gates] for i in rows], dtype=bool).reshape(len(rows), decisions)
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
