"""Shared fixtures: one tiny trained checkpoint, one int8 export and one bench of it per test session.

ResNet-8 on scikit-learn's digits (3 gated blocks), 2 epochs: seconds on 2 CPU cores.
"""
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
