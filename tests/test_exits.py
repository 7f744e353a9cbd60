"""Early exits: the exit rule, its MAC accounting, training, and the nested IF export with parity.

One ResNet-14 with exits after stage 1 (block 1) and after blocks 2 and 4 (inside stages 2 and 3),
trained 2 epochs on digits with half the exits' gradient reaching the backbone, serves the module.
"""
import json

import numpy as np
import pytest
import torch
import yaml

from conftest import export_tiny


@pytest.fixture(scope="module")
def exit_run(tmp_path_factory):
    from cosinegate.train.cli import main as train_main
    run = tmp_path_factory.mktemp("exit_run")
    assert train_main(["--preset", "demo", "--no-gated", "--exits", "1", "--exit-after", "2,4", "--depth", "14",
                       "--epochs", "2", "--exit-grad-scale", "0.5",
                       "--threads", "1", "--no-progress", "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def exit_export(exit_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exit_export") / "e"
    # a low threshold, so that images leave at both exits and go on past them
    assert export_tiny(exit_run / "last.pt", out, "--exit-threshold", "0.5") == 0
    return out


def test_an_image_leaves_at_the_first_confident_exit():
    from cosinegate.train.exits import select_logits
    sure, unsure = torch.tensor([[9.0, 0.0]]), torch.tensor([[0.1, 0.0]])
    final = torch.tensor([[0.0, 5.0]])
    cases = [([sure, sure], 0), ([unsure, sure], 1), ([unsure, unsure], 2)]
    for exits, passed in cases:
        logits, went = select_logits(exits, final, [0.9, 0.9])
        assert went.item() == passed
        assert torch.equal(logits, (exits + [final])[passed])


def test_executed_macs_stop_where_the_image_leaves():
    from cosinegate.train.model import ModelConfig, executed_mac_ratio, macs_breakdown
    cfg = ModelConfig(gated=False, exit_stages=(1, 2))
    macs = macs_breakdown(cfg)
    per_stage = [sum(macs["blocks"][3 * s:3 * s + 3]) for s in range(3)]
    expected = [macs["stem"] + per_stage[0] + macs["exits"][0],
                macs["stem"] + sum(per_stage[:2]) + sum(macs["exits"]),
                macs["full_total"]]
    ratio = executed_mac_ratio(macs, torch.zeros(3, 0), [], torch.tensor([0, 1, 2]))
    assert ratio.tolist() == pytest.approx([e / macs["plain_total"] for e in expected])
    assert macs["exits"] == [16 * 16 * 10, 32 * 16 * 10]  # pooled to 4x4, one linear map


def test_exits_inside_a_stage_cost_their_head_and_stop_where_the_image_leaves():
    from cosinegate.train.model import ModelConfig, executed_mac_ratio, macs_breakdown
    cfg = ModelConfig(gated=False, removed_blocks=(1, 4, 5), exit_stages=(2,), exit_after=(6, 7))
    macs = macs_breakdown(cfg)
    assert cfg.exit_blocks == (5, 6, 7) and macs["exit_blocks"] == [5, 6, 7]
    assert macs["exits"] == [32 * 16 * 10, 64 * 16 * 10, 64 * 16 * 10]
    live = [0 if i in cfg.removed_blocks else m for i, m in enumerate(macs["blocks"])]
    expected = [macs["stem"] + sum(live[:6]) + sum(macs["exits"][:1]),
                macs["stem"] + sum(live[:7]) + sum(macs["exits"][:2]),
                macs["stem"] + sum(live[:8]) + sum(macs["exits"]),
                macs["full_total"]]
    ratio = executed_mac_ratio(macs, torch.zeros(4, 0), [], torch.tensor([0, 1, 2, 3]))
    assert ratio.tolist() == pytest.approx([e / macs["plain_total"] for e in expected])


def test_a_warm_start_keeps_the_heads_where_both_nets_have_an_exit(exit_run):
    import dataclasses
    from cosinegate.train import checkpoint
    from cosinegate.train.model import CosineGateResNet
    source = checkpoint.build_model(checkpoint.load(exit_run / "last.pt"))     # exits after blocks 1, 2, 4
    same_depth = CosineGateResNet(dataclasses.replace(source.cfg, exit_stages=(1, 2), exit_after=(4,)))
    fresh = same_depth.exits[1].classifier.weight.detach().clone()
    checkpoint.load_backbone(same_depth, exit_run / "last.pt")                  # exits after blocks 1, 3, 4
    assert torch.equal(same_depth.exits[0].classifier.weight, source.exits[0].classifier.weight)
    assert torch.equal(same_depth.exits[1].classifier.weight, fresh)           # block 3: none in the source
    assert torch.equal(same_depth.exits[2].classifier.weight, source.exits[2].classifier.weight)
    # Grown to ResNet-20: stage 1's end is still an exit place; block 4 of ResNet-14 is no block of it.
    grown = CosineGateResNet(dataclasses.replace(source.cfg, depth=20, exit_stages=(1,), exit_after=(4,)))
    fresh = grown.exits[1].classifier.weight.detach().clone()
    checkpoint.load_backbone(grown, exit_run / "last.pt")
    assert torch.equal(grown.exits[0].classifier.weight, source.exits[0].classifier.weight)
    assert torch.equal(grown.exits[1].classifier.weight, fresh)


def _exit_loss_gradients(scale: float):
    """The exits' cross-entropy backpropagated through a fresh ResNet-14 with two exits: the
    gradient on the first conv (backbone) and on the first exit head."""
    from cosinegate.train.model import CosineGateResNet, ModelConfig
    torch.manual_seed(0)
    model = CosineGateResNet(ModelConfig(depth=14, gated=False, exit_stages=(1,), exit_after=(4,)))
    model.exit_grad_scale = scale
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    final, _, exit_logits = model(x, "full", with_exits=True)
    sum(torch.nn.functional.cross_entropy(z, y) for z in exit_logits).backward()
    return final, model.stem[0].weight.grad.clone(), model.exits[0].classifier.weight.grad.clone()


def test_the_exit_gradient_scale_shrinks_only_what_reaches_the_backbone():
    final, stem_full, head_full = _exit_loss_gradients(1.0)
    final_quarter, stem_quarter, head_quarter = _exit_loss_gradients(0.25)
    _, stem_none, head_none = _exit_loss_gradients(0.0)
    assert torch.equal(final, final_quarter)            # the forward pass is unchanged
    assert stem_full.abs().sum() > 0
    torch.testing.assert_close(stem_quarter, 0.25 * stem_full)
    assert torch.count_nonzero(stem_none) == 0          # 0: the exits do not shape the backbone
    torch.testing.assert_close(head_quarter, head_full)  # the heads learn at full rate either way
    torch.testing.assert_close(head_none, head_full)


@pytest.mark.parametrize("argv, message", [
    (["--no-gated", "--exits", "3"], "stage boundaries 1..2"),
    (["--no-gated", "--exits", "1,1"], "each once"),
    (["--no-gated", "--exits", "a"], "comma-separated stage numbers"),
    (["--no-gated", "--exits", "1", "--exit-threshold", "0"], "exit_threshold"),
    (["--no-gated", "--depth", "14", "--exit-after", "5"], "blocks 0..4"),
    (["--no-gated", "--depth", "14", "--exits", "1", "--exit-after", "1"], "already gives an exit"),
    (["--no-gated", "--exit-after", "2,2"], "each once"),
    (["--no-gated", "--exit-after", "x"], "comma-separated block indices"),
    (["--no-gated", "--exit-grad-scale", "0.5"], "no exits"),
    (["--no-gated", "--exits", "1", "--exit-grad-scale", "1.5"], "exit_grad_scale must lie in [0, 1]"),
])
def test_exit_options_that_make_no_sense_stop_before_any_work(argv, message, tmp_path, capsys):
    from cosinegate.train.cli import main as train_main
    assert train_main(["--preset", "demo", "--out", str(tmp_path / "r"), *argv]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cg-train: error:") and message in err[0]
    assert not (tmp_path / "r").exists()


def test_training_logs_each_exit_and_the_deployed_rule(exit_run):
    last = json.loads((exit_run / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("test_acc_exit_b1", "test_acc_exit_b2", "test_acc_exit_b4", "test_acc_full", "test_acc_deploy",
                "continue_rate_deploy", "mac_ratio_deploy", "mac_ratio_std", "distinct_paths"):
        assert key in last
    assert last["exit_thresholds"] == [0.9, 0.9, 0.9]
    assert yaml.safe_load((exit_run / "config.yaml").read_text())["exit_grad_scale"] == 0.5
    went_on = last["continue_rate_deploy"]
    assert 1.0 >= went_on[0] >= went_on[1] >= went_on[2] >= 0.0  # nobody goes on past an exit without the one before


def test_export_nests_one_if_per_exit_and_every_runtime_takes_the_same_decisions(exit_export):
    import onnx
    from cosinegate.export import restructure
    report = json.loads((exit_export / "export_report.json").read_text())
    assert report["decision_outputs"] == ["exit_0", "exit_1", "exit_2"] and report["exit_blocks"] == [1, 2, 4]
    assert report["deploy_threshold"] == {"threshold": 0.5, "rule": "exit confidence", "source": "--exit-threshold"}
    graph = onnx.load(exit_export / "model.onnx").graph
    top = [n for n in graph.node if n.op_type == "If"]
    assert [n.name for n in top] == ["exit0_if"]
    nested = [n for a in top[0].attribute if a.name == "then_branch" for n in a.g.node if n.op_type == "If"]
    assert [n.name for n in nested] == ["exit1_if"]
    innermost = [n for a in nested[0].attribute if a.name == "then_branch" for n in a.g.node if n.op_type == "If"]
    assert [n.name for n in innermost] == ["exit2_if"]

    tflite = (exit_export / "model_int8.tflite").read_bytes()
    restructure.validate_int8(tflite, 0, 3)
    assert {"IF", "SOFTMAX", "REDUCE_MAX", "GREATER"} <= set(report["tflm_ops"])
    model = restructure.read_model(tflite)
    assert [sg.name.decode() for sg in model.subgraphs[1:]] == ["exit2_then", "exit2_else", "exit1_then", "exit1_else",
                                                                "exit0_then", "exit0_else"]

    parity = report["parity"]
    assert parity["onnx_vs_pytorch"]["gates_identical"]
    assert parity["tflm_vs_tflite_ref"]["gate_agreement"] == 1.0
    assert parity["forced_on_vs_all_compute"]["bit_exact_fraction"] == 1.0
    assert parity["forced_on_vs_all_compute"]["gates_match_all_compute"]


def test_int8_decisions_are_nested_and_answers_come_from_the_exit_taken(exit_export):
    """An image that leaves at an exit reports every later exit false, and one that runs to the end
    answers as the network with every exit forced on."""
    from cosinegate.export import parity, restructure
    from cosinegate.train.data import dataset_info, load_arrays
    tflite = (exit_export / "model_int8.tflite").read_bytes()
    images, _ = load_arrays("digits", None, "test")
    scale, zero_point = restructure.input_quantization(tflite)
    xq = parity.quantize_inputs(parity.float_inputs(images[:100], dataset_info("digits")), scale, zero_point)
    names = ["exit_0", "exit_1", "exit_2"]
    deployed, decisions = parity.run_all(parity.TfliteRunner(tflite, names), xq, "", False)
    assert not np.any(decisions[:, 1:] & ~decisions[:, :-1])
    assert decisions[:, 0].any() and not decisions[:, 0].all()  # the threshold splits the images
    forced = restructure.force_gates(tflite, on=True)
    full, forced_decisions = parity.run_all(parity.TfliteRunner(forced, names), xq, "", False)
    assert forced_decisions.all()
    went_on = decisions.all(1)
    assert np.array_equal(deployed[went_on], full[went_on])  # the same network ran to the end


def test_target_macs_chooses_the_exit_threshold_on_training_images(exit_run, tmp_path):
    from cosinegate.export import compute_target
    from cosinegate.export.parity import float_inputs
    from cosinegate.train import checkpoint
    from cosinegate.train.data import dataset_info
    model = checkpoint.build_model(checkpoint.load(exit_run / "last.pt")).eval()
    images = compute_target.training_images("digits", None, 300)[0]
    x = torch.from_numpy(float_inputs(images, dataset_info("digits")))
    ratios = compute_target.exit_mac_ratios(model, x)
    least, most = ratios(0.0).mean().item(), ratios(1.0).mean().item()
    target = 0.5 * (least + most)
    choice = compute_target.threshold_for_target(model, x, target)
    assert choice.mac_ratio <= target and model.exit_thresholds == [choice.threshold] * 3
    from cosinegate.train.exits import INT8_THRESHOLD_LIMIT
    assert (ratios(min(1.0, choice.threshold + 0.02)).mean().item() > target
            or choice.threshold == INT8_THRESHOLD_LIMIT)
    with pytest.raises(compute_target.ComputeTargetError, match="below the least"):
        compute_target.threshold_for_target(model, x, least * 0.9)


def test_no_exit_threshold_goes_above_what_the_int8_softmax_resolves(exit_run, tmp_path, capsys):
    from cosinegate.export import compute_target
    from cosinegate.export.parity import float_inputs
    from cosinegate.train import checkpoint
    from cosinegate.train.data import dataset_info
    from cosinegate.train.exits import INT8_THRESHOLD_LIMIT
    # the int8 softmax holds k/256, k <= 255: the top two levels lie either side of the limit
    assert 254 / 256 < INT8_THRESHOLD_LIMIT < 255 / 256
    model = checkpoint.build_model(checkpoint.load(exit_run / "last.pt")).eval()
    x = torch.from_numpy(float_inputs(compute_target.training_images("digits", None, 300)[0], dataset_info("digits")))
    choice = compute_target.threshold_for_target(model, x, 1.0)    # asks for every image to go on
    assert choice.threshold == INT8_THRESHOLD_LIMIT and choice.mac_ratio <= 1.0
    out = tmp_path / "e"
    assert export_tiny(exit_run / "last.pt", out, "--exit-threshold", "0.999") != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "can tell apart" in err[0] and "Traceback" not in err[0]
    assert not out.exists()


def test_bench_counts_the_work_of_the_exit_each_image_took(exit_export, tmp_path):
    from cosinegate.bench.cli import main as bench_main
    out = tmp_path / "bench"
    assert bench_main([str(exit_export), "--out", str(out), "--images", "60", "--latency-runs", "2",
                       "--latency-warmup", "1", "--no-plain", "--no-progress"]) == 0
    bench = json.loads((out / "bench.json").read_text())
    tflm, torch_run = bench["runtimes"]["tflm"], bench["runtimes"]["torch"]
    assert bench["decision_outputs"] == ["exit_0", "exit_1", "exit_2"]
    assert 0.0 < tflm["mac_ratio"] < 1.0 and tflm["mac_ratio_std"] > 0.0
    assert len(tflm["continue_rate_per_exit"]) == 3 and tflm["distinct_paths"] >= 2
    assert abs(tflm["mac_ratio"] - torch_run["mac_ratio"]) < 0.05


def test_held_out_images_stay_out_of_training_and_choose_the_exit_threshold(tmp_path, capsys):
    from cosinegate.train.cli import main as train_main
    from cosinegate.train.data import holdout_split, load_arrays
    total = len(load_arrays("digits", None, "train")[0])
    keep, held = holdout_split(total, 300)
    assert len(held) == 300 and len(keep) == total - 300 and not set(keep) & set(held)
    run = tmp_path / "held"
    args = ["--preset", "demo", "--no-gated", "--exits", "2", "--depth", "8", "--epochs", "1", "--batch-size", "64",
            "--threads", "1", "--no-progress", "--out", str(run)]
    assert train_main(args + ["--holdout", "300"]) == 0
    assert f"| {(total - 300) // 64} steps/epoch" in capsys.readouterr().out
    assert export_tiny(run / "last.pt", tmp_path / "e", "--target-macs", "0.9") == 0
    chosen = json.loads((tmp_path / "e" / "export_report.json").read_text())["deploy_threshold"]
    assert chosen["split"] == "holdout" and chosen["images"] == 300
    assert "on 300 held-out training images" in capsys.readouterr().out
    assert train_main(args[:-1] + [str(tmp_path / "all"), "--holdout", str(total)]) == 1
    assert capsys.readouterr().err.strip().endswith(f"--holdout {total} must be at least 0 and leave training "
                                                    f"images: the training split has {total}")
