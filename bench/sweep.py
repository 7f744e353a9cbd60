"""Accuracy against compute for one trained model: the deploy threshold swept through compute targets.

    python -m cosinegate.bench.sweep runs/x/last.pt --targets 0.5,0.6,0.7 --data-dir DATA --out runs/x/sweep
    python -m cosinegate.bench.sweep runs/x/last.pt --targets 0.5,0.6 --reference static=runs/s/bench/bench.json ...

For each target R, `cg-export --int8 --target-macs R` (its own process: stages talk through files)
chooses the threshold on training images and folds it into every IF; the int8 model then runs on
the test images in the TFLite interpreter, which reports the decisions it took. The paper's
threshold (0.45) is one more point. Writes OUT/sweep.json (one row per point, with the per-image
correctness string for paired tests) and OUT/sweep.png; a point already in sweep.json is kept, so
an interrupted sweep continues where it stopped.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from cosinegate import atomic, errors, jsonfile
from cosinegate.export.integrity import IntegrityError, read_export

PAPER_POINT = "paper"

# What a continued sweep and `experiments.results` read back from sweep.json (cosinegate.jsonfile).
SWEEP = {"checkpoint": str, "images": int,
         "points": {str: {"threshold": {"threshold": float}, "accuracy": float, "images": int, "mac_ratio": float,
                          "mac_ratio_std": float, "adaptivity": float, "distinct_paths": int, "correct": str}},
         "references?": {str: {"accuracy": float, "mac_ratio": float, "images": int}}}
# What a point reads from its export's report.
_REPORT = {"gated_indices": [int], "decision_outputs?": [str], "deploy_threshold": {"threshold": float},
           "input": {"scale": float, "zero_point": int}}


class SweepError(RuntimeError):
    """A target list, reference or export that cannot be used: one line for the user."""


def _targets(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--targets takes comma-separated fractions, got {text!r}") from None
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"--targets are fractions of plain ResNet's MACs in (0, 1], got {text!r}")
    return values


def _reference(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--reference takes NAME=BENCH_JSON, got {text!r}")
    return name, Path(path)


def build_parser() -> argparse.ArgumentParser:
    parser = errors.ArgumentParser(prog="cg-sweep", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("checkpoint", type=Path, help="a gated cg-train checkpoint")
    parser.add_argument("--targets", type=_targets, required=True, metavar="R,R,...",
                        help="mean executed-MAC targets, fractions of plain ResNet's MACs")
    parser.add_argument("--out", type=Path, required=True, help="sweep folder (created; continued if it exists)")
    parser.add_argument("--data-dir", help="dataset root (default: the training run's)")
    parser.add_argument("--images", type=int, default=10000, metavar="N", help="test images per point (default 10000)")
    parser.add_argument("--parity-images", type=int, default=200, metavar="N",
                        help="test images for each export's parity checks (default 200)")
    parser.add_argument("--reference", type=_reference, action="append", default=[], metavar="NAME=BENCH_JSON",
                        help="a static network's cg-bench result drawn beside the sweep; repeatable")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _export(args, target: float | None, folder: Path) -> dict:
    """One int8 export at `target` (None: the paper's threshold); returns its report."""
    report_path = folder / "export_report.json"
    if not report_path.is_file():
        command = [sys.executable, "-m", "cosinegate.export.cli", str(args.checkpoint), "--int8",
                   "--out", str(folder), "--parity-images", str(args.parity_images), "--no-progress"]
        command += ["--target-macs", str(target)] if target is not None else []
        command += ["--data-dir", args.data_dir] if args.data_dir else []
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
            raise SweepError(f"export at target {target} failed: {lines[-1]}")
    return jsonfile.check(read_export(folder), _REPORT, report_path)  # an earlier sweep's export is checked too


def _int8_point(folder: Path, report: dict, x: np.ndarray, labels: np.ndarray, macs: dict, progress: bool) -> dict:
    """Accuracy, executed MACs and routing of the int8 model in `folder`, as TFLite decides them."""
    from cosinegate.bench.run import routing_summary
    from cosinegate.export.parity import TfliteRunner, quantize_inputs, run_all
    gated = report["gated_indices"]
    names = report.get("decision_outputs", [f"gate_{i}" for i in gated])
    runner = TfliteRunner((folder / "model_int8.tflite").read_bytes(), names)
    xq = quantize_inputs(x, report["input"]["scale"], report["input"]["zero_point"])
    logits, gates = run_all(runner, xq, f"tflite int8 {folder.name}", progress)
    predictions = logits.argmax(1)
    summary = routing_summary(gates, predictions, labels, macs, gated, None)
    summary.pop("gate_agreement_vs_torch")
    summary["correct"] = "".join("1" if c else "0" for c in predictions == labels)
    return summary


def sweep(args) -> dict:
    from cosinegate.export.parity import float_inputs
    from cosinegate.train import checkpoint
    from cosinegate.train.data import dataset_info, load_arrays
    from cosinegate.train.model import macs_breakdown
    ckpt = checkpoint.load(args.checkpoint)
    model_cfg = checkpoint.build_model(ckpt).cfg
    if not model_cfg.gated and not model_cfg.exit_blocks:
        raise SweepError(f"{args.checkpoint} is a plain network: there is no threshold to sweep")
    dataset = ckpt["config"]["dataset"]
    data_dir = args.data_dir if args.data_dir is not None else ckpt["config"].get("data_dir")
    images, labels = load_arrays(dataset, data_dir, "test")
    images, labels = images[:args.images], labels[:args.images]
    x = float_inputs(images, dataset_info(dataset))
    macs = macs_breakdown(model_cfg)
    out_path = args.out / "sweep.json"
    result = jsonfile.read(out_path, SWEEP) if out_path.is_file() else {}
    if result and result.get("checkpoint") != str(args.checkpoint):
        raise SweepError(f"{out_path} belongs to a sweep of {result.get('checkpoint')}; choose another --out")
    result.update(checkpoint=str(args.checkpoint), dataset=dataset, images=int(len(labels)))
    points = result.setdefault("points", {})
    for target in [None, *args.targets]:
        name = PAPER_POINT if target is None else f"{target:.3f}"
        if name in points:
            continue
        folder = args.out / "exports" / (PAPER_POINT if target is None else f"target_{name}")
        report = _export(args, target, folder)
        point = {"target_mac_ratio": target, "threshold": report["deploy_threshold"],
                 **_int8_point(folder, report, x, labels, macs, not args.no_progress)}
        points[name] = point
        atomic.write_text(out_path, json.dumps(result, indent=1) + "\n")  # each point kept as it lands
        print(f"cg-sweep: {name:>6}: threshold {point['threshold']['threshold']:.4g} | int8 accuracy "
              f"{point['accuracy']:.4f} at {point['mac_ratio']:.3f} +- {point['mac_ratio_std']:.3f} "
              f"mean executed MACs | {point['distinct_paths']} paths", flush=True)
    result["references"] = {name: _reference_point(path) for name, path in args.reference}
    atomic.write_text(out_path, json.dumps(result, indent=1) + "\n")
    plot(result, args.out / "sweep.png")
    return result


def _reference_point(path: Path) -> dict:
    try:
        bench = json.loads(path.read_text())
        int8 = bench["runtimes"]["tflite_int8"]
        return {"bench": str(path), "accuracy": int8["accuracy"], "mac_ratio": int8["mac_ratio"],
                "images": int8["images"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SweepError(f"--reference {path} is not a cg-bench result with an int8 runtime ({e})") from None


def _run_name(checkpoint: Path) -> str:
    """runs/cifar10/NAME/run/last.pt -> NAME; runs/x/last.pt -> x."""
    folder = checkpoint.parent
    return folder.parent.name if folder.name == "run" else folder.name


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    points = sorted(result["points"].values(), key=lambda p: p["mac_ratio"])
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot([p["mac_ratio"] for p in points], [100 * p["accuracy"] for p in points], "o-",
            label=f"{_run_name(Path(result['checkpoint']))}: threshold swept")
    for name, ref in result.get("references", {}).items():
        ax.plot(ref["mac_ratio"], 100 * ref["accuracy"], "s", label=name)
    ax.set_xlabel("mean executed MACs / plain ResNet's")
    ax.set_ylabel(f"int8 accuracy, {result['images']} test images (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.save_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


# RuntimeError: CheckpointError and DataError (imported lazily, with torch)
@errors.command("cg-sweep", expected=(SweepError, RuntimeError, OSError, jsonfile.FileFormatError, IntegrityError))
def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.images < 1 or args.parity_images < 1:
        raise SweepError("--images and --parity-images must be at least 1")
    sweep(args)
    print(f"cg-sweep: {args.out / 'sweep.json'}, {args.out / 'sweep.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
