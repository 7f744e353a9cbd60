"""Gates and early exits in one network: the decisions each image meets in network order, the
IFs of the gates behind an exit nested in its then-branch, and the same decisions in every runtime.

One gated ResNet-8 with exits after stages 1 and 2, trained 2 epochs on digits, serves the module.
"""
import json

import numpy as np
import pytest
import torch

from conftest import export_tiny

# a gate opens for sigmoid(logit) > 1e-4: every gate an image reaches runs, so each gate's output
# must equal "the image reached this block"
OPEN = "0.0001"


@pytest.fixture(scope="module")
def routed_run(tmp_path_factory):
    from cosinegate.train.cli import main as train_main
    run = tmp_path_factory.mktemp("routed_run")
    assert train_main(["--preset", "demo", "--gate-init", "open", "--exits", "1,2", "--depth", "8",
                       "--epochs", "2", "--threads", "1", "--no-progress", "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def routed_export(routed_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("routed_export") / "e"
    assert export_tiny(routed_run / "last.pt", out, "--exit-threshold", "0.5", "--gate-threshold", OPEN) == 0
    return out


def test_training_reports_gates_and_exits_as_one_deployed_rule(routed_run):
    last = json.loads((routed_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert len(last["exec_rate_deploy"]) == 3 and len(last["continue_rate_deploy"]) == 2
    # a block behind an exit runs only for images that went on past it
    assert last["exec_rate_deploy"][2] <= last["continue_rate_deploy"][1] + 1e-6


def test_export_nests_the_gates_behind_each_exit_and_every_runtime_agrees(routed_export):
    import onnx
    from cosinegate.export import restructure
    report = json.loads((routed_export / "export_report.json").read_text())
    assert report["decision_outputs"] == ["gate_0", "gate_1", "gate_2", "exit_0", "exit_1"]
    assert report["deploy_threshold"] == {"threshold": 0.5, "rule": "exit confidence", "source": "--exit-threshold",
                                          "gate_threshold": float(OPEN), "gate_threshold_source": "--gate-threshold"}
    graph = onnx.load(routed_export / "model.onnx").graph
    assert [o.name for o in graph.output] == ["logits", "decisions"]

    def ifs(g):
        return [n for n in g.node if n.op_type == "If"]

    def then_of(node):
        return next(a.g for a in node.attribute if a.name == "then_branch")
    top = ifs(graph)
    assert [n.name for n in top] == ["block0_if", "exit0_if"]
    assert [n.name for n in ifs(then_of(top[1]))] == ["block1_if", "exit1_if"]
    assert [n.name for n in ifs(then_of(ifs(then_of(top[1]))[1]))] == ["block2_if"]

    tflite = (routed_export / "model_int8.tflite").read_bytes()
    restructure.validate_int8(tflite, 3, 2, gates_behind_exit=2)
    with pytest.raises(restructure.RestructureError):
        restructure.validate_int8(tflite, 3, 2)  # the nested gates are not where a flat model has them
    assert len(report["branch_weight_bytes"]) == 3 and min(report["branch_weight_bytes"]) > 0

    parity = report["parity"]
    assert parity["onnx_vs_pytorch"]["gates_identical"]
    assert parity["tflm_vs_tflite_ref"]["bit_exact_fraction"] == 1.0
    assert parity["tflm_vs_tflite_ref"]["gate_agreement"] == 1.0
    assert parity["forced_on_vs_all_compute"]["bit_exact_fraction"] == 1.0
    assert parity["forced_on_vs_all_compute"]["gates_match_all_compute"]


def test_a_gate_behind_the_exit_an_image_left_at_reports_false(routed_export):
    from cosinegate.export import parity, restructure
    from cosinegate.train.data import dataset_info, load_arrays
    tflite = (routed_export / "model_int8.tflite").read_bytes()
    images, _ = load_arrays("digits", None, "test")
    scale, zero_point = restructure.input_quantization(tflite)
    xq = parity.quantize_inputs(parity.float_inputs(images[:100], dataset_info("digits")), scale, zero_point)
    names = ["gate_0", "gate_1", "gate_2", "exit_0", "exit_1"]
    _, d = parity.run_all(parity.TfliteRunner(tflite, names), xq, "", False)
    assert d[:, 3].any() and not d[:, 3].all()      # exit 0 splits the images
    assert d[:, 0].all()                             # every image reaches block 0, whose gate is open
    assert np.array_equal(d[:, 1], d[:, 3])          # block 1 runs exactly for the images past exit 0
    assert np.array_equal(d[:, 2], d[:, 4])          # block 2 exactly for those past exit 1


def test_target_macs_moves_the_exit_threshold_and_keeps_the_gates(routed_run):
    from cosinegate.export import compute_target
    from cosinegate.export.parity import float_inputs
    from cosinegate.train import checkpoint
    from cosinegate.train.data import dataset_info
    model = checkpoint.build_model(checkpoint.load(routed_run / "last.pt")).eval()
    model.set_deploy_threshold(0.3)
    x = torch.from_numpy(float_inputs(compute_target.training_images("digits", None, 300)[0], dataset_info("digits")))
    ratios = compute_target.exit_mac_ratios(model, x)
    target = 0.5 * (ratios(0.0).mean().item() + ratios(1.0).mean().item())
    choice = compute_target.threshold_for_target(model, x, target)
    assert choice.mac_ratio <= target and model.exit_thresholds == [choice.threshold] * 2
    assert all(model.blocks[i].deploy_threshold == 0.3 for i in model.gated_indices)


def test_bench_counts_the_blocks_each_image_ran(routed_export, tmp_path):
    from cosinegate.bench.cli import main as bench_main
    out = tmp_path / "bench"
    assert bench_main([str(routed_export), "--out", str(out), "--images", "60", "--latency-runs", "2",
                       "--latency-warmup", "1", "--no-plain", "--no-progress"]) == 0
    bench = json.loads((out / "bench.json").read_text())
    tflm, torch_run = bench["runtimes"]["tflm"], bench["runtimes"]["torch"]
    assert tflm["distinct_paths"] >= 2 and tflm["mac_ratio_std"] > 0.0
    assert abs(tflm["mac_ratio"] - torch_run["mac_ratio"]) < 0.05


def test_a_gate_that_opens_for_every_image_reaching_it_is_not_adaptive():
    """Behind an exit, a gate's block runs on some images only because the others left: the gate
    itself decided nothing, so it is no input-adaptive decision and makes no extra path."""
    from cosinegate.train.evaluate import routing_stats
    from cosinegate.train.model import ModelConfig, macs_breakdown
    cfg = ModelConfig(depth=8, exit_stages=(2,))        # blocks 0, 1, 2; the exit reads block 1
    macs = macs_breakdown(cfg)
    passed = torch.tensor([0, 1, 0, 1])                 # half the images leave at the exit
    stats = routing_stats(torch.ones(4, 3), macs, [0, 1, 2], passed)
    assert stats["exec_rate"] == [1.0, 1.0, 0.5]        # block 2 ran on half of the images
    assert stats["adaptivity"] == 0.25                  # of 4 decisions only the exit's varies
    assert stats["distinct_paths"] == 2


def test_folding_keeps_the_if_of_an_always_open_gate_behind_an_exit(routed_run, tmp_path):
    """Folded, such a gate would report its block ran for images that left before it."""
    out = tmp_path / "folded"
    assert export_tiny(routed_run / "last.pt", out, "--exit-threshold", "0.5", "--fold-static-gates") == 0
    report = json.loads((out / "export_report.json").read_text())
    proven = {b["block"]: b["decision"] for b in report["gate_bounds"]}
    folded = report["folded_gates"]
    first_exit = report["exit_blocks"][0]
    assert all(proven[i] == "always" and i <= first_exit for i in folded["always"])
    assert all(proven[i] == "never" for i in folded["never"])
    kept = [i for i, d in proven.items() if d == "always" and i > first_exit]
    assert kept, "the tiny run proves no gate behind an exit always open: nothing to check"
    assert not set(kept) & set(folded["always"])
    parity = report["parity"]
    assert parity["folded_vs_gated"]["gates_identical"] and parity["folded_vs_gated"]["bit_exact_fraction"] == 1.0
    assert parity["tflm_vs_tflite_ref"]["bit_exact_fraction"] == 1.0


def test_a_logit_normed_gate_routes_from_the_start_and_exports_with_parity(tmp_path):
    """--gate-logit-norm: with the controllers' random start kept, the deploy gates differ among
    images after one epoch, and the folded norm keeps every runtime on the host's decisions."""
    from cosinegate.train.cli import main as train_main
    run = tmp_path / "run"
    assert train_main(["--preset", "demo", "--gate-init", "open", "--open-logit", "0.5", "--gate-logit-norm", "--routing",
                       "target_rate", "--target-rate", "0.7", "--depth", "8", "--epochs", "1",
                       "--warmup-epochs", "0", "--threads", "1", "--no-progress", "--out", str(run)]) == 0
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert any(0.0 < rate < 1.0 for rate in last["exec_rate_deploy"]), last["exec_rate_deploy"]
    out = tmp_path / "export"
    assert export_tiny(run / "last.pt", out) == 0
    checks = json.loads((out / "export_report.json").read_text())["parity"]
    assert checks["onnx_vs_pytorch"]["gates_identical"]
    assert checks["tflm_vs_tflite_ref"]["gate_agreement"] == 1.0


def test_a_controller_hidden_norm_folds_into_the_exported_controller_with_parity(tmp_path):
    """--controller-norm: the hidden norm folds into W1 at export, and every runtime takes the
    host's decisions, which differ among images."""
    from cosinegate.train.cli import main as train_main
    run = tmp_path / "run"
    assert train_main(["--preset", "demo", "--gate-init", "open", "--open-logit", "0.5", "--controller-norm",
                       "--gate-logit-norm", "--routing", "target_rate", "--target-rate", "0.7", "--depth", "8",
                       "--epochs", "1", "--warmup-epochs", "0", "--threads", "1", "--no-progress",
                       "--out", str(run)]) == 0
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert any(0.0 < rate < 1.0 for rate in last["exec_rate_deploy"]), last["exec_rate_deploy"]
    out = tmp_path / "export"
    assert export_tiny(run / "last.pt", out) == 0
    checks = json.loads((out / "export_report.json").read_text())["parity"]
    assert checks["onnx_vs_pytorch"]["gates_identical"]
    assert checks["tflm_vs_tflite_ref"]["gate_agreement"] == 1.0


def _executed_macs_from_report(report: dict, decisions: np.ndarray) -> np.ndarray:
    """Each image's executed MACs over the plain network's, from the export report and the model's
    decision outputs alone, as docs/export.md states the rule."""
    names = report["decision_outputs"]
    exits = [names.index(f"exit_{k}") for k in range(len(report["exit_blocks"]))]
    ratios = []
    for row in decisions:
        passed = int(np.cumprod(row[exits]).sum()) if exits else 0  # exits the image went on past
        executed = report["macs_stem"]
        for block, macs in enumerate(report["macs_per_block"]):
            if block in report["removed_blocks"] or passed < sum(e < block for e in report["exit_blocks"]):
                continue
            executed += report["macs_controllers"][block]
            if block not in report["gated_indices"] or row[names.index(f"gate_{block}")]:
                executed += macs
        executed += sum(report["macs_exits"][:passed + 1])
        executed += report["macs_head"] if passed == len(exits) else 0
        ratios.append(executed / report["macs_plain"])
    return np.array(ratios)


def test_the_export_report_alone_gives_each_images_executed_macs(routed_run, tmp_path):
    """An outside evaluator needs only export_report.json and the int8 model's outputs."""
    from cosinegate.bench.run import mac_ratios
    from cosinegate.export import parity, restructure
    from cosinegate.train import checkpoint
    from cosinegate.train.data import dataset_info, load_arrays
    from cosinegate.train.model import macs_breakdown
    out = tmp_path / "e"  # gates that close for some images and exits that split them
    assert export_tiny(routed_run / "last.pt", out, "--exit-threshold", "0.5", "--gate-threshold", "0.5") == 0
    report = json.loads((out / "export_report.json").read_text())
    tflite = (out / "model_int8.tflite").read_bytes()
    images, _ = load_arrays("digits", None, "test")
    scale, zero_point = restructure.input_quantization(tflite)
    xq = parity.quantize_inputs(parity.float_inputs(images[:100], dataset_info("digits")), scale, zero_point)
    _, decisions = parity.run_all(parity.TfliteRunner(tflite, report["decision_outputs"]), xq, "", False)
    assert len(np.unique(decisions, axis=0)) >= 3
    cfg = checkpoint.build_model(checkpoint.load(routed_run / "last.pt")).cfg
    expected = mac_ratios(decisions, macs_breakdown(cfg), report["gated_indices"])
    assert np.allclose(_executed_macs_from_report(report, decisions), expected, rtol=0, atol=1e-12)
    assert np.isclose(_executed_macs_from_report(report, np.ones_like(decisions)).max(),
                      report["macs_full"] / report["macs_plain"])


def test_gates_on_chosen_blocks_only_export_with_parity(tmp_path):
    """--ungated-blocks: the blocks named run for every image and export without an IF; the gates
    left, behind the exit, keep their nested IFs and every runtime's decisions."""
    import onnx
    from cosinegate.train import checkpoint
    from cosinegate.train.cli import main as train_main
    run = tmp_path / "run"
    assert train_main(["--preset", "demo", "--gate-init", "open", "--open-logit", "0.5", "--gate-logit-norm",
                       "--routing", "target_rate", "--target-rate", "0.7", "--depth", "8", "--exits", "1",
                       "--ungated-blocks", "0", "--epochs", "1", "--warmup-epochs", "0", "--threads", "1",
                       "--no-progress", "--out", str(run)]) == 0
    assert checkpoint.build_model(checkpoint.load(run / "last.pt")).gated_indices == [1, 2]
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert len(last["exec_rate_deploy"]) == 2
    out = tmp_path / "export"
    assert export_tiny(run / "last.pt", out, "--exit-threshold", "0.5") == 0
    report = json.loads((out / "export_report.json").read_text())
    assert len([d for d in report["decision_outputs"] if d.startswith("gate")]) == 2
    graph = onnx.load(out / "model.onnx").graph
    top = [n.name for n in graph.node if n.op_type == "If"]
    assert top == ["exit0_if"], top
    assert report["parity"]["onnx_vs_pytorch"]["gates_identical"]
    assert report["parity"]["tflm_vs_tflite_ref"]["gate_agreement"] == 1.0


def test_skip_headroom_measures_the_blocks_behind_an_exit_on_the_images_that_reach_them(routed_run, tmp_path):
    from cosinegate.train import checkpoint
    from cosinegate.train import exits as X
    from cosinegate.train.data import dataset_info, load_arrays, normalize
    from cosinegate.train.skip_headroom import main
    assert main([str(routed_run / "last.pt"), "--images", "200", "--threads", "1", "--no-progress",
                 "--out", str(tmp_path / "h.json")]) == 0
    rows = {r["block"]: r for r in json.loads((tmp_path / "h.json").read_text())["blocks"]}
    assert "reaching" not in rows[0]                      # before the first exit every image runs it
    state = checkpoint.load(routed_run / "last.pt")
    model = checkpoint.build_model(state)
    x, _ = load_arrays("digits", None, "train")
    with torch.no_grad():
        _, _, exit_logits = model(normalize(x[:400], dataset_info("digits")), "full", with_exits=True)
    going_on = X.confidence(exit_logits[0]) < state["config"]["exit_threshold"]
    assert rows[1]["reaching"] == pytest.approx(going_on.double().mean().item())
    assert rows[2]["reaching"] <= rows[1]["reaching"]     # behind both exits
    for row in (rows[1], rows[2]):
        assert row["exit_auc"] is None or 0.0 <= row["exit_auc"] <= 1.0
