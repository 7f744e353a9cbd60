"""Read the run folders `experiments.reproduce` writes (or their archive) into one row per run.

A row is a dict: name, preset, resolved config, first/last/peak metrics, and the export report,
bench, QEMU and sweep JSON that sit beside the run. The helpers below read the values the results
tables need from a row; nothing here formats text.
"""
import functools
from dataclasses import dataclass
from pathlib import Path

from cosinegate import jsonfile
from cosinegate.bench import sweep
from cosinegate.train.config import read_run

# Paper Table 2 at epoch 160 (accuracy, "FLOPs" = mean relaxed gate) and peak accuracy.
PAPER = {
    "resnet20": {"label": "ResNet-20", "acc": 0.913, "flops": 1.000, "peak": "91.3% (E160)"},
    "aggressive": {"label": "CosineGate Aggressive", "acc": 0.899, "flops": 0.759, "peak": "89.9% (E160)"},
    "balanced": {"label": "CosineGate Balanced", "acc": 0.913, "flops": 0.715, "peak": "91.8% (E154)"},
    "conservative": {"label": "CosineGate Conservative", "acc": 0.822, "flops": 0.888, "peak": "93.2% (E146)"},
}

# The keys that make a preset what it is (its loss weights, targets and gate readings).
OBJECTIVE_KEYS = ("lambda_flops", "lambda_cons", "tau_target", "gamma0", "gate_init", "routing", "lambda_adapt")

# The loss terms among them: a run that keeps these trains the preset's objective, whatever its
# schedule, start or gate initialisation.
LOSS_KEYS = ("lambda_flops", "lambda_cons", "tau_target", "routing", "lambda_adapt")


# The fields the tables read from each file, checked as each file is read (cosinegate.jsonfile):
# a file of another shape is refused in one line naming it, before any table is built.
METRICS = {"epoch": int, "test_acc_full": float, "test_acc_deploy?": float, "test_acc_paper?": float,
           "gbar?": float, "mac_ratio_deploy?": float, "skip_rate_deploy?": float, "adaptivity_deploy?": float,
           "distinct_paths_deploy?": int, "machine?": str}
GATED_METRICS = ("gbar", "test_acc_deploy", "mac_ratio_deploy", "adaptivity_deploy", "distinct_paths_deploy")
_RUNTIME = {"images": int, "accuracy": float, "mac_ratio?": float, "mac_ratio_std?": float, "skip_rate?": float,
            "adaptivity?": float, "distinct_paths?": int, "exec_rate_per_block?": [float], "correct?": str}
BENCH = {"images": int, "machine": {"cpu": str, "cores": int, "torch": str}, "runtimes": {str: _RUNTIME},
         "qemu?": {"rows": [{"variant": str, "kernels": str, "vs all-on": float, "instructions / inference": float}],
                   "firmware": {str: {"flash_bytes": int, "ram_bytes": int, "arena_used": int, "gates": [str]}}}}
REPORT = {"checkpoint?": {"path": str, "epoch": int}, "gated_blocks?": int, "gated_indices": [int],
          "exit_blocks?": [int], "macs_full": int, "macs_plain": int, "macs_per_block": [int],
          "branch_weight_bytes?": [int], "folded_gates?": {str: [int]}}
QEMU = {str: {"flash_bytes": int, "ram_bytes": int, "arena_used": int, "instructions_mean": float, "images": int,
              "gates?": [str], "instructions_per_image?": [float]}}
CLASSIFIER = {"dataset": str, "accuracy": float, "images": int, "macs": int, "correct?": str}


def _read_json(path: Path, shape):
    return jsonfile.read(path, shape) if path.is_file() else None


def _firmware_from_bench(bench: dict | None) -> dict | None:
    """The qemu.json figures ({kernels: flash, RAM, arena, instructions, gates}) from a bench run
    with `--tflm-root`, for configurations without their own qemu.json."""
    qemu = (bench or {}).get("qemu")
    if not qemu:
        return None
    gated = {row["kernels"]: row["instructions / inference"] for row in qemu["rows"] if row["variant"] == "gated"}
    return {kernels: {**{k: log[k] for k in ("flash_bytes", "ram_bytes", "arena_used", "gates")},
                      "instructions_mean": gated[kernels], "images": len(log["gates"])}
            for kernels, log in qemu["firmware"].items()}


def collect(root: Path) -> list[dict]:
    """One row per ROOT/NAME folder with a run/metrics.jsonl, sorted by name."""
    rows = []
    for folder in sorted(p for p in root.iterdir() if (p / "run" / "metrics.jsonl").is_file()):
        config, history = read_run(folder / "run", METRICS)
        if config["gated"]:
            jsonfile.check(history[-1], dict.fromkeys(GATED_METRICS, float),
                           f"{folder / 'run' / 'metrics.jsonl'} last line")
        bench = _read_json(folder / "bench" / "bench.json", BENCH)
        # `reproduce --fold-static-gates`: the same model with its proven-constant gates folded
        folded = (_read_json(folder / "export_folded" / "export_report.json", REPORT),
                  _read_json(folder / "qemu_folded.json", QEMU))
        rows.append({"name": folder.name, "preset": config["preset"], "config": config,
                     "last": history[-1], "peak": max(history, key=test_acc), "epochs_done": len(history),
                     "machines": machines(history),
                     "report": _read_json(folder / "export" / "export_report.json", REPORT), "bench": bench,
                     "bench_folded": _read_json(folder / "bench_folded" / "bench.json", BENCH),
                     "qemu": _read_json(folder / "qemu.json", QEMU) or _firmware_from_bench(bench),
                     "qemu_folded": folded if all(folded) else None,
                     "sweep": _read_json(folder / "sweep" / "sweep.json", sweep.SWEEP)})
    return rows


def collect_outside(folder: Path) -> list[dict]:
    """One row per FOLDER/NAME/classifier.json (`cosinegate.bench.classifier` on a model trained
    elsewhere): name, int8 accuracy, images, MACs over plain ResNet-20 on CIFAR-10, per-image correctness."""
    from cosinegate.train.model import ModelConfig, macs_breakdown
    plain = macs_breakdown(ModelConfig(depth=20, gated=False))["plain_total"]
    out = []
    for path in sorted(folder.glob("*/classifier.json")):
        c = jsonfile.read(path, CLASSIFIER)
        out.append({"name": path.parent.name, "dataset": c["dataset"], "accuracy": c["accuracy"],
                    "images": c["images"], "mac_ratio": c["macs"] / plain, "correct": c.get("correct")})
    return out


def test_acc(metrics: dict) -> float:
    """An epoch's test accuracy under the deploy gate (every block computed for a plain net)."""
    return metrics.get("test_acc_deploy", metrics["test_acc_full"])


def source_name(config: dict) -> str | None:
    """The run a warm start began from: NAME for `--init-from ROOT/NAME/run/last.pt`, the model
    folder for a published `models/NAME/model.pt`; None for a run from scratch."""
    source = config.get("init_from")  # runs from before warm starts have no such key
    if not source:
        return None
    path = Path(source)
    return path.parent.parent.name if path.parent.name == "run" else path.parent.name


@functools.lru_cache(maxsize=None)
def published_weights(init_from: str) -> str | None:
    """The weights_sha256 a published model's export report gives its checkpoint, for a warm start
    from `models/NAME/model.pt` whose folder holds a report that gives it (the path as the run read it); else None."""
    report = Path(init_from).parent / "export_report.json"
    if Path(init_from).parent.parent.name != "models" or not report.is_file():
        return None
    checked = jsonfile.read(report, {"checkpoint?": {"weights_sha256?": str}})
    return (checked.get("checkpoint") or {}).get("weights_sha256")


def source_row(row: dict, rows: list[dict]) -> dict | None:
    """The row of the run a warm start began from, where it is among the rows: by name, or for a
    published model, the run whose exported checkpoint holds the same weights."""
    name = source_name(row["config"])
    if not name:
        return None
    named = next((r for r in rows if r["name"] == name), None)
    digest = None if named else published_weights(row["config"]["init_from"])
    return named or next((r for r in rows if digest and digest == (
        ((r.get("report") or {}).get("checkpoint") or {}).get("weights_sha256"))), None)


def lineage(row: dict, rows: list[dict]) -> list[dict]:
    """The run and the runs its weights came from, oldest first: a warm start from a run among the
    rows continues that run's training."""
    chain = [row]
    while (source := source_row(chain[0], rows)) is not None and source not in chain:
        chain.insert(0, source)
    return chain


def first_start(row: dict, rows: list[dict]) -> str | None:
    """Where the row's lineage began: a published model or a run not among the rows, by name;
    None for random weights."""
    return source_name(lineage(row, rows)[0]["config"])


def budget(row: dict, rows: list[dict]) -> tuple:
    """The first start by name, wherever its file lay, and the epochs, lr and held-out images of
    each run in the lineage: two rows with the same budget trained from the same weights as long."""
    return first_start(row, rows), tuple((r["config"]["epochs"], r["config"]["lr"], r["config"].get("holdout", 0))
                                          for r in lineage(row, rows))


def static_references(row: dict, rows: list[dict]) -> dict[str, dict]:
    """{name: {"mac_ratio", "accuracy", "images"}} of the static networks a swept run is compared with:
    those its sweep was drawn against (`bench.sweep --reference`) and every warm-started static
    network with the same `budget` and an int8 bench."""
    out = dict((row["sweep"] or {}).get("references", {}))
    for r in rows:
        if not routed(r) and r["config"].get("init_from") and budget(r, rows) == budget(row, rows) and int8(r):
            out[r["name"]] = {"mac_ratio": macs(r), "accuracy": int8(r)["accuracy"],
                              "images": (r["bench"] or {}).get("images")}
    return out


def machines(history: list[dict]) -> str | None:
    """Where the epochs ran, from their records' `machine`: 'on M', or 'ep 1-112 on M1, 113-120 on M2'
    for a run resumed elsewhere; None where the records name no machine."""
    spans = []  # [label, first epoch, last epoch]
    for m in history:
        label = m.get("machine")
        if spans and spans[-1][0] == label:
            spans[-1][2] = m["epoch"]
        else:
            spans.append([label, m["epoch"], m["epoch"]])
    if not any(label for label, _, _ in spans):
        return None
    if len(spans) == 1:
        return f"on {spans[0][0]}"
    return "ep " + ", ".join(f"{a}-{b} on {label or 'an unrecorded machine'}" for label, a, b in spans)


def schedule(config: dict, epochs_done: int, where: str | None = None) -> str:
    """'10/10 ep, warm-up 3 (shortened)', '24/24 ep, warm-up 6, lr 0.02, warm start from NAME; on M'."""
    text = f"{epochs_done}/{config['epochs']} ep, warm-up {config['warmup_epochs']}"
    if config.get("flops_delay_epochs"):  # runs from before the delay have no such key
        text += f" after {config['flops_delay_epochs']} ep without FLOPs penalty"
    if source_name(config):
        text += f", lr {config['lr']:g}, warm start from {source_name(config)}"
    elif config["epochs"] != 160:
        text += " (shortened)"
    return text + (f"; {where}" if where else "")


def training_label(row: dict, rows: list[dict]) -> str:
    """How much training a row had, for grouping points that compare: '20 epochs', '160 + 24 epochs'."""
    source = source_row(row, rows)
    if source:
        return f"{source['epochs_done']} + {row['epochs_done']} epochs (warm start)"
    name = source_name(row["config"])
    return f"{row['epochs_done']} epochs" + (f" (warm start from {name})" if name else "")


def vs_resnet20(config: dict) -> float:
    """Plain ResNet of the run's depth over plain ResNet-20 on the same input (40,551,040 MACs on
    CIFAR-10): runs record executed MACs against the plain net of their own depth; this puts every
    row on ResNet-20's scale."""
    from cosinegate.train.data import dataset_info
    from cosinegate.train.model import ModelConfig, macs_breakdown
    h, _, c = dataset_info(config["dataset"]).shape
    plain = {d: macs_breakdown(ModelConfig(depth=d, in_channels=c, input_size=h, gated=False))["plain_total"]
             for d in (config["depth"], 20)}
    return plain[config["depth"]] / plain[20]


def int8(row: dict) -> dict:
    """The int8 TFLite runtime of the row's (unfolded) bench; empty where not benched."""
    return ((row["bench"] or {}).get("runtimes") or {}).get("tflite_int8") or {}


def macs(row: dict) -> float | None:
    """Executed MACs / plain ResNet-20: the int8 bench's where there is one, else the float run's."""
    ratio = int8(row).get("mac_ratio", row["last"].get("mac_ratio_deploy"))
    return None if ratio is None else ratio * vs_resnet20(row["config"])


def _folded_runtimes(row: dict) -> dict:
    """The folded export's own bench (NAME/bench_folded), by runtime; empty where not benched."""
    return (row.get("bench_folded") or {}).get("runtimes") or {}


def deployed_runtimes(row: dict) -> dict:
    """The bench, by runtime, of the export to deploy: the folded one where it was benched
    (calibrated without its dead blocks), else the plain export."""
    folded = _folded_runtimes(row)
    return folded if "tflite_int8" in folded else (row["bench"] or {}).get("runtimes") or {}


@dataclass(frozen=True)
class Deployed:
    """The export to deploy (`deployed_runtimes`), read on ResNet-20's MAC scale."""
    macs: float               # executed MACs / plain ResNet-20
    accuracy: float           # int8 TFLite accuracy
    folded: bool              # the --fold-static-gates export, calibrated without its dead blocks
    tflm_accuracy: float | None
    unfolded_accuracy: float  # int8 accuracy of the export with every IF kept


def deployed(row: dict) -> Deployed:
    folded = _folded_runtimes(row).get("tflite_int8")
    if folded is None:
        return Deployed(macs(row), int8(row)["accuracy"], False, None, int8(row)["accuracy"])
    tflm = _folded_runtimes(row).get("tflm")
    return Deployed(folded["mac_ratio"] * vs_resnet20(row["config"]), folded["accuracy"], True,
                    tflm["accuracy"] if tflm else None, int8(row)["accuracy"])


def deployed_correct(row: dict) -> str | None:
    """Per-image int8 correctness ('1'/'0' per test image) of the export `deployed` judges."""
    return (deployed_runtimes(row).get("tflite_int8") or {}).get("correct")


def exported(row: dict) -> str | None:
    """Which checkpoint the int8 export was made from: 'E147 best.pt'. best.pt is chosen on test
    accuracy, the images the bench then judges it on; last.pt is the final epoch."""
    source = (row.get("report") or {}).get("checkpoint")
    return f"E{source['epoch']} {Path(source['path']).name}" if source else None


@functools.lru_cache  # asked once per row and table; each call reads the preset's YAML
def _preset_config(name: str) -> dict | None:
    from cosinegate.train.config import ConfigError, TrainConfig, preset_values
    try:
        return {**vars(TrainConfig()), **preset_values(name)}
    except ConfigError:  # a preset this version no longer has
        return None


def paper_key(row: dict) -> str | None:
    """The paper's Table 2 row a run of ours stands beside: a ResNet-20 of that preset (gated, or
    plain for resnet20) trained with the preset's losses."""
    config, name = row["config"], row["preset"]
    preset = _preset_config(name) if name in PAPER else None
    if (preset is None or config["depth"] != 20 or config["removed_blocks"] or has_exits(config)
            or config["gated"] != (name != "resnet20")):
        return None
    return name if all(config[k] == preset[k] for k in LOSS_KEYS if k in config) else None


def changed_from_preset(config: dict) -> dict[str, tuple]:
    """{key: (run's value, preset's value)} where a run's objective departs from its named preset."""
    preset = _preset_config(config["preset"])
    if preset is None:
        return {}
    return {k: (config[k], preset[k]) for k in OBJECTIVE_KEYS if k in config and config[k] != preset[k]}


def has_exits(config: dict) -> bool:
    """The run's config puts early exits on the net (at stage ends or after blocks)."""
    return bool(config.get("exits") or config.get("exit_after"))


def routed(row: dict) -> bool:
    """The run decides per image: gated blocks or early exits."""
    return bool(row["config"]["gated"] or has_exits(row["config"]))


def is_plain_resnet20(row: dict) -> bool:
    """An ungated ResNet-20 with all its blocks and an int8 bench: a baseline a gated row can face."""
    config = row["config"]
    return config["depth"] == 20 and not routed(row) and not config["removed_blocks"] and bool(int8(row))


def plain_resnet20(rows: list[dict], row: dict) -> dict | None:
    """The deployed plain ResNet-20 to hold the row against: the one it warm-started from, else the
    one trained with the row's dataset and schedule, if there is one."""
    def same_schedule(r):
        c = r["config"]
        return c["dataset"], c["epochs"], c["warmup_epochs"], r["epochs_done"], source_name(c)

    if source_name(row["config"]):
        return next((r for r in rows if r["name"] == source_name(row["config"]) and is_plain_resnet20(r)), None)
    return next((r for r in rows if is_plain_resnet20(r) and same_schedule(r) == same_schedule(row)), None)


def fine_tuned_control(rows: list[dict], row: dict) -> dict | None:
    """A plain ResNet-20 trained from the same source as the warm-started `row` for as many epochs:
    it separates what depth and routing add from what the extra epochs alone do."""
    source = source_name(row["config"])
    return next((r for r in rows if source and source_name(r["config"]) == source and is_plain_resnet20(r)
                 and r["epochs_done"] == row["epochs_done"]), None)


def firmware_mac_ratio(row: dict, qemu: dict) -> float | None:
    """Executed-MAC ratio (vs plain ResNet-20) of the gate strings the firmware printed."""
    report, gates = row["report"], qemu.get("gates")
    if not report or not gates:
        return None
    if report.get("exit_blocks"):
        return float(firmware_mac_ratios(row, qemu).mean())
    blocks = [report["macs_per_block"][i] for i in report["gated_indices"]]
    skipped = [sum(m for m, g in zip(blocks, pattern) if g == "0") for pattern in gates]
    return (report["macs_full"] - sum(skipped) / len(skipped)) / report["macs_plain"] * vs_resnet20(row["config"])


def firmware_mac_ratios(row: dict, qemu: dict):
    """Per image, the executed-MAC ratio (vs plain ResNet-20) of the decisions the firmware printed
    (gates, then early exits), counted by the model's own accounting."""
    import numpy as np
    import torch
    from cosinegate.train.config import from_dict
    from cosinegate.train.data import dataset_info
    from cosinegate.train.evaluate import split_decisions
    from cosinegate.train.model import executed_mac_ratio, macs_breakdown
    config = from_dict(row["config"])
    macs = macs_breakdown(config.model_config(dataset_info(config.dataset)))
    decisions = torch.tensor([[c == "1" for c in g] for g in qemu["gates"]], dtype=torch.float64)
    gates, passed = split_decisions(decisions, macs)
    ratio = executed_mac_ratio(macs, gates, row["report"]["gated_indices"], passed)
    return np.asarray(ratio) * vs_resnet20(row["config"])


def firmware_measurements(rows: list[dict]) -> list[tuple[str, dict, str, dict]]:
    """(label, row with that export's report, kernels, QEMU figures) per firmware measurement."""
    out = []
    for r in rows:
        out += [(r["name"], r, kernels, figures) for kernels, figures in (r["qemu"] or {}).items()]
        if r["qemu_folded"]:
            report, qemu = r["qemu_folded"]
            out += [(f"{r['name']} (folded)", {**r, "report": report}, kernels, figures)
                    for kernels, figures in qemu.items()]
    return out


def never_run_bytes(row: dict) -> int | None:
    """Flash held by the then-branches of blocks that ran on none of the bench images (int8)."""
    sizes = (row["report"] or {}).get("branch_weight_bytes")
    rates = int8(row).get("exec_rate_per_block")
    if sizes is None or rates is None:
        return None
    return sum(size for size, rate in zip(sizes, rates) if rate == 0)
