"""Keep every run's small result files in the repository, so RESULTS.md regenerates on any clone.

    python -m cosinegate.experiments.archive runs/cifar10 results/cifar10      # after reproduce
    python -m cosinegate.experiments.results results/cifar10 --outside results/outside --out RESULTS.md
    python -m cosinegate.experiments.archive --restore models/X/model.pt runs/cifar10/NAME/run

Run folders hold checkpoints and exports (megabytes each) and live outside git, on the machine that
made them; a new machine has none of them. RESULTS.md reads only the files named in RESULT_FILES
(config, metrics, training curves, export reports, bench and QEMU JSON: kilobytes), so those are copied into a
folder of the same layout that is committed. `--restore` rebuilds a run folder (config.yaml,
metrics.jsonl, last.pt) from a checkpoint, which stores the first two, e.g. to export and bench a
published model again with `reproduce --checkpoint last`, which then skips the finished training.
"""
import argparse
import json
import sys
from pathlib import Path

import yaml

from cosinegate import atomic, errors, runfolder

# Everything `experiments.results` reads from a run folder, relative to ROOT/NAME.
RESULT_FILES = ("run/config.yaml", "run/metrics.jsonl", "run/plots/accuracy.png", "run/plots/compute.png",
                "export/export_report.json", "export_folded/export_report.json",
                "bench/bench.json", "bench_folded/bench.json", "qemu.json", "qemu_folded.json",
                "sweep/sweep.json", "sweep/sweep.png")


def archive(root: Path, dest: Path) -> list[str]:
    """Copy RESULT_FILES of every run folder under `root` into `dest`, all of them or on a failure
    none (kilobytes each: read into memory first); returns the run names."""
    names, copies = [], {}
    for folder in sorted(p for p in root.iterdir() if (p / "run" / "metrics.jsonl").is_file()):
        for rel in RESULT_FILES:
            if (folder / rel).is_file():
                copies[dest / folder.name / rel] = (folder / rel).read_bytes()
        names.append(folder.name)
    atomic.write_all(copies)
    return names


def restore(checkpoint_path: Path, run_dir: Path) -> int:
    """Write run_dir/config.yaml and metrics.jsonl from a checkpoint, which becomes the folder's
    last.pt (the last epoch it knows); returns the epochs restored. All three are checked and made
    before the first is written, and they are written all or none: no half-made run folder is left
    for a retry to refuse."""
    from cosinegate.train import checkpoint
    runfolder.check_new(run_dir)
    state = checkpoint.load(checkpoint_path)
    checkpoint.check_history(state, checkpoint_path)
    try:
        config = yaml.safe_dump(state["config"], sort_keys=False)
    except yaml.YAMLError:
        raise checkpoint.CheckpointError(f"{checkpoint_path}: its config holds a value YAML cannot hold") from None
    atomic.write_all({run_dir / "config.yaml": config,
                      run_dir / "metrics.jsonl": "".join(json.dumps(m) + "\n" for m in state["history"]),
                      run_dir / "last.pt": Path(checkpoint_path).read_bytes()})
    return len(state["history"])


@errors.command("archive", expected=(OSError, RuntimeError))  # RuntimeError: CheckpointError, RunFolderError
def main(argv=None) -> int:
    parser = errors.ArgumentParser(prog="python -m cosinegate.experiments.archive",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("source", type=Path, help="runs root (or, with --restore, a checkpoint)")
    parser.add_argument("dest", type=Path, help="archive root (or, with --restore, a run folder)")
    parser.add_argument("--restore", action="store_true",
                        help="rebuild a run folder (config.yaml, metrics.jsonl, last.pt) from a checkpoint")
    args = parser.parse_args(argv)
    if args.restore:
        epochs = restore(args.source, args.dest)
        print(f"archive: restored {epochs} epochs of {args.source} into {args.dest}")
        return 0
    if not args.source.is_dir():
        print(f"archive: error: no runs root at {args.source}", file=sys.stderr)
        return 1
    names = archive(args.source, args.dest)
    if not names:
        print(f"archive: error: no run folders with run/metrics.jsonl under {args.source}", file=sys.stderr)
        return 1
    print(f"archive: {len(names)} runs -> {args.dest} ({', '.join(names)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
