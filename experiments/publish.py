"""Publish a trained, exported and benched model into the repository's models/ folder.

    python -m cosinegate.experiments.publish --name demo-digits-resnet20 \
        --run runs/demo/run --export runs/demo/export --bench runs/demo/bench --command "cg-demo"

Run from the repository root (or name the folder with --models). Writes models/NAME/{model.pt, model_int8.tflite, export_report.json} and updates
models/manifest.json (one entry per model: name, dataset, preset, depth, epochs,
test_acc_deploy_int8, mac_ratio_deploy, adaptivity, distinct_paths, mac_ratio_std, paths, command). model.pt is the checkpoint without its
optimiser and RNG state (weights, configs, metrics history): cg-export reads it as it is.
"""
import argparse
import json
import sys
from pathlib import Path

from cosinegate import atomic, errors, jsonfile
from cosinegate.train import checkpoint

KEEP = ("epoch", "config", "model_config", "model", "history", "best_score")
# What the manifest entry takes from bench.json's int8 runtime (a cosinegate.jsonfile shape).
INT8_FIGURES = {"accuracy": float, "mac_ratio": float, "skip_rate": float, "adaptivity": float,
                "distinct_paths": int, "mac_ratio_std": float}


def publish(name: str, run: Path, export: Path, bench: Path, command: str, models: Path) -> dict:
    ckpt_path = Path(json.loads((export / "export_report.json").read_text())["checkpoint"]["path"])
    ckpt = checkpoint.load(ckpt_path if ckpt_path.is_file() else run / "best.pt")
    # Every input is read before the first write: a missing one leaves models/ as it was.
    tflite = (export / "model_int8.tflite").read_bytes()
    report = json.loads((export / "export_report.json").read_text())
    runtimes = jsonfile.read(bench / "bench.json", {"runtimes": {str: dict}})["runtimes"]
    int8_runtime = "tflite_int8" if runtimes.get("tflite_int8") else "onnxruntime"
    int8 = jsonfile.check(runtimes, {int8_runtime: INT8_FIGURES}, bench / "bench.json", "runtimes")[int8_runtime]
    cfg = ckpt["config"]
    entry = {"name": name, "dataset": cfg["dataset"], "preset": cfg["preset"], "depth": cfg["depth"],
             "epochs": ckpt["epoch"], "planned_epochs": cfg["epochs"],
             "test_acc_deploy_int8": int8["accuracy"], "mac_ratio_deploy": int8["mac_ratio"],
             "skip_rate_deploy_int8": int8["skip_rate"], "adaptivity": int8["adaptivity"],
             "distinct_paths": int8["distinct_paths"], "mac_ratio_std": int8["mac_ratio_std"],
             "paths": {k: f"models/{name}/{k}" for k in ("model.pt", "model_int8.tflite", "export_report.json")},
             "command": command}
    manifest_path = models / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"models": []}
    known = any(m["name"] == name for m in manifest["models"])  # republishing keeps the order
    manifest["models"] = [entry if m["name"] == name else m for m in manifest["models"]] + ([] if known else [entry])
    report["checkpoint"]["path"] = f"models/{name}/model.pt"  # the published copy, not the run folder
    folder = models / name
    # The model's files and its manifest entry are published together, or on a failure not at all.
    atomic.write_all({folder / "model.pt": checkpoint.encode({k: ckpt[k] for k in KEEP if k in ckpt}),
                      folder / "model_int8.tflite": tflite,
                      folder / "export_report.json": json.dumps(report, indent=2) + "\n",
                      manifest_path: json.dumps(manifest, indent=2) + "\n"})
    return entry


@errors.command("python -m cosinegate.experiments.publish", expected=(OSError, ValueError, KeyError, RuntimeError))
def main(argv=None) -> int:
    parser = errors.ArgumentParser(prog="python -m cosinegate.experiments.publish",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--name", required=True)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--export", type=Path, required=True)
    parser.add_argument("--bench", type=Path, required=True)
    parser.add_argument("--command", required=True, help="the command that made the run")
    parser.add_argument("--models", type=Path, default=Path("models"),
                        help="the repository's models folder (default: ./models)")
    args = parser.parse_args(argv)
    entry = publish(args.name, args.run, args.export, args.bench, args.command, args.models)
    print(json.dumps(entry, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
