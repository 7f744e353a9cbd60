"""`cg-export`: turn a `cg-train` checkpoint into deployable files where a skipped block does not run.

    cg-export runs/demo/best.pt --int8 --out exports/demo
    cg-export runs/cifar/best.pt --int8 --data-dir ../shared/data --parity-images 500 --out exports/c10

Writes into --out: model.onnx (opset 18, one `If` per gated block, outputs logits and gates) and
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
import shutil
import sys
import tempfile
import time
from pathlib import Path

from cosinegate import atomic, errors

EXIT_ERROR = 1


class ExportError(RuntimeError):
    """The checkpoint cannot be exported (wrong version, unexpected model)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cg-export", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("checkpoint", type=Path, help="a cg-train checkpoint (best.pt / last.pt)")
    parser.add_argument("--out", type=Path, required=True, help="export folder (created)")
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


def export_checkpoint(args, stage_dir: Path) -> dict:
    """Run every stage, writing into `stage_dir`; returns the report."""
    import torch

    from cosinegate import atomic
    from cosinegate.export import integrity, onnx_export, parity
    from cosinegate.train.checkpoint import build_model, load
    from cosinegate.train.data import dataset_info, load_arrays
    from cosinegate.train.model import macs_breakdown
    from cosinegate.version import EXPORT_FORMAT, __version__

    torch.set_num_threads(1)
    stage = _stage
    progress = not args.no_progress
    with stage("freeze") as note:
        from cosinegate.export.freeze import freeze
        ckpt = load(args.checkpoint)
        _check_version(ckpt)
        model = build_model(ckpt, args.checkpoint)
        frozen = freeze(model)
        gated = frozen.gated_indices
        cfg = model.cfg
        info = dataset_info(ckpt["config"]["dataset"])
        if (cfg.input_size, cfg.input_size, cfg.in_channels) != tuple(info.shape):
            raise ExportError(f"model input {cfg.input_size}x{cfg.input_size}x{cfg.in_channels} "
                              f"does not match dataset {ckpt['config']['dataset']} {info.shape}")
        note["text"] = (f"{len(frozen.blocks)} blocks, {len(gated)} gated" if gated else
                        f"{len(frozen.blocks)} blocks, plain ResNet: no gated blocks, "
                        "exported without If")
    data_dir = args.data_dir if args.data_dir is not None else ckpt["config"].get("data_dir")
    nchw = (1, cfg.in_channels, cfg.input_size, cfg.input_size)

    with stage("data") as note:  # before the slow stages: a missing dataset fails fast
        test_images, test_labels = load_arrays(ckpt["config"]["dataset"], data_dir, "test")
        count = min(args.parity_images, len(test_images))
        x_test, labels = parity.float_inputs(test_images[:count], info), test_labels[:count]
        if args.int8:
            from cosinegate.export import quantize
            calibration = quantize.calibration_images(
                ckpt["config"]["dataset"], data_dir,
                args.calibration_images or quantize.DEFAULT_CALIBRATION_IMAGES)
        note["text"] = (f"{count} test images for parity"
                        + (f", {len(calibration)} training images for calibration" if args.int8 else ""))

    with stage("onnx") as note:
        deploy = onnx_export.export_deploy(frozen, nchw)
        onnx_bytes = deploy.SerializeToString()
        atomic.write_bytes(stage_dir / "model.onnx", onnx_bytes)
        note["text"] = f"model.onnx, opset {onnx_export.OPSET}, {len(gated)} If"

    report_input = {"shape": [1, cfg.input_size, cfg.input_size, cfg.in_channels],
                    "scale": None, "zero_point": None, "mean": list(info.mean),
                    "std": list(info.std), "layout": "NHWC"}
    int8 = {}
    if args.int8:
        from cosinegate.export import restructure, tflm
        with stage("int8 convert") as note:
            from cosinegate.export.freeze import bound_gate_logits
            calibration_nchw = torch.from_numpy(calibration.transpose(0, 3, 1, 2))
            shifts = bound_gate_logits(frozen, calibration_nchw)
            all_compute = quantize.convert_int8(onnx_export.export_all_compute(frozen, nchw),
                                                calibration)
            note["text"] = f"all-compute model, {len(all_compute)} bytes" + (
                f"; gate heads of blocks {','.join(map(str, shifts))} scaled by a power of two for "
                "TFLM's GREATER (same decisions)" if shifts else "")
        with stage("gate bounds") as note:
            from cosinegate.export.gate_bounds import INPUT, gate_bounds
            bounds = gate_bounds(all_compute, gated)
            proven = {b.index: b.decision for b in bounds if b.decision != INPUT}
            note["text"] = (_bounds_line(proven) + ("" if not proven or args.fold_static_gates
                                                    else " (--fold-static-gates folds them)"))
        never = [i for i, decision in proven.items() if decision == "never"]
        recalibrated = []
        if args.fold_static_gates and never:
            with stage("recalibrate") as note:
                # Calibration ran every block; blocks that can never run add nothing when deployed,
                # and their residuals skew every range after them. Convert again with those blocks
                # adding nothing (they are deleted anyway), kept only if they are still proven dead.
                from cosinegate.export.freeze import without_residuals
                deployed_path = without_residuals(frozen, never)
                # the logits change with the ranges before them: bound them again on this network
                more = bound_gate_logits(deployed_path, calibration_nchw)
                candidate = quantize.convert_int8(onnx_export.export_all_compute(deployed_path, nchw),
                                                  calibration)
                candidate_bounds = gate_bounds(candidate, gated)
                if all(b.decision == "never" for b in candidate_bounds if b.index in never):
                    all_compute, bounds, recalibrated = candidate, candidate_bounds, never
                    shifts = {i: shifts.get(i, 0) + more.get(i, 0) for i in {**shifts, **more}}
                    proven = {b.index: b.decision for b in bounds if b.decision != INPUT}
                    note["text"] = (f"deploy-path ranges without blocks {','.join(map(str, never))}; "
                                    + _bounds_line(proven))
                else:
                    note["text"] = "kept the all-compute calibration: a dead block was no longer proven dead"
        static = {i: decision == "always" for i, decision in proven.items()} if args.fold_static_gates else {}
        with stage("restructure") as note:
            tflite = restructure.restructure(all_compute, gated, static=static)
            restructure.validate_int8(tflite, len(gated))
            tflm.check_tflm_ops(tflite)
            arena = tflm.measure_arena(tflite)
            # What the offline memory plan saves: the same model planned by TFLM alone.
            arena_online = tflm.measure_arena(restructure.restructure(all_compute, gated, memory_plan=False,
                                                                      static=static))
            unfolded = restructure.restructure(all_compute, gated) if static else None
            atomic.write_bytes(stage_dir / "model_int8.tflite", tflite)
            ops = restructure.op_names(tflite)
            scale, zero_point = restructure.input_quantization(tflite)
            report_input.update(scale=scale, zero_point=zero_point)
            note["text"] = (f"{len(gated) - len(static)} IF, TFLM arena {arena} B ({arena_online} B without "
                            f"the offline plan), {len(tflite):,} B, ops {' '.join(ops)}")
        branch_bytes = iter(restructure.branch_weight_bytes(tflite))
        int8 = {"tflm_arena_bytes": arena, "tflm_arena_bytes_online_plan": arena_online, "tflm_ops": ops,
                # per gated block; 0 where a folded gate left no branch
                "branch_weight_bytes": [0 if i in static else next(branch_bytes) for i in gated],
                "gate_bounds": [{"block": b.index, "decision": b.decision, "logit": b.logit,
                                 "threshold": b.threshold, **({"reason": b.reason} if b.reason else {})}
                                for b in bounds],
                "folded_gates": {d: [i for i in static if proven[i] == d] for d in ("always", "never")},
                # block -> k: that gate head was divided by 2**k before conversion (bound_gate_logits)
                "gate_head_shifts": {str(i): k for i, k in shifts.items()},
                # blocks calibrated as adding nothing (proven never to run; --fold-static-gates)
                "calibrated_without_blocks": recalibrated,
                "calibration_images": len(calibration)}

    with stage("parity") as note:
        checks = parity.onnx_parity(model, onnx_bytes, x_test, progress)
        if args.int8:
            checks.update(parity.int8_parity(model, tflite, all_compute, gated, x_test, labels,
                                             scale, zero_point, arena, progress, unfolded=unfolded))
        checks = {"images": count, "split": "test", **checks}
        note["text"] = _parity_line(checks)
        folded = checks.get("folded_vs_gated")
        if folded and (folded["bit_exact_fraction"] != 1.0 or not folded["gates_identical"]):
            raise ExportError("folding the proven gates changed the int8 model's output on "
                              f"{1 - folded['bit_exact_fraction']:.2%} of the parity images; export "
                              "without --fold-static-gates (and please report this)")

    macs = macs_breakdown(cfg)
    report = {
        "format": EXPORT_FORMAT, "version": __version__,
        "checkpoint": {"path": str(args.checkpoint), "epoch": ckpt.get("epoch"),
                       "version": ckpt.get("version")},
        "dataset": ckpt["config"]["dataset"], "num_classes": cfg.num_classes,
        "gated_blocks": len(gated), "gated_indices": gated, "plain": not gated,
        "macs_full": macs["full_total"], "macs_plain": macs["plain_total"],
        "macs_per_block": macs["blocks"], "macs_controllers": macs["controllers"],
        "input": report_input, "onnx_opset": onnx_export.OPSET,
        "notes": [] if gated else ["plain ResNet (no gated blocks): exported without If/IF; "
                                   "outputs hold only the logits"],
        **int8,
        "parity": checks,
    }
    if args.int8:
        with stage("C sources") as note:
            from cosinegate.export.carray import write_model_sources
            written = write_model_sources(stage_dir / "model_int8.tflite", report, stage_dir,
                                          generated_by="cg-export")
            note["text"] = ", ".join(p.name for p in written)
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


def _bounds_line(proven: dict) -> str:
    if not proven:
        return "no gate is constant for every input"
    parts = [f"{d} {','.join(str(i) for i, x in proven.items() if x == d)}" for d in ("always", "never")
             if d in proven.values()]
    return "constant for every input: " + "; ".join(parts)


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
    (out_dir / "export_report.json").unlink(missing_ok=True)
    for name in EXPORT_FILES:
        if name not in new:
            (out_dir / name).unlink(missing_ok=True)
    for name in sorted(new - {"export_report.json"}) + ["export_report.json"]:
        os.replace(stage_dir / name, out_dir / name)
    fsync_dir(out_dir)


@errors.command("cg-export")
def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    for flag, value in (("--parity-images", args.parity_images), ("--calibration-images", args.calibration_images)):
        if value is not None and value < 1:
            print(f"cg-export: error: {flag} must be at least 1, got {value}", file=sys.stderr)
            return EXIT_ERROR
    if args.fold_static_gates and not args.int8:
        print("cg-export: error: --fold-static-gates works on the int8 model: add --int8", file=sys.stderr)
        return EXIT_ERROR
    from cosinegate.export.onnx_to_tf import TranslateError
    from cosinegate.export.restructure import RestructureError
    from cosinegate.export.tflm import TflmError
    from cosinegate.train.checkpoint import CheckpointError
    from cosinegate.train.data import DataError
    expected = (CheckpointError, DataError, ExportError, TranslateError, RestructureError,
                TflmError, OSError)
    out_dir = args.out
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        atomic.remove_stale(out_dir.parent)  # staging folders of killed exports
        stage_dir = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=atomic.temp_prefix(out_dir),
                                          suffix=atomic.TMP_MARK + ".staging"))
    except OSError as e:
        print(f"cg-export: error: {errors.one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    try:
        report = export_checkpoint(args, stage_dir)
        _publish(stage_dir, out_dir)
    except expected as e:
        print(f"cg-export: error: {errors.one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        shutil.rmtree(stage_dir, ignore_errors=True)
    print(f"cg-export: done, {len(report['files'])} files in {out_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
