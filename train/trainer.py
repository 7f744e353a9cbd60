"""The training run, top to bottom in the order it executes (paper Algorithm 1 per mini-batch).

config -> distributed set-up -> seeds and autocast -> data (kept on the device) -> model, optimiser,
schedule (fresh or resumed) -> loop: forward, loss, backward, step; per epoch: evaluate, log, plot,
checkpoint. Multi-process runs come through `torchrun` (gloo on CPU, NCCL on GPU).
"""
import functools
import json
import math
import os
import platform
import reprlib
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from cosinegate import atomic, errors
from cosinegate.train import checkpoint, gate as G
from cosinegate.train import exits as X
from cosinegate.train.config import CONFIG_DEFAULTS, MACHINE_KEYS, TrainConfig, to_dict
from cosinegate.train.data import DeviceLoader, dataset_info, holdout_split, load_arrays
from cosinegate.train.distill import distillation_loss, load_teacher, teacher_logits
from cosinegate.train.evaluate import EXIT_ACC, evaluate
from cosinegate.train.graph_step import StaticStep
from cosinegate.train.model import CosineGateResNet, param_counts
from cosinegate.train.plots import plot_run

REVIVE_IMAGES = 1024  # training images on which a controller unit must be zero to count as dead


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the run stopped and kept its last good checkpoint."""


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def _schedule(cfg: TrainConfig, epoch_float: float) -> tuple[float, float]:
    """FLOPs-penalty progress prog(t) (eq. 19, shifted by the delay) and the Gumbel temperature,
    t in epochs."""
    t = epoch_float - cfg.flops_delay_epochs
    if t < 0:
        progress = 0.0
    elif cfg.warmup_epochs <= 0:
        progress = 1.0
    else:
        progress = min(1.0, t / cfg.warmup_epochs)
    tau = cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** (epoch_float / cfg.epochs)
    return progress, tau


def gate_mode(cfg: TrainConfig, epoch: int) -> str:
    if not cfg.gated:
        return "full"
    if cfg.gate_train == "deploy" and epoch >= cfg.handover_epoch:
        return "relaxed_deploy"
    return "relaxed"


def routing_settled_epoch(cfg: TrainConfig) -> int:
    """First epoch whose model is a candidate for best.pt: FLOPs warm-up over and, for the
    deploy-gate reading, the hand-over done (earlier epochs skip little, so they are not 'best')."""
    if not cfg.gated:
        return 0
    return max(cfg.penalty_full_epoch, cfg.handover_epoch if cfg.gate_train == "deploy" else 0)


@functools.lru_cache(maxsize=8)
def _prior_quantiles(n: int, mean: float, concentration: float, device: torch.device) -> torch.Tensor:
    """Batch-shaping's prior quantiles, made once per batch size and device (never inside a CUDA graph)."""
    alpha, beta = concentration * mean, concentration * (1.0 - mean)
    return G.beta_quantiles(n, alpha, beta).float().to(device)


def loss_terms(cfg: TrainConfig, logits, stats, y, progress: float, mode: str, teacher_logits=None,
               exit_logits=()) -> dict:
    """Eq. 21 plus the deployable gate's two terms (and distillation, given a teacher's logits,
    and the early exits' cross-entropy, given their logits); every term is a scalar tensor."""
    terms = {"ce": F.cross_entropy(logits.float(), y)}
    weights = X.exit_weights(cfg.exit_block_list, cfg.blocks)
    if exit_logits:
        terms["exit"] = sum(w * F.cross_entropy(z.float(), y) for w, z in zip(weights, exit_logits))
    if teacher_logits is not None:
        terms["distill"] = distillation_loss(logits, teacher_logits, cfg.distill_temperature) + sum(
            w * distillation_loss(z, teacher_logits, cfg.distill_temperature)
            for w, z in zip(weights, exit_logits))
    if not stats:
        return terms
    z = torch.stack([s["g"] for s in stats], 1)                                  # (B, n_gated)
    terms["gbar"] = z.mean()
    terms["cons"] = torch.stack([s["cons"] for s in stats], 1).sum(1).mean()      # eq. 20
    if cfg.routing == "adaptive":
        budgets = G.difficulty_budgets(logits, y, cfg.tau_target, cfg.adaptive_spread)
        terms["flops"] = G.per_sample_flops_penalty(z, budgets, progress)
    else:
        terms["flops"] = G.flops_penalty(terms["gbar"], cfg.tau_target, progress)  # eq. 18
    cir = torch.stack([s["cir"] for s in stats], 1).detach()
    cir_hat = torch.stack([s["cir_hat"] for s in stats], 1)
    terms["cir"] = F.mse_loss(cir_hat, cir)
    logit_deploy = torch.stack([s["logit_deploy"] for s in stats], 1)
    terms["adapt"] = G.routing_information_loss(logit_deploy)
    if cfg.routing == "target_rate":
        gates = G.deploy_gate_straight_through(logit_deploy, cfg.routing_temperature)
        terms["routing"] = progress * G.target_rate_loss(gates, cfg.target_rate)
    elif cfg.routing == "batch_shape":
        terms["routing"] = progress * G.batch_shaping_loss(logit_deploy, _prior_quantiles(
            len(y), cfg.target_rate, cfg.shape_concentration, logit_deploy.device), cfg.routing_temperature)
    terms["margin"] = (G.margin_penalty(torch.stack([s["logit_deploy"] for s in stats], 1), cfg.margin)
                       if mode == "relaxed_deploy" else torch.zeros((), device=z.device))
    return terms


# The order in which total_loss adds the terms after the cross-entropy (float addition is not associative).
TERM_ORDER = ("exit", "distill", "cons", "flops", "cir", "margin", "adapt", "routing")


def term_weights(cfg: TrainConfig) -> dict:
    """Each loss term's weight in the total loss: eq. 21's, the deployable gate's and those beyond the paper."""
    return {"ce": 1.0, "exit": cfg.lambda_exit, "distill": cfg.lambda_distill, "cons": cfg.lambda_cons,
            "flops": cfg.lambda_flops, "cir": cfg.lambda_cir, "margin": cfg.lambda_margin,
            "adapt": cfg.lambda_adapt, "routing": cfg.lambda_routing}


def total_loss(cfg: TrainConfig, terms: dict) -> torch.Tensor:
    weights = term_weights(cfg)
    loss = terms["ce"]
    for name in TERM_ORDER:
        if name in terms:
            loss = loss + weights[name] * terms[name]
    return loss


def step_loss(cfg: TrainConfig, teacher=None):
    """The loss a training step minimises, as `StaticStep` calls it: (loss, mean gate or None)."""
    def loss_fn(logits, stats, x, y, progress, mode, exit_logits=()):
        target = teacher_logits(teacher, x) if teacher is not None else None
        terms = loss_terms(cfg, logits, stats, y, progress, mode, target, exit_logits)
        return total_loss(cfg, terms), terms.get("gbar")
    return loss_fn


def machine_label(device: torch.device, world: int = 1) -> str:
    """What trained an epoch, kept in its metrics record: a run resumed elsewhere says where each part ran."""
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{platform.machine()} CPU of {_count(os.cpu_count() or 1, 'core')}")
    return (f"{name}{f' x {world}' if world > 1 else ''}, {_count(torch.get_num_threads(), 'thread')}, "
            f"torch {torch.__version__.split('+')[0]}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _summary(m: dict, epochs: int) -> str:
    line = (f"epoch {m['epoch']:>3}/{epochs} | lr {m['lr']:.4f} | loss {m['train_loss']:.4f} "
            f"acc {m['train_acc']:.4f} | test full {m['test_acc_full']:.4f}")
    if "test_acc_paper" in m:
        line += (f" paper {m['test_acc_paper']:.4f} deploy {m['test_acc_deploy']:.4f} | "
                 f"gbar {m['gbar']:.3f} skip {m['skip_rate_deploy']:.3f} "
                 f"mac {m['mac_ratio_deploy']:.3f} paths {m['distinct_paths']}")
    if "continue_rate_deploy" in m:
        blocks = sorted(int(k[len(EXIT_ACC):]) for k in m if k.startswith(EXIT_ACC))
        exits = " ".join(f"b{b} {m[f'{EXIT_ACC}{b}']:.4f}" for b in blocks)
        line += (f" | exits {exits} deploy {m['test_acc_deploy']:.4f} at mac {m['mac_ratio_deploy']:.3f} "
                 f"(std {m['mac_ratio_std']:.3f})")
    return line + f" | {m['epoch_time_s']:.1f}s"


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False,
          stop_after: int | None = None, progress_bar: bool = True, cuda_graph: bool = True) -> list[dict]:
    """Train (or continue) the run in `out_dir`; return the metrics history. On one GPU each
    training step replays a CUDA graph unless `cuda_graph` is False (see graph_step.py)."""
    out_dir = Path(out_dir)
    # -- distributed set-up (torchrun sets WORLD_SIZE / RANK / LOCAL_RANK) --------------------
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    device = _pick_device(cfg.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {world} processes")
    main_process = rank == 0
    # -- seeds, threads, dtype -----------------------------------------------------------------
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + rank)  # Gumbel noise differs per process, weights are broadcast
    cuda = device.type == "cuda"
    # No autocast weight-cast cache: a CUDA graph must not capture a cache that lives across steps.
    autocast = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False))
                if (cuda and cfg.amp) else None)
    # -- data, normalised once and kept on the device --------------------------------------------
    info = dataset_info(cfg.dataset)
    x_train, y_train = load_arrays(cfg.dataset, cfg.data_dir, "train", cfg.download)
    if cfg.holdout:
        keep, _ = holdout_split(len(x_train), cfg.holdout)
        x_train, y_train = x_train[keep], y_train[keep]
    x_test, y_test = load_arrays(cfg.dataset, cfg.data_dir, "test", cfg.download)
    train_loader = DeviceLoader(x_train, y_train, info, cfg.batch_size // world, device, train=True,
                                seed=cfg.seed, rank=rank, world=world, channels_last=True)
    test_loader = DeviceLoader(x_test, y_test, info, 1000, device, train=False, channels_last=True)
    steps = len(train_loader)
    if steps == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the training set per process")
    # -- model, optimiser, schedule: fresh or resumed ---------------------------------------------
    # channels_last pays on the CPU too: 0.40 vs 0.48 s per ResNet-20 step (batch 128, 1 thread)
    model = CosineGateResNet(cfg.model_config(info)).to(device).to(memory_format=torch.channels_last)
    model.exit_grad_scale = cfg.exit_grad_scale
    model.set_gate_noise(cfg.gate_noise)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    history, start_epoch, best_score, best_epoch = [], 0, -math.inf, None
    if resume:
        state = checkpoint.load(out_dir / "last.pt")
        checkpoint.check_resumable(state, out_dir / "last.pt", cfg.epochs)
        _check_trained_with(state, cfg, out_dir / "last.pt")
        checkpoint.load_weights(model, state["model"], out_dir / "last.pt")
        _restore_training_state(state, out_dir / "last.pt", optimizer, scheduler, train_loader.generator,
                                rank, cuda)
        history, start_epoch, best_score = state["history"], state["epoch"], state["best_score"]
        best_epoch = state.get("best_epoch")
        if main_process:
            _repair_best(out_dir, state)
            # The machine keys of this resume (another machine's data_dir, threads, ...), written
            # only now that the device exists and last.pt can be continued from.
            atomic.write_text(out_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    elif cfg.init_from:
        copied, grown = checkpoint.load_backbone(model, cfg.init_from)
        if main_process:
            print(f"cg-train: warm start, {copied} backbone tensors from {cfg.init_from}"
                  + (f"; new blocks {grown} start as identities" if grown else ""), flush=True)
    if main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        params = param_counts(model)
        print(f"cg-train: {cfg.preset} on {cfg.dataset} | ResNet-{cfg.depth}"
              f"{' gated' if cfg.gated else ' plain'} | {params['total']:,} params "
              f"(controllers {100 * params['controller_share']:.2f} %) | {device}, {_count(torch.get_num_threads(), 'thread')}"
              f"{f' x {world} processes' if world > 1 else ''} | "
              f"{steps} steps/epoch | epochs {start_epoch + 1}..{cfg.epochs} -> {out_dir}", flush=True)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    machine = machine_label(device, world)
    last_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch + stop_after)
    last_plot = -math.inf

    teacher = load_teacher(cfg.distill_from, device) if cfg.distill_from else None
    train_step = StaticStep(net, optimizer, step_loss(cfg, teacher), autocast, train_loader.x[:cfg.batch_size // world],
                            train_loader.y[:cfg.batch_size // world], use_graph=cuda_graph and world == 1)

    for epoch in range(start_epoch, last_epoch):
        t0 = time.perf_counter()
        # The same images, weights and draw on every rank and on resume: the same units re-drawn alike.
        revived = (model.revive_controllers(train_loader.x[:REVIVE_IMAGES], seed=cfg.seed * 100_003 + epoch)
                   if cfg.revive_controllers else {})
        if revived and main_process:
            print(f"cg-train: epoch {epoch + 1}: re-drew dead controller units: "
                  + ", ".join(f"block {i}: {n}" for i, n in revived.items()), flush=True)
        net.train()
        mode = gate_mode(cfg, epoch)
        lr = optimizer.param_groups[0]["lr"]
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (progress_bar and main_process), dynamic_ncols=True)
        train_step.new_epoch(lr)
        for step, (x, y) in enumerate(train_loader):
            progress, tau = _schedule(cfg, epoch + step / steps)
            train_step(x, y, tau, progress, mode)
            bar.update()
        bar.close()
        with warnings.catch_warnings():  # SGD runs in graph_step, so torch never sees optimizer.step()
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            scheduler.step()
        sums, nonfinite = train_step.sums.clone(), train_step.nonfinite.clone()
        if world > 1:
            dist.all_reduce(sums)
            flag = nonfinite.to(torch.int32)
            dist.all_reduce(flag)
            nonfinite = flag > 0
        if bool(nonfinite):  # host sync, once per epoch
            if world > 1:
                dist.destroy_process_group()
            kept = (f"last good checkpoint kept: {out_dir / 'last.pt'} (epoch {epoch})" if epoch > 0
                    else "no checkpoint was written yet")
            raise TrainingDiverged(f"loss became NaN or inf during epoch {epoch + 1}; stopped "
                                   f"without saving that epoch; {kept}")
        loss_sum, correct, gbar_sum, count = sums.tolist()
        rng = {"torch": _gather_rng(world), "loader": train_loader.generator.get_state(),
               "cuda": _gather_rng(world, cuda=True) if cuda else None}
        if main_process:
            progress, tau = _schedule(cfg, epoch + 1)
            metrics = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / count,
                       "train_acc": correct / count, "gbar": gbar_sum / count, "tau": tau,
                       "flops_progress": progress, "gate_mode": mode}
            if cfg.revive_controllers:
                metrics["revived_units"] = sum(revived.values())
            metrics.update(evaluate(model, test_loader, autocast))
            metrics["epoch_time_s"] = time.perf_counter() - t0
            metrics["machine"] = machine
            history.append(metrics)
            print(_summary(metrics, cfg.epochs), flush=True)
            score = metrics.get("test_acc_deploy", metrics["test_acc_full"])
            settled = epoch + 1 > routing_settled_epoch(cfg)
            improved = settled and score > best_score
            if improved or not settled:
                best_score = score if settled else best_score
                best_epoch = epoch + 1
            state = {
                "epoch": epoch + 1, "config": to_dict(cfg), "model_config": vars(model.cfg),
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "history": history, "best_score": best_score,
                "best_epoch": best_epoch, "rng": rng,
            }
            atomic.write_text(out_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in history))
            # best.pt before last.pt: a kill between the two leaves best.pt ahead of last.pt (the
            # resumed run redoes that epoch identically), never behind the best last.pt records.
            if best_epoch == epoch + 1:
                checkpoint.save(out_dir / "best.pt", state)
            checkpoint.save(out_dir / "last.pt", state)
            # Redrawn at most every 30 s (a GPU epoch takes seconds) and after the last epoch;
            # `python -m cosinegate.train.plots RUN` redraws them from metrics.jsonl any time.
            if epoch + 1 == last_epoch or time.perf_counter() - last_plot >= 30:
                plot_run(history, out_dir / "plots")
                last_plot = time.perf_counter()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return history


def _check_trained_with(state: dict, cfg: TrainConfig, path: Path) -> None:
    """The checkpoint must have been trained with the run's config (machine keys aside): else
    config.yaml, and every result read from it, would misstate what was trained."""
    # A key the checkpoint predates holds its default (the setting it was trained with).
    ours, theirs = to_dict(cfg), {**CONFIG_DEFAULTS, **state["config"]}
    differ = sorted(k for k in set(ours) | set(theirs)
                    if k not in MACHINE_KEYS and ours.get(k, _MISSING) != theirs.get(k, _MISSING))
    if differ:
        shown = ", ".join(f"{k} {theirs.get(k)!r} vs {ours.get(k)!r}" for k in differ[:3])
        raise checkpoint.CheckpointError(f"{path} was trained with another config than the run's "
                                         f"config.yaml ({shown}); resume cannot continue it")


_MISSING = object()


def _restore_training_state(state: dict, path: Path, optimizer, scheduler, loader_generator,
                            rank: int, cuda: bool) -> None:
    """Load the checkpoint's optimizer, schedule and RNG states. One that does not load, or that
    training could not continue from (momentum buffers of other shapes, a schedule at another
    epoch), is a CheckpointError raised before the run writes anything."""
    def load_optimizer():
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:
            for param in group["params"]:
                buffer = optimizer.state.get(param, {}).get("momentum_buffer")
                if buffer is not None and getattr(buffer, "shape", None) != param.shape:
                    raise ValueError(f"a momentum buffer does not fit its parameter of shape {tuple(param.shape)}")

    def load_scheduler():
        scheduler.load_state_dict(state["scheduler"])
        if scheduler.last_epoch != state["epoch"]:  # else the learning rate would follow another epoch's
            raise ValueError(f"it is at epoch {reprlib.repr(scheduler.last_epoch)}, the checkpoint at {state['epoch']}")

    def load_rng():
        torch.set_rng_state(state["rng"]["torch"][rank])
        loader_generator.set_state(state["rng"]["loader"])
        if cuda and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"][rank])

    for name, load in (("optimizer", load_optimizer), ("scheduler", load_scheduler), ("rng", load_rng)):
        try:
            load()
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            reason = f"no {e}" if isinstance(e, KeyError) else errors.one_line(e)
            raise checkpoint.CheckpointError(f"{path}: its {name} state cannot be restored ({reason})") from None


def _repair_best(out_dir: Path, state: dict) -> None:
    """If last.pt is itself the best epoch but best.pt is missing or older (a kill between the two
    writes), write best.pt from last.pt."""
    if state.get("best_epoch") != state["epoch"]:
        return
    best = out_dir / "best.pt"
    try:
        best_epoch = checkpoint.load(best)["epoch"] if best.is_file() else None
    except checkpoint.CheckpointError:
        best_epoch = None
    if best_epoch != state["epoch"]:
        print(f"cg-train: best.pt was older than last.pt's best epoch {state['epoch']}: rewritten from last.pt",
              flush=True)
        checkpoint.save(best, {k: v for k, v in state.items() if k not in ("kind", "format", "version")})


def _gather_rng(world: int, cuda: bool = False) -> list[torch.Tensor]:
    """Every process's RNG state (rank order), so a resumed multi-process run draws the same noise."""
    state = torch.cuda.get_rng_state() if cuda else torch.get_rng_state()
    if world == 1:
        return [state]
    states = [None] * world
    dist.all_gather_object(states, state)
    return states
