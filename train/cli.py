"""`cg-train`: train a CosineGate ResNet (or the plain baseline) into a run folder.

    cg-train --preset demo                                 # offline default -> runs/demo-<time>/
    cg-train --preset balanced --data-dir ~/data --out runs/balanced
    cg-train --resume runs/balanced                        # continue a killed or paused run
    cg-train --resume runs/balanced --data-dir /data --threads 2   # ... on another machine
    torchrun --nproc-per-node 2 -m cosinegate.train.cli --preset demo --out runs/ddp

Run folder: config.yaml, metrics.jsonl (one JSON object per epoch), last.pt, best.pt, plots/*.png.
Without --out it is runs/<preset>-<date>-<time> under the current folder.
"""
import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import yaml

from cosinegate import atomic, errors, runfolder
from cosinegate.train import config as C
from cosinegate.train import checkpoint
from cosinegate.train.checkpoint import CheckpointError
from cosinegate.train.data import DataError, dataset_info

DEFAULT_PRESET = "demo"


def build_parser(defaults: dict) -> argparse.ArgumentParser:
    parser = errors.ArgumentParser(
        prog="cg-train", description=__doc__.split("\n\n")[0],
        epilog=f"presets: {', '.join(C.presets())}", formatter_class=argparse.RawDescriptionHelpFormatter)
    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, help="run folder to create (default: runs/<preset>-<date>-<time>)")
    run.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR from last.pt")
    run.add_argument("--config", type=Path, help="YAML file of config keys (over the preset)")
    run.add_argument("--stop-after", type=int, metavar="N",
                     help="stop after N more epochs (split a long run; --resume DIR continues it)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--no-cuda-graph", action="store_true",
                     help="on a GPU, launch each step's kernels one by one instead of replaying a CUDA graph")
    C.add_config_arguments(parser)
    parser.set_defaults(**defaults)
    return parser


def parse(argv) -> tuple[C.TrainConfig, argparse.Namespace]:
    pre = errors.ArgumentParser(add_help=False)
    for flag in ("--preset", "--config", "--resume"):
        pre.add_argument(flag)
    known, _ = pre.parse_known_args(argv)
    if known.resume:
        if Path(known.resume).is_file():  # a run continues from its folder's last.pt, never another file
            raise C.ConfigError("--resume takes a run folder, not a file: "
                                f"cg-train --resume {Path(known.resume).parent}")
        saved_path = Path(known.resume) / "config.yaml"
        defaults = C.read_yaml(saved_path, "saved run config")
    else:
        defaults = C.preset_values(known.preset or DEFAULT_PRESET)
        if known.config:
            values = C.read_yaml(Path(known.config), "config file")
            if "preset" in values:  # only a name here (the preset's values come from --preset): one that exists
                C.check_preset(values["preset"], f"config file {known.config}: ")
            defaults.update(values)
    args = build_parser(defaults).parse_args(argv)
    if args.stop_after is not None and args.stop_after < 1:
        raise C.ConfigError(f"--stop-after must be at least 1, got {args.stop_after}")
    cfg = C.resolve(args)
    args.new_machine_keys = []  # machine keys a resume changes (on another machine)
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
        args.new_machine_keys = machine
    elif args.out is None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each process would pick its own time
            raise C.ConfigError("--out DIR is required with several processes (torchrun)")
        args.out = Path("runs") / f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        print(f"cg-train: no --out given: the run goes to {args.out}", flush=True)
    elif int(os.environ.get("RANK", "0")) == 0:  # other processes would see the main one's files
        runfolder.check_new(args.out)
    for flag, source in (("--init-from", cfg.init_from), ("--distill-from", cfg.distill_from)):
        if source and not args.resume:  # refused before the run folder exists
            checkpoint.check_fits_data(source, dataset_info(cfg.dataset), flag)
    return cfg, args


@errors.command("cg-train")
def main(argv=None) -> int:
    from cosinegate.train.trainer import TrainingDiverged, train
    argv = sys.argv[1:] if argv is None else argv
    out = None
    try:
        cfg, args = parse(argv)
        out = args.out
        main_process = int(os.environ.get("RANK", "0")) == 0
        # Only the main process writes run files, so only it holds the folder.
        with runfolder.claim(args.out, resume=bool(args.resume)) if main_process else contextlib.nullcontext():
            if main_process and not args.resume:
                atomic.write_text(args.out / "config.yaml", yaml.safe_dump(C.to_dict(cfg), sort_keys=False))
            elif main_process and args.new_machine_keys:  # train() records them once last.pt is checked
                print(f"cg-train: resuming with new "
                      f"{', '.join(f'{k}={getattr(cfg, k)}' for k in args.new_machine_keys)}")
            history = train(cfg, args.out, resume=bool(args.resume), stop_after=args.stop_after,
                            progress_bar=not args.no_progress,
                            cuda_graph=not args.no_cuda_graph)
    except (C.ConfigError, DataError, CheckpointError, TrainingDiverged, runfolder.RunFolderError,
            ValueError, RuntimeError, OSError) as e:
        print(f"cg-train: error: {errors.one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        word, status = errors.interrupt_status(e)
        if out is not None and (out / "last.pt").is_file():
            print(f"cg-train: {word}; the last finished epoch is in last.pt (continue with: "
                  f"cg-train --resume {out})", file=sys.stderr)
        else:  # runfolder.claim removed what the run had written
            print(f"cg-train: {word} before the first epoch finished; nothing was kept", file=sys.stderr)
        return status
    if history and int(os.environ.get("RANK", "0")) == 0:
        print(_final_summary(cfg, args.out, len(history)))
    return 0


def _final_summary(cfg: C.TrainConfig, out: Path, epochs_done: int) -> str:
    """Where the run is, which epoch best.pt holds and why, and how to go on if it is not finished."""
    from cosinegate.train.trainer import routing_settled_epoch
    best = checkpoint.load(out / "best.pt")
    settled = routing_settled_epoch(cfg)
    score = best["history"][-1].get("test_acc_deploy", best["history"][-1]["test_acc_full"])
    if best["epoch"] <= settled:
        rule = f"the latest epoch so far: candidates start after epoch {settled}, once the routing settles"
    elif settled:
        rule = f"the best deploy accuracy after epoch {settled}, once the routing settles"
    else:
        rule = "the best test accuracy"
    lines = [f"cg-train: {epochs_done} of {cfg.epochs} epochs in {out}",
             f"cg-train: best.pt is epoch {best['epoch']} (test accuracy {score:.4f}; {rule}); "
             f"last.pt is epoch {epochs_done}"]
    if epochs_done < cfg.epochs:
        lines.append(f"cg-train: paused; continue with: cg-train --resume {out}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
