"""The models published under models/ load, match their manifest entry, and hold real IF ops."""
import json
from pathlib import Path

import pytest

from cosinegate.train import checkpoint

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = json.loads((ROOT / "models" / "manifest.json").read_text())["models"]


@pytest.mark.parametrize("entry", MANIFEST, ids=[m["name"] for m in MANIFEST])
def test_manifest_entry(entry):
    for key in ("name", "dataset", "preset", "depth", "epochs", "test_acc_deploy_int8",
                "mac_ratio_deploy", "paths", "command"):
        assert key in entry
    for path in entry["paths"].values():
        assert (ROOT / path).is_file(), path
    ckpt = checkpoint.load(ROOT / entry["paths"]["model.pt"])
    model = checkpoint.build_model(ckpt)
    assert ckpt["config"]["dataset"] == entry["dataset"] and ckpt["config"]["depth"] == entry["depth"]
    report = json.loads((ROOT / entry["paths"]["export_report.json"]).read_text())
    assert report["gated_blocks"] == len(model.gated_indices)
    from cosinegate.export.restructure import builtin_code, builtin_names, read_model
    tflite = read_model((ROOT / entry["paths"]["model_int8.tflite"]).read_bytes())
    names = builtin_names()
    # every subgraph: an exit's then-branch holds the rest of the network, its gates' and deeper exits' IFs too
    ops = [names[builtin_code(tflite.operatorCodes[op.opcodeIndex])] for g in tflite.subgraphs for op in g.operators]
    folded = report.get("folded_gates") or {}  # gates proven constant have no IF
    folded_count = sum(len(v) for v in folded.values())  # an unfolded export lists none
    exits = len(report.get("exit_blocks", []))
    assert ops.count("IF") == report["gated_blocks"] - folded_count + exits
    if folded_count:
        assert report["parity"]["folded_vs_gated"]["bit_exact_fraction"] == 1.0
    assert 0 < entry["test_acc_deploy_int8"] <= 1 and 0 < entry["mac_ratio_deploy"] <= 1.01


def test_published_warm_start_names_a_published_source():
    """A warm-started model's source is published too, and starts a gated network as cg-train would."""
    from cosinegate.train.model import CosineGateResNet
    warm = [m for m in MANIFEST if checkpoint.load(ROOT / m["paths"]["model.pt"])["config"].get("init_from")]
    assert warm, "no published warm start"
    for entry in warm:
        ckpt = checkpoint.load(ROOT / entry["paths"]["model.pt"])
        source = next(m for m in MANIFEST if m is not entry and m["paths"]["model.pt"] in entry["command"])
        model = CosineGateResNet(checkpoint.build_model(ckpt).cfg)
        assert checkpoint.load_backbone(model, ROOT / source["paths"]["model.pt"])[0] > 0


def test_results_md_is_regenerated_from_the_archive(monkeypatch):
    """RESULTS.md is exactly what `experiments.results` makes of the committed results/cifar10 archive,
    so every number in it can be rebuilt on a fresh clone (and a stale table fails here)."""
    from cosinegate.experiments import results
    from cosinegate.experiments import rows as R
    archive, plots = Path("results/cifar10"), Path("docs/results")
    earlier = plots / "earlier" / "RESULTS.md"
    monkeypatch.chdir(ROOT)  # the table links plots by paths relative to the repository
    outside = Path("results/outside")
    text = results.render(results.collect(archive), archive, plots / "pareto.png",
                          earlier if earlier.is_file() else None, R.collect_outside(outside), outside)
    assert text == (ROOT / "RESULTS.md").read_text()


def test_a_published_checkpoint_exports_to_its_published_int8_model(tmp_path):
    """The published folders hold no ONNX or firmware sources: cg-export of model.pt makes them,
    with the very int8 model that was published (the demo's export used the default options)."""
    from cosinegate.export import cli
    published = ROOT / "models" / "demo-digits-resnet20"
    out = tmp_path / "export"
    assert cli.main([str(published / "model.pt"), "--int8", "--out", str(out), "--no-progress"]) == 0
    assert (out / "model_int8.tflite").read_bytes() == (published / "model_int8.tflite").read_bytes()
    assert (out / "model.onnx").is_file() and (out / "model_data.cc").is_file()
