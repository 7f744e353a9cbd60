"""The experiment tools on real and synthetic run folders: results tables, publish, archive."""
import json

import pytest
import yaml


def _row(name, depth, gated, accuracy, mac_ratio, preset=None):
    """A run row as `rows.collect` makes it, with only what the comparisons read."""
    config = {"dataset": "cifar10", "depth": depth, "gated": gated, "removed_blocks": "", "epochs": 10,
              "warmup_epochs": 3, "preset": preset or ("balanced" if gated else "resnet20"), "tau_target": 0.70}
    return {"name": name, "preset": config["preset"], "config": config, "epochs_done": 10,
            "last": {"mac_ratio_deploy": mac_ratio}, "sweep": None,
            "bench": {"runtimes": {"tflite_int8": {"accuracy": accuracy, "mac_ratio": mac_ratio, "images": 10000}}}}


def test_mcnemar_and_noise():
    from cosinegate.experiments.stats import McNemar, mcnemar, unpaired_noise
    assert mcnemar("1" * 10, "0" * 10) == McNemar(10, 10, 0, 2 / 1024)
    assert mcnemar("10", "01").p == 1.0 and not mcnemar("10", "01").significant
    assert mcnemar("1" * 10, "1" * 10) == McNemar(10, 0, 0, 1.0)
    assert round(unpaired_noise(0.875, 10000, 0.86, 10000) * 100, 2) == 0.94
    with pytest.raises(ValueError):
        mcnemar("1", "10")


def test_deeper_net_and_bar_on_resnet20_scale():
    """A gated ResNet-32's MACs are read on ResNet-20's scale, against plain ResNet-20 of the same
    schedule; the Balanced bar needs both accuracy and compute."""
    from cosinegate.experiments import findings
    from cosinegate.train.model import ModelConfig, macs_breakdown

    plain = {d: macs_breakdown(ModelConfig(depth=d, gated=False))["plain_total"] for d in (20, 32)}
    rows = [_row("resnet20", 20, False, 0.86, 1.0), _row("r32", 32, True, 0.87, 0.58),
            _row("r32_big", 32, True, 0.90, 0.70), _row("balanced", 20, True, 0.92, 0.69),
            _row("balanced_folded", 20, True, 0.91, 0.69)]
    rows[1]["bench_folded"] = {"runtimes": {"tflite_int8": {"accuracy": 0.875, "mac_ratio": 0.58},
                                            "tflm": {"accuracy": 0.874, "mac_ratio": 0.58}}}
    rows[4]["bench_folded"] = {"runtimes": {"tflite_int8": {"accuracy": 0.914, "mac_ratio": 0.69}}}
    small, big = findings.deeper_verdicts(rows)
    # The folded export is the one to deploy, so it is the one judged.
    assert small.deployed.folded and small.deployed.accuracy == 0.875 and small.deployed.tflm_accuracy == 0.874
    assert small.deployed.unfolded_accuracy == 0.87
    assert small.deployed.macs == pytest.approx(0.58 * plain[32] / plain[20])
    assert small.baseline.reference == "resnet20" and small.baseline.paired is None
    assert round(small.baseline.gap * 100, 2) == 1.50 and round(small.baseline.noise * 100, 2) == 0.94
    assert (small.outcome, small.goal_met) == ("more accurate", True)
    assert (big.outcome, big.goal_met) == ("more compute", False)  # 0.70 of ResNet-32 > ResNet-20
    bar = findings.bar_verdicts(rows)  # the paper's bar is for ResNet-20: the ResNet-32 runs are not on it
    assert [v.run for v in bar] == ["balanced", "balanced_folded"] and all(v.met for v in bar)
    assert bar[1].deployed.accuracy == 0.914 and bar[1].images == 10000
    assert all(v.baseline.reference == "resnet20" and v.baseline.reference_accuracy == 0.86 for v in bar)
    # A gain inside the sampling noise of 10,000 test images is a tie, not a win.
    rows[1]["bench_folded"]["runtimes"]["tflite_int8"]["accuracy"] = 0.863
    tie = findings.deeper_verdicts(rows)[0]
    assert abs(tie.baseline.gap) <= tie.baseline.noise and (tie.outcome, tie.goal_met) == ("no difference", False)
    # With per-image results on the same images the test is paired, and far sharper: the same
    # +0.30 points made of 40 images gained and 10 lost is a real difference.
    rows[0]["bench"]["runtimes"]["tflite_int8"]["correct"] = "1" * 8600 + "0" * 1400
    rows[1]["bench_folded"]["runtimes"]["tflite_int8"]["correct"] = "1" * 8590 + "0" * 10 + "1" * 40 + "0" * 1360
    paired = findings.deeper_verdicts(rows)[0]
    assert (paired.baseline.paired.only_a, paired.baseline.paired.only_b) == (40, 10)
    assert paired.baseline.paired.significant and paired.goal_met
    # Off the bar on either side: accuracy and compute are judged apart.
    rows[3]["bench"]["runtimes"]["tflite_int8"].update(accuracy=0.90)
    rows[4]["bench_folded"]["runtimes"]["tflite_int8"].update(mac_ratio=0.75)
    low, costly = findings.bar_verdicts(rows)
    assert (low.accurate, low.cheap, low.met) == (False, True, False)
    assert (costly.accurate, costly.cheap, costly.met) == (True, False, False)


def test_warm_start_baselines_and_control():
    """A warm start is held against the run it began from, and a deeper net grown from it against a
    plain ResNet-20 fine-tuned from the same source for as many epochs."""
    from cosinegate.experiments import findings, rows as R
    source = _row("resnet20_e160", 20, False, 0.92, 1.0)
    source["config"].update(epochs=160, warmup_epochs=40)
    source["epochs_done"] = 160
    warm = _row("balanced_warm", 20, True, 0.915, 0.68)
    warm["config"].update(epochs=24, warmup_epochs=6, lr=0.02, init_from="runs/cifar10/resnet20_e160/run/last.pt",
                          tau_target=0.65)
    warm["epochs_done"] = 24
    source["report"] = {"checkpoint": {"path": "runs/cifar10/resnet20_e160/run/last.pt", "epoch": 160}}
    warm["report"] = {"checkpoint": {"path": "runs/cifar10/balanced_warm/run/last.pt", "epoch": 24}}
    verdict, = findings.bar_verdicts([_row("resnet20", 20, False, 0.86, 1.0), source, warm])
    assert verdict.schedule == "24/24 ep, warm-up 6, lr 0.02, warm start from resnet20_e160"
    assert verdict.exported == "E24 last.pt" and verdict.changed == {"tau_target": (0.65, 0.7)}
    assert verdict.met and verdict.baseline.reference == "resnet20_e160"
    assert R.training_label(warm, [source, warm]) == "160 + 24 epochs (warm start)"
    assert R.training_label(warm, [warm]) == "24 epochs (warm start from resnet20_e160)"
    assert R.source_name({"init_from": "models/cifar10-resnet20-e160/model.pt"}) == "cifar10-resnet20-e160"
    grown = _row("resnet32_grown", 32, True, 0.9, 0.58)
    grown["config"].update(init_from="runs/cifar10/resnet20_e160/run/last.pt", lr=0.02)
    grown["epochs_done"] = 24
    source["bench"]["runtimes"]["tflite_int8"]["correct"] = "1" * 9200 + "0" * 800
    grown["bench"]["runtimes"]["tflite_int8"]["correct"] = "1" * 9000 + "0" * 1000
    assert findings.deeper_verdicts([source, grown])[0].control is None
    control = _row("resnet20_ft", 20, False, 0.91, 1.0)
    control["config"].update(init_from="runs/cifar10/resnet20_e160/run/last.pt")
    control["epochs_done"] = 24
    control["bench"]["runtimes"]["tflite_int8"]["correct"] = "1" * 9050 + "0" * 950
    deeper, = findings.deeper_verdicts([source, grown, control])
    assert deeper.outcome == "less accurate" and deeper.control.reference == "resnet20_ft"
    assert (deeper.control.paired.only_a, deeper.control.paired.only_b) == (0, 50)
    assert f"{deeper.control.paired.p:.3g}" == "1.78e-15"


def test_paper_comparisons_follow_the_data():
    """Each preset run beside the paper's row carries the values the experiments log interprets."""
    from cosinegate.experiments import findings

    def row(name, preset, gated, accuracy, paths=1, gbar=0.70, epochs=10):
        r = _row(name, 20, gated, accuracy, 0.68, preset=preset)
        r["config"]["epochs"], r["epochs_done"] = epochs, epochs
        r["last"] = {"epoch": epochs, "test_acc_deploy": accuracy, "test_acc_full": accuracy,
                     "mac_ratio_deploy": 0.68, "gbar": gbar, "distinct_paths_deploy": paths, "adaptivity_deploy": 0.0}
        r["peak"] = dict(r["last"], test_acc_deploy=accuracy + 0.01, epoch=epochs - 1)
        return r

    c, = findings.paper_comparisons([row("resnet20", "resnet20", False, 0.86), row("balanced", "balanced", True, 0.83)])
    assert (c.run, c.training, c.paper_accuracy, c.paper_flops) == ("balanced", "10 ep", 0.913, 0.715)
    assert round(c.gap_to_plain * 100, 2) == -3.00 and c.macs == pytest.approx(0.68)
    assert (c.peak_epoch, c.epochs_done, c.distinct_paths) == (9, 10, 1)
    assert c.peak_accuracy - c.last_accuracy == pytest.approx(0.01) and not c.executes_every_block
    # A warm start is held against the plain run it began from, and says so.
    source = row("resnet20_e160", "resnet20", False, 0.92, epochs=160)
    warm = row("aggressive_warm", "aggressive", True, 0.91, epochs=12)
    warm["config"].update(init_from="runs/cifar10/resnet20_e160/run/last.pt", tau_target=0.60, lr=0.02)
    c, = findings.paper_comparisons([source, warm])
    assert c.training == "160 + 12 ep (warm start)" and c.plain_accuracy == 0.92 and c.paper_flops == 0.759
    # A mean gate below 1 with every block executed is flagged.
    warm["last"].update(gbar=0.84, mac_ratio_deploy=1.0)
    warm["bench"]["runtimes"]["tflite_int8"]["mac_ratio"] = 1.0
    assert findings.paper_comparisons([source, warm])[0].executes_every_block


def test_results_paper_row_is_the_presets_objective():
    """The paper's Table 2 values stand beside every ResNet-20 that trains the preset's losses, from
    scratch or warm-started, and beside no variant of the losses, static twin or deeper net."""
    from cosinegate.experiments import rows

    def row(preset, gated=True, depth=20, removed="", **config):
        return {"preset": preset, "config": {"preset": preset, "gated": gated, "depth": depth,
                                             "removed_blocks": removed, **config}}

    aggressive = {"lambda_flops": 5.0, "tau_target": 0.60}
    assert rows.paper_key(row("aggressive", **aggressive)) == "aggressive"
    assert rows.paper_key(row("aggressive", **aggressive, gate_init="open", lr=0.02,
                              init_from="runs/cifar10/resnet20_e160/run/last.pt")) == "aggressive"
    assert rows.paper_key(row("aggressive", **{**aggressive, "lambda_flops": 20.0})) is None
    assert rows.paper_key(row("aggressive", gated=False, removed="1", **aggressive)) is None
    assert rows.paper_key(row("aggressive", depth=32, **aggressive)) is None
    assert rows.paper_key(row("resnet20", gated=False)) == "resnet20"
    assert rows.paper_key(row("resnet20", gated=True)) is None


def test_sweep_points_face_the_nearest_reference():
    from cosinegate.experiments import findings
    static = _row("static145", 20, False, 0.91, 0.65)
    static["bench"]["runtimes"]["tflite_int8"]["correct"] = "1" * 9 + "0"
    gated = _row("rate60", 20, True, 0.88, 0.74)
    point = {"threshold": {"threshold": 0.45}, "accuracy": 0.8, "mac_ratio": 0.7, "mac_ratio_std": 0.1,
             "adaptivity": 0.5, "distinct_paths": 20, "images": 10, "correct": "0" * 2 + "1" * 8}
    gated["sweep"] = {"points": {"paper": point}, "references": {
        "static145": {"accuracy": 0.9, "mac_ratio": 0.65, "images": 10},
        "plain": {"accuracy": 0.92, "mac_ratio": 1.0, "images": 10}}}
    p, = findings.sweep_points([static, gated])
    assert (p.point, p.threshold, p.distinct_paths, p.reference.reference) == ("paper", 0.45, 20, "static145")
    assert (p.reference.paired.only_a, p.reference.paired.only_b) == (1, 2)


def test_equally_near_static_networks_are_faced_by_the_most_accurate():
    from cosinegate.experiments.findings import nearest_reference
    references = {"static258": {"accuracy": 0.90, "mac_ratio": 0.6509},
                  "static145": {"accuracy": 0.91, "mac_ratio": 0.6510},
                  "static45": {"accuracy": 0.95, "mac_ratio": 0.767}}
    assert nearest_reference(references, 0.64)[0] == "static145"
    assert nearest_reference(references, 0.75)[0] == "static45"
    assert nearest_reference({}, 0.5) is None


def test_seed_points_pair_each_seed_with_the_static_network_of_its_seed():
    from cosinegate.experiments import findings, stats

    def warm(name, seed, exits, accuracy, mac_ratio, correct, lr=0.02):
        row = _row(name, 20, False, accuracy, mac_ratio)
        row["config"].update(seed=seed, exits=exits, lr=lr, init_from="models/plain/model.pt", threads=seed + 1)
        row["bench"]["runtimes"]["tflite_int8"]["correct"] = correct
        return row

    statics = [warm("static", 0, "", 0.5, 0.53, "1100"), warm("static_seed1", 1, "", 0.25, 0.53, "1000"),
               warm("static_other_lr", 1, "", 0.9, 0.53, "1111", lr=0.05), warm("static_held_out", 1, "", 0.9, 0.53, "1111")]
    statics[-1]["config"]["holdout"] = 500  # trained on other images: not the same recipe
    routed = []
    for seed, correct in ((0, "1011"), (1, "0111")):
        row = warm(f"exits_seed{seed}", seed, "2", 0.0, 0.6, "")
        row["sweep"] = {"points": {"0.550": {"accuracy": 0.75, "mac_ratio": 0.55, "correct": correct}}}
        routed.append(row)
    assert [[r["name"] for r in g] for g in findings.seed_groups(statics + routed)] == [
        ["static", "static_seed1"], ["exits_seed0", "exits_seed1"]]
    p, = findings.seed_points(statics + routed)
    nearer = warm("static_one_seed", 0, "", 0.6, 0.56, "1111")
    assert findings.seed_points(statics + routed + [nearer]) == []  # its nearest has one seed
    assert (p.point, p.seeds, p.references) == ("0.550", (0, 1), ("static", "static_seed1"))
    assert round(p.gap, 3) == 0.375
    # seed 0: 1011 vs 1100 -> 2 only model, 1 only static; seed 1: 0111 vs 1000 -> 3 and 1
    assert (p.paired.images, p.paired.only_a, p.paired.only_b) == (8, 5, 2)
    assert p.paired.p == stats.mcnemar("1" * 5 + "0" * 2, "0" * 5 + "1" * 2).p


@pytest.mark.slow  # benches the tiny export
def test_results_table_and_publish(tiny_run, tiny_export, bench_dir, tmp_path):
    from cosinegate.experiments import findings, publish, results
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
    assert "| tiny | ResNet-8 | 2/2 ep, warm-up 1 (shortened)" in text and "python -m cosinegate.experiments.results" in text
    assert (tmp_path / "plots" / "pareto.png").stat().st_size > 1000
    # A static twin (name + "_static") gets the dynamic-vs-static line with the gated run's routing.
    twin = tmp_path / "root" / "tiny_static" / "run"
    twin.mkdir(parents=True)
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    (twin / "config.yaml").write_text(yaml.safe_dump({**config, "gated": False, "removed_blocks": "1"}))
    (twin / "metrics.jsonl").write_text(json.dumps({"epoch": 2, "test_acc_full": 0.5, "mac_ratio_deploy": 0.8}) + "\n")
    assert results.main([str(tmp_path / "root"), "--out", str(out), "--plots", str(tmp_path / "plots")]) == 0
    gated = json.loads((tiny_run / "metrics.jsonl").read_text().splitlines()[-1])
    twin_row, = findings.static_twins(results.collect(tmp_path / "root"))
    assert (twin_row.gated, twin_row.static, twin_row.removed_blocks) == ("tiny", "tiny_static", "1")
    assert (twin_row.adaptivity, twin_row.distinct_paths) == (gated["adaptivity_deploy"], gated["distinct_paths_deploy"])
    assert twin_row.static_accuracy == 0.5 and twin_row.static_macs == pytest.approx(0.8 * report["macs_plain"] / resnet20)
    assert "| tiny | " in out.read_text().split("## Dynamic routing against static pruning")[1]
    entry = publish.publish("tiny", tiny_run, tiny_export, bench_dir, "cg-train ...", models=tmp_path / "models")
    manifest = json.loads((tmp_path / "models" / "manifest.json").read_text())
    assert manifest["models"] == [entry] and entry["depth"] == 8 and entry["dataset"] == "digits"
    int8 = json.loads((bench_dir / "bench.json").read_text())["runtimes"]["tflite_int8"]
    assert (entry["distinct_paths"], entry["mac_ratio_std"]) == (int8["distinct_paths"], int8["mac_ratio_std"])
    assert (tmp_path / "models" / "tiny" / "model_int8.tflite").read_bytes() == \
        (tiny_export / "model_int8.tflite").read_bytes()


@pytest.mark.slow  # benches the tiny export
def test_archive_keeps_what_results_reads(tiny_run, tiny_export, bench_dir, tmp_path, capsys):
    from cosinegate.experiments import archive, results
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
    assert f"[{(tmp_path / 'old.md').as_posix()}]" in earlier and "Earlier runs" not in from_runs
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


def test_schedule_names_where_each_part_of_a_resumed_run_trained():
    from cosinegate.experiments import rows as R
    gpu, cpu = "NVIDIA H200, 2 threads, torch 2.11.0", "x86_64 CPU of 2 cores, 1 thread, torch 2.14.1"
    history = [{"epoch": e, "machine": gpu if e <= 3 else cpu} for e in range(1, 6)]
    assert R.machines(history) == f"ep 1-3 on {gpu}, 4-5 on {cpu}"
    assert R.machines(history[:3]) == f"on {gpu}"
    assert R.machines([{"epoch": 1}]) is None  # records from before the label
    config = {"epochs": 5, "warmup_epochs": 2, "lr": 0.02, "init_from": "models/base/model.pt"}
    assert R.schedule(config, 5, R.machines(history)).endswith(f"warm start from base; ep 1-3 on {gpu}, 4-5 on {cpu}")


def test_per_path_table_groups_firmware_images_by_their_decisions():
    from cosinegate.experiments import results
    from cosinegate.train.config import TrainConfig, to_dict
    plain = {"name": "resnet20", "config": to_dict(TrainConfig(preset="resnet20", gated=False)),
             "qemu": {"cmsis_nn": {"instructions_mean": 90e6}}}
    routed_config = to_dict(TrainConfig(preset="balanced", removed_blocks="1,4,5", gate_downsample=False, exits="2"))
    routed = {"name": "gates_exit", "config": routed_config, "report": {"gated_indices": [0, 2, 7, 8], "exit_blocks": [5]},
              "qemu": {"cmsis_nn": {"instructions_per_image": [35.001e6, 59e6, 34.999e6],
                                    "gates": ["11000", "11111", "11000"]}}}
    text = "\n".join(results._per_path_table([plain, routed]))
    assert "gates_exit: block 0, block 2, block 7, block 8, exit after block 5" in text
    heavy, light = [line for line in text.splitlines() if line.startswith("| gates_exit |")]
    # Every block left after pruning runs (0.651 of ResNet-20), or the image leaves after stage 2 (0.331).
    assert heavy.startswith(f"| gates_exit | `11111` | 1 | 59,000,000 | 0 | 0.651 | {59 / 90:.3f} |")
    assert light.startswith(f"| gates_exit | `11000` | 2 | 35,000,000 | 2,000 | 0.331 | {35 / 90:.3f} |")
    assert float(light.split("|")[-2]) == pytest.approx(35 / (90 * 0.331), abs=2e-3)


def test_static_references_know_the_start_by_name_wherever_its_file_lay():
    from cosinegate.experiments import rows

    def warm(name, init_from, epochs=10):
        row = _row(name, 20, False, 0.9, 0.5)
        row["config"].update(init_from=init_from, lr=0.02, epochs=epochs)
        return row

    routed = warm("exits", "models/plain/model.pt")
    routed["config"]["exits"] = "2"
    statics = [warm("same_start", "/another/checkout/models/plain/model.pt"),
               warm("other_start", "models/other/model.pt"), warm("other_budget", "models/plain/model.pt", epochs=20)]
    assert set(rows.static_references(routed, [routed, *statics])) == {"same_start"}


def test_a_continued_run_faces_static_networks_continued_as_long_from_the_same_start():
    from cosinegate.experiments import findings, rows

    def warm(name, init_from, epochs, seed=0, exits=""):
        row = _row(name, 20, False, 0.9, 0.5)
        row["config"].update(init_from=init_from, lr=0.02, epochs=epochs, seed=seed, exits=exits)
        return row

    first = [warm(f"{kind}_e120{tag}", "models/plain/model.pt", 120, seed, exits)
             for kind, exits in (("exits", "2"), ("static", "")) for seed, tag in ((0, ""), (1, "_seed1"))]
    continued = [warm(f"{kind}_e120p12{tag}", f"runs/{kind}_e120{tag}/run/last.pt", 12, seed, exits)
                 for kind, exits in (("exits", "2"), ("static", "")) for seed, tag in ((0, ""), (1, "_seed1"))]
    once = warm("static_e12", "models/plain/model.pt", 12)  # 12 epochs from the first start only
    table = first + continued + [once]
    assert [r["name"] for r in rows.lineage(continued[0], table)] == ["exits_e120", "exits_e120p12"]
    assert rows.budget(continued[0], table) == ("plain", ((120, 0.02, 0), (12, 0.02, 0)))
    assert set(rows.static_references(continued[0], table)) == {"static_e120p12", "static_e120p12_seed1"}
    assert set(rows.static_references(once, table)) == {"static_e12"}
    groups = [[r["name"] for r in g] for g in findings.seed_groups(table)]
    assert ["exits_e120p12", "exits_e120p12_seed1"] in groups and ["static_e120p12", "static_e120p12_seed1"] in groups
    # a source that names itself ends its own lineage
    looped = warm("looped", "runs/looped/run/last.pt", 12)
    assert rows.lineage(looped, [looped]) == [looped]


def test_a_run_continued_from_a_published_model_continues_the_run_that_made_it(tmp_path, monkeypatch):
    """The published copy holds the run's weights: the lineage goes through the run, so the
    continuation faces the static networks continued as long from that run's start."""
    from cosinegate.experiments import rows

    def warm(name, init_from, epochs, exits=""):
        row = _row(name, 20, False, 0.9, 0.5)
        row["config"].update(init_from=init_from, lr=0.02, epochs=epochs, exits=exits)
        return row

    made = warm("exits_e120", "models/plain/model.pt", 120, "2")
    made["report"] = {"checkpoint": {"path": "runs/exits_e120/run/last.pt", "weights_sha256": "ab" * 32}}
    static = warm("static_e120p12", "runs/static_e120/run/last.pt", 12)
    static_start = warm("static_e120", "models/plain/model.pt", 120)
    continued = warm("exits_e120p12", "models/exits/model.pt", 12, "2")
    monkeypatch.chdir(tmp_path)
    rows.published_weights.cache_clear()
    (tmp_path / "models" / "exits").mkdir(parents=True)
    (tmp_path / "models" / "exits" / "export_report.json").write_text(
        json.dumps({"checkpoint": {"path": "models/exits/model.pt", "weights_sha256": "ab" * 32}}))
    table = [made, static, static_start, continued]
    assert [r["name"] for r in rows.lineage(continued, table)] == ["exits_e120", "exits_e120p12"]
    assert set(rows.static_references(continued, table)) == {"static_e120p12"}
    (tmp_path / "models" / "exits" / "export_report.json").write_text(json.dumps({"checkpoint": {"weights_sha256": "cd" * 32}}))
    rows.published_weights.cache_clear()
    assert rows.lineage(continued, table) == [continued]  # other weights: no known run made them
    rows.published_weights.cache_clear()
