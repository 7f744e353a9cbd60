"""A bare int8 .tflite classifier evaluated without an export report."""
import json

import numpy as np
import pytest

from cosinegate.bench import classifier
from cosinegate.export import parity
from cosinegate.train import checkpoint
from cosinegate.train.data import dataset_info, load_arrays
from conftest import export_tiny

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plain_export(tiny_ckpt, tmp_path_factory):
    """A plain ResNet-8 on digits exported as int8: one input, one output, like any classifier."""
    from cosinegate.train.model import CosineGateResNet, ModelConfig
    ckpt = checkpoint.load(tiny_ckpt)
    cfg = ModelConfig(**{**ckpt["model_config"], "gated": False})
    state = {k: v for k, v in ckpt.items() if k not in ("kind", "format", "version")}
    state.update(config={**ckpt["config"], "gated": False}, model_config=vars(cfg),
                 model=CosineGateResNet(cfg).eval().state_dict())
    folder = tmp_path_factory.mktemp("plain")
    checkpoint.save(folder / "plain.pt", state)
    assert export_tiny(folder / "plain.pt", folder / "export") == 0
    return folder / "export"


def test_bare_model_gives_the_same_predictions_and_macs_as_its_export(plain_export, tmp_path):
    report = json.loads((plain_export / "export_report.json").read_text())
    model = plain_export / "model_int8.tflite"
    assert classifier.main([str(model), "--dataset", "digits", "--preprocess", "normalized",
                            "--images", "100", "--out", str(tmp_path), "--no-progress"]) == 0
    result = json.loads((tmp_path / "classifier.json").read_text())
    assert result["macs"] == report["macs_plain"]  # counted from the graph, equal to the model's formula
    images, labels = load_arrays("digits", None, "test")
    x = parity.float_inputs(images[:100], dataset_info("digits"))
    xq = parity.quantize_inputs(x, report["input"]["scale"], report["input"]["zero_point"])
    runner = parity.TfliteRunner(model.read_bytes(), [])
    expected = [runner(xq[i:i + 1])[0].argmax() == labels[i] for i in range(100)]
    assert result["correct"] == "".join("1" if c else "0" for c in expected)
    assert result["accuracy"] == np.mean(expected)


def test_raw_preprocessing_feeds_pixels_as_they_are():
    images = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    assert np.array_equal(classifier.preprocess(images, "cifar10", "raw"), images.astype(np.float64))
    normalized = classifier.preprocess(images, "cifar10", "normalized")
    assert normalized.shape == images.shape and normalized.max() < 0  # dark pixels sit below the mean


@pytest.mark.parametrize("payload,message", [(b"", "is empty"), (b"\x00" * 64, "not a usable TFLite model")])
def test_broken_models_give_one_line(tmp_path, capsys, payload, message):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(payload)
    assert classifier.main([str(bad), "--dataset", "digits", "--preprocess", "raw",
                            "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cg-classifier: error:") and message in err and "\n" not in err


def test_missing_dataset_gives_one_line(plain_export, tmp_path, capsys):
    assert classifier.main([str(plain_export / "model_int8.tflite"), "--dataset", "cifar10", "--data-dir",
                            str(tmp_path), "--preprocess", "raw", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cg-classifier: error:") and "not found" in err and "\n" not in err
