"""The compute knob: one deploy threshold chosen on training images to meet a mean-MAC target."""
import json

import pytest
import torch

from cosinegate.export import compute_target as CT
from cosinegate.export.parity import float_inputs
from cosinegate.train import checkpoint
from cosinegate.train.data import dataset_info
from conftest import export_tiny


@pytest.fixture(scope="module")
def tiny_model_and_images(tiny_ckpt):
    model = checkpoint.build_model(checkpoint.load(tiny_ckpt))
    images = CT.training_images("digits", None, 400)[0]
    return model, torch.from_numpy(float_inputs(images, dataset_info("digits")))


def _reachable(model, x):
    most = CT.mac_ratios(model, x, 1e-5).mean().item()
    least = CT.mac_ratios(model, x, 1 - 1e-5).mean().item()
    return least, most


def test_chosen_threshold_meets_the_target_and_is_the_lowest_that_does(tiny_model_and_images):
    model, x = tiny_model_and_images
    least, most = _reachable(model, x)
    assert least < most  # the knob has a range to choose from
    for target in (least + 0.25 * (most - least), least + 0.75 * (most - least)):
        choice = CT.threshold_for_target(model, x, target)
        assert choice.mac_ratio <= target and choice.images == len(x)
        assert all(b.deploy_threshold == choice.threshold for b in model.blocks if b.gated)
        # a visibly lower threshold (more compute) overshoots: the choice sits at the boundary
        lower = torch.sigmoid(torch.logit(torch.tensor(choice.threshold, dtype=torch.float64)) - 0.05).item()
        assert CT.mac_ratios(model, x, lower).mean().item() > target or lower < 1e-5


def test_a_higher_target_never_gets_a_higher_threshold(tiny_model_and_images):
    model, x = tiny_model_and_images
    least, most = _reachable(model, x)
    low = CT.threshold_for_target(model, x, least + 0.3 * (most - least))
    high = CT.threshold_for_target(model, x, least + 0.9 * (most - least))
    assert high.threshold <= low.threshold and high.mac_ratio >= low.mac_ratio


def test_unreachable_or_meaningless_targets_are_refused(tiny_model_and_images):
    model, x = tiny_model_and_images
    least, _ = _reachable(model, x)
    with pytest.raises(CT.ComputeTargetError, match="below the least this model executes"):
        CT.threshold_for_target(model, x, least / 2)
    with pytest.raises(CT.ComputeTargetError, match=r"\(0, 1\]"):
        CT.threshold_for_target(model, x, 1.5)


@pytest.mark.slow
def test_cg_export_target_macs_folds_the_threshold_and_keeps_parity(tiny_ckpt, tiny_model_and_images, tmp_path):
    model, x = tiny_model_and_images
    least, most = _reachable(model, x)
    target = round(least + 0.5 * (most - least), 4)
    out = tmp_path / "knob"
    assert export_tiny(tiny_ckpt, out, "--target-macs", str(target), "--threshold-images", "400") == 0
    report = json.loads((out / "export_report.json").read_text())
    chosen = report["deploy_threshold"]
    assert chosen["source"] == "--target-macs" and chosen["split"] == "train"
    assert chosen["mac_ratio"] <= target and chosen["images"] == 400
    assert chosen["threshold"] == CT.threshold_for_target(model, x, target).threshold
    parity = report["parity"]
    assert parity["onnx_vs_pytorch"]["gates_identical"]          # PyTorch runs the moved threshold too
    assert parity["tflm_vs_tflite_ref"]["gate_agreement"] == 1.0


@pytest.mark.parametrize("argv,message", [
    (["--target-macs", "0"], "--target-macs is a fraction"),
    (["--target-macs", "1.5"], "--target-macs is a fraction"),
    (["--gate-threshold", "1"], "--gate-threshold must lie"),
    (["--target-macs", "0.5", "--threshold-images", "0"], "--threshold-images must be at least 1"),
])
def test_bad_knob_values_give_one_line(tiny_ckpt, tmp_path, capsys, argv, message):
    from cosinegate.export import cli
    assert cli.main([str(tiny_ckpt), "--out", str(tmp_path / "o"), *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cg-export: error:") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_target_below_reach_stops_the_export_with_one_line(tiny_ckpt, tmp_path, capsys):
    from cosinegate.export import cli
    assert cli.main([str(tiny_ckpt), "--out", str(tmp_path / "o"), "--target-macs", "0.001",
                     "--threshold-images", "100", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cg-export: error:") and "below the least" in err and "\n" not in err


@pytest.mark.slow
def test_sweep_draws_int8_accuracy_against_compute_and_continues(tiny_ckpt, tiny_model_and_images, tmp_path, capsys):
    from cosinegate.bench import sweep
    model, x = tiny_model_and_images
    least, most = _reachable(model, x)
    targets = [round(least + 0.5 * (most - least), 3)]
    argv = [str(tiny_ckpt), "--targets", ",".join(map(str, targets)), "--out", str(tmp_path / "s"),
            "--images", "150", "--parity-images", "60", "--no-progress"]
    assert sweep.main(argv) == 0
    assert "it/s" not in capsys.readouterr().err  # --no-progress: no bars in a log
    result = json.loads((tmp_path / "s" / "sweep.json").read_text())
    points = result["points"]
    assert set(points) == {"paper", *(f"{t:.3f}" for t in targets)}
    for name, point in points.items():
        assert len(point["correct"]) == 150 and point["correct"].count("1") == round(150 * point["accuracy"])
        if name != "paper":  # chosen on training images, measured on test images: close, not equal
            assert point["threshold"]["mac_ratio"] <= point["target_mac_ratio"]
            assert abs(point["mac_ratio"] - point["target_mac_ratio"]) < 0.25
    assert (tmp_path / "s" / "sweep.png").stat().st_size > 1000
    capsys.readouterr()
    assert sweep.main(argv) == 0  # everything already measured: nothing is exported again
    assert "threshold" not in capsys.readouterr().out


def test_sweep_refuses_bad_targets_and_a_plain_net(tmp_path, capsys):
    from cosinegate.bench import sweep
    with pytest.raises(SystemExit):
        sweep.build_parser().parse_args(["x.pt", "--targets", "0.5,2", "--out", str(tmp_path)])
    assert "--targets are fractions" in capsys.readouterr().err
