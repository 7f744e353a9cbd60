"""Hostile input and faults, command by command: one error line, nothing lost, nothing run.

Each case of FAULTS builds one bad input (or fault) in its own folder and runs the command
in-process. It must exit non-zero with exactly one `PROG: error:` line (no traceback, no
"internal error", at most errors.MAX_CHARS after the prefix) naming the problem; every file in
the case's folder and in the shared run and export keeps its sha256, no file is added (no
temporary left behind), and the marker file a crafted pickle would create does not exist.
The tests after the table check the faults whose right answer is a correct result (a repaired
run, a replaced export, escaped C sources), and the fuzz feeds seeded bit flips and
truncations of a real export and firmware log to the readers.
"""
import contextlib
import hashlib
import importlib
import json
import os
import pickle
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

from cosinegate import atomic, errors, runfolder
from cosinegate.export import integrity
from cosinegate.train import checkpoint
from conftest import firmware_log
from test_m4_timing import _code, _elf

pytestmark = pytest.mark.slow  # uses the session's trained run and int8 export

# Tool -> (module whose main it is, the prefix of its error line)
TOOLS = {
    "train": ("cosinegate.train.cli", "cg-train"),
    "export": ("cosinegate.export.cli", "cg-export"),
    "bench": ("cosinegate.bench.cli", "cg-bench"),
    "protocol": ("cosinegate.bench.protocol", "python -m cosinegate.bench.protocol"),
    "carray": ("cosinegate.export.carray", "carray"),
    "test_images": ("cosinegate.export.test_images", "test_images"),
    "classifier": ("cosinegate.bench.classifier", "cg-classifier"),
    "sweep": ("cosinegate.bench.sweep", "cg-sweep"),
    "archive": ("cosinegate.experiments.archive", "archive"),
    "plots": ("cosinegate.train.plots", "python -m cosinegate.train.plots"),
    "static_baseline": ("cosinegate.train.static_baseline", "python -m cosinegate.train.static_baseline"),
    "prune_search": ("cosinegate.train.prune_search", "python -m cosinegate.train.prune_search"),
    "controllers": ("cosinegate.train.controllers", "python -m cosinegate.train.controllers"),
    "controller_pushes": ("cosinegate.train.controller_pushes", "python -m cosinegate.train.controller_pushes"),
    "skip_headroom": ("cosinegate.train.skip_headroom", "python -m cosinegate.train.skip_headroom"),
    "publish": ("cosinegate.experiments.publish", "python -m cosinegate.experiments.publish"),
    "results": ("cosinegate.experiments.results", "python -m cosinegate.experiments.results"),
    "step_profile": ("cosinegate.train.step_profile", "python -m cosinegate.train.step_profile"),
    "demo": ("cosinegate.bench.demo", "cg-demo"),
    "m4_timing": ("cosinegate.bench.m4_timing", "python -m cosinegate.bench.m4_timing"),
    "reproduce": ("cosinegate.experiments.reproduce", "python -m cosinegate.experiments.reproduce"),
    "ablations": ("cosinegate.experiments.ablations", "python -m cosinegate.experiments.ablations"),
}
# Fast runs of the commands that have slow defaults.
QUICK_TRAIN = ["--threads", "1", "--no-progress"]
QUICK_BENCH = ["--images", "12", "--no-plain", "--latency-runs", "1", "--latency-warmup", "0", "--no-progress"]
GATED_BLOCKS = 3  # the session's ResNet-8


class _RunsCode:
    """Pickles to a call of `exec` that creates `marker`: what a hostile file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@dataclass
class Scene:
    """One case's folder and the session's artefacts it may copy (never change)."""
    root: Path
    run: Path
    export: Path
    plain_export: Path
    hold: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def marker(self) -> Path:
        return self.root / "code_ran"

    def path(self, name: str) -> str:
        return str(self.root / name)

    def write(self, name: str, content: str | bytes) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    def holding(self, folder: str, file: str) -> str:
        """`folder`, created holding one file the case must not lose."""
        self.write(f"{folder}/{file}", "kept")
        return self.path(folder)

    def copy(self, source: Path, name: str) -> Path:
        shutil.copytree(source, self.root / name)
        return self.root / name

    def checkpoint(self, name: str, edit: Callable[[dict], object]) -> str:
        """The session's last.pt with `edit` applied to its dict (saved as is, unchecked)."""
        ckpt = checkpoint.load(self.run / "last.pt")
        edit(ckpt)
        path = self.root / name
        torch.save(ckpt, path)
        return str(path)

    def runs_code(self) -> _RunsCode:
        return _RunsCode(self.marker)

    def cifar_dir(self) -> str:
        """A CIFAR-10 folder whose every batch runs code when unpickled."""
        payload = pickle.dumps({b"batch_label": b"x", b"labels": [0], b"data": self.runs_code(), b"filenames": []})
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            self.write(f"cifar/cifar-10-batches-py/{name}", payload)
        return self.path("cifar")

    def cifar_checkpoint(self) -> str:
        """A CIFAR-10 model (random weights) whose data is the crafted folder."""
        from cosinegate.train.model import CosineGateResNet, ModelConfig
        data_dir = self.cifar_dir()

        def to_cifar(ckpt):
            ckpt["config"].update(dataset="cifar10", data_dir=data_dir)
            ckpt["model_config"].update(in_channels=3, input_size=32)
            ckpt["model"] = CosineGateResNet(ModelConfig(**ckpt["model_config"])).state_dict()
        return self.checkpoint("cifar.pt", to_cifar)

    def export_with(self, name: str, edit: Callable[[dict], object], *, reseal: bool = True) -> str:
        """A copy of the session's export whose report `edit` changed; resealed (its hash then
        agrees, so a reader must find the disagreement itself) unless reseal is False."""
        folder = self.copy(self.export, name)
        report = json.loads((folder / integrity.REPORT).read_text())
        edit(report)
        if reseal:
            report["report_sha256"] = integrity.sha256(integrity.canonical(report))
        (folder / integrity.REPORT).write_text(json.dumps(report))
        return str(folder)

    def export_file(self, name: str, file: str, change: Callable[[bytes], bytes]) -> str:
        """A copy of the session's export with one file's bytes changed behind its report's back."""
        folder = self.copy(self.export, name)
        (folder / file).write_bytes(change((folder / file).read_bytes()))
        return str(folder)

    def run_with(self, name: str, files: dict) -> str:
        """A copy of the session's run with some files replaced ({name: text})."""
        folder = self.copy(self.run, name)
        for file, text in files.items():
            (folder / file).write_text(text)
        return str(folder)

    def log(self, rows: list, *extra: str) -> str:
        """A firmware log of the session's export: valid rows (idx, gates) then `extra` raw lines."""
        text = firmware_log(self.export, [(i, g, "instructions=100") for i, g in rows])
        return self.write("fw.log", text + "".join(line + "\n" for line in extra))


def _digits_label(idx: int) -> int:
    from cosinegate.train.data import load_arrays
    return int(load_arrays("digits", None, "test")[1][idx])


def _flip_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 16]) + data[middle + 16:]


def _resume(folder: str, *extra: str) -> list[str]:
    return ["--resume", folder, *QUICK_TRAIN, *extra]


def _new_run(s: Scene, *extra: str) -> list[str]:
    return ["--preset", "demo", "--depth", "8", "--epochs", "1", "--out", s.path("new"), *QUICK_TRAIN, *extra]


def _new_run_over(s: Scene, kept_file: str) -> list[str]:
    """A new run whose --out already holds `kept_file` (or is it)."""
    s.write(kept_file, "kept")
    return _new_run(s)


def _new_run_into_dangling_link(s: Scene) -> list[str]:
    """A new run whose --out is a symbolic link to a folder that does not exist."""
    os.symlink(s.path("nowhere"), s.path("new"))
    return _new_run(s)


def _with_config(s: Scene, text: str | bytes) -> list[str]:
    return _new_run(s, "--config", s.write("c.yaml", text))


def _resume_from(s: Scene, edit: Callable[[dict], object]) -> list[str]:
    """Resume a copy of the session's run whose last.pt `edit` changed."""
    folder = s.copy(s.run, "run")
    s.checkpoint("run/last.pt", edit)
    return _resume(str(folder))


def _export_of(s: Scene, ckpt: str, *extra: str) -> list[str]:
    """Export `ckpt` over a copy of the good export (which must survive the failure)."""
    return [ckpt, "--int8", "--out", str(s.copy(s.export, "good_export")), "--no-progress", *extra]


def _bench_of(s: Scene, export: str, *extra: str) -> list[str]:
    return [export, "--out", s.path("bench"), *QUICK_BENCH, *extra]


def _pop(key: str) -> Callable[[dict], object]:
    return lambda d: d.pop(key)


def _nan_weights(ckpt: dict) -> None:
    ckpt["model"]["fc.weight"] = torch.full_like(ckpt["model"]["fc.weight"], float("nan"))


def _foreign_weights(ckpt: dict) -> None:
    ckpt["model"] = {f"backbone.layer_with_a_rather_long_name_{i:04d}.{k}": v for i, (k, v) in
                     enumerate(ckpt["model"].items())}


def _another_config(ckpt: dict) -> None:
    ckpt["config"]["lr"] = 0.5


def _holding_lock(s: Scene) -> list[str]:
    folder = s.copy(s.run, "run")
    s.hold.enter_context(runfolder.claim(folder, resume=True))
    return _resume(str(folder))


def _yaml_alias_bomb() -> str:
    """Nine levels of nine aliases: tiny as YAML, 9**9 items as printed text."""
    lines = ["seed:", "  - &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"  - &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Fault:
    name: str
    tool: str
    build: Callable[[Scene], list[str]]
    says: str  # a fragment the error line must hold (case-insensitive)


FAULTS = [
    # -- cg-train: config values of the wrong type or range ---------------------------------------
    Fault("yaml_int_word", "train", lambda s: _with_config(s, "controller_ratio: eight\n"),
          "c.yaml: controller_ratio must be int"),
    Fault("yaml_epochs_string", "train", lambda s: _with_config(s, 'epochs: "1"\n'), "c.yaml: epochs must be int"),
    Fault("yaml_int_key", "train", lambda s: _with_config(s, "1: 2\n"), "config keys are names"),
    Fault("yaml_null_key", "train", lambda s: _with_config(s, "~: 2\n"), "config keys are names"),
    Fault("yaml_unknown_preset", "train", lambda s: _with_config(s, "preset: nonexistent\n"), "unknown preset"),
    Fault("yaml_lr_list", "train", lambda s: _with_config(s, "lr: [0.1]\n"), "lr must be float"),
    Fault("yaml_gated_string", "train", lambda s: _with_config(s, "gated: 'yes'\n"), "gated must be bool"),
    Fault("yaml_int_bool", "train", lambda s: _with_config(s, "warmup_epochs: true\n"), "warmup_epochs must be int"),
    Fault("yaml_lr_infinite", "train", lambda s: _with_config(s, "lr: .inf\n"), "lr must be finite"),
    Fault("yaml_gamma_nan", "train", lambda s: _with_config(s, "gamma0: .nan\n"), "gamma0 must be finite"),
    Fault("yaml_alias_bomb", "train", lambda s: _with_config(s, _yaml_alias_bomb()), "seed must be int"),
    Fault("yaml_not_mapping", "train", lambda s: _with_config(s, "- depth\n- 8\n"), "mapping"),
    Fault("yaml_invalid", "train", lambda s: _with_config(s, "depth: [8,\n"), "not valid YAML"),
    Fault("yaml_binary", "train", lambda s: _with_config(s, "\x00\xff\xfe"), "config file"),
    Fault("yaml_not_utf8", "train", lambda s: _with_config(s, b"lr: \xff\xfe\n"), "is not text"),
    Fault("epochs_negative", "train", lambda s: _new_run(s, "--epochs", "-1"), "epochs"),
    Fault("batch_size_zero", "train", lambda s: _new_run(s, "--batch-size", "0"), "batch_size"),
    Fault("threads_zero", "train", lambda s: _new_run(s, "--threads", "0"), "threads"),
    Fault("threads_negative", "train", lambda s: _new_run(s, "--threads", "-2"), "threads"),
    Fault("stop_after_zero", "train", lambda s: _new_run(s, "--stop-after", "0"), "--stop-after"),
    Fault("depth_not_6n_plus_2", "train", lambda s: _new_run(s, "--depth", "7"), "depth"),
    Fault("controller_ratio_zero", "train", lambda s: _new_run(s, "--controller-ratio", "0"), "controller_ratio"),
    Fault("exit_after_the_last_block", "train", lambda s: _new_run(s, "--exit-after", "8"), "exit_after"),
    Fault("exit_after_a_named_stage_end", "train", lambda s: _new_run(s, "--exits", "1", "--exit-after", "0"),
          "already gives an exit"),
    Fault("exit_grad_scale_without_exits", "train", lambda s: _new_run(s, "--exit-grad-scale", "0.5"), "no exits"),
    Fault("warmup_negative", "train", lambda s: _new_run(s, "--warmup-epochs", "-3"), "warmup_epochs"),
    Fault("saved_config_wrong_type", "train",
          lambda s: _resume(s.run_with("run", {"config.yaml": "epochs: two\n"})), "epochs"),
    # -- cg-train: work that must not be lost ---------------------------------------------------------
    *[Fault(f"out_holds_{name.replace('.', '_')}", "train", lambda s, name=name: _new_run_over(s, f"new/{name}"),
            "already holds a run") for name in runfolder.RUN_FILES],
    Fault("out_is_a_file", "train", lambda s: _new_run_over(s, "new"), "new"),
    Fault("out_is_a_dangling_link", "train", lambda s: _new_run_into_dangling_link(s),
          "is a symbolic link to"),
    Fault("second_writer", "train", _holding_lock, "being written by another process"),
    Fault("resume_missing_folder", "train", lambda s: _resume(s.path("nowhere")), "not found"),
    Fault("resume_without_last_pt", "train", lambda s: _resume_no_last(s), "no last.pt"),
    Fault("resume_names_a_checkpoint_file", "train", lambda s: _resume(str(s.copy(s.run, "run") / "last.pt")),
          "takes a run folder, not a file"),
    Fault("resume_changed_flag", "train", lambda s: _resume(str(s.copy(s.run, "run")), "--lr", "0.5"),
          "config differs in lr"),
    Fault("resume_other_config_checkpoint", "train", lambda s: _resume_from(s, _another_config),
          "trained with another config"),
    Fault("resume_checkpoint_missing_keys", "train", lambda s: _resume_from(s, _pop("optimizer")), "incomplete"),
    Fault("resume_checkpoint_foreign_weights", "train", lambda s: _resume_from(s, _foreign_weights),
          "do not fit"),
    Fault("resume_checkpoint_truncated", "train",
          lambda s: _resume(_truncated_last(s)), "not a readable checkpoint"),
    # -- cg-train: files that would run code ---------------------------------------------------------
    Fault("cifar_pickle_train", "train", lambda s: _new_run(s, "--dataset", "cifar10", "--data-dir", s.cifar_dir()),
          "never holds"),
    Fault("resume_checkpoint_pickled_object", "train",
          lambda s: _resume_from(s, lambda d: d.update(note=s.runs_code())), "never unpickled"),
    Fault("init_from_pickled_object", "train",
          lambda s: _new_run(s, "--init-from", s.checkpoint("evil.pt", lambda d: d.update(note=s.runs_code()))),
          "never unpickled"),
    Fault("distill_from_pickled_object", "train",
          lambda s: _new_run(s, "--distill-from", s.checkpoint("evil.pt", lambda d: d.update(note=s.runs_code()))),
          "never unpickled"),
    Fault("init_from_nan_weights", "train", lambda s: _new_run(s, "--init-from", s.checkpoint("nan.pt", _nan_weights)),
          "non-finite"),
    Fault("init_from_model_config_wrong_type", "train",
          lambda s: _new_run(s, "--init-from", s.checkpoint("c.pt", lambda d: d["model_config"].update(depth="eight"))),
          "model_config"),
    Fault("init_from_config_wrong_type", "train",
          lambda s: _new_run(s, "--init-from", s.checkpoint("c.pt", lambda d: d["config"].update(lr="fast"))),
          "lr must be float"),
    Fault("distill_from_other_classes", "train",
          lambda s: _new_run(s, "--distill-from", _other_model(s, num_classes=5)), "num_classes 5 vs the data's 10"),
    Fault("distill_from_other_channels", "train",
          lambda s: _new_run(s, "--distill-from", _other_model(s, in_channels=3)), "in_channels 3 vs the data's 1"),
    # -- cg-export ------------------------------------------------------------------------------------
    Fault("export_pickled_object", "export",
          lambda s: _export_of(s, s.checkpoint("evil.pt", lambda d: d.update(note=s.runs_code()))),
          "never unpickled"),
    Fault("export_cifar_pickle", "export", lambda s: _export_of(s, s.cifar_checkpoint()), "never holds"),
    Fault("export_missing_model_key", "export", lambda s: _export_of(s, s.checkpoint("c.pt", _pop("model"))),
          "incomplete"),
    Fault("export_foreign_weights", "export", lambda s: _export_of(s, s.checkpoint("c.pt", _foreign_weights)),
          "do not fit"),
    Fault("export_nan_weights_int8", "export", lambda s: _export_of(s, s.checkpoint("c.pt", _nan_weights)),
          "non-finite"),
    Fault("export_nan_weights_float", "export",
          lambda s: [a for a in _export_of(s, s.checkpoint("c.pt", _nan_weights)) if a != "--int8"], "non-finite"),
    Fault("export_model_config_wrong_type", "export",
          lambda s: _export_of(s, s.checkpoint("c.pt", lambda d: d["model_config"].update(depth="eight"))),
          "model_config"),
    Fault("export_unknown_dataset", "export",
          lambda s: _export_of(s, s.checkpoint("c.pt", lambda d: d["config"].update(dataset="svhn"))),
          "unknown dataset"),
    Fault("export_config_missing_dataset", "export",
          lambda s: _export_of(s, s.checkpoint("c.pt", lambda d: d["config"].pop("dataset"))), "missing key(s) dataset"),
    Fault("export_config_data_dir_int", "export",
          lambda s: _export_of(s, s.checkpoint("c.pt", lambda d: d["config"].update(data_dir=5))),
          "its config: data_dir must be str"),
    Fault("export_config_a_list", "export",
          lambda s: _export_of(s, s.checkpoint("c.pt", lambda d: d.update(config=["dataset"]))), "config"),
    Fault("export_truncated_checkpoint", "export",
          lambda s: _export_of(s, s.write("c.pt", (s.run / "last.pt").read_bytes()[:999])), "not a readable"),
    Fault("export_list_checkpoint", "export",
          lambda s: _export_of(s, _saved(s, [1, 2, 3])), "not a CosineGate checkpoint"),
    Fault("export_parity_images_zero", "export",
          lambda s: _export_of(s, str(s.run / "last.pt"), "--parity-images", "0"), "--parity-images"),
    Fault("export_calibration_negative", "export",
          lambda s: _export_of(s, str(s.run / "last.pt"), "--calibration-images", "-5"), "--calibration-images"),
    Fault("export_target_macs_zero", "export",
          lambda s: _export_of(s, str(s.run / "last.pt"), "--target-macs", "0"), "--target-macs"),
    Fault("export_gate_threshold_one", "export",
          lambda s: _export_of(s, str(s.run / "last.pt"), "--gate-threshold", "1"), "--gate-threshold"),
    # -- cg-bench: counts ------------------------------------------------------------------------------
    *[Fault(f"bench_{flag.strip('-').replace('-', '_')}_{value}", "bench",
            lambda s, flag=flag, value=value: _bench_of(s, str(s.export), flag, value), flag)
      for flag, value in (("--images", "0"), ("--images", "-3"), ("--latency-runs", "0"),
                          ("--latency-warmup", "-1"), ("--qemu-images", "0"), ("--serial-timeout", "0"))],
    # -- cg-bench: export files and report -------------------------------------------------------------
    Fault("bench_tflite_truncated", "bench",
          lambda s: _bench_of(s, s.export_file("e", "model_int8.tflite", lambda b: b[:len(b) // 2])), "sha256"),
    Fault("bench_tflite_empty", "bench", lambda s: _bench_of(s, s.export_file("e", "model_int8.tflite", lambda b: b"")),
          "sha256"),
    Fault("bench_tflite_flipped_middle", "bench",
          lambda s: _bench_of(s, s.export_file("e", "model_int8.tflite", _flip_middle)), "sha256"),
    Fault("bench_onnx_flipped_middle", "bench",
          lambda s: _bench_of(s, s.export_file("e", "model.onnx", _flip_middle)), "sha256"),
    Fault("bench_report_edited", "bench",
          lambda s: _bench_of(s, s.export_with("e", lambda r: r.update(num_classes=9), reseal=False)),
          "changed since the export"),
    Fault("bench_report_not_json", "bench",
          lambda s: _bench_of(s, s.export_file("e", integrity.REPORT, lambda b: b[:-40])), "not valid JSON"),
    Fault("bench_report_a_list", "bench", lambda s: _bench_of(s, s.export_file("e", integrity.REPORT, lambda b: b"[]")),
          "not an export report"),
    Fault("bench_report_without_hashes", "bench",
          lambda s: _bench_of(s, s.export_with("e", _pop("sha256"), reseal=False)), "no content hashes"),
    Fault("bench_report_names_outside_file", "bench",
          lambda s: _bench_of(s, s.export_with("e", lambda r: r["sha256"].update({"../x": "0" * 64}))), "missing"),
    Fault("bench_report_input_scale", "bench",
          lambda s: _bench_of(s, s.export_with("e", lambda r: r["input"].update(scale=1.0))), "not the model's"),
    Fault("bench_report_input_shape", "bench",
          lambda s: _bench_of(s, s.export_with("e", lambda r: r["input"].update(shape=[1, 28, 28, 1]))),
          "not the model's"),
    Fault("bench_plain_export", "bench", lambda s: _bench_of(s, str(s.plain_export)), "export with --int8"),
    Fault("bench_cifar_pickle", "bench",
          lambda s: _bench_of(s, s.export_with("e", lambda r: r.update(dataset="cifar10")), "--data-dir",
                              s.cifar_dir()), "never holds"),
    Fault("bench_checkpoint_pickled_object", "bench",
          lambda s: _bench_of(s, str(s.export), "--checkpoint",
                              s.checkpoint("evil.pt", lambda d: d.update(note=s.runs_code()))),
          "never unpickled"),
    Fault("bench_checkpoint_of_another_model", "bench",
          lambda s: _bench_of(s, str(s.export), "--checkpoint",
                              s.checkpoint("other.pt", lambda d: d["model"]["fc.bias"].add_(1.0))),
          "not the checkpoint"),
    Fault("bench_checkpoint_config_wrong_type", "bench",
          lambda s: _bench_of(s, str(s.export), "--checkpoint",
                              s.checkpoint("c.pt", lambda d: d["config"].update(epochs="two"))), "epochs must be int"),
    Fault("bench_out_plots_a_file", "bench", lambda s: _bench_of(s, str(s.export), "--out", s.holding("b", "plots")),
          "in the way"),
    Fault("bench_checkpoint_metrics_without_a_curve", "bench",
          lambda s: _bench_of(s, str(s.export), "--checkpoint",
                              s.run_with("r", {"metrics.jsonl": '{"epoch": 1, "lr": 0.1}\n'}) + "/last.pt"),
          "training curves: "),
    Fault("bench_checkpoint_nan_weights", "bench",
          lambda s: _bench_of(s, str(s.export), "--checkpoint", s.checkpoint("nan.pt", _nan_weights)), "non-finite"),
    # -- cg-bench: firmware logs -----------------------------------------------------------------------
    Fault("log_gate_strings_of_another_model", "bench",
          lambda s: _bench_of(s, str(s.export), "--firmware-log",
                              s.write("fw.log", f"CG idx=0 label={_digits_label(0)} pred=0 gates=10\n"
                                                f"CG idx=1 label={_digits_label(1)} pred=0 gates=01\n")),
          "gate digits"),
    Fault("log_negative_idx", "bench",
          lambda s: _bench_of(s, str(s.export), "--firmware-log", s.log([(0, "111")], "CG idx=-1 label=0 pred=0 gates=111")),
          "idx >= 0"),
    Fault("log_conflicting_repeat", "bench",
          lambda s: _bench_of(s, str(s.export), "--firmware-log",
                              s.log([(0, "111"), (1, "101")], f"CG idx=1 label={_digits_label(1)} pred=0 gates=000")),
          "appears twice"),
    Fault("log_of_other_images", "bench",
          lambda s: _bench_of(s, str(s.export), "--firmware-log",
                              s.write("fw.log", f"CG idx=0 label={(_digits_label(0) + 1) % 10} pred=0 gates=111\n")),
          "other images"),
    Fault("log_of_other_model", "bench",
          lambda s: _bench_of(s, str(s.export), "--firmware-log",
                              s.write("fw.log", Path(s.log([(0, "111")])).read_text().replace("model=", "model=0"))),
          "not of this export"),
    Fault("log_binary", "bench", lambda s: _bench_of(s, str(s.export), "--firmware-log", s.write("fw.log", os.urandom(4096))),
          "no CosineGate protocol line"),
    Fault("log_missing", "bench", lambda s: _bench_of(s, str(s.export), "--firmware-log", s.path("none.log")),
          "none.log"),
    Fault("log_is_a_folder", "bench", lambda s: _bench_of(s, str(s.export), "--firmware-log", str(s.root)), "directory"),
    # -- python -m tools -------------------------------------------------------------------------------
    Fault("protocol_missing_file", "protocol", lambda s: [s.path("none.log")], "none.log"),
    Fault("protocol_binary", "protocol", lambda s: [s.write("fw.log", os.urandom(4096))], "no CosineGate protocol line"),
    Fault("m4_timing_elf_truncated", "m4_timing", lambda s: _m4_timing_of(s, elf=b"\x7fELF\x01\x01"),
          "fw.elf is too short"),
    Fault("m4_timing_block_before_inference", "m4_timing", lambda s: _m4_timing_of(s, blocks="0x100 1 1 1\n"),
          "blocks.txt line 1"),
    *[Fault(f"m4_timing_clock_mhz_{value}", "m4_timing", lambda s, value=value: _m4_timing_of(s, "--clock-mhz", value),
            "--clock-mhz") for value in ("0", "inf")],
    Fault("carray_tflite_empty", "carray",
          lambda s: [s.export_file("e", "model_int8.tflite", lambda b: b""), "--out", s.path("c")], "sha256"),
    Fault("carray_plain_export", "carray", lambda s: [str(s.plain_export), "--out", s.path("c")], "--int8"),
    Fault("carray_bad_op_name", "carray",
          lambda s: [s.export_with("e", lambda r: r["tflm_ops"].append('ADD"); system("x')), "--out", s.path("c")],
          "op name"),
    Fault("carray_report_without_ops", "carray", lambda s: [s.export_with("e", _pop("tflm_ops")), "--out", s.path("c")],
          "export_report.json: tflm_ops is missing"),
    Fault("carray_report_input_scale", "carray",
          lambda s: [s.export_with("e", lambda r: r["input"].update(scale=1.0)), "--out", s.path("c")], "not the model's"),
    Fault("test_images_count_zero", "test_images", lambda s: [str(s.export), "--count", "0", "--out", s.path("t")],
          "--count"),
    Fault("test_images_cifar_pickle", "test_images",
          lambda s: [s.export_with("e", lambda r: r.update(dataset="cifar10")), "--data-dir", s.cifar_dir(),
                     "--out", s.path("t")], "never holds"),
    Fault("test_images_report_without_dataset", "test_images",
          lambda s: [s.export_with("e", _pop("dataset")), "--out", s.path("t")],
          "export_report.json: dataset is missing"),
    Fault("test_images_report_input_zero_point", "test_images",
          lambda s: [s.export_with("e", lambda r: r["input"].update(zero_point=3)), "--out", s.path("t")],
          "not the model's"),
    Fault("classifier_cifar_pickle", "classifier",
          lambda s: [str(s.export / "model_int8.tflite"), "--dataset", "cifar10", "--data-dir", s.cifar_dir(),
                     "--preprocess", "normalized", "--out", s.path("k")], "never holds"),
    Fault("classifier_images_zero", "classifier",
          lambda s: [str(s.export / "model_int8.tflite"), "--dataset", "digits", "--preprocess", "raw",
                     "--images", "0", "--out", s.path("k")], "--images"),
    Fault("classifier_random_bytes", "classifier",
          lambda s: [s.write("m.tflite", os.urandom(2048)), "--dataset", "digits", "--preprocess", "raw",
                     "--out", s.path("k")], "m.tflite"),
    Fault("sweep_cifar_pickle", "sweep",
          lambda s: [s.cifar_checkpoint(), "--targets", "0.8", "--out", s.path("w")], "never holds"),
    Fault("sweep_pickled_object", "sweep",
          lambda s: [s.checkpoint("evil.pt", lambda d: d.update(note=s.runs_code())), "--targets", "0.8",
                     "--out", s.path("w")], "never unpickled"),
    Fault("archive_restore_pickled_object", "archive",
          lambda s: ["--restore", s.checkpoint("evil.pt", lambda d: d.update(note=s.runs_code())), s.path("r")],
          "never unpickled"),
    Fault("archive_restore_over_a_run", "archive",
          lambda s: ["--restore", str(s.run / "last.pt"), str(s.copy(s.run, "r"))], "already holds a run"),
    Fault("archive_restore_over_a_best_pt", "archive",
          lambda s: ["--restore", str(s.run / "last.pt"), s.holding("r", "best.pt")],
          "already holds a run"),
    Fault("plots_without_metrics", "plots", lambda s: [str(s.root)], "metrics.jsonl"),
    Fault("plots_garbled_metrics", "plots",
          lambda s: [s.run_with("r", {"metrics.jsonl": "{\"epoch\": 1,\n"})], "metrics.jsonl"),
    Fault("plots_empty_metrics", "plots", lambda s: [_metrics_only(s, "")], "metrics.jsonl holds no lines"),
    Fault("plots_metrics_a_list", "plots", lambda s: [_metrics_only(s, "[1, 2]\n")],
          "metrics.jsonl line 1: its content must be an object"),
    Fault("plots_metrics_without_gbar", "plots",
          lambda s: [_metrics_only(s, '{"epoch": 1, "train_acc": 0.5, "exec_rate_deploy": [0.5], '
                                      '"skip_rate_deploy": 0.5, "mac_ratio_deploy": 0.6, "adaptivity": 1.0}\n')],
          "metrics.jsonl epoch 1: gbar is missing"),
    Fault("static_baseline_missing_run", "static_baseline", lambda s: [s.path("nowhere")], "nowhere"),
    Fault("static_baseline_config_missing_key", "static_baseline",
          lambda s: [s.run_with("r", {"config.yaml": _saved_config(s, lambda c: c.pop("gate_downsample"))})],
          "missing key(s) gate_downsample"),
    Fault("static_baseline_metrics_wrong_type", "static_baseline",
          lambda s: [s.run_with("r", {"metrics.jsonl": '{"epoch": 1, "exec_rate_deploy": [0.5, "high"]}\n'})],
          "metrics.jsonl line 1: exec_rate_deploy[1] must be a number"),
    *[Fault(f"static_baseline_rate_{name}", "static_baseline",
            lambda s, line=line: [s.run_with("r", {"metrics.jsonl": line})],
            "metrics.jsonl last line: exec_rate_deploy[0] must be a finite number")
      for name, line in (("infinite", '{"epoch": 1, "exec_rate_deploy": [Infinity]}'),
                         ("nan", '{"epoch": 1, "exec_rate_deploy": [NaN]}'))],
    Fault("static_baseline_ungated_with_exits", "static_baseline",
          lambda s: [s.run_with("r", {"config.yaml": _saved_config(s, lambda c: c.update(gated=False, exits="1"))})],
          "not a gated run"),
    Fault("results_metrics_wrong_type", "results",
          lambda s: _results_of(s, {"run/metrics.jsonl": '{"epoch": "one", "test_acc_full": 0.5}\n'}),
          "metrics.jsonl line 1: epoch must be an integer"),
    Fault("results_config_missing_key", "results",
          lambda s: _results_of(s, {"run/config.yaml": _saved_config(s, lambda c: c.pop("depth"))}),
          "config.yaml: missing key(s) depth"),
    Fault("results_bench_runtimes_a_list", "results",
          lambda s: _results_of(s, {"bench/bench.json": json.dumps(
              {"images": 5, "machine": {"cpu": "x", "cores": 1, "torch": "2"}, "runtimes": []})}),
          "bench.json: runtimes must be an object"),
    Fault("results_sweep_without_points", "results",
          lambda s: _results_of(s, {"sweep/sweep.json": '{"checkpoint": "x", "images": 3}'}),
          "sweep.json: points is missing"),
    Fault("results_report_not_json", "results",
          lambda s: _results_of(s, {"export/export_report.json": "{"}), "export_report.json is not valid JSON"),
    Fault("sweep_json_wrong_type", "sweep",
          lambda s: [str(s.run / "last.pt"), "--targets", "0.8", "--out",
                     _sweep_json(s, '{"checkpoint": "x", "images": 1, "points": {"paper": 3}}')],
          "points.paper must be an object"),
    Fault("sweep_export_report_without_threshold", "sweep",
          lambda s: [str(s.run / "last.pt"), "--targets", "0.8", "--out",
                     str(Path(s.export_with("w/exports/paper", _pop("deploy_threshold"))).parent.parent)],
          "deploy_threshold is missing"),
    *[Fault(f"step_profile_{flag.strip('-')}_{value}", "step_profile", lambda s, flag=flag, value=value: [flag, value],
            flag) for flag, value in (("--depth", "7"), ("--batch", "0"), ("--threads", "0"), ("--device", "tpu"),
                                      ("--batch", "1000000000000"), ("--steps", "1000000000"))],
    Fault("demo_threads_zero", "demo", lambda s: ["--threads", "0", "--out", s.path("d")], "--threads"),
    Fault("prune_search_gated_net", "prune_search", lambda s: [str(s.run / "last.pt"), "--delete", "1"],
          "not a full plain ResNet"),
    Fault("prune_search_pickle_runs_code", "prune_search",
          lambda s: [s.checkpoint("evil.pt", lambda c: c.update(model=s.runs_code())), "--delete", "1"],
          "never unpickled"),
    Fault("controllers_pickle_runs_code", "controllers",
          lambda s: [s.checkpoint("evil.pt", lambda c: c.update(model=s.runs_code()))], "never unpickled"),
    Fault("controllers_no_images", "controllers", lambda s: [str(s.run / "last.pt"), "--images", "0"],
          "--images must be >= 1"),
    Fault("controllers_missing_checkpoint", "controllers", lambda s: [s.path("none.pt")], "none.pt"),
    Fault("controller_pushes_pickle_runs_code", "controller_pushes",
          lambda s: [s.checkpoint("evil.pt", lambda c: c.update(model=s.runs_code()))], "never unpickled"),
    Fault("controller_pushes_no_steps", "controller_pushes", lambda s: [str(s.run / "last.pt"), "--steps", "0"],
          "--steps and --every must be >= 1"),
    Fault("controller_pushes_negative_lr", "controller_pushes", lambda s: [str(s.run / "last.pt"), "--lr", "-1"],
          "--lr must be > 0"),
    Fault("controller_pushes_missing_checkpoint", "controller_pushes", lambda s: [s.path("none.pt")], "none.pt"),
    Fault("skip_headroom_pickle_runs_code", "skip_headroom",
          lambda s: [s.checkpoint("evil.pt", lambda c: c.update(model=s.runs_code()))], "never unpickled"),
    Fault("skip_headroom_missing_checkpoint", "skip_headroom", lambda s: [s.path("none.pt")], "none.pt"),
    Fault("skip_headroom_one_image", "skip_headroom", lambda s: [str(s.run / "last.pt"), "--images", "1"],
          "--images must be >= 2"),
    Fault("skip_headroom_out_is_a_folder", "skip_headroom", lambda s: [str(s.run / "last.pt"), "--out", s.path(".")],
          "is a directory"),
    Fault("controller_pushes_threads_too_many", "controller_pushes",
          lambda s: [str(s.run / "last.pt"), "--threads", "100000"], "--threads must be 1..1024"),
    Fault("publish_missing_bench", "publish",
          lambda s: ["--name", "x", "--run", str(s.run), "--export", str(s.export), "--bench", s.path("b"),
                     "--command", "cg-train", "--models", s.path("models")], "bench.json"),
    Fault("publish_bench_runtimes_a_list", "publish",
          lambda s: ["--name", "x", "--run", str(s.run), "--export", str(s.export),
                     "--bench", str(Path(s.write("b/bench.json", '{"runtimes": []}')).parent),
                     "--command", "cg-train", "--models", s.path("models")], "bench.json: runtimes must be an object"),
    Fault("reproduce_spec_without_preset", "reproduce", lambda s: ["--root", s.path("R"), "x:"], "'x:'"),
    Fault("reproduce_spec_unclosed_quote", "reproduce", lambda s: ["--root", s.path("R"), "x:balanced --lr '0.1"],
          "no closing quotation"),
    Fault("reproduce_metrics_binary", "reproduce",
          lambda s: _reproduce_over(s, {"x/run/last.pt": "kept", "x/run/metrics.jsonl": b"\xff\xfe\x00\x01"}),
          "metrics.jsonl is not text"),
    Fault("ablations_saved_config_a_list", "ablations",
          lambda s: _ablations_over(s, {"plain/last.pt": "kept", "plain/config.yaml": "- 1\n"}),
          "config.yaml must be a mapping"),
]


def _resume_no_last(s: Scene) -> list[str]:
    folder = s.copy(s.run, "run")
    (folder / "last.pt").unlink()
    return _resume(str(folder))


def _truncated_last(s: Scene) -> str:
    folder = s.copy(s.run, "run")
    (folder / "last.pt").write_bytes((s.run / "last.pt").read_bytes()[:5000])
    return str(folder)


def _other_model(s: Scene, **changes) -> str:
    """The session's checkpoint with another model (random weights): `changes` to its model_config."""
    from cosinegate.train.model import CosineGateResNet, ModelConfig

    def edit(ckpt):
        ckpt["model_config"].update(changes)
        ckpt["model"] = CosineGateResNet(ModelConfig(**ckpt["model_config"])).state_dict()
    return s.checkpoint("other.pt", edit)


def _saved_config(s: Scene, edit: Callable[[dict], object]) -> str:
    """The session's config.yaml with `edit` applied, as YAML text."""
    config = yaml.safe_load((s.run / "config.yaml").read_text())
    edit(config)
    return yaml.safe_dump(config)


def _results_of(s: Scene, files: dict) -> list[str]:
    """`experiments.results` over a root holding a copy of the session's run with files added or replaced."""
    run = s.copy(s.run, "root/x/run")
    for name, text in files.items():
        (run.parent / name).parent.mkdir(parents=True, exist_ok=True)
        (run.parent / name).write_text(text)
    return [s.path("root"), "--out", s.path("R.md"), "--plots", s.path("plots")]


def _m4_timing_of(s: Scene, *extra: str, elf: bytes | None = None,
                  blocks: str = "inference 0\n0x100 1 1 1\n") -> list[str]:
    """`m4_timing` over `elf` and `blocks`; by default a firmware of one `bx lr` at 0x100 and a
    trace that runs it once."""
    return [s.write("fw.elf", _elf(_code(0x4770), 0x100) if elf is None else elf), s.write("blocks.txt", blocks),
            *extra]


def _metrics_only(s: Scene, text: str) -> str:
    """A run folder holding only metrics.jsonl (so a plot written is a file added)."""
    s.write("r/metrics.jsonl", text)
    return s.path("r")


def _reproduce_over(s: Scene, files: dict) -> list[str]:
    """`reproduce` of configuration x over a root holding `files` ({path under the root: content})."""
    for name, content in files.items():
        s.write(f"R/{name}", content)
    return ["--root", s.path("R"), "x"]


def _ablations_over(s: Scene, files: dict) -> list[str]:
    """`ablations --only plain` over an --out folder holding `files` ({path under it: content})."""
    for name, content in files.items():
        s.write(f"D/{name}", content)
    return ["--out", s.path("D"), "--only", "plain"]


def _sweep_json(s: Scene, text: str) -> str:
    s.write("w/sweep.json", text)
    return s.path("w")


def _saved(s: Scene, value) -> str:
    torch.save(value, s.root / "c.pt")
    return s.path("c.pt")


def _tree(*folders: Path) -> dict:
    """{path: sha256} of every file under `folders`."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _run(tool: str, argv: list[str], capsys) -> tuple[int, str, str]:
    module, _ = TOOLS[tool]
    capsys.readouterr()
    try:
        code = importlib.import_module(module).main(argv)
    except SystemExit as e:  # argparse refusals
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_error_line(tool: str, code, err: str, says: str) -> str:
    prefix = f"{TOOLS[tool][1]}: error: "
    lines = [line for line in err.splitlines() if ": error:" in line]
    assert code not in (0, None), err
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert "internal error" not in lines[0], lines[0]
    assert len(lines[0]) <= len(prefix) + errors.MAX_CHARS, lines[0]
    assert says.lower() in lines[0].lower(), lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def plain_over_int8(tiny_ckpt, tiny_export, tmp_path_factory):
    """A plain (no --int8) export written into a copy of the int8 export, after a killed export
    left its staging folder beside it."""
    folder = tmp_path_factory.mktemp("plain") / "export"
    shutil.copytree(tiny_export, folder)
    stale = folder.parent / f".export.{_dead_pid()}-killed{atomic.TMP_MARK}.staging"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    from cosinegate.export import cli
    assert cli.main([str(tiny_ckpt), "--out", str(folder), "--parity-images", "20", "--no-progress"]) == 0
    assert not stale.exists()
    return folder


def _dead_pid() -> int:
    """The pid of a process that has exited (a killed writer)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.fixture
def scene(tmp_path, tiny_run, tiny_export, plain_over_int8):
    with contextlib.ExitStack() as hold:
        yield Scene(tmp_path, tiny_run, tiny_export, plain_over_int8, hold)


def test_the_crafted_pickles_would_run_code(tmp_path):
    marker = tmp_path / "code_ran"
    pickle.loads(pickle.dumps({"data": _RunsCode(marker)}))
    assert marker.exists()


def test_the_table_covers_every_category():
    assert len(FAULTS) >= 60 and len({f.name for f in FAULTS}) == len(FAULTS)
    assert {f.tool for f in FAULTS} == set(TOOLS)


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
def test_fault_ends_in_one_line_and_changes_nothing(fault, scene, capsys):
    argv = fault.build(scene)
    watched = (scene.root, scene.run, scene.export, scene.plain_export)
    before = _tree(*watched)
    code, _, err = _run(fault.tool, argv, capsys)
    after = _tree(*watched)
    scene.hold.close()
    _assert_one_error_line(fault.tool, code, err, fault.says)
    assert not scene.marker.exists(), "a crafted file ran code"
    assert after == before, f"files changed: {sorted(set(after.items()) ^ set(before.items()))[:4]}"


def test_killed_checkpoint_write_is_cleaned_and_best_repaired_on_resume(tiny_run, tmp_path, capsys):
    """A kill -9 between best.pt and last.pt, or inside a write: resume finds a stale temporary
    and a best.pt older than the best epoch last.pt records."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    last = checkpoint.load(run / "last.pt")
    last["best_epoch"] = last["epoch"]
    torch.save(last, run / "last.pt")
    torch.save(dict(last, epoch=last["epoch"] - 1), run / "best.pt")
    partial = run / f".last.pt.{_dead_pid()}-killed{atomic.TMP_MARK}.pt"
    partial.write_bytes(b"the first half of a checkpoint")
    kept = _tree(run / "last.pt", run / "metrics.jsonl", run / "config.yaml")
    code, out, _ = _run("train", _resume(str(run)), capsys)
    assert code == 0 and "best.pt was older" in out
    assert not partial.exists()
    assert _tree(run / "last.pt", run / "metrics.jsonl", run / "config.yaml") == kept
    assert checkpoint.load(run / "best.pt")["epoch"] == last["epoch"]


def test_plain_export_replaces_an_int8_export_as_a_whole(plain_over_int8, tiny_export):
    from cosinegate.export.cli import EXPORT_FILES
    assert (tiny_export / "model_int8.tflite").is_file()
    report = integrity.read_export(plain_over_int8)
    assert sorted(p.name for p in plain_over_int8.iterdir()) == sorted(report["files"])
    assert set(report["files"]) <= set(EXPORT_FILES) and "model_int8.tflite" not in report["files"]
    assert not list(plain_over_int8.parent.glob(f"*{atomic.TMP_MARK}*"))


def test_c_sources_write_scale_one_as_a_float_and_escape_report_strings(tiny_export, tmp_path):
    from cosinegate.export.carray import write_model_sources
    report = integrity.read_export(tiny_export)
    report["input"]["scale"] = 1.0
    report["dataset"] = 'digits"; int x = 1; //\n*/ \\ \u00e9'
    write_model_sources(tiny_export / "model_int8.tflite", report, tmp_path)
    settings = (tmp_path / "model_settings.h").read_text()
    assert "constexpr float kInputScale = 1.0f;" in settings
    line = next(line for line in settings.splitlines() if line.startswith("constexpr char kDataset[]"))
    literal = line.removeprefix('constexpr char kDataset[] = "').removesuffix('";')
    assert '"' not in literal.replace('\\"', "")  # the literal ends where the line does
    assert bytes(literal, "ascii").decode("unicode_escape").encode("latin-1").decode() == report["dataset"]


def test_protocol_skips_a_gate_string_of_another_length():
    from cosinegate.bench.protocol import parse_text
    log = parse_text("CG idx=0 label=1 pred=1 gates=101\nCG idx=1 label=2 pred=2 gates=1\n"
                     "CG idx=2 label=3 pred=3 gates=001\n")
    assert [i.idx for i in log.inferences] == [0, 2] and log.skipped_lines == 1


class _RestartingBoard:
    """A serial port whose board restarts after two images and prints them again."""

    def __init__(self, lines: list[str]):
        self.lines = [line.encode() + b"\r\n" for line in lines]

    def readline(self) -> bytes:
        return self.lines.pop(0) if self.lines else b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_serial_stream_repeating_images_counts_each_image_once(scene, capsys, monkeypatch):
    import serial
    header, *rows = firmware_log(scene.export, [(i, "111", "instructions=100") for i in range(4)]).splitlines()[1:]
    stream = [header, *rows[:2], "boot again", header, *rows, "CG-SUMMARY images=4 correct=4 failed=0 gates_on=4,4,4"]
    monkeypatch.setattr(serial, "Serial", lambda *args, **kwargs: _RestartingBoard(list(stream)))
    code, _, err = _run("bench", _bench_of(scene, str(scene.export), "--serial", "board"), capsys)
    assert code == 0, err
    board = json.loads((scene.root / "bench" / "bench.json").read_text())["firmware"]["board"]
    assert (board["images"], board["repeated_lines"]) == (4, 2)


# -- fuzz: seeded damage to a real export and firmware log --------------------------------------

def _damaged(data: bytes, rng: random.Random) -> bytes:
    """`data` with one bit flipped, or cut short, at a seeded position."""
    at = rng.randrange(len(data))
    if rng.random() < 0.5:
        return data[:at]
    return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1:]


@pytest.mark.parametrize("file", ["model_int8.tflite", integrity.REPORT])
@pytest.mark.parametrize("seed", range(8))
def test_fuzzed_export_is_refused_in_one_line(file, seed, scene, capsys):
    export = scene.export_file("e", file, lambda data: _damaged(data, random.Random(f"{file}{seed}")))
    before = _tree(scene.root)
    code, _, err = _run("bench", _bench_of(scene, export), capsys)
    _assert_one_error_line("bench", code, err, "export" if file == integrity.REPORT else "sha256")
    assert _tree(scene.root) == before


@pytest.mark.parametrize("seed", range(40))
def test_fuzzed_firmware_log_is_refused_or_read_right(seed, tiny_export):
    from cosinegate.bench.errors import BenchError
    from cosinegate.bench.protocol import ProtocolError, parse_text
    from cosinegate.bench.run import _one_row_per_image
    from cosinegate.train.data import load_arrays
    labels = load_arrays("digits", None, "test")[1]
    rng = random.Random(seed)
    text = firmware_log(tiny_export, [(i, "".join(rng.choice("01") for _ in range(GATED_BLOCKS)), "instructions=9")
                                      for i in range(12)]).encode()
    for _ in range(rng.randint(1, 4)):
        text = _damaged(text, rng)
    try:
        rows, _ = _one_row_per_image(parse_text(text.decode(errors="replace")).inferences, labels, GATED_BLOCKS,
                                     "fuzz.log")
    except (ProtocolError, BenchError) as e:
        assert "\n" not in str(e) and len(str(e)) <= errors.MAX_CHARS
        return
    # Every image kept is one the log holds intact: its own label, all its gates, once.
    assert len({r.idx for r in rows}) == len(rows)
    assert all(r.label == labels[r.idx] and len(r.gates) == GATED_BLOCKS for r in rows)


# -- bad state found before anything is written: resume, archive --restore, bench ------------------

@pytest.fixture(scope="module")
def paused_run(tmp_path_factory):
    """A tiny run paused after epoch 1 of 2: a resume of it trains, and writes, epoch 2."""
    run = tmp_path_factory.mktemp("paused") / "run"
    code = importlib.import_module(TOOLS["train"][0]).main(
        ["--preset", "demo", "--depth", "8", "--epochs", "2", "--warmup-epochs", "1", "--stop-after", "1",
         "--out", str(run), *QUICK_TRAIN])
    assert code == 0
    return run


def _momentum_buffer_of_another_shape(ckpt: dict) -> None:
    ckpt["optimizer"]["state"][0]["momentum_buffer"] = torch.zeros(3)


BAD_RESUME_STATES = [
    ("history_of_strings", lambda c: c.update(history=["x"]), "history entry 1 is a str"),
    ("history_shorter_than_epoch", lambda c: c.update(history=[]), "history holds 0 epochs"),
    ("history_with_a_tensor", lambda c: c["history"][-1].update(lr=torch.zeros(1)), "JSON cannot hold"),
    ("history_with_nan", lambda c: c["history"][-1].update(lr=float("nan")), "JSON cannot hold"),
    ("epoch_negative", lambda c: c.update(epoch=-2), "epoch -2"),
    ("epoch_beyond_the_config", lambda c: c.update(epoch=7), "epoch 7"),
    ("rng_empty", lambda c: c.update(rng={}), "rng state"),
    ("rng_of_another_size", lambda c: c["rng"].update(torch=[torch.zeros(3, dtype=torch.uint8)]), "rng state"),
    ("rng_not_bytes", lambda c: c["rng"].update(loader=torch.zeros(3)), "rng state"),
    ("optimizer_empty", lambda c: c.update(optimizer={}), "optimizer state"),
    ("optimizer_buffer_of_another_shape", _momentum_buffer_of_another_shape, "optimizer state"),
    ("scheduler_of_another_epoch", lambda c: c.update(scheduler={"foo": 1}), "scheduler state"),
    ("best_score_nan", lambda c: c.update(best_score=float("nan")), "best_score is NaN"),
]


@pytest.mark.parametrize("edit, says", [case[1:] for case in BAD_RESUME_STATES],
                         ids=[case[0] for case in BAD_RESUME_STATES])
def test_resume_refuses_bad_state_before_writing(edit, says, paused_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(paused_run, run)
    state = checkpoint.load(run / "last.pt")
    edit(state)
    torch.save(state, run / "last.pt")
    before = _tree(run)
    code, _, err = _run("train", _resume(str(run)), capsys)
    line = _assert_one_error_line("train", code, err, says)
    assert str(run / "last.pt") in line
    assert _tree(run) == before


def test_paused_run_passes_the_resume_checks(paused_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(paused_run, run)
    code, _, err = _run("train", _resume(str(run)), capsys)
    assert code == 0, err
    assert [m["epoch"] for m in checkpoint.load(run / "last.pt")["history"]] == [1, 2]


def _strict_json(line: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize("edit, says", [
    (lambda c: c["history"][-1].update(lr=torch.zeros(1)), "JSON cannot hold"),
    (lambda c: c["history"][-1].update(lr=float("nan")), "JSON cannot hold"),
    (_pop("history"), "history missing"),
    (lambda c: c.update(history=["x"]), "history entry 1 is a str"),
], ids=["tensor_in_history", "nan_in_history", "no_history", "history_of_strings"])
def test_archive_restore_refuses_a_bad_history_and_a_retry_succeeds(edit, says, tiny_run, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    state = checkpoint.load(tiny_run / "last.pt")
    edit(state)
    torch.save(state, bad)
    dest = tmp_path / "restored"
    code, _, err = _run("archive", ["--restore", str(bad), str(dest)], capsys)
    assert str(bad) in _assert_one_error_line("archive", code, err, says)
    assert not dest.exists()
    code, _, err = _run("archive", ["--restore", str(tiny_run / "last.pt"), str(dest)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in dest.iterdir()) == ["config.yaml", "last.pt", "metrics.jsonl"]
    restored = [_strict_json(line) for line in (dest / "metrics.jsonl").read_text().splitlines()]
    assert restored == checkpoint.load(tiny_run / "last.pt")["history"]


def test_archive_restore_failing_midway_takes_back_what_it_wrote(tiny_run, tmp_path, capsys, monkeypatch):
    import errno
    replace = atomic._replace

    def disk_full_at_last_pt(tmp, path):
        if Path(path).name == "last.pt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return replace(tmp, path)
    monkeypatch.setattr(atomic, "_replace", disk_full_at_last_pt)
    dest = tmp_path / "restored"
    code, _, err = _run("archive", ["--restore", str(tiny_run / "last.pt"), str(dest)], capsys)
    _assert_one_error_line("archive", code, err, "disk full")
    assert not runfolder.run_files(dest) and not _tree(dest)
    monkeypatch.undo()
    code, _, err = _run("archive", ["--restore", str(tiny_run / "last.pt"), str(dest)], capsys)
    assert code == 0, err


@pytest.mark.parametrize("last_line, says", [('{"epoch": 1, broken', "line 3 is not valid JSON"),
                                             ('{"epoch": 3}', "line 3: train_acc is missing")],
                         ids=["not_json", "without_metrics"])
def test_bench_refuses_broken_training_metrics_before_writing(last_line, says, tiny_run, tiny_export, tmp_path,
                                                              capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    with (run / "metrics.jsonl").open("a") as metrics:
        metrics.write(last_line + "\n")
    bench = tmp_path / "bench"
    for name in ("bench.json", "BENCH.md", "plots/exec_rates.png", "plots/latency.png", "plots/accuracy.png"):
        (bench / name).parent.mkdir(parents=True, exist_ok=True)
        (bench / name).write_text("an earlier bench's")
    before = _tree(tmp_path)
    code, _, err = _run("bench", [str(tiny_export), "--out", str(bench), "--checkpoint", str(run / "last.pt"),
                                  *QUICK_BENCH], capsys)
    assert str(run / "metrics.jsonl") in _assert_one_error_line("bench", code, err, says)
    assert _tree(tmp_path) == before


def test_bench_over_an_earlier_bench_replaces_it_as_a_whole(tiny_run, tiny_export, tmp_path, capsys):
    """An earlier bench's files the new one does not write go (here the training curves: the
    checkpoint, a copy of the export's, has no metrics.jsonl beside it); other files stay."""
    ckpt = tmp_path / "copy" / "last.pt"
    ckpt.parent.mkdir()
    shutil.copy(tiny_run / "last.pt", ckpt)  # the same weights in another file: accepted
    bench = tmp_path / "bench"
    for name in ("bench.json", "BENCH.md", "plots/accuracy.png", "plots/exec_rates.png", "notes.txt"):
        (bench / name).parent.mkdir(parents=True, exist_ok=True)
        (bench / name).write_text("an earlier bench's")
    code, _, err = _run("bench", [str(tiny_export), "--out", str(bench), "--checkpoint", str(ckpt), *QUICK_BENCH],
                        capsys)
    assert code == 0, err
    assert sorted(p.name for p in (bench / "plots").iterdir()) == [
        "exec_rates_by_runtime.png", "latency.png", "mac_ratio_hist.png"]
    assert (bench / "notes.txt").read_text() == "an earlier bench's"
    assert json.loads((bench / "bench.json").read_text())["checkpoint"] == str(ckpt)
    assert not list(tmp_path.glob(f"*{atomic.TMP_MARK}*"))


def test_classifier_prints_only_its_error_line(tiny_export, tmp_path, capfd):
    """TFLite's XNNPACK delegate announces itself on fd 2; the classifier keeps that off stderr."""
    code = importlib.import_module(TOOLS["classifier"][0]).main(
        [str(tiny_export / "model_int8.tflite"), "--dataset", "digits", "--preprocess", "raw",
         "--out", str(tmp_path / "k"), "--no-progress"])
    err = capfd.readouterr().err
    assert code == 1 and err.splitlines() == [line for line in err.splitlines() if "cg-classifier: error:" in line]
    _assert_one_error_line("classifier", code, err, "model_int8.tflite")  # a gated model: not a bare classifier


def test_demo_failing_step_ends_in_that_steps_one_error_line(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "run").write_text("kept")  # the run folder is a file: cg-train refuses it
    code, _, err = _run("demo", ["--out", str(tmp_path / "d"), "--threads", "1", "--no-progress"], capsys)
    lines = [line for line in err.splitlines() if ": error:" in line]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("cg-demo: error: train step: cg-train:"), err
    assert (tmp_path / "d" / "run").read_text() == "kept"
