"""Reproduce the CIFAR-10 table: train, export int8 and bench each configuration, resumably.

    python -m cosinegate.experiments.reproduce --root runs/cifar10 --epochs 10 --warmup-epochs 3 \
        --data-dir data resnet20 balanced aggressive conservative
    python -m cosinegate.experiments.results runs/cifar10 --out RESULTS.md

Each configuration gets ROOT/NAME/{run,export,bench}. A configuration is a preset name, optionally
with cg-train flags after a colon: `balanced_adaptive:balanced --gate-init open --lambda-adapt 2`.
Finished stages are skipped and an interrupted training run is resumed, so the command can be
repeated, as often as it takes, until everything is there. The paper's protocol is `--epochs 160
--warmup-epochs 40` (the presets' default); anything shorter is recorded in each run's config and
labelled in RESULTS.md. On a GPU, `--jobs 4` trains four configurations at once (one process
each; give each `--threads` CPU threads so they do not oversubscribe the cores).
"""
import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cosinegate import errors


def parse_config(spec: str) -> tuple[str, list[str]]:
    """`name` or `name:preset --flag value ...` -> (name, cg-train arguments)."""
    if ":" not in spec:
        return spec, ["--preset", spec]
    name, rest = spec.split(":", 1)
    words = shlex.split(rest)
    return name, ["--preset", words[0], *words[1:]]


def _call(argv: list[str], log=None) -> int:
    print("reproduce: $", shlex.join(argv), flush=True, file=log)
    if log is None:
        return subprocess.call(argv)
    log.flush()
    return subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT)


def run_one(name: str, train_args: list[str], args, log=None) -> int:
    folder = args.root / name
    run, export, bench = folder / "run", folder / "export", folder / "bench"
    py = sys.executable
    schedule = ["--epochs", str(args.epochs), "--warmup-epochs", str(args.warmup_epochs)]
    common = ["--data-dir", str(args.data_dir)] if args.data_dir else []
    threads = ["--threads", str(args.threads)] if args.threads else []
    last = run / "last.pt"
    done = last.exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= args.epochs
    if not done:
        argv = ([py, "-m", "cosinegate.train.cli", "--resume", str(run), "--no-progress", *common, *threads]
                if last.exists()
                else [py, "-m", "cosinegate.train.cli", *train_args, *schedule, *common, *threads,
                      "--out", str(run), "--no-progress"])
        if args.stop_after:
            argv += ["--stop-after", str(args.stop_after)]
        if _call(argv, log) != 0:
            return 1
        if len((run / "metrics.jsonl").read_text().splitlines()) < args.epochs:
            print(f"reproduce: {name}: training paused (--stop-after); run the same command again", file=log)
            return 0
    if args.train_only:
        return 0
    if not (export / "export_report.json").exists():
        if _call([py, "-m", "cosinegate.export.cli", str(run / f"{args.checkpoint}.pt"), "--int8", "--out", str(export),
                  "--parity-images", str(args.images), "--no-progress", *common], log) != 0:
            return 1
    if not (bench / "bench.json").exists():
        tflm = (["--tflm-root", str(args.tflm_root), "--qemu-images", str(args.qemu_images)]
                if args.tflm_root else [])
        if _call([py, "-m", "cosinegate.bench.cli", str(export), "--out", str(bench), "--images",
                  str(args.images), "--no-progress", *common, *tflm], log) != 0:
            return 1
    if args.fold_static_gates:
        return fold_one(folder, args, log)
    return 0


def fold_one(folder: Path, args, log=None) -> int:
    """NAME/export_folded: the same checkpoint with its proven-constant gates folded, benched in
    NAME/bench_folded (its calibration leaves out the blocks that can never run, so its accuracy
    is its own), and with --tflm-root its QEMU figures in NAME/qemu_folded.json."""
    py, folded = sys.executable, folder / "export_folded"
    common = ["--data-dir", str(args.data_dir)] if args.data_dir else []
    if not (folded / "export_report.json").exists():
        if _call([py, "-m", "cosinegate.export.cli", str(folder / "run" / f"{args.checkpoint}.pt"), "--int8",
                  "--fold-static-gates", "--out", str(folded), "--parity-images", str(args.images),
                  "--no-progress", *common], log) != 0:
            return 1
    if not (folder / "bench_folded" / "bench.json").exists():
        if _call([py, "-m", "cosinegate.bench.cli", str(folded), "--out", str(folder / "bench_folded"),
                  "--images", str(args.images), "--no-plain", "--no-progress", *common], log) != 0:
            return 1
    if args.tflm_root and not (folder / "qemu_folded.json").exists():
        with tempfile.TemporaryDirectory(prefix="cg-fold-qemu-") as work:
            if _call([py, "-m", "cosinegate.export.test_images", str(folded), *common, "--count",
                      str(args.qemu_images), "--out", f"{work}/images"], log) != 0:
                return 1
            if _call([py, "-m", "cosinegate.bench.qemu", str(folded), "--tflm-root", str(args.tflm_root),
                      "--images-dir", f"{work}/images", "--build-dir", f"{work}/build",
                      "--json", str(folder / "qemu_folded.json")], log) != 0:
                return 1
    return 0


@errors.command("python -m cosinegate.experiments.reproduce", expected=(OSError,))
def main(argv=None) -> int:
    parser = errors.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("configs", nargs="+", help="preset names or name:preset --flags")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=160)
    parser.add_argument("--warmup-epochs", type=int, default=40)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--images", type=int, default=10000, help="test images for parity and bench")
    parser.add_argument("--stop-after", type=int, help="train at most N epochs per configuration this call")
    parser.add_argument("--train-only", action="store_true",
                        help="stop after training (a GPU machine without TensorFlow); a later call "
                             "without it exports and benches")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="what to export: best.pt (best deploy accuracy on the test set after the "
                             "warm-up, so chosen on the images it is then judged on) or last.pt (the "
                             "final epoch, as the paper's Table 2 reports)")
    parser.add_argument("--tflm-root", type=Path, help="also run the QEMU Cortex-M4 bench")
    parser.add_argument("--qemu-images", type=int, default=3,
                        help="test images per QEMU run (a CIFAR-10 ResNet-20 with reference kernels is "
                             "about 2.6 G instructions each)")
    parser.add_argument("--fold-static-gates", action="store_true",
                        help="also export each model with its proven-constant gates folded "
                             "(NAME/export_folded, NAME/qemu_folded.json)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="configurations run at once (a GPU fits several ResNet-20 runs); with more "
                             "than one, each one's output goes to ROOT/NAME/reproduce.log")
    args = parser.parse_args(argv)
    specs = [parse_config(spec) for spec in args.configs]
    if args.jobs <= 1:
        status = 0
        for name, train_args in specs:
            status |= run_one(name, train_args, args)
    else:
        def run_logged(name: str, train_args: list[str]) -> int:
            (args.root / name).mkdir(parents=True, exist_ok=True)
            with open(args.root / name / "reproduce.log", "a") as log:
                code = run_one(name, train_args, args, log)
            print(f"reproduce: {name}: {'done' if code == 0 else 'FAILED'} (log: {args.root / name / 'reproduce.log'})",
                  flush=True)
            return code
        with ThreadPoolExecutor(args.jobs) as pool:
            status = 0
            for code in pool.map(lambda spec: run_logged(*spec), specs):
                status |= code
    (args.root / "reproduce_command.json").write_text(json.dumps({"argv": sys.argv}, indent=1))
    return status


if __name__ == "__main__":
    sys.exit(main())
