"""The namespace mapping survives both an editable and a regular install (STYLE.md section 1)."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ["cosinegate", "cosinegate.train", "cosinegate.export", "cosinegate.bench"]


def test_editable_install_maps_folders():
    import cosinegate.bench
    import cosinegate.export
    import cosinegate.train
    assert Path(cosinegate.train.__file__).parent == ROOT / "train"
    assert Path(cosinegate.export.__file__).parent == ROOT / "export"
    assert Path(cosinegate.bench.__file__).parent == ROOT / "bench"


@pytest.mark.slow
def test_regular_install_imports_every_subpackage(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("cosinegate_edge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("cosinegate/train/model.py", "cosinegate/train/presets/demo.yaml",
                     "cosinegate/export/__init__.py", "cosinegate/bench/__init__.py"):
        assert expected in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import importlib, sys; sys.path.insert(0, sys.argv[1]); "
            f"mods = [importlib.import_module(m) for m in {SUBPACKAGES!r}]; "
            "assert all(m.__file__.startswith(sys.argv[1]) for m in mods), [m.__file__ for m in mods]; "
            "from cosinegate.train.config import presets; assert 'demo' in presets()")
    subprocess.run([sys.executable, "-c", code, str(target)], check=True, cwd=tmp_path,
                   capture_output=True)
