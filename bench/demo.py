"""`cg-demo`: the whole pipeline on the embedded default, in one command.

    cg-demo                                      # train `demo` -> export int8 -> parity -> bench
    cg-demo --tflm-root /opt/tflite-micro        # + firmware under QEMU Cortex-M4

Writes OUT/run (cg-train), OUT/export (cg-export, with the parity report), OUT/bench
(cg-bench: bench.json, BENCH.md, plots), OUT being runs/demo unless --out says otherwise. Without a TFLM library (--tflm-root or $CG_TFLM_ROOT)
the QEMU step is skipped and the bench says so.
"""
import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from cosinegate import errors


@errors.command("cg-demo", expected=(OSError,))
def main(argv=None) -> int:
    parser = errors.ArgumentParser(prog="cg-demo", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"),
                        help="folder for the run, export and bench (default: runs/demo)")
    parser.add_argument("--tflm-root", type=Path, default=os.environ.get("CG_TFLM_ROOT"),
                        help="TFLM tree with built libraries: also run the firmware on QEMU "
                             "(default: $CG_TFLM_ROOT)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for training (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    from cosinegate.bench.cli import main as bench_main
    from cosinegate.export.cli import main as export_main
    from cosinegate.train.cli import main as train_main

    run, export, bench = args.out / "run", args.out / "export", args.out / "bench"
    quiet = ["--no-progress"] if args.no_progress else []
    t0 = time.perf_counter()
    steps = [
        ("train", lambda: train_main(["--preset", "demo", "--out", str(run), *quiet]
                                     + (["--threads", str(args.threads)] if args.threads is not None else []))
         if not (run / "last.pt").exists() else train_main(["--resume", str(run), *quiet])),
        ("export", lambda: export_main([str(run / "best.pt"), "--int8", "--out", str(export), *quiet])),
        ("bench", lambda: bench_main([str(export), "--out", str(bench), *quiet]
                                     + (["--tflm-root", str(args.tflm_root)] if args.tflm_root else []))),
    ]
    if not args.tflm_root:
        print("cg-demo: no TFLM library configured (--tflm-root or CG_TFLM_ROOT): the firmware/QEMU "
              "step is skipped; see firmware/README.md", flush=True)
    for name, step in steps:
        print(f"cg-demo: == {name} ==", flush=True)
        # The step's own error line is kept back and quoted in cg-demo's one line.
        output = errors.StepOutput(sys.stderr)
        with contextlib.redirect_stderr(output):
            try:
                status = step()
            except SystemExit as e:  # an option the step's parser refuses
                status = e.code
        output.end(status, f"{name} step")
    print(f"cg-demo: done in {time.perf_counter() - t0:.0f} s -> {bench / 'BENCH.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
