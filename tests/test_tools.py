"""The small command-line tools around the pipeline: static baseline, reproduce, ablations."""
import json

import pytest
import yaml

from cosinegate.experiments.reproduce import parse_config
from cosinegate.train.config import TrainConfig, to_dict
from cosinegate.train.static_baseline import static_command


def _fake_run(folder, rates, **changes):
    folder.mkdir()
    cfg = to_dict(TrainConfig(preset="demo", dataset="digits", epochs=30, warmup_epochs=8, lr=0.05, **changes))
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 30, "exec_rate_deploy": rates}) + "\n")


def test_static_baseline_deletes_the_most_skipped_blocks(tmp_path):
    _fake_run(tmp_path / "frozen", [0, 1, 0, 1, 0, 0, 1, 1, 1])
    command = static_command(tmp_path / "frozen", tmp_path / "s")
    assert command[command.index("--removed-blocks") + 1] == "0,2,4,5"
    assert "--no-gated" in command and "--gated" not in command
    assert command[command.index("--epochs") + 1] == "30"
    # Dynamic routing: 2.2 blocks skipped per image on average -> delete the two least used.
    _fake_run(tmp_path / "dynamic", [1, 1, 1, 1, 0.48, 0.47, 1, 0.54, 0.53])
    command = static_command(tmp_path / "dynamic", tmp_path / "s2")
    assert command[command.index("--removed-blocks") + 1] == "4,5"


def test_static_baseline_refuses_a_run_whose_rates_do_not_cover_every_block(tmp_path):
    from cosinegate.train.static_baseline import BaselineError
    _fake_run(tmp_path / "some", [1, 0.5, 0.5], ungated_blocks="0,1,2,3,4,5")
    with pytest.raises(BaselineError, match="leaves some blocks ungated"):
        static_command(tmp_path / "some", tmp_path / "s")


def test_reproduce_config_specs():
    assert parse_config("balanced") == ("balanced", ["--preset", "balanced"])
    assert parse_config("dyn:balanced --gate-init open --lambda-adapt 2") == (
        "dyn", ["--preset", "balanced", "--gate-init", "open", "--lambda-adapt", "2"])


def test_reproduce_runs_configurations_in_parallel_and_resumes(tmp_path):
    from cosinegate.experiments import reproduce
    argv = ["--root", str(tmp_path), "--epochs", "3", "--warmup-epochs", "1", "--threads", "1",
            "--stop-after", "1", "--jobs", "2", "a:demo --depth 8", "b:demo --depth 8 --lambda-adapt 1"]
    assert reproduce.main(argv) == 0
    for name in ("a", "b"):
        assert len((tmp_path / name / "run" / "metrics.jsonl").read_text().splitlines()) == 1
        assert "training paused" in (tmp_path / name / "reproduce.log").read_text()
    assert yaml.safe_load((tmp_path / "b" / "run" / "config.yaml").read_text())["lambda_adapt"] == 1.0
    assert reproduce.main(argv) == 0  # the same command resumes each run: epoch 2 of 3
    for name in ("a", "b"):
        assert len((tmp_path / name / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_reproduce_fold_stage_exports_benches_then_runs_qemu_once(tmp_path, monkeypatch):
    import argparse

    from cosinegate.experiments import reproduce
    calls = []
    monkeypatch.setattr(reproduce, "_call", lambda argv, log=None: calls.append(argv))
    args = argparse.Namespace(data_dir=None, images=50, tflm_root=tmp_path / "tflm", qemu_images=2,
                              checkpoint="last")
    reproduce.fold_one(tmp_path / "a", args)
    assert calls[0][3] == str(tmp_path / "a" / "run" / "last.pt")
    assert [argv[2] for argv in calls] == ["cosinegate.export.cli", "cosinegate.bench.cli",
                                          "cosinegate.export.test_images", "cosinegate.bench.qemu"]
    assert "--fold-static-gates" in calls[0] and str(tmp_path / "a" / "export_folded") in calls[0]
    assert str(tmp_path / "a" / "bench_folded") in calls[1]
    assert str(tmp_path / "a" / "qemu_folded.json") in calls[3]
    for name in ("export_folded", "bench_folded"):
        (tmp_path / "a" / name).mkdir(parents=True)
    (tmp_path / "a" / "export_folded" / "export_report.json").write_text("{}")
    (tmp_path / "a" / "bench_folded" / "bench.json").write_text("{}")
    (tmp_path / "a" / "qemu_folded.json").write_text("{}")
    calls.clear()
    reproduce.fold_one(tmp_path / "a", args)
    assert calls == []  # finished stages are skipped


@pytest.mark.slow
def test_step_profile_times_plain_and_gated_steps(capsys):
    from cosinegate.train.step_profile import main as profile_main
    assert profile_main(["--depth", "8", "--batch", "16", "--steps", "2", "--burn-in", "1",
                         "--threads", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("step_profile: ") and "threads 1" in out and "data loader" in out
    for kind in ("plain", "gated"):
        line = next(line for line in out.splitlines() if line.strip().startswith(kind))
        assert "eager" in line and float(line.split(":")[1].split("ms/step")[0]) > 0
    ratio = next(line for line in out.splitlines() if line.strip().startswith("ratio"))
    assert float(ratio.split(":")[1].split("x")[0]) > 0


def test_prune_search_ranks_every_deletion_of_a_plain_net(tmp_path, capsys):
    from cosinegate.train.cli import main as train_main
    from cosinegate.train.prune_search import main, rank
    run = tmp_path / "plain"
    assert train_main(["--preset", "demo", "--no-gated", "--depth", "8", "--epochs", "1", "--warmup-epochs", "0",
                       "--threads", "1", "--no-progress", "--out", str(run)]) == 0
    # A ResNet-8 has one block a stage; only the first keeps an identity shortcut.
    assert [r["removed"] for r in rank(run / "last.pt", 1, None, 100, 200, progress=False)] == [[0]]
    ranked = rank(run / "last.pt", 1, None, 100, 200, include_downsampling=True, progress=False)
    assert sorted(r["removed"] for r in ranked) == [[0], [1], [2]]
    assert [r["accuracy"] for r in ranked] == sorted((r["accuracy"] for r in ranked), reverse=True)
    assert all(0 < r["mac_ratio"] < 1 for r in ranked)
    assert main([str(run / "last.pt"), "--delete", "2", "--include-downsampling", "--calibration", "100",
                 "--images", "200", "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    table = out[next(i for i, line in enumerate(out) if line.startswith("| deleted blocks")):]
    best = table[2].split("|")[1].strip()
    assert table[-1].endswith(f"--removed-blocks {best}") and len(table) == 2 + 3 + 1


def test_controllers_names_dead_units_and_a_gate_that_decides_once_for_every_image(tiny_run, tmp_path, capsys):
    from cosinegate.train import checkpoint
    from cosinegate.train.controllers import main
    assert main([str(tiny_run / "last.pt"), "--images", "200"]) == 0
    out = capsys.readouterr().out.splitlines()
    gated = checkpoint.build_model(checkpoint.load(tiny_run / "last.pt")).gated_indices
    assert out[0].startswith("controllers:") and [line.split(":")[0] for line in out[1:]] == [f"block {i}" for i in gated]
    state = checkpoint.load(tiny_run / "last.pt")
    block = gated[0]
    state["model"][f"blocks.{block}.controller.fc1.weight"].fill_(-1.0)
    state["model"][f"blocks.{block}.controller.fc1.bias"].fill_(-1.0)
    checkpoint.save(tmp_path / "dead.pt", state)
    assert main([str(tmp_path / "dead.pt"), "--images", "200"]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    hidden = checkpoint.build_model(state).blocks[block].controller.fc1.out_features
    assert line.startswith(f"block {block}: {hidden} of {hidden} hidden units dead") and "logit std 0 " in line
    assert "one decision for every image" in line and ("on for 0.0 %" in line or "on for 100.0 %" in line)


def test_the_pushes_of_the_loss_terms_add_up_to_one_sgd_step_on_each_controller_unit(tiny_run):
    """Split among the terms, a step's change to every hidden unit's pre-activation is whole."""
    import torch
    from cosinegate.train import checkpoint
    from cosinegate.train.config import from_dict
    from cosinegate.train.controller_pushes import step_pushes
    from cosinegate.train.data import dataset_info, load_arrays, normalize
    from cosinegate.train.trainer import loss_terms, term_weights, total_loss
    torch.manual_seed(0)
    state = checkpoint.load(tiny_run / "last.pt")
    model, cfg = checkpoint.build_model(state).train(), from_dict(state["config"])
    x, y = load_arrays("digits", None, "train")
    x, y = normalize(x[:64], dataset_info("digits")), torch.as_tensor(y[:64]).long()
    controllers = {i: model.blocks[i].controller for i in model.gated_indices}
    pooled = {}
    for i, ctrl in controllers.items():
        ctrl.register_forward_pre_hook(lambda module, args, i=i: pooled.__setitem__(i, args[0].mean(dim=(2, 3))))
    logits, stats, exit_logits = model(x, "relaxed_deploy", 0.5, with_exits=True)
    terms = loss_terms(cfg, logits, stats, y, 1.0, "relaxed_deploy", None, exit_logits)
    pushes = step_pushes(terms, term_weights(cfg), controllers, pooled, 0.05, 5e-4)
    assert {"ce", "flops", "weight_decay"} <= set(pushes[model.gated_indices[0]])
    before = {i: c.fc1(pooled[i].mean(0)).detach() for i, c in controllers.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    total_loss(cfg, terms).backward()
    optimizer.step()  # the first step: momentum has nothing to carry yet
    for i, ctrl in controllers.items():
        change = ctrl.fc1(pooled[i].mean(0)).detach() - before[i]
        assert change.abs().max() > 0
        assert torch.allclose(sum(pushes[i].values()), change, atol=1e-6), (i, change)


def test_controller_pushes_reports_every_unit_and_writes_json(tiny_run, tmp_path, capsys):
    from cosinegate.train import checkpoint
    from cosinegate.train.controller_pushes import main
    assert main([str(tiny_run / "last.pt"), "--steps", "3", "--every", "2", "--threads", "1", "--no-progress",
                 "--out", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    model = checkpoint.build_model(checkpoint.load(tiny_run / "last.pt"))
    units = sum(model.blocks[i].controller.fc1.out_features for i in model.gated_indices)
    assert out[0].startswith("controller_pushes:")
    assert sum(line.startswith("  unit ") for line in out) == units
    assert [line.split(":")[0] for line in out if line.startswith("block ")] == [f"block {i}" for i in model.gated_indices]
    result = json.loads((tmp_path / "p.json").read_text())
    assert [b["block"] for b in result["blocks"]] == model.gated_indices
    assert all([s for s, _ in b["dead"]] == [2, 3] for b in result["blocks"])


def test_skip_headroom_finds_a_block_that_adds_nothing_skippable_for_every_image(tiny_run, tmp_path, capsys):
    from cosinegate.train import checkpoint
    from cosinegate.train.skip_headroom import main
    state = checkpoint.load(tiny_run / "last.pt")
    model = checkpoint.build_model(state)
    idle = model.gated_indices[0]
    for name in ("weight", "bias"):  # its residual branch ends in a BatchNorm that now outputs zero
        state["model"][f"blocks.{idle}.bn2.{name}"].zero_()
    checkpoint.save(tmp_path / "idle.pt", state)
    assert main([str(tmp_path / "idle.pt"), "--images", "300", "--threads", "1", "--no-progress",
                 "--out", str(tmp_path / "h.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("skip headroom:") and "600 training images" in out[0]
    assert [line.split(" (")[0] for line in out[1:]] == [f"block {i}" for i in range(len(model.blocks))]
    report = json.loads((tmp_path / "h.json").read_text())
    rows = {r["block"]: r for r in report["blocks"]}
    assert rows[idle]["unchanged"] == 1.0 and rows[idle]["accuracy_left_out"] == report["accuracy"]
    assert rows[idle]["probe_auc"] is None and rows[idle]["gate_auc"] is None  # no image to tell apart
    assert min(r["unchanged"] for r in rows.values()) < 1.0  # the other blocks do change answers
    assert all(("gate_auc" in r) == r["gated"] for r in rows.values())
    assert abs(sum(r["mac_share"] for r in rows.values()) - 1.0) < 0.05  # the stem and head are the rest


@pytest.mark.parametrize("argv,message", [(["--images", "1"], "--images must be >= 2"),
                                          (["--threads", "0"], "--threads must be 1..1024"),
                                          (["--threads", "100000"], "--threads must be 1..1024"),
                                          (["--out", "."], "Is a directory")])
def test_skip_headroom_refuses_bad_arguments_in_one_line(tiny_run, argv, message, capsys):
    from cosinegate.train.skip_headroom import main
    assert main([str(tiny_run / "last.pt"), *argv]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
