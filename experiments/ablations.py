"""Readings of the paper side by side, and dynamic routing against static pruning at equal MACs.

    python -m cosinegate.experiments.ablations --out runs/ablations [--preset demo] [--data-dir DIR] \
        [--epochs N --warmup-epochs N] [--threads 1]

Trains one run per reading (below), then for each gated run the static baseline of
`cosinegate.train.static_baseline` (its most-skipped blocks deleted, no gates, same schedule, equal
mean executed MACs), and writes OUT/ABLATIONS.md and OUT/ablations.json from the runs'
metrics.jsonl. Finished runs are kept, so the command resumes where it stopped. On the demo
preset the whole set takes about 10 minutes on 2 CPU cores.
"""
import argparse
import json
import sys
from pathlib import Path

from cosinegate import atomic, errors
from cosinegate.bench.report import table
from cosinegate.train.config import ConfigError, check_saved, read_yaml
from cosinegate.train.static_baseline import static_command

READINGS = {
    "faithful": [],                                              # the equations as written
    "open_init": ["--gate-init", "open"],                        # gates start open (Phase I)
    "paper_gate_training": ["--gate-train", "paper"],            # no hand-over to the deploy gate
    "difficulty_budgets": ["--routing", "adaptive"],             # per-sample budgets by difficulty
    "open_routing_info_0.5": ["--gate-init", "open", "--lambda-adapt", "0.5"],
    "open_routing_info_2": ["--gate-init", "open", "--lambda-adapt", "2.0"],
    "plain": ["--no-gated"],
}
STATIC_FOR = ("faithful", "open_routing_info_2")


def _train(argv: list[str], run: Path) -> None:
    """Train `run`, resume it if interrupted, or leave it if finished."""
    if (run / "last.pt").exists():
        planned = check_saved(read_yaml(run / "config.yaml", "saved run config"), run / "config.yaml")["epochs"]
        if len((run / "metrics.jsonl").read_text().splitlines()) >= planned:
            return
        argv = ["--resume", str(run), "--no-progress"]
    print("ablations: cg-train", " ".join(argv), flush=True)
    errors.run_step([sys.executable, "-m", "cosinegate.train.cli", *argv], f"training {run}")


def _row(name: str, run: Path) -> dict:
    m = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    return {"reading": name, "epochs": m["epoch"], "deploy acc": m.get("test_acc_deploy", m["test_acc_full"]),
            "paper-gate acc": m.get("test_acc_paper"),
            "gbar": m.get("gbar") if "test_acc_paper" in m else None,  # ungated runs have no gate
            "skip rate": m.get("skip_rate_deploy"), "executed MACs": m.get("mac_ratio_deploy"),
            "MAC std": m.get("mac_ratio_std"), "adaptivity": m.get("adaptivity"),
            "paths": m.get("distinct_paths")}


COLUMNS = [("reading", ""), ("epochs", "d"), ("deploy acc", ".4f"), ("paper-gate acc", ".4f"),
           ("gbar", ".3f"), ("skip rate", ".3f"), ("executed MACs", ".3f"), ("MAC std", ".3f"),
           ("adaptivity", ".2f"), ("paths", "d")]


@errors.command("python -m cosinegate.experiments.ablations", expected=(OSError, ConfigError))
def main(argv=None) -> int:
    parser = errors.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--data-dir")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--warmup-epochs", type=int)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="+", choices=list(READINGS), help="run only these readings")
    args = parser.parse_args(argv)
    common = ["--preset", args.preset, "--threads", str(args.threads), "--no-progress"]
    for flag, value in (("--data-dir", args.data_dir), ("--epochs", args.epochs),
                        ("--warmup-epochs", args.warmup_epochs)):
        if value is not None:
            common += [flag, str(value)]
    rows = []
    for name in args.only or READINGS:
        run = args.out / name
        _train([*common, *READINGS[name], "--out", str(run)], run)
        rows.append(_row(name, run))
        if name in STATIC_FOR:
            static = args.out / f"{name}_static"
            command = static_command(run, static)[1:]  # drop the program name
            _train([*command, "--threads", str(args.threads), "--no-progress"], static)
            removed = command[command.index("--removed-blocks") + 1]
            rows.append(_row(f"{name}: static, blocks {removed} deleted", static))
    header = (f"# Ablations on `{args.preset}`\n\n`python -m cosinegate.experiments.ablations "
              f"{' '.join(sys.argv[1:] if argv is None else argv)}`\n\nLast epoch of each run; "
              "executed MACs ÷ the plain network of the same depth; static rows delete the blocks the "
              "gated run above skips most, at equal mean executed MACs, and train with the same schedule.\n")
    atomic.write_text(args.out / "ABLATIONS.md", header + "\n" + table(COLUMNS, rows) + "\n")
    atomic.write_text(args.out / "ablations.json", json.dumps(rows, indent=1) + "\n")
    print(f"ablations: wrote {args.out / 'ABLATIONS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
