"""`cg-bench` on a tiny export: the bench.json contract, the report, and bad input."""
import json
import os
import shutil

import pytest

from cosinegate.bench.cli import main as bench_main
from conftest import firmware_log

pytestmark = pytest.mark.slow  # exports a model and runs every runtime

RUNTIMES = ("torch", "onnxruntime", "tflite_int8", "tflm")


def _built_kernels(tflm_root: str) -> set[str]:
    """The kernel sets whose TFLM library was built under `tflm_root`: cg-bench runs each."""
    from cosinegate.bench.qemu import KERNELS, find_tflm_library
    built = set()
    for kernels in KERNELS:
        try:
            find_tflm_library(tflm_root, kernels)
            built.add(kernels)
        except FileNotFoundError:
            pass
    return built


def test_bench_json_contract(bench_dir):
    bench = json.loads((bench_dir / "bench.json").read_text())
    assert set(RUNTIMES) <= set(bench["runtimes"])
    for name in RUNTIMES:
        r = bench["runtimes"][name]
        for key in ("skip_rate", "exec_rate_per_block", "accuracy", "gate_agreement_vs_torch",
                    "adaptivity", "distinct_paths", "mac_ratio_std"):
            assert key in r, (name, key)
        assert len(r["exec_rate_per_block"]) == 3 and r["images"] == 60
        assert 0 <= r["skip_rate"] <= 1 and 0 <= r["accuracy"] <= 1
    assert bench["runtimes"]["torch"]["gate_agreement_vs_torch"] == 1.0
    right = bench["runtimes"]["tflite_int8"]["correct"]  # per image, for paired comparisons
    assert len(right) == 60 and set(right) <= {"0", "1"}
    assert right.count("1") / 60 == pytest.approx(bench["runtimes"]["tflite_int8"]["accuracy"])
    assert bench["runtimes"]["onnxruntime"]["gate_agreement_vs_torch"] == 1.0
    for variant in ("onnxruntime/gated", "onnxruntime/all_on", "onnxruntime/plain",
                    "tflite_int8/gated", "tflite_int8/all_on", "tflite_int8/plain"):
        assert bench["latency"][variant]["median_ms"] > 0
    assert bench["command"].startswith("cg-bench") and bench["machine"]["torch"]
    if os.environ.get("CG_TFLM_ROOT"):  # cg-bench's default: the firmware also ran on QEMU
        assert bench["qemu_note"] is None
        assert {row["kernels"] for row in bench["qemu"]["rows"]} == _built_kernels(os.environ["CG_TFLM_ROOT"])
    else:
        assert bench["qemu"] is None and "no TFLM library" in bench["qemu_note"]


def test_report_and_plots(bench_dir):
    text = (bench_dir / "BENCH.md").read_text()
    assert "| tflm |" in text and "Host latency" in text
    for name in ("exec_rates_by_runtime.png", "latency.png", "mac_ratio_hist.png", "accuracy.png", "exec_rates.png"):
        assert (bench_dir / "plots" / name).stat().st_size > 1000


def test_firmware_log_is_compared_with_torch(tiny_export, bench_dir, tmp_path):
    bench = json.loads((bench_dir / "bench.json").read_text())
    rates = bench["runtimes"]["torch"]["exec_rate_per_block"]
    assert all(r in (0.0, 1.0) or 0 < r < 1 for r in rates)
    # A recorded log whose decisions copy nothing: the bench must parse it and score agreement.
    log = tmp_path / "fw.log"
    log.write_text(firmware_log(tiny_export, [(0, "111", "instructions=1000"), (1, "000", "instruc")]))
    out = tmp_path / "b"
    assert bench_main([str(tiny_export), "--out", str(out), "--images", "10", "--latency-runs", "2",
                       "--latency-warmup", "0", "--no-plain", "--firmware-log", str(log), "--no-progress"]) == 0
    fw = json.loads((out / "bench.json").read_text())["firmware"][str(log)]
    assert fw["images"] == 2 and fw["cost_unit"] == "instructions" and fw["skipped_lines"] == 1
    assert 0 <= fw["gate_agreement_vs_torch"] <= 1


@pytest.mark.parametrize("damage,message", [
    ("empty", "export_report.json is missing"),
    ("format", "export format"),
    ("no_tflite", "no model_int8.tflite"),
])
def test_bad_export_gives_one_line(tiny_export, tmp_path, capsys, damage, message):
    broken = tmp_path / "export"
    broken.mkdir()
    if damage != "empty":
        for f in tiny_export.iterdir():
            shutil.copy(f, broken / f.name)
    if damage == "format":
        report = json.loads((broken / "export_report.json").read_text())
        report["format"] = 999
        (broken / "export_report.json").write_text(json.dumps(report))
    if damage == "no_tflite":
        (broken / "model_int8.tflite").unlink()
    out = tmp_path / "out"
    assert bench_main([str(broken), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cg-bench: error:") and message in err and "\n" not in err
    assert not (out / "bench.json").exists()


def test_log_without_protocol_lines(tiny_export, tmp_path, capsys):
    log = tmp_path / "noise.log"
    log.write_text("hello\nworld\n")
    out = tmp_path / "out"
    assert bench_main([str(tiny_export), "--out", str(out), "--images", "5", "--no-plain",
                       "--firmware-log", str(log), "--no-progress"]) == 1
    assert "no CosineGate protocol line" in capsys.readouterr().err
    assert not (out / "bench.json").exists()


def test_report_names_each_gated_block_by_its_index(bench_dir):
    from cosinegate.bench.report import render_markdown
    bench = json.loads((bench_dir / "bench.json").read_text())
    bench["decision_outputs"] = ["gate_6", "gate_7", "gate_8", "exit_0"]
    text = render_markdown(bench)
    assert "| runtime | b6 | b7 | b8 |" in text
    del bench["decision_outputs"]
    assert "| runtime | b0 | b1 | b2 |" in render_markdown(bench)
