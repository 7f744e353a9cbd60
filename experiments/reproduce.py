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
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cosinegate import atomic, errors, jsonfile


class ConfigSpecError(ValueError):
    """A configuration argument that is not `name` or `name:preset --flag value ...`."""


def parse_config(spec: str) -> tuple[str, list[str]]:
    """`name` or `name:preset --flag value ...` -> (name, cg-train arguments)."""
    name, colon, rest = spec.partition(":")
    try:
        words = shlex.split(rest) if colon else [name]
    except ValueError as e:  # an unclosed quote or a trailing escape
        raise ConfigSpecError(f"configuration {spec!r}: {e}") from None
    if name in ("", "..") or Path(name).name != name:
        raise ConfigSpecError(f"configuration {spec!r}: its name must be one folder name under --root")
    if not words:
        raise ConfigSpecError(f"configuration {spec!r} names no preset after the colon (name:preset --flag value ...)")
    return name, ["--preset", words[0], *words[1:]]


def _epochs_trained(run: Path) -> int:
    """The epochs the run's metrics.jsonl records, one checked line each."""
    return len(jsonfile.read_lines(run / "metrics.jsonl", {"epoch": int}))


def _call(argv: list[str], log=None) -> None:
    """Run one stage; StepFailed quoting its error line when it fails (its other output as it comes)."""
    print("reproduce: $", shlex.join(argv), flush=True, file=log)
    if log is not None:
        log.flush()
    errors.run_step(argv, stdout=log)


def run_one(name: str, train_args: list[str], args, log=None) -> None:
    folder = args.root / name
    run, export, bench = folder / "run", folder / "export", folder / "bench"
    py = sys.executable
    schedule = ["--epochs", str(args.epochs), "--warmup-epochs", str(args.warmup_epochs)]
    common = ["--data-dir", str(args.data_dir)] if args.data_dir else []
    threads = ["--threads", str(args.threads)] if args.threads else []
    last = run / "last.pt"
    done = last.exists() and _epochs_trained(run) >= args.epochs
    if not done:
        argv = ([py, "-m", "cosinegate.train.cli", "--resume", str(run), "--no-progress", *common, *threads]
                if last.exists()
                else [py, "-m", "cosinegate.train.cli", *train_args, *schedule, *common, *threads,
                      "--out", str(run), "--no-progress"])
        if args.stop_after:
            argv += ["--stop-after", str(args.stop_after)]
        _call(argv, log)
        if _epochs_trained(run) < args.epochs:
            print(f"reproduce: {name}: training paused (--stop-after); run the same command again", file=log)
            return
    if args.train_only:
        return
    if not (export / "export_report.json").exists():
        _call([py, "-m", "cosinegate.export.cli", str(run / f"{args.checkpoint}.pt"), "--int8", "--out", str(export),
               "--parity-images", str(args.images), "--no-progress", *common], log)
    if not (bench / "bench.json").exists():
        tflm = (["--tflm-root", str(args.tflm_root), "--qemu-images", str(args.qemu_images)]
                if args.tflm_root else [])
        _call([py, "-m", "cosinegate.bench.cli", str(export), "--out", str(bench), "--images",
               str(args.images), "--no-progress", *common, *tflm], log)
    if args.fold_static_gates:
        fold_one(folder, args, log)


def fold_one(folder: Path, args, log=None) -> None:
    """NAME/export_folded: the same checkpoint with its proven-constant gates folded, benched in
    NAME/bench_folded (its calibration leaves out the blocks that can never run, so its accuracy
    is its own), and with --tflm-root its QEMU figures in NAME/qemu_folded.json."""
    py, folded = sys.executable, folder / "export_folded"
    common = ["--data-dir", str(args.data_dir)] if args.data_dir else []
    if not (folded / "export_report.json").exists():
        _call([py, "-m", "cosinegate.export.cli", str(folder / "run" / f"{args.checkpoint}.pt"), "--int8",
               "--fold-static-gates", "--out", str(folded), "--parity-images", str(args.images),
               "--no-progress", *common], log)
    if not (folder / "bench_folded" / "bench.json").exists():
        _call([py, "-m", "cosinegate.bench.cli", str(folded), "--out", str(folder / "bench_folded"),
               "--images", str(args.images), "--no-plain", "--no-progress", *common], log)
    if args.tflm_root and not (folder / "qemu_folded.json").exists():
        with tempfile.TemporaryDirectory(prefix="cg-fold-qemu-") as work:
            _call([py, "-m", "cosinegate.export.test_images", str(folded), *common, "--count",
                   str(args.qemu_images), "--out", f"{work}/images"], log)
            _call([py, "-m", "cosinegate.bench.qemu", str(folded), "--tflm-root", str(args.tflm_root),
                   "--images-dir", f"{work}/images", "--build-dir", f"{work}/build",
                   "--json", str(folder / "qemu_folded.json")], log)


@errors.command("python -m cosinegate.experiments.reproduce",
                expected=(OSError, ConfigSpecError, jsonfile.FileFormatError))
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

    def failure(name: str, train_args: list[str], log=None) -> str | None:
        """Run one configuration to the end; None, or why it stopped (its failing stage's error line)."""
        try:
            run_one(name, train_args, args, log)
        except errors.StepFailed as e:
            return f"{name}: {e}"
        return None

    if args.jobs <= 1:
        failures = [failure(name, train_args) for name, train_args in specs]
    else:
        def run_logged(name: str, train_args: list[str]) -> str | None:
            (args.root / name).mkdir(parents=True, exist_ok=True)
            with open(args.root / name / "reproduce.log", "a") as log:
                reason = failure(name, train_args, log)
                if reason is not None:  # the log keeps why, as it keeps the stages' other output
                    print(f"reproduce: {reason}", file=log)
            print(f"reproduce: {name}: {'done' if reason is None else 'FAILED'} "
                  f"(log: {args.root / name / 'reproduce.log'})", flush=True)
            return reason
        with ThreadPoolExecutor(args.jobs) as pool:
            failures = list(pool.map(lambda spec: run_logged(*spec), specs))
    failures = [reason for reason in failures if reason is not None]
    if failures:  # the other configurations ran on; the one line quotes the first failure
        raise errors.StepFailed(failures[0] if len(failures) == 1 else
                                f"{len(failures)} configurations failed, the first {failures[0]}")
    atomic.write_text(args.root / "reproduce_command.json", json.dumps({"argv": sys.argv}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
