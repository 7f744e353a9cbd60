"""`cg-train`: train a CosineGate ResNet (or the plain baseline) into a run folder.

    cg-train --preset demo --out runs/demo                 # offline default, ~1 min on 2 CPU cores
    cg-train --preset balanced --data-dir ../shared/data --out runs/balanced
    cg-train --resume runs/balanced                        # continue a killed run
    cg-train --resume runs/balanced --data-dir /data --threads 2   # ... on another machine
    torchrun --nproc-per-node 2 -m cosinegate.train.cli --preset demo --out runs/ddp

Run folder: config.yaml, metrics.jsonl (one JSON object per epoch), last.pt, best.pt, plots/*.png.
"""
import argparse
import contextlib
import os
import sys
from pathlib import Path

import yaml

from cosinegate import atomic, errors, runfolder
from cosinegate.train import config as C
from cosinegate.train import checkpoint
from cosinegate.train.checkpoint import CheckpointError
from cosinegate.train.data import DataError

DEFAULT_PRESET = "demo"


def build_parser(defaults: dict) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cg-train", description=__doc__.split("\n\n")[0],
        epilog=f"presets: {', '.join(C.presets())}", formatter_class=argparse.RawDescriptionHelpFormatter)
    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, help="run folder to create (required unless --resume)")
    run.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR from last.pt")
    run.add_argument("--config", type=Path, help="YAML file of config keys (over the preset)")
    run.add_argument("--stop-after", type=int, metavar="N",
                     help="stop after N more epochs (split a long run across sessions; --resume continues)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--no-cuda-graph", action="store_true",
                     help="on a GPU, launch each step's kernels one by one instead of replaying a CUDA graph")
    C.add_config_arguments(parser)
    parser.set_defaults(**defaults)
    return parser


def parse(argv) -> tuple[C.TrainConfig, argparse.Namespace]:
    pre = argparse.ArgumentParser(add_help=False)
    for flag in ("--preset", "--config", "--resume"):
        pre.add_argument(flag)
    known, _ = pre.parse_known_args(argv)
    if known.resume:
        saved_path = Path(known.resume) / "config.yaml"
        defaults = C.read_yaml(saved_path, "saved run config")
    else:
        defaults = C.preset_values(known.preset or DEFAULT_PRESET)
        if known.config:
            defaults.update(C.read_yaml(Path(known.config), "config file"))
    args = build_parser(defaults).parse_args(argv)
    cfg = C.resolve(args)
    if args.resume:
        saved = C.from_dict(defaults)
        changed = sorted(k for k, v in C.to_dict(cfg).items() if C.to_dict(saved)[k] != v)
        machine = [k for k in changed if k in C.MACHINE_KEYS]
        changed = [k for k in changed if k not in C.MACHINE_KEYS]
        if changed:
            raise C.ConfigError(f"--resume {args.resume}: its config differs in {', '.join(changed)}; "
                                "resume with the saved config or start a new --out")
        if not (Path(args.resume) / "last.pt").is_file():
            raise CheckpointError(f"--resume {args.resume}: no last.pt there to continue from")
        args.out = Path(args.resume)
        if machine:
            print(f"cg-train: resuming with new {', '.join(f'{k}={getattr(cfg, k)}' for k in machine)}")
            atomic.write_text(args.out / "config.yaml", yaml.safe_dump(C.to_dict(cfg), sort_keys=False))
    elif args.out is None:
        raise C.ConfigError("--out DIR is required (or --resume DIR)")
    else:
        runfolder.check_new(args.out)
    if cfg.init_from and not args.resume:
        checkpoint.load(cfg.init_from)  # refuse a missing or foreign warm start before the run folder exists
    return cfg, args


@errors.command("cg-train")
def main(argv=None) -> int:
    from cosinegate.train.trainer import TrainingDiverged, train
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg, args = parse(argv)
        main_process = int(os.environ.get("RANK", "0")) == 0
        # Only the main process writes run files, so only it holds the folder.
        with runfolder.claim(args.out, resume=bool(args.resume)) if main_process else contextlib.nullcontext():
            if not args.resume and main_process:
                atomic.write_text(args.out / "config.yaml", yaml.safe_dump(C.to_dict(cfg), sort_keys=False))
            history = train(cfg, args.out, resume=bool(args.resume), stop_after=args.stop_after,
                            progress_bar=not args.no_progress,
                            cuda_graph=not args.no_cuda_graph)
    except (C.ConfigError, DataError, CheckpointError, TrainingDiverged, runfolder.RunFolderError,
            ValueError, RuntimeError, OSError) as e:
        print(f"cg-train: error: {errors.one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cg-train: interrupted; the last finished epoch is in last.pt (continue with --resume)",
              file=sys.stderr)
        return 130
    if history and int(os.environ.get("RANK", "0")) == 0:
        print(f"cg-train: done, {len(history)} epochs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
