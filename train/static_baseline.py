"""The static baseline of a gated run: the same network with the blocks its gates skip
most deleted and no gates at all, trained with the same schedule, at equal mean executed work.

    python -m cosinegate.train.static_baseline RUN_DIR [--out DIR] [--run]

Prints the `cg-train` command (and runs it with --run). From the run's last epoch it takes the
mean number of blocks the deploy gates skip per image, rounds it to k, and deletes the k blocks
with the lowest execution rates: with frozen routing these are exactly the always-skipped
blocks; with input-adaptive routing the static network spends about the same mean MACs.
"""
import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from cosinegate import errors, jsonfile
from cosinegate.train.config import read_run


class BaselineError(ValueError):
    """A run this tool cannot derive a static baseline from."""


def static_command(run_dir: Path, out: Path) -> list[str]:
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    cfg, history = read_run(run_dir, {"exec_rate_deploy?": [float]})
    if not cfg["gated"]:  # early exits alone skip no block: a static twin would delete nothing
        raise BaselineError(f"{run_dir} is not a gated run: it has no gates whose skipped blocks a static "
                            "network could delete")
    # exec_rate_deploy lists gated blocks only; with every block gated they are blocks 0..n-1.
    if not cfg["gate_downsample"] or cfg.get("ungated_blocks"):
        raise BaselineError(f"{run_dir} leaves some blocks ungated (--no-gate-downsample or --ungated-blocks), "
                            "which is not supported")
    rates = jsonfile.check(history[-1], {"exec_rate_deploy": [jsonfile.Finite]},
                           f"{run_dir / 'metrics.jsonl'} last line")["exec_rate_deploy"]
    k = round(sum(1.0 - r for r in rates))
    removed = sorted(sorted(range(len(rates)), key=lambda i: rates[i])[:k])
    command = ["cg-train", "--preset", cfg["preset"], "--dataset", cfg["dataset"], "--depth", str(cfg["depth"]),
               "--epochs", str(cfg["epochs"]), "--warmup-epochs", str(cfg["warmup_epochs"]),
               "--batch-size", str(cfg["batch_size"]), "--lr", str(cfg["lr"]), "--seed", str(cfg["seed"]),
               "--no-gated", "--removed-blocks", ",".join(map(str, removed)), "--out", str(out)]
    if cfg.get("data_dir"):
        command += ["--data-dir", cfg["data_dir"]]
    if cfg.get("threads"):
        command += ["--threads", str(cfg["threads"])]
    return command


@errors.command("python -m cosinegate.train.static_baseline", expected=(OSError, ValueError))
def main(argv=None) -> int:
    parser = errors.ArgumentParser(prog="python -m cosinegate.train.static_baseline",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("run_dir", type=Path, help="a finished gated cg-train run folder")
    parser.add_argument("--out", type=Path, help="default: RUN_DIR-static")
    parser.add_argument("--run", action="store_true", help="run the command instead of printing it")
    args = parser.parse_args(argv)
    command = static_command(args.run_dir, args.out or Path(f"{args.run_dir}-static"))
    if not args.run:
        print(shlex.join(command))
        return 0
    # This interpreter's cg-train, whether or not its environment's bin folder is on PATH.
    return subprocess.call([sys.executable, "-m", "cosinegate.train.cli", *command[1:]])


if __name__ == "__main__":
    sys.exit(main())
