"""Shared fixtures: one tiny trained checkpoint, one int8 export and one bench of it per test session.

ResNet-8 on scikit-learn's digits (3 gated blocks), 2 epochs: seconds on 2 CPU cores.
"""
import json

import pytest

EXPORT_PARITY_IMAGES = 120
EXPORT_CALIBRATION_IMAGES = 120


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    from cosinegate.train.cli import main as train_main
    run = tmp_path_factory.mktemp("tiny_run")
    assert train_main(["--preset", "demo", "--out", str(run), "--depth", "8", "--epochs", "2",
                       "--warmup-epochs", "1", "--threads", "1", "--no-progress"]) == 0
    return run


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_run):
    return tiny_run / "last.pt"


def export_tiny(ckpt, out, *extra) -> int:
    from cosinegate.export import cli
    return cli.main([str(ckpt), "--int8", "--out", str(out), "--parity-images", str(EXPORT_PARITY_IMAGES),
                     "--calibration-images", str(EXPORT_CALIBRATION_IMAGES), "--no-progress", *extra])


@pytest.fixture(scope="session")
def tiny_export(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny"
    assert export_tiny(tiny_ckpt, out) == 0
    return out


@pytest.fixture(scope="session")
def bench_dir(tiny_export, tmp_path_factory):
    from cosinegate.bench.cli import main as bench_main
    out = tmp_path_factory.mktemp("bench_out") / "b"
    assert bench_main([str(tiny_export), "--out", str(out), "--images", "60", "--latency-runs", "5",
                       "--latency-warmup", "1", "--no-progress"]) == 0
    return out


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
