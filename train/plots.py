"""Training curves from a run's metrics (paper Fig. 6-8), redrawn after every epoch.

    python -m cosinegate.train.plots RUN_DIR      # redraw RUN_DIR/plots/*.png from metrics.jsonl
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cosinegate import atomic, errors, jsonfile  # noqa: E402


CURVES = ("accuracy.png", "compute.png", "exec_rates.png")  # every file plot_run may write
# What every epoch's metrics hold; the test accuracies below are drawn when the last epoch holds them.
METRICS = {"epoch": int, "train_acc": float}
TEST_ACCURACIES = (("test_acc_full", "test, all blocks"), ("test_acc_paper", "test, paper gate (eq. 16)"),
                   ("test_acc_deploy", "test, deployed rule (gates, exits)"),
                   ("test_acc_exit1", "test, exit after stage 1"), ("test_acc_exit2", "test, exit after stage 2"))


def _save(fig, path: Path) -> None:
    atomic.save_with(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)


def plot_run(history: list[dict], out_dir: str | Path) -> list[Path]:
    """accuracy.png (Fig. 6-7), compute.png (Fig. 8), exec_rates.png (per-block execution)."""
    out_dir = Path(out_dir)
    epochs = [m["epoch"] for m in history]
    written = []

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(epochs, [m["train_acc"] for m in history], label="train (relaxed gates)")
    for key, label in TEST_ACCURACIES:
        if key in history[-1]:
            ax.plot(epochs, [m[key] for m in history], label=label)
    ax.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written.append(out_dir / "accuracy.png")
    _save(fig, written[-1])

    if "exec_rate_deploy" not in history[-1]:
        return written
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if history[-1]["exec_rate_deploy"]:
        ax.plot(epochs, [m["gbar"] for m in history], label="mean relaxed gate (paper FLOPs)")
        ax.plot(epochs, [m["skip_rate_deploy"] for m in history], label="skip rate, deploy gate")
    for k, _ in enumerate(history[-1].get("continue_rate_deploy", [])):
        ax.plot(epochs, [m["continue_rate_deploy"][k] for m in history], ls="--",
                label=f"share going on past exit {k + 1}")
    ax.plot(epochs, [m["mac_ratio_deploy"] for m in history], label="executed MACs / plain")
    ax.plot(epochs, [m["adaptivity"] for m in history], ls=":", label="adaptivity (blocks in [5 %, 95 %])")
    ax.set(xlabel="epoch", ylabel="fraction", ylim=(0, 1.05), title="Compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written.append(out_dir / "compute.png")
    _save(fig, written[-1])

    rates = [m["exec_rate_deploy"] for m in history]  # (epochs, blocks)
    if not rates[-1]:  # early exits on an ungated net: no block rates to draw
        return written
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    image = ax.imshow(list(zip(*rates)), aspect="auto", cmap="viridis", vmin=0, vmax=1,
                      extent=(epochs[0] - 0.5, epochs[-1] + 0.5, len(rates[0]) - 0.5, -0.5))
    ax.set(xlabel="epoch", ylabel="gated block", title="Execution rate per block (deploy gate)")
    fig.colorbar(image, ax=ax, label="share of test images computing the block")
    written.append(out_dir / "exec_rates.png")
    _save(fig, written[-1])
    return written


def read_history(path: Path) -> list[dict]:
    """A run's metrics.jsonl, checked for what plot_run draws: each curve the last epoch holds
    (plot_run decides from it) is in every epoch, with as many blocks and exits."""
    history = jsonfile.read_lines(path, METRICS)
    last = history[-1]
    shape = {**METRICS, **{key: float for key, _ in TEST_ACCURACIES if key in last}}
    if "exec_rate_deploy" in last:
        shape.update(exec_rate_deploy=[float], mac_ratio_deploy=float, adaptivity=float)
        if last["exec_rate_deploy"]:  # gated blocks: their mean gate and skip rate are drawn too
            shape.update(gbar=float, skip_rate_deploy=float)
        if "continue_rate_deploy" in last:
            shape["continue_rate_deploy"] = [float]
    for metrics in history:
        where = f"{path} epoch {metrics['epoch']}"
        jsonfile.check(metrics, shape, where)
        for key in ("exec_rate_deploy", "continue_rate_deploy"):
            if key in shape and len(metrics[key]) != len(last[key]):
                raise jsonfile.FileFormatError(f"{where}: {key} holds {len(metrics[key])} values, "
                                               f"the last epoch's {len(last[key])}")
    return history


@errors.command("python -m cosinegate.train.plots", expected=(OSError, ValueError))
def main(argv=None) -> int:
    parser = errors.ArgumentParser(prog="python -m cosinegate.train.plots",
                                     description="Redraw a run's training curves from its metrics.jsonl.")
    parser.add_argument("run", type=Path, nargs="?", default=Path("."), help="run folder (default: .)")
    run = parser.parse_args(argv).run
    # Checked as a whole before the first plot is written: a file plot_run cannot draw leaves none.
    for path in plot_run(read_history(run / "metrics.jsonl"), run / "plots"):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
