"""`cg-bench`: how much does the gate really save, on which runtime, at what accuracy?

    cg-bench runs/demo/best_export                                  # -> runs/demo/best_bench/
    cg-bench runs/c10/export --data-dir ~/data --images 1000 --out runs/c10/bench
    cg-bench runs/demo/best_export --firmware-log qemu.log          # add a board/QEMU log
    cg-bench runs/demo/best_export --serial /dev/ttyACM0 --out runs/board   # read a board live
    cg-bench runs/demo/best_export --tflm-root /opt/tflite-micro    # + QEMU Cortex-M4 counts

Skip rates are executed work as decided by each runtime (PyTorch deploy mode, onnxruntime, TFLite
int8, the TFLM interpreter, and firmware logs), not the mean relaxed gate. Host latency is
MLPerf-Tiny style: warm-up, then N single-image inferences over real test images, median with
min/max, for the gated model, the same model with every gate forced on, and the plain ResNet of
the same depth. Writes DIR/bench.json, DIR/BENCH.md and DIR/plots/*.png.
"""
import argparse
import os
import shlex
import sys
from pathlib import Path

from cosinegate import errors

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# Flags that count things: (flag, attribute, least value allowed)
COUNTS = (("--images", "images", 1), ("--latency-runs", "latency_runs", 1), ("--latency-warmup", "latency_warmup", 0),
          ("--qemu-images", "qemu_images", 1), ("--baud", "baud", 1), ("--serial-timeout", "serial_timeout", 1e-3),
          ("--clock-mhz", "clock_mhz", 1e-3))


def build_parser() -> argparse.ArgumentParser:
    parser = errors.ArgumentParser(prog="cg-bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("export_dir", type=Path, help="a cg-export folder")
    parser.add_argument("--out", type=Path,
                        help="bench folder, created (default: beside the export, NAME_export -> NAME_bench)")
    parser.add_argument("--data-dir", help="dataset root (default: the training run's)")
    parser.add_argument("--images", type=int, default=1000, metavar="N",
                        help="test images for skip rates and accuracy (default 1000, fewer if the split is smaller)")
    parser.add_argument("--checkpoint", type=Path, help="default: the checkpoint named in the export report")
    parser.add_argument("--latency-runs", type=int, default=200, metavar="N")
    parser.add_argument("--latency-warmup", type=int, default=20, metavar="N")
    parser.add_argument("--no-plain", action="store_true",
                        help="skip exporting the plain ResNet for the latency baseline")
    parser.add_argument("--firmware-log", type=Path, action="append", default=[], metavar="FILE",
                        help="a firmware run log (QEMU or board); repeatable")
    parser.add_argument("--serial", metavar="PORT", help="read the firmware's lines from a serial port")
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--serial-timeout", type=float, default=30.0, metavar="S")
    parser.add_argument("--tflm-root", type=Path, default=os.environ.get("CG_TFLM_ROOT"),
                        help="TFLM tree with built libraries: run the QEMU Cortex-M4 port (default: $CG_TFLM_ROOT)")
    parser.add_argument("--qemu-images", type=int, default=10, metavar="N",
                        help="test images embedded in the QEMU firmware (default 10)")
    parser.add_argument("--qemu-per-block", action="store_true",
                        help="also build one firmware per gated block (only that block on) for per-block costs")
    parser.add_argument("--clock-mhz", type=float, default=120.0,
                        help="core clock for the QEMU runs' estimated Cortex-M4 milliseconds (default 120)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def default_out(export_dir: Path) -> Path:
    """runs/demo/best_export -> runs/demo/best_bench; exports/demo -> exports/demo_bench."""
    return export_dir.with_name(export_dir.name.removesuffix("_export") + "_bench")


@errors.command("cg-bench")
def main(argv=None) -> int:
    from cosinegate.bench.errors import BenchError
    from cosinegate.bench.protocol import ProtocolError
    from cosinegate.export.integrity import IntegrityError
    from cosinegate.train.checkpoint import CheckpointError
    from cosinegate.train.data import DataError
    args = build_parser().parse_args(argv)
    args.out = args.out or default_out(args.export_dir)
    for flag, name, least in COUNTS:
        if getattr(args, name) < least:
            print(f"cg-bench: error: {flag} must be at least {least:g}, got {getattr(args, name):g}", file=sys.stderr)
            return 1
    try:
        from cosinegate.bench.run import run_bench
        run_bench(args, command=shlex.join(["cg-bench", *(sys.argv[1:] if argv is None else argv)]))
    except (BenchError, DataError, CheckpointError, ProtocolError, IntegrityError, OSError) as e:
        print(f"cg-bench: error: {errors.one_line(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: the errors the bench raises are the
    # imported module's BenchError, which a class defined again here would not catch.
    from cosinegate.bench.cli import main as _main
    sys.exit(_main())
