"""`cg-bench` on a tiny export: the bench.json contract, the report, and bad input."""
import json
import os
import shutil

import pytest
import yaml

from cosinegate.bench.cli import main as bench_main

pytestmark = pytest.mark.slow  # exports a model and runs every runtime

RUNTIMES = ("torch", "onnxruntime", "tflite_int8", "tflm")


@pytest.fixture(scope="module")
def bench_dir(tiny_export, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_out") / "b"
    assert bench_main([str(tiny_export), "--out", str(out), "--images", "60", "--latency-runs", "5",
                       "--latency-warmup", "1", "--no-progress"]) == 0
    return out


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
        assert {row["kernels"] for row in bench["qemu"]["rows"]} == {"reference", "cmsis_nn"}
    else:
        assert bench["qemu"] is None and "no TFLM library" in bench["qemu_note"]


def test_report_and_plots(bench_dir):
    text = (bench_dir / "BENCH.md").read_text()
    assert "| tflm |" in text and "Host latency" in text
    for name in ("exec_rates.png", "latency.png", "mac_ratio_hist.png", "accuracy.png"):
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


def firmware_log(export, lines) -> str:
    """A firmware log of `export` on the digits test images: lines (idx, gates, tail) after boot noise."""
    from cosinegate.export.carray import model_id
    from cosinegate.train.data import load_arrays
    report = json.loads((export / "export_report.json").read_text())
    labels = load_arrays("digits", None, "test")[1]
    header = (f"CG-HEADER protocol=1 model={model_id((export / 'model_int8.tflite').read_bytes(), report)} "
              f"core=cortex-m4 clock_hz=25000000 cost=instructions arena_bytes=1 arena_used=1 "
              f"images={len(lines)} classes=10 gated_blocks=3")
    return "\n".join(["junk before boot", header] + [f"CG idx={i} label={labels[i]} pred={labels[i]} gates={g} {tail}"
                                                     for i, g, tail in lines]) + "\n"


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


def test_results_deeper_net_and_goal_on_resnet20_scale():
    """A gated ResNet-32's MACs are read on ResNet-20's scale, against plain ResNet-20 of the same
    schedule; the Balanced bar needs both accuracy and compute."""
    from cosinegate.bench import results
    from cosinegate.train.model import ModelConfig, macs_breakdown

    def row(name, depth, gated, accuracy, mac_ratio):
        config = {"dataset": "cifar10", "depth": depth, "gated": gated, "removed_blocks": "", "epochs": 10,
                  "warmup_epochs": 3, "preset": "balanced" if gated else "resnet20"}
        return {"name": name, "preset": config["preset"], "config": config, "epochs_done": 10,
                "last": {"mac_ratio_deploy": mac_ratio},
                "bench": {"runtimes": {"tflite_int8": {"accuracy": accuracy, "mac_ratio": mac_ratio, "images": 10000}}}}

    plain = {d: macs_breakdown(ModelConfig(depth=d, gated=False))["plain_total"] for d in (20, 32)}
    rows = [row("resnet20", 20, False, 0.86, 1.0), row("r32", 32, True, 0.87, 0.58),
            row("r32_big", 32, True, 0.90, 0.70), row("balanced", 20, True, 0.92, 0.69),
            row("balanced_folded", 20, True, 0.91, 0.69)]
    rows[1]["bench_folded"] = {"runtimes": {"tflite_int8": {"accuracy": 0.875, "mac_ratio": 0.58},
                                            "tflm": {"accuracy": 0.874, "mac_ratio": 0.58}}}
    rows[4]["bench_folded"] = {"runtimes": {"tflite_int8": {"accuracy": 0.914, "mac_ratio": 0.69}}}
    deeper = results._deeper_lines(rows)
    assert len(deeper) == 2
    # The folded export is the one to deploy, so it is the one judged.
    assert (f"int8 87.50% at {0.58 * plain[32] / plain[20]:.3f} of ResNet-20's MACs (folded export, "
            "calibrated without its dead blocks, TFLM 87.40%; unfolded export int8 87.00%)") in deeper[0]
    assert deeper[0].endswith("more accurate by 1.50 points (noise ±0.94, 95 %) at no more compute, goal met.")
    assert deeper[1].endswith("at more compute, goal not met.")  # 0.70 of ResNet-32 > ResNet-20
    goal = results._goal_lines(rows)  # the paper's bar is for ResNet-20: the ResNet-32 runs are not on it
    assert [": met;" in line for line in goal] == [True, True]
    assert "int8 91.40% at 0.690 executed MACs on 10,000 test images (folded export" in goal[1]
    # A gain inside the sampling noise of 10,000 test images is a tie, not a win.
    rows[1]["bench_folded"]["runtimes"]["tflite_int8"]["accuracy"] = 0.863
    assert "+0.30 points, within sampling noise (±0.96 points, 95 %)" in results._deeper_lines(rows)[0]
    assert "no difference shown at no more compute; goal not shown" in results._deeper_lines(rows)[0]
    # With per-image results on the same images the test is paired, and far sharper: the same
    # +0.30 points made of 40 images gained and 10 lost is a real difference.
    plain_right = "1" * 8600 + "0" * 1400
    ours_right = "1" * 8590 + "0" * 10 + "1" * 40 + "0" * 1360
    rows[0]["bench"]["runtimes"]["tflite_int8"]["correct"] = plain_right
    rows[1]["bench_folded"]["runtimes"]["tflite_int8"]["correct"] = ours_right
    assert results._mcnemar(ours_right, plain_right)[:2] == (40, 10)
    line = results._deeper_lines(rows)[0]
    assert "right where plain is wrong on 40 and wrong where plain is right on 10" in line
    assert line.endswith("more accurate at no more compute, goal met.")
    assert results._mcnemar("1" * 10, "0" * 10) == (10, 0, 2 / 1024)
    assert results._mcnemar("10", "01")[2] == 1.0
    # Each Balanced line also says what plain ResNet-20 reaches with the same schedule.
    assert all(line.endswith("plain ResNet-20 with the same schedule, **resnet20**: int8 86.00% at 1.000.")
               for line in goal)
    # A warm start is held against the run it began from, whatever that run's schedule.
    source = row("resnet20_e160", 20, False, 0.92, 1.0)
    source["config"].update(epochs=160, warmup_epochs=40)
    source["epochs_done"] = 160
    warm = row("balanced_warm", 20, True, 0.915, 0.68)
    warm["config"].update(epochs=24, warmup_epochs=6, lr=0.02, init_from="runs/cifar10/resnet20_e160/run/last.pt",
                          tau_target=0.65)
    warm["epochs_done"] = 24
    source["report"] = {"checkpoint": {"path": "runs/cifar10/resnet20_e160/run/last.pt", "epoch": 160}}
    warm["report"] = {"checkpoint": {"path": "runs/cifar10/balanced_warm/run/last.pt", "epoch": 24}}
    line = results._goal_lines([rows[0], source, warm])[0]
    assert line.startswith("- **balanced_warm** (24/24 ep, warm-up 6, lr 0.02, warm start from resnet20_e160; "
                           "exported E24 last.pt; tau_target 0.65 (preset 0.7)): int8 91.50% at 0.680")
    assert line.endswith(": met; the plain ResNet-20 it started from, **resnet20_e160** (exported E160 last.pt): "
                         "int8 92.00% at 1.000.")
    assert results._training_label(warm, [source, warm]) == "160 + 24 epochs (warm start)"
    assert results._training_label(warm, [warm]) == "24 epochs (warm start from resnet20_e160)"
    assert "grew" not in results._warm_start_note([source, warm]) and results._warm_start_note(rows) is None
    grown = row("resnet32_grown", 32, True, 0.925, 0.98)
    grown["config"].update(init_from="runs/cifar10/resnet20_e160/run/last.pt", lr=0.02)
    assert "(resnet32_grown: ResNet-32 from ResNet-20) keeps the source's blocks" in results._warm_start_note(
        [source, warm, grown])
    # A plain ResNet-20 fine-tuned from the same source for as many epochs is the deeper net's control.
    grown["epochs_done"] = 24
    source["bench"]["runtimes"]["tflite_int8"]["correct"] = "1" * 9200 + "0" * 800
    grown["bench"]["runtimes"]["tflite_int8"].update(accuracy=0.9, mac_ratio=0.58, correct="1" * 9000 + "0" * 1000)
    assert "Control" not in results._deeper_lines([source, grown])[0]
    control = row("resnet20_ft", 20, False, 0.91, 1.0)
    control["config"].update(init_from="runs/cifar10/resnet20_e160/run/last.pt")
    control["epochs_done"] = 24
    control["bench"]["runtimes"]["tflite_int8"]["correct"] = "1" * 9050 + "0" * 950
    assert results._deeper_lines([source, grown, control])[0].endswith(
        "Control: plain ResNet-20 warm-started from the same run for the same 24 epochs, **resnet20_ft**: "
        "int8 91.00%; 0 images only the deeper net gets right, 50 only the control (exact McNemar p = 1.78e-15).")


def test_results_not_reproduced_lines_follow_the_data():
    """The "not reproduced" section states a conclusion only when every run it covers shows it."""
    from cosinegate.bench import results

    def row(name, preset, gated, accuracy, paths=1, gbar=0.70, epochs=10):
        config = {"dataset": "cifar10", "depth": 20, "gated": gated, "removed_blocks": "", "epochs": epochs,
                  "warmup_epochs": 3, "preset": preset, "tau_target": 0.70}
        last = {"epoch": epochs, "test_acc_deploy": accuracy, "test_acc_full": accuracy, "mac_ratio_deploy": 0.68,
                "gbar": gbar, "distinct_paths_deploy": paths, "adaptivity_deploy": 0.0}
        return {"name": name, "preset": preset, "config": config, "epochs_done": epochs, "last": last,
                "peak": dict(last, test_acc_deploy=accuracy + 0.01, epoch=epochs - 1),
                "bench": {"runtimes": {"tflite_int8": {"accuracy": accuracy, "mac_ratio": 0.68, "images": 100}}}}

    rows = [row("resnet20", "resnet20", False, 0.86), row("balanced", "balanced", True, 0.83)]
    lines = results._not_reproduced_lines(rows)
    assert "balanced -3.00 points at 0.680 (10 ep)" in lines[0] and "trails its plain" in lines[0]
    assert "at each preset's target" in lines[1] and "balanced τ_target 0.70, paper 0.715, ours 0.700" in lines[1]
    assert "balanced E9 of 10 (end 83.00%); the largest drop from peak to end is 1.00 points" in lines[2]
    assert "settles on one path" in lines[3]
    # A gated run above plain, off its target, with several paths: none of those conclusions is drawn.
    rows = [row("resnet20", "resnet20", False, 0.86), row("balanced", "balanced", True, 0.87, paths=4, gbar=0.8)]
    lines = results._not_reproduced_lines(rows)
    assert "+1.00 points" in lines[0] and "trails its plain" not in lines[0]
    assert "where the list shows" in lines[1] and "settles on one path" not in lines[3]
    # A warm start is held against the plain run it began from, and says so.
    source = row("resnet20_e160", "resnet20", False, 0.92, epochs=160)
    warm = row("aggressive_warm", "aggressive", True, 0.91, epochs=12)
    warm["config"].update(init_from="runs/cifar10/resnet20_e160/run/last.pt", tau_target=0.60)
    lines = results._not_reproduced_lines([source, warm])
    assert "aggressive_warm -1.00 points at 0.680 (160 + 12 ep, warm start)" in lines[0]
    assert "aggressive_warm τ_target 0.60, paper 0.759" in lines[1] and "need not skip" not in lines[1]
    # A mean gate below 1 with every block executed is called out.
    warm["last"].update(gbar=0.84, mac_ratio_deploy=1.0)
    warm["bench"]["runtimes"]["tflite_int8"]["mac_ratio"] = 1.0
    assert "aggressive_warm (ḡ 0.840) executes every block" in results._not_reproduced_lines([source, warm])[1]


def test_results_paper_row_is_the_presets_objective():
    """The paper's Table 2 values stand beside every ResNet-20 that trains the preset's losses, from
    scratch or warm-started, and beside no variant of the losses, static twin or deeper net."""
    from cosinegate.bench import results

    def row(preset, gated=True, depth=20, removed="", **config):
        return {"preset": preset, "config": {"preset": preset, "gated": gated, "depth": depth,
                                             "removed_blocks": removed, **config}}

    aggressive = {"lambda_flops": 5.0, "tau_target": 0.60}
    assert results._paper_key(row("aggressive", **aggressive)) == "aggressive"
    assert results._paper_key(row("aggressive", **aggressive, gate_init="open", lr=0.02,
                                  init_from="runs/cifar10/resnet20_e160/run/last.pt")) == "aggressive"
    assert results._paper_key(row("aggressive", **{**aggressive, "lambda_flops": 20.0})) is None
    assert results._paper_key(row("aggressive", gated=False, removed="1", **aggressive)) is None
    assert results._paper_key(row("aggressive", depth=32, **aggressive)) is None
    assert results._paper_key(row("resnet20", gated=False)) == "resnet20"
    assert results._paper_key(row("resnet20", gated=True)) is None


def test_results_table_and_publish(tiny_run, tiny_export, bench_dir, tmp_path):
    from cosinegate.bench import publish, results
    row = tmp_path / "root" / "tiny"
    row.mkdir(parents=True)
    for name, target in (("run", tiny_run), ("export", tiny_export), ("bench", bench_dir)):
        (row / name).symlink_to(target)
    # A firmware log where every gate was off: executed MACs = full - every gated block.
    report = json.loads((tiny_export / "export_report.json").read_text())
    (row / "qemu.json").write_text(json.dumps({"cmsis_nn": {
        "flash_bytes": 1, "ram_bytes": 2, "arena_used": 3, "instructions_mean": 4.0, "images": 1,
        "gates": ["0" * report["gated_blocks"]]}}))
    # Every MAC ratio in RESULTS.md is against plain ResNet-20 on the same input, whatever the depth.
    from cosinegate.train.model import ModelConfig, macs_breakdown
    resnet20 = macs_breakdown(ModelConfig(depth=20, in_channels=1, input_size=8, gated=False))["plain_total"]
    all_off = (report["macs_full"] - sum(report["macs_per_block"][i] for i in report["gated_indices"])) / resnet20
    out = tmp_path / "RESULTS.md"
    assert results.main([str(tmp_path / "root"), "--out", str(out), "--plots", str(tmp_path / "plots")]) == 0
    text = out.read_text()
    rates = json.loads((bench_dir / "bench.json").read_text())["runtimes"]["tflite_int8"]["exec_rate_per_block"]
    never_run = sum(size for size, rate in zip(report["branch_weight_bytes"], rates) if rate == 0)
    assert f"| tiny | cmsis_nn | 1 | {never_run:,d} | 2 | 3 | yes | — | 4 | — | {all_off:.3f} | 1 |" in text
    # The folded export of the same run gets its own row, with its own report's weights and folds.
    (row / "export_folded").mkdir()
    folded = {**report, "folded_gates": {"always": [], "never": [0]},
              "branch_weight_bytes": [0, *report["branch_weight_bytes"][1:]]}
    (row / "export_folded" / "export_report.json").write_text(json.dumps(folded))
    (row / "qemu_folded.json").write_text(json.dumps({"cmsis_nn": {
        "flash_bytes": 5, "ram_bytes": 6, "arena_used": 7, "instructions_mean": 8.0, "images": 1,
        "gates": ["0" * report["gated_blocks"]]}}))
    assert results.main([str(tmp_path / "root"), "--out", str(out), "--plots", str(tmp_path / "plots")]) == 0
    never_run_folded = sum(size for size, rate in zip(folded["branch_weight_bytes"], rates) if rate == 0)
    assert (f"| tiny (folded) | cmsis_nn | 5 | {never_run_folded:,d} | 6 | 7 | yes | never 0 | 8 | — | "
            f"{all_off:.3f} | 1 |") in out.read_text()
    assert "| tiny | ResNet-8 | 2/2 ep, warm-up 1 (shortened)" in text and "python -m cosinegate.bench.results" in text
    assert (tmp_path / "plots" / "pareto.png").stat().st_size > 1000
    # A static twin (name + "_static") gets the dynamic-vs-static line with the gated run's routing.
    twin = tmp_path / "root" / "tiny_static" / "run"
    twin.mkdir(parents=True)
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    (twin / "config.yaml").write_text(yaml.safe_dump({**config, "gated": False, "removed_blocks": "1"}))
    (twin / "metrics.jsonl").write_text(json.dumps({"epoch": 2, "test_acc_full": 0.5, "mac_ratio_deploy": 0.8}) + "\n")
    assert results.main([str(tmp_path / "root"), "--out", str(out), "--plots", str(tmp_path / "plots")]) == 0
    gated = json.loads((tiny_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert (f"**tiny** (gated, adaptivity {gated['adaptivity_deploy']:.2f}, {gated['distinct_paths_deploy']} "
            "distinct paths)") in out.read_text()
    assert f"**tiny_static** (blocks 1 deleted, no gates): 50.00% at {0.8 * report['macs_plain'] / resnet20:.3f}" \
        in out.read_text()
    entry = publish.publish("tiny", tiny_run, tiny_export, bench_dir, "cg-train ...", models=tmp_path / "models")
    manifest = json.loads((tmp_path / "models" / "manifest.json").read_text())
    assert manifest["models"] == [entry] and entry["depth"] == 8 and entry["dataset"] == "digits"
    assert (tmp_path / "models" / "tiny" / "model_int8.tflite").read_bytes() == \
        (tiny_export / "model_int8.tflite").read_bytes()


def test_archive_keeps_what_results_reads(tiny_run, tiny_export, bench_dir, tmp_path, capsys):
    from cosinegate.bench import archive, results
    root = tmp_path / "runs"
    for name, target in (("run", tiny_run), ("export", tiny_export), ("bench", bench_dir)):
        (root / "tiny").mkdir(parents=True, exist_ok=True)
        (root / "tiny" / name).symlink_to(target)
    assert archive.main([str(root), str(tmp_path / "kept")]) == 0
    kept = sorted(str(p.relative_to(tmp_path / "kept")) for p in (tmp_path / "kept").rglob("*") if p.is_file())
    assert kept == ["tiny/bench/bench.json", "tiny/export/export_report.json", "tiny/run/config.yaml",
                    "tiny/run/metrics.jsonl", "tiny/run/plots/accuracy.png",
                    "tiny/run/plots/compute.png"]  # no checkpoint, no model
    # The table from the archive is the table from the run folders.
    from_runs = results.render(results.collect(root), root, None)
    from_archive = results.render(results.collect(tmp_path / "kept"), root, None)
    assert from_archive == from_runs
    # Table 2 rows without a run of ours keep the paper's values; earlier tables are pointed to.
    assert "| aggressive | ResNet-20 | no run of ours here | 89.9% | 0.759 | — |" in from_archive
    earlier = results.render(results.collect(tmp_path / "kept"), root, None, tmp_path / "old.md")
    assert f"**Earlier runs.** [{(tmp_path / 'old.md').as_posix()}]" in earlier and "**Earlier runs.**" not in from_runs
    # A checkpoint alone gives back the run folder's config and metrics (and becomes its last.pt).
    assert archive.main([str(tiny_run / "last.pt"), str(tmp_path / "restored"), "--restore"]) == 0
    for name in ("metrics.jsonl", "last.pt"):
        assert (tmp_path / "restored" / name).read_bytes() == (tiny_run / name).read_bytes()
    assert yaml.safe_load((tmp_path / "restored" / "config.yaml").read_text()) == \
        yaml.safe_load((tiny_run / "config.yaml").read_text())
    before = (tmp_path / "restored" / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert archive.main([str(tmp_path / "bad.pt"), str(tmp_path / "restored"), "--restore"]) == 1
    assert "already holds a run" in capsys.readouterr().err  # refused before reading the checkpoint
    assert (tmp_path / "restored" / "metrics.jsonl").read_bytes() == before
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert archive.main([str(tmp_path / "bad.pt"), str(tmp_path / "r2"), "--restore"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("archive: error:") and not (tmp_path / "r2").exists()
