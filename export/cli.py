"""`cg-export`: turn a `cg-train` checkpoint into deployable files where a skipped block does not run.

    cg-export --int8 runs/demo/best.pt                      # -> runs/demo/best_export/
    cg-export --int8 runs/cifar/best.pt --data-dir ~/data --parity-images 500 --out runs/cifar/export

Writes into --out (default: <checkpoint name>_export/ beside the checkpoint): model.onnx (opset 18, one `If` per gated block, outputs logits and gates) and
export_report.json; with --int8 also model_int8.tflite (full int8, one `IF` per gated block,
outputs logits and gate_{i}) and the firmware sources model_data.cc/.h and model_settings.h.
With --fold-static-gates, gates that interval analysis proves constant for every input lose
their IF (a never-run block leaves the flash). Everything is written to a staging folder first: on
an error nothing in --out changes.
"""
import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cosinegate import atomic, errors

EXIT_ERROR = 1


class ExportError(RuntimeError):
    """The checkpoint cannot be exported (wrong version, unexpected model)."""


def build_parser() -> argparse.ArgumentParser:
    parser = errors.ArgumentParser(prog="cg-export", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("checkpoint", type=Path, help="a cg-train checkpoint (best.pt / last.pt)")
    parser.add_argument("--out", type=Path,
                        help="export folder, created (default: <checkpoint name>_export/ beside the checkpoint)")
    parser.add_argument("--int8", action="store_true",
                        help="also write the int8 TFLite model and the firmware sources")
    parser.add_argument("--data-dir", help="dataset root for calibration and parity images "
                                           "(default: the checkpoint's training data_dir)")
    parser.add_argument("--parity-images", type=int, default=500, metavar="N",
                        help="test images for the parity checks (default 500; fewer if the split is smaller)")
    parser.add_argument("--calibration-images", type=int, default=None, metavar="N",
                        help="training images for int8 calibration (default 300)")
    parser.add_argument("--fold-static-gates", action="store_true",
                        help="with --int8: a gate whose int8 controller is provably constant for every "
                             "input (export_report.json: gate_bounds) loses its IF; a block that can never "
                             "run leaves the model with its weights, one that always runs is computed inline")
    knob = parser.add_mutually_exclusive_group()
    knob.add_argument("--target-macs", type=float, metavar="R",
                      help="set the deploy threshold so that the mean executed MACs, over plain ResNet's, "
                           "are at most R on training images (never the test set); recorded in the report")
    parser.add_argument("--gate-threshold", type=float, metavar="P",
                        help="deploy rule sigmoid(logit) > P for every gate (default: the paper's 0.45); "
                             "with early exits too, --target-macs then moves the exit threshold only")
    knob.add_argument("--exit-threshold", type=float, metavar="P",
                      help="early exits: an image leaves at the first exit whose softmax confidence is "
                           ">= P (default: the checkpoint's exit_threshold)")
    parser.add_argument("--threshold-images", type=int, default=None, metavar="N",
                        help="training images --target-macs chooses the threshold on (default 2000)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


@contextlib.contextmanager
def _stage(name: str):
    """One printed line per stage: name, wall time, and the short result the stage sets."""
    t0, note = time.perf_counter(), {}
    yield note
    print(f"cg-export: {name:<14} {time.perf_counter() - t0:6.1f}s  {note.get('text', '')}".rstrip(),
          flush=True)


def _check_version(ckpt: dict) -> None:
    from cosinegate.version import __version__
    theirs = str(ckpt.get("version", "?"))
    if theirs.split(".")[:2] != __version__.split(".")[:2]:
        raise ExportError(f"checkpoint was written by cosinegate {theirs}; this is {__version__}, "
                          "which exports checkpoints of the same major.minor version")


def _file_sizes(folder: Path) -> dict:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


@dataclass
class Source:
    """The checkpoint and the float networks frozen from it."""
    ckpt: dict
    model: object           # CosineGateResNet, eval mode
    frozen: object          # FrozenModel: BatchNorm and gates folded
    info: object            # DatasetInfo of the checkpoint's dataset
    threshold: dict         # the deploy threshold folded into each If, and where it came from

    @property
    def dataset(self) -> str:
        return self.ckpt["config"]["dataset"]

    @property
    def gated(self) -> list[int]:
        return self.frozen.gated_indices

    @property
    def exit_blocks(self) -> list[int]:
        return [e.after_block for e in self.frozen.exits]

    @property
    def routed(self) -> bool:
        """Decides per image (gates or early exits): exported with If, benched per decision."""
        return bool(self.gated or self.exit_blocks)

    @property
    def nchw(self) -> tuple:
        cfg = self.model.cfg
        return 1, cfg.in_channels, cfg.input_size, cfg.input_size


@dataclass
class Images:
    x_test: object          # float NCHW test images for the parity checks
    labels: object
    calibration: object     # uint8 NHWC training images for int8 calibration; None without --int8


@dataclass
class Int8Model:
    """The int8 TFLite model and what its stages proved and measured."""
    all_compute: bytes      # every block computed: what the parity checks compare against
    tflite: bytes           # the deployed model, one IF per gated block not folded
    unfolded: bytes | None  # the same with every IF kept, when gates were folded
    bounds: list            # GateBound per gated block
    proven: dict            # block -> "always" | "never"
    static: dict            # folded block -> True (computed inline) | False (deleted)
    shifts: dict            # block -> k: its gate head was divided by 2**k (bound_gate_logits)
    recalibrated: list      # blocks calibrated as adding nothing (proven never to run)
    arena: int
    arena_online: int       # the arena TFLM plans without the offline memory plan
    ops: list
    scale: float
    zero_point: int
    calibration_images: int

    def report(self, gated: list[int]) -> dict:
        from cosinegate.export import restructure
        branch_bytes = iter(restructure.branch_weight_bytes(self.tflite))
        return {"tflm_arena_bytes": self.arena, "tflm_arena_bytes_online_plan": self.arena_online,
                "tflm_ops": self.ops,
                # per gated block; 0 where a folded gate left no branch
                "branch_weight_bytes": [0 if i in self.static else next(branch_bytes) for i in gated],
                "gate_bounds": [{"block": b.index, "decision": b.decision, "logit": b.logit,
                                 "threshold": b.threshold, **({"reason": b.reason} if b.reason else {})}
                                for b in self.bounds],
                "folded_gates": {d: [i for i in self.static if self.proven[i] == d] for d in ("always", "never")},
                # block -> k: that gate head was divided by 2**k before conversion (bound_gate_logits)
                "gate_head_shifts": {str(i): k for i, k in self.shifts.items()},
                # blocks calibrated as adding nothing (proven never to run; --fold-static-gates)
                "calibrated_without_blocks": self.recalibrated,
                "calibration_images": self.calibration_images}


def export_checkpoint(args, stage_dir: Path) -> dict:
    """Run every stage in order, writing into `stage_dir`; returns the report."""
    import torch
    from cosinegate.export import integrity
    torch.set_num_threads(1)
    source = _freeze(args)
    images = _load_images(args, source)  # before the slow stages: a missing dataset fails fast
    onnx_bytes = _write_onnx(source, stage_dir)
    int8 = _int8(args, source, images, stage_dir) if args.int8 else None
    checks = _parity(args, source, images, onnx_bytes, int8)
    report = _report(args, source, int8, checks)
    if int8:
        _write_c_sources(stage_dir, report)
    report["file_bytes"] = _file_sizes(stage_dir)
    report["files"] = sorted([*report["file_bytes"], "export_report.json"])
    try:  # a NaN figure is a failed export, not a bare `NaN` that JSON readers reject
        report = integrity.seal(report, stage_dir)
        text = json.dumps(report, indent=2, allow_nan=False)
    except ValueError:
        raise ExportError("the export report holds a non-finite figure (NaN or inf): the model "
                          "computes non-finite outputs; nothing was written") from None
    atomic.write_text(stage_dir / "export_report.json", text + "\n")
    return report


def _freeze(args) -> Source:
    from cosinegate.export.freeze import freeze
    from cosinegate.train.checkpoint import build_model, load
    from cosinegate.train.data import dataset_info
    with _stage("freeze") as note:
        ckpt = load(args.checkpoint)
        _check_version(ckpt)
        model = build_model(ckpt, args.checkpoint)
        threshold = _deploy_threshold(args, model, ckpt)  # before freeze: it folds into each If
        source = Source(ckpt, model, freeze(model), dataset_info(ckpt["config"]["dataset"]), threshold)
        cfg, blocks = model.cfg, f"{len(source.frozen.blocks)} blocks"
        if cfg.removed_blocks:
            blocks += f" ({len(cfg.removed_blocks)} deleted)"
        if (cfg.input_size, cfg.input_size, cfg.in_channels) != tuple(source.info.shape):
            raise ExportError(f"model input {cfg.input_size}x{cfg.input_size}x{cfg.in_channels} "
                              f"does not match dataset {source.dataset} {source.info.shape}")
        if source.exit_blocks:
            blocks += f", exits after blocks {','.join(map(str, source.exit_blocks))}"
        note["text"] = (f"{blocks}, {len(source.gated)} gated, {_threshold_line(threshold)}"
                        if source.routed else
                        f"{blocks}, plain ResNet: no gated blocks, exported without If")
    return source


def _load_images(args, source: Source) -> Images:
    from cosinegate.export import parity, quantize
    from cosinegate.train.data import load_arrays
    data_dir = args.data_dir if args.data_dir is not None else source.ckpt["config"].get("data_dir")
    with _stage("data") as note:
        test_images, test_labels = load_arrays(source.dataset, data_dir, "test")
        count = min(args.parity_images, len(test_images))
        calibration = quantize.calibration_images(
            source.dataset, data_dir, args.calibration_images or quantize.DEFAULT_CALIBRATION_IMAGES) \
            if args.int8 else None
        note["text"] = (f"{count} test images for parity"
                        + (f", {len(calibration)} training images for calibration" if args.int8 else ""))
    return Images(parity.float_inputs(test_images[:count], source.info), test_labels[:count], calibration)


def _write_onnx(source: Source, stage_dir: Path) -> bytes:
    from cosinegate.export import onnx_export
    with _stage("onnx") as note:
        onnx_bytes = onnx_export.export_deploy(source.frozen, source.nchw).SerializeToString()
        atomic.write_bytes(stage_dir / "model.onnx", onnx_bytes)
        note["text"] = f"model.onnx, opset {onnx_export.OPSET}, {len(source.gated) + len(source.exit_blocks)} If"
    return onnx_bytes


def _int8(args, source: Source, images: Images, stage_dir: Path) -> Int8Model:
    """Convert, prove constant gates, optionally recalibrate without dead blocks, restructure."""
    import torch
    calibration_nchw = torch.from_numpy(images.calibration.transpose(0, 3, 1, 2))
    all_compute, shifts = _convert(source.frozen, source.nchw, images.calibration, calibration_nchw)
    bounds, proven = _prove_gates(all_compute, source.gated, args.fold_static_gates)
    never = [i for i, decision in proven.items() if decision == "never"]
    recalibrated = []
    if args.fold_static_gates and never:
        again = _recalibrate(source, never, images.calibration, calibration_nchw)
        if again:
            all_compute, bounds, more = again
            recalibrated = never
            shifts = {i: shifts.get(i, 0) + more.get(i, 0) for i in {**shifts, **more}}
            proven = _proven(bounds)
    # An always-open gate behind an exit keeps its IF: its output must read false for an image that left.
    first_exit = source.exit_blocks[0] if source.exit_blocks else len(source.frozen.blocks)
    static = {i: decision == "always" for i, decision in proven.items()
              if args.fold_static_gates and not (decision == "always" and i > first_exit)}
    return _restructure(all_compute, source.gated, static, stage_dir, source.exit_blocks,
                        bounds=bounds, proven=proven, shifts=shifts, recalibrated=recalibrated,
                        calibration_images=len(images.calibration))


def _convert(frozen, nchw, calibration, calibration_nchw) -> tuple[bytes, dict]:
    """The all-compute int8 model and the gate heads scaled for TFLM's GREATER."""
    from cosinegate.export import onnx_export, quantize
    from cosinegate.export.freeze import bound_gate_logits
    with _stage("int8 convert") as note:
        shifts = bound_gate_logits(frozen, calibration_nchw)
        all_compute = quantize.convert_int8(onnx_export.export_all_compute(frozen, nchw), calibration)
        note["text"] = f"all-compute model, {len(all_compute)} bytes" + (
            f"; gate heads of blocks {','.join(map(str, shifts))} scaled by a power of two for "
            "TFLM's GREATER (same decisions)" if shifts else "")
    return all_compute, shifts


def _proven(bounds) -> dict:
    from cosinegate.export.gate_bounds import INPUT
    return {b.index: b.decision for b in bounds if b.decision != INPUT}


def _prove_gates(all_compute: bytes, gated: list[int], fold: bool) -> tuple[list, dict]:
    from cosinegate.export.gate_bounds import gate_bounds
    with _stage("gate bounds") as note:
        bounds = gate_bounds(all_compute, gated)
        proven = _proven(bounds)
        note["text"] = _bounds_line(proven) + ("" if not proven or fold else " (--fold-static-gates folds them)")
    return bounds, proven


def _recalibrate(source: Source, never: list[int], calibration, calibration_nchw):
    """(all-compute model, bounds, extra gate-head shifts) calibrated without the blocks proven
    never to run, or None when that calibration no longer proves them dead."""
    from cosinegate.export import onnx_export, quantize
    from cosinegate.export.freeze import bound_gate_logits, without_residuals
    from cosinegate.export.gate_bounds import gate_bounds
    with _stage("recalibrate") as note:
        # Calibration ran every block; blocks that can never run add nothing when deployed,
        # and their residuals skew every range after them. Convert again with those blocks
        # adding nothing (they are deleted anyway), kept only if they are still proven dead.
        deployed_path = without_residuals(source.frozen, never)
        # the logits change with the ranges before them: bound them again on this network
        more = bound_gate_logits(deployed_path, calibration_nchw)
        candidate = quantize.convert_int8(onnx_export.export_all_compute(deployed_path, source.nchw),
                                          calibration)
        bounds = gate_bounds(candidate, source.gated)
        if not all(b.decision == "never" for b in bounds if b.index in never):
            note["text"] = "kept the all-compute calibration: a dead block was no longer proven dead"
            return None
        note["text"] = (f"deploy-path ranges without blocks {','.join(map(str, never))}; "
                        + _bounds_line(_proven(bounds)))
    return candidate, bounds, more


def _restructure(all_compute: bytes, gated: list[int], static: dict, stage_dir: Path, exit_blocks: list[int],
                 **proofs) -> Int8Model:
    from cosinegate.export import restructure, tflm
    with _stage("restructure") as note:
        tflite = restructure.restructure(all_compute, gated, static=static, exit_blocks=exit_blocks)
        behind = [i for i in gated if exit_blocks and i > exit_blocks[0] and i not in static]
        restructure.validate_int8(tflite, len(gated), len(exit_blocks), len(behind))
        tflm.check_tflm_ops(tflite)
        arena = tflm.measure_arena(tflite)
        # What the offline memory plan saves: the same model planned by TFLM alone.
        arena_online = tflm.measure_arena(restructure.restructure(all_compute, gated, memory_plan=False,
                                                                  static=static, exit_blocks=exit_blocks))
        unfolded = restructure.restructure(all_compute, gated, exit_blocks=exit_blocks) if static else None
        atomic.write_bytes(stage_dir / "model_int8.tflite", tflite)
        ops = restructure.op_names(tflite)
        scale, zero_point = restructure.input_quantization(tflite)
        note["text"] = (f"{len(gated) - len(static) + len(exit_blocks)} IF, TFLM arena {arena} B ({arena_online} B without "
                        f"the offline plan), {len(tflite):,} B, ops {' '.join(ops)}")
    return Int8Model(all_compute=all_compute, tflite=tflite, unfolded=unfolded, static=static, arena=arena,
                     arena_online=arena_online, ops=ops, scale=scale, zero_point=zero_point, **proofs)


def _parity(args, source: Source, images: Images, onnx_bytes: bytes, int8: Int8Model | None) -> dict:
    from cosinegate.export import parity
    progress = not args.no_progress
    with _stage("parity") as note:
        checks = parity.onnx_parity(source.model, onnx_bytes, images.x_test, progress)
        if int8:
            checks.update(parity.int8_parity(source.model, int8.tflite, int8.all_compute, source.gated,
                                             images.x_test, images.labels, int8.scale, int8.zero_point,
                                             int8.arena, progress, unfolded=int8.unfolded,
                                             exits=len(source.exit_blocks)))
        checks = {"images": len(images.labels), "split": "test", **checks}
        note["text"] = _parity_line(checks)
        folded = checks.get("folded_vs_gated")
        if folded and (folded["bit_exact_fraction"] != 1.0 or not folded["gates_identical"]):
            raise ExportError("folding the proven gates changed the int8 model's output on "
                              f"{1 - folded['bit_exact_fraction']:.2%} of the parity images; export "
                              "without --fold-static-gates (and please report this)")
    for line in divergent_decisions(checks, source.gated, len(source.exit_blocks)):
        print(f"cg-export: warning: {line}", flush=True)
    return checks


def _report(args, source: Source, int8: Int8Model | None, checks: dict) -> dict:
    from cosinegate.export import onnx_export
    from cosinegate.train.checkpoint import weights_sha256
    from cosinegate.train.model import macs_breakdown
    from cosinegate.version import EXPORT_FORMAT, __version__
    cfg, gated, info = source.model.cfg, source.gated, source.info
    macs = macs_breakdown(cfg)
    return {
        "format": EXPORT_FORMAT, "version": __version__,
        "checkpoint": {"path": str(args.checkpoint), "epoch": source.ckpt.get("epoch"),
                       "version": source.ckpt.get("version"),
                       # what cg-bench --checkpoint compares: the model, whichever file holds it
                       "weights_sha256": weights_sha256(source.ckpt["model"])},
        "dataset": source.dataset, "num_classes": cfg.num_classes,
        "gated_blocks": len(gated), "gated_indices": gated, "plain": not source.routed,
        # the bool outputs after the logits, in order: gate_{i} true = block i ran, exit_{k} true =
        # the image went on past early exit k
        "decision_outputs": source.frozen.decision_names,
        "exit_blocks": source.exit_blocks, "removed_blocks": macs["removed"],
        # enough to recompute each image's executed MACs from its decision outputs (docs/export.md)
        "macs_full": macs["full_total"], "macs_plain": macs["plain_total"], "macs_stem": macs["stem"],
        "macs_per_block": macs["blocks"], "macs_controllers": macs["controllers"],
        "macs_exits": macs["exits"], "macs_head": macs["head"],
        "input": {"shape": [1, cfg.input_size, cfg.input_size, cfg.in_channels],
                  "scale": int8.scale if int8 else None, "zero_point": int8.zero_point if int8 else None,
                  "mean": list(info.mean), "std": list(info.std), "layout": "NHWC"},
        "onnx_opset": onnx_export.OPSET,
        **({"deploy_threshold": source.threshold} if source.routed else {}),
        "notes": [] if source.routed else ["plain ResNet (no gated blocks): exported without If/IF; "
                                   "outputs hold only the logits"],
        **(int8.report(gated) if int8 else {}),
        "parity": checks,
    }


def _write_c_sources(stage_dir: Path, report: dict) -> None:
    from cosinegate.export.carray import write_model_sources
    with _stage("C sources") as note:
        written = write_model_sources(stage_dir / "model_int8.tflite", report, stage_dir, generated_by="cg-export")
        note["text"] = ", ".join(p.name for p in written)


def _deploy_threshold(args, model, ckpt) -> dict:
    """Set the model's deploy thresholds from --gate-threshold, --exit-threshold or --target-macs;
    the report's entry. The knob is the exit threshold where the model has exits (its gates, if
    any, keep --gate-threshold or the paper's), else the gate threshold."""
    from cosinegate.export import compute_target
    from cosinegate.train.gate import THRESHOLD
    if args.exit_threshold is not None and not model.exits:
        raise ExportError("--exit-threshold needs a model with early exits; this one has none")
    if args.gate_threshold is not None and not model.gated_indices:
        raise ExportError("--gate-threshold needs a gated model; this one has no gates")
    if args.gate_threshold is not None and args.target_macs is not None and not model.exits:
        raise ExportError("--target-macs chooses the gate threshold of a model without exits: "
                          "drop --gate-threshold")
    if not model.gated_indices and not model.exits:
        if args.target_macs is not None:
            raise ExportError("--target-macs needs gates or early exits; this model has neither")
        return {}
    gates = {}
    if model.gated_indices and (model.exits or args.target_macs is None):
        threshold = THRESHOLD if args.gate_threshold is None else args.gate_threshold
        model.set_deploy_threshold(threshold)
        gates = {"threshold": threshold, "source": "paper" if args.gate_threshold is None else "--gate-threshold"}
        if not model.exits:
            return gates
    # the gates' entry rides along under its own keys where the exits hold the knob
    gates = {"gate_threshold": gates["threshold"], "gate_threshold_source": gates["source"]} if gates else {}
    if model.exits and args.target_macs is None:
        from cosinegate.train.exits import INT8_THRESHOLD_LIMIT
        threshold = ckpt["config"].get("exit_threshold") if args.exit_threshold is None else args.exit_threshold
        if threshold > INT8_THRESHOLD_LIMIT:
            source = "the checkpoint's exit_threshold" if args.exit_threshold is None else "--exit-threshold"
            raise ExportError(f"{source} {threshold:g} is above {INT8_THRESHOLD_LIMIT:.5f}, the highest confidence "
                              "the int8 exit (softmax in steps of 1/256) can tell apart; no image would leave. "
                              "Pass --exit-threshold at most that, or --target-macs")
        model.set_exit_thresholds(threshold)
        return {"threshold": threshold, "rule": "exit confidence",
                "source": "checkpoint" if args.exit_threshold is None else "--exit-threshold", **gates}
    from cosinegate.export.parity import float_inputs
    from cosinegate.train.data import dataset_info
    import torch
    dataset = ckpt["config"]["dataset"]
    data_dir = args.data_dir if args.data_dir is not None else ckpt["config"].get("data_dir")
    images, split = compute_target.training_images(dataset, data_dir, args.threshold_images or compute_target.DEFAULT_IMAGES,
                                                   ckpt["config"].get("holdout", 0))
    x = torch.from_numpy(float_inputs(images, dataset_info(dataset)))
    choice = compute_target.threshold_for_target(model, x, args.target_macs)
    rule = "exit confidence" if model.exits else "gate"
    return {**choice.report(), "split": split, "rule": rule, "source": "--target-macs", **gates}


def _threshold_line(threshold: dict) -> str:
    kind = "exit" if threshold.get("rule") == "exit confidence" else "deploy"
    line = f"{kind} threshold {threshold['threshold']:.4g}"
    if threshold["source"] == "--target-macs":
        images = "held-out training" if threshold.get("split") == "holdout" else "training"
        line += (f" (mean executed MACs {threshold['mac_ratio']:.3f} on {threshold['images']} {images} "
                 f"images, target {threshold['target_mac_ratio']:.3f})")
        from cosinegate.train.exits import INT8_THRESHOLD_LIMIT
        if kind == "exit" and threshold["threshold"] >= INT8_THRESHOLD_LIMIT:
            line += "; the highest threshold an int8 exit can tell apart, so fewer MACs than asked"
    if "gate_threshold" in threshold:
        line += f", gate threshold {threshold['gate_threshold']:.4g}"
    return line


def _bounds_line(proven: dict) -> str:
    if not proven:
        return "no gate is constant for every input"
    parts = [f"{d} {','.join(str(i) for i, x in proven.items() if x == d)}" for d in ("always", "never")
             if d in proven.values()]
    return "constant for every input: " + "; ".join(parts)


# A decision whose rate on the parity images differs this much between float and int8 is not
# rounding at the margin: its logit sits at the threshold for most images (a dead controller).
DIVERGENT_RATE = 0.25


def divergent_decisions(checks: dict, gated: list[int], exits: int) -> list[str]:
    """One line per gate or exit that the int8 model takes on a share of the parity images
    DIVERGENT_RATE or more away from the float model's."""
    q = checks.get("int8_vs_float")
    if not q:
        return []
    names = [f"block {i}'s gate" for i in gated] + [f"exit {k}" for k in range(exits)]
    return [f"{name} is taken on {f:.0%} of the parity images in float and {i:.0%} in int8; a gate "
            "whose controller units are all dead has one constant logit, which rounding decides "
            "(python -m cosinegate.train.controllers shows them)"
            for name, f, i in zip(names, q["gate_open_rate_float"], q["gate_open_rate_int8"])
            if abs(f - i) >= DIVERGENT_RATE]


def _parity_line(checks: dict) -> str:
    onnx_check = checks["onnx_vs_pytorch"]
    parts = [f"{checks['images']} images: onnx gates "
             f"{'identical' if onnx_check['gates_identical'] else 'DIFFER'}, "
             f"max |dlogit| {onnx_check['max_abs_logit_diff']:.1e}"]
    if "int8_vs_float" in checks:
        q, m = checks["int8_vs_float"], checks["tflm_vs_tflite_ref"]
        gate = "n/a" if q["gate_agreement"] is None else f"{q['gate_agreement']:.2%}"
        parts.append(f"int8 top-1 {q['top1_agreement']:.2%} gates {gate}")
        parts.append(f"tflm bit-exact {m['bit_exact_fraction']:.2%} (max {m['max_lsb_diff']} LSB)")
    if "folded_vs_gated" in checks:
        parts.append(f"folded = unfolded {checks['folded_vs_gated']['bit_exact_fraction']:.2%}")
    return "; ".join(parts)


# Every file name an export may write: a new export replaces all of these in --out as a whole.
EXPORT_FILES = ("model.onnx", "model_int8.tflite", "model_data.cc", "model_data.h", "model_settings.h",
                "export_report.json")


def _publish(stage_dir: Path, out_dir: Path) -> None:
    """Replace the export in `out_dir` by the finished files. The old report goes first and the
    new one comes last, so at every instant the folder holds either no report or a report whose
    files are all there (a plain export never leaves an older int8 model beside its report)."""
    from cosinegate.atomic import fsync_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    new = {p.name for p in stage_dir.iterdir()}
    blocked = sorted(name for name in new | set(EXPORT_FILES) if (out_dir / name).is_dir())
    if blocked:  # refused before the old export loses anything
        raise ExportError(f"{out_dir / blocked[0]} is a folder where the export writes a file: move it away")
    (out_dir / "export_report.json").unlink(missing_ok=True)
    for name in EXPORT_FILES:
        if name not in new:
            (out_dir / name).unlink(missing_ok=True)
    for name in sorted(new - {"export_report.json"}) + ["export_report.json"]:
        os.replace(stage_dir / name, out_dir / name)
    fsync_dir(out_dir)


def default_out(checkpoint: Path) -> Path:
    """runs/demo/best.pt -> runs/demo/best_export: beside the checkpoint, named after it."""
    return checkpoint.with_name(f"{checkpoint.stem}_export")


@errors.command("cg-export")
def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    for flag, value in (("--parity-images", args.parity_images), ("--calibration-images", args.calibration_images)):
        if value is not None and value < 1:
            print(f"cg-export: error: {flag} must be at least 1, got {value}", file=sys.stderr)
            return EXIT_ERROR
    bad_knob = (args.target_macs is not None and not 0.0 < args.target_macs <= 1.0,
                "--target-macs is a fraction of plain ResNet's MACs in (0, 1]"), \
               (args.gate_threshold is not None and not 0.0 < args.gate_threshold < 1.0,
                "--gate-threshold must lie strictly between 0 and 1"), \
               (args.exit_threshold is not None and not 0.0 < args.exit_threshold <= 1.0,
                "--exit-threshold must lie in (0, 1]"), \
               (args.threshold_images is not None and args.threshold_images < 1,
                "--threshold-images must be at least 1")
    for bad, message in bad_knob:
        if bad:
            print(f"cg-export: error: {message}", file=sys.stderr)
            return EXIT_ERROR
    if args.fold_static_gates and not args.int8:
        print("cg-export: error: --fold-static-gates works on the int8 model: add --int8", file=sys.stderr)
        return EXIT_ERROR
    from cosinegate.export.onnx_to_tf import TranslateError
    from cosinegate.export.restructure import RestructureError
    from cosinegate.export.tflm import TflmError
    from cosinegate.train.checkpoint import CheckpointError
    from cosinegate.train.data import DataError
    from cosinegate.export.compute_target import ComputeTargetError
    expected = (CheckpointError, DataError, ExportError, TranslateError, RestructureError,
                TflmError, ComputeTargetError, OSError)
    out_dir = args.out or default_out(args.checkpoint)
    try:
        with atomic.staging(out_dir) as stage_dir:
            report = export_checkpoint(args, stage_dir)
            _publish(stage_dir, out_dir)
    except expected as e:
        print(f"cg-export: error: {errors.one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    print(f"cg-export: done, {len(report['files'])} files in {out_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
