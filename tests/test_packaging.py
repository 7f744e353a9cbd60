"""The namespace mapping survives both an editable and a regular install (STYLE.md section 1), and
the wheel holds every package, the presets and the firmware sources, and no build output."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"cosinegate.train": "train", "cosinegate.export": "export", "cosinegate.bench": "bench",
           "cosinegate.experiments": "experiments", "cosinegate.firmware": "firmware"}
SUBPACKAGES = ["cosinegate", *FOLDERS]
FIRMWARE_SOURCES = ("core/main_functions.cc", "core/main_functions.h", "cmake/arm-none-eabi.cmake",
                    "cmake/cosinegate_core.cmake", "ports/qemu/CMakeLists.txt", "ports/qemu/qemu_sections.ld",
                    "ports/qemu/mps2_an386.ld", "ports/qemu/mps2_an500.ld", "ports/qemu/mps2_an505.ld",
                    "ports/qemu/mps3_an547.ld",
                    "ports/qemu/plugin/cg_insn_count.c", "ports/esp32s3/sdkconfig.defaults",
                    "ports/esp32s3/main/idf_component.yml", "README.md")


def test_editable_install_maps_folders():
    import importlib
    for package, folder in FOLDERS.items():
        assert Path(importlib.import_module(package).__file__).parent == ROOT / folder


def test_every_firmware_file_in_git_is_package_data():
    """A new kind of firmware file needs its pattern in pyproject.toml, or the wheel lacks it."""
    import tomllib
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "cosinegate.firmware"]
    tracked = subprocess.run(["git", "ls-files", "firmware"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    shipped = {p.relative_to(ROOT / "firmware").as_posix() for pattern in patterns
               for p in (ROOT / "firmware").glob(pattern)}
    assert {t.removeprefix("firmware/") for t in tracked} - {"__init__.py"} <= shipped


@pytest.mark.slow
def test_regular_install_imports_every_subpackage(tmp_path):
    # Build from a clean copy: an in-tree build/ would keep deleted modules and land in the wheel.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "runs", "*.egg-info",
                                                                "__pycache__", ".pytest_cache", "results", "models"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(source)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("cosinegate_edge-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("cosinegate/train/model.py", "cosinegate/train/presets/demo.yaml",
                     "cosinegate/export/__init__.py", "cosinegate/bench/__init__.py",
                     "cosinegate/experiments/results.py", "cosinegate/train/step_profile.py",
                     *(f"cosinegate/firmware/{f}" for f in FIRMWARE_SOURCES)):
        assert expected in names
    assert not [n for n in names if "/build" in n or n.endswith((".o", ".elf", ".so"))]
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import importlib, sys; sys.path.insert(0, sys.argv[1]); "
            f"mods = [importlib.import_module(m) for m in {SUBPACKAGES!r}]; "
            "assert all(m.__file__.startswith(sys.argv[1]) for m in mods), [m.__file__ for m in mods]; "
            "from cosinegate.train.config import presets; assert 'demo' in presets(); "
            "from cosinegate.bench import qemu; assert str(qemu.FIRMWARE_DIR).startswith(sys.argv[1]); "
            "assert (qemu.QEMU_PORT_DIR / 'CMakeLists.txt').is_file() and qemu.PLUGIN_SOURCE.is_file()")
    done = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
