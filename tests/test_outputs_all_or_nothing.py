"""Commands that write several files, or run other commands as steps, fail as a whole.

Each case sets up a folder holding earlier outputs and something in the way (a folder where a file
goes, a file where a folder goes, a field a reader lacks, a step that fails) and runs the command.
It must exit non-zero with exactly one stderr line, `PROG: error: ...`, and no traceback; every file
under the case's folder keeps its sha256, and no file or folder appears.
"""
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from cosinegate import atomic
from cosinegate.export import integrity

PUBLISHED = Path(__file__).resolve().parents[1] / "models" / "demo-digits-resnet20"


def _tree(root: Path) -> dict:
    """Every entry under `root`: {relative path: sha256 of a file, "folder", or a link's target}."""
    tree = {}
    for folder, names, files in os.walk(root):
        for name in names + files:
            path = Path(folder) / name
            key = path.relative_to(root).as_posix()
            if path.is_symlink():
                tree[key] = "-> " + os.readlink(path)
            elif path.is_dir():
                tree[key] = "folder"
            else:
                tree[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return tree


def _one_error_line(err: str, prog: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    assert "Traceback" not in err and "internal error" not in err, err
    return lines[0]


def _run(module: str, argv: list[str], capture) -> tuple[int, str]:
    import importlib
    capture.readouterr()
    code = importlib.import_module(module).main(argv)
    return code, capture.readouterr().err


def _sealed_export(folder: Path, edit=None) -> Path:
    """An int8 export of the published demo model in `folder`, its report sealed for that folder."""
    folder.mkdir(parents=True)
    shutil.copy(PUBLISHED / "model_int8.tflite", folder)
    report = json.loads((PUBLISHED / "export_report.json").read_text())
    if edit:
        edit(report)
    (folder / integrity.REPORT).write_text(json.dumps(integrity.seal(report, folder)))
    return folder


def test_carray_with_a_folder_in_the_way_keeps_the_earlier_sources(tmp_path, capsys):
    export = _sealed_export(tmp_path / "export")
    out = tmp_path / "port"
    (out / "model_settings.h").mkdir(parents=True)
    (out / "model_data.cc").write_text("an earlier model's bytes")
    before = _tree(tmp_path)
    code, err = _run("cosinegate.export.carray", [str(export), "--out", str(out)], capsys)
    line = _one_error_line(err, "carray")
    assert code == 1 and str(out / "model_settings.h") in line and atomic.TMP_MARK not in line
    assert _tree(tmp_path) == before


def test_carray_failing_leaves_no_new_out_folder(tmp_path, capsys):
    export = _sealed_export(tmp_path / "export", lambda r: r["tflm_ops"].append("not an op"))
    before = _tree(tmp_path)
    code, err = _run("cosinegate.export.carray", [str(export), "--out", str(tmp_path / "new" / "port")], capsys)
    assert code == 1 and "op name" in _one_error_line(err, "carray")
    assert _tree(tmp_path) == before


def test_test_images_with_a_folder_in_the_way_keeps_the_earlier_header(tmp_path, capsys):
    export = _sealed_export(tmp_path / "export")
    out = tmp_path / "images"
    (out / "test_images.cc").mkdir(parents=True)
    (out / "test_images.h").write_text("an earlier header")
    before = _tree(tmp_path)
    code, err = _run("cosinegate.export.test_images", [str(export), "--count", "2", "--out", str(out)], capsys)
    assert code == 1 and str(out / "test_images.cc") in _one_error_line(err, "test_images")
    assert _tree(tmp_path) == before


INT8_FIGURES = {"accuracy": 0.9, "mac_ratio": 0.5, "skip_rate": 0.3, "adaptivity": 1.0, "distinct_paths": 3,
                "mac_ratio_std": 0.1}


@pytest.mark.parametrize("int8, manifest", [
    ({k: v for k, v in INT8_FIGURES.items() if k != "skip_rate"}, json.dumps({"models": [{"name": "demo"}]})),
    (INT8_FIGURES, '{"models": ['),
], ids=["bench_without_skip_rate", "manifest_not_json"])
def test_publish_reads_everything_before_replacing_a_published_model(int8, manifest, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(PUBLISHED / "model.pt", run / "best.pt")
    export = _sealed_export(tmp_path / "export", lambda r: r["checkpoint"].update(path=str(run / "best.pt")))
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "bench.json").write_text(json.dumps({"runtimes": {"tflite_int8": int8}}))
    models = tmp_path / "models"
    (models / "demo").mkdir(parents=True)
    for name in ("model.pt", "model_int8.tflite", "export_report.json"):
        (models / "demo" / name).write_text(f"the published {name}")
    (models / "manifest.json").write_text(manifest)
    before = _tree(tmp_path)
    code, err = _run("cosinegate.experiments.publish",
                     ["--name", "demo", "--run", str(run), "--export", str(export), "--bench", str(bench),
                      "--command", "cg-demo", "--models", str(models)], capsys)
    assert code == 1
    _one_error_line(err, "python -m cosinegate.experiments.publish")
    assert _tree(tmp_path) == before


def test_archive_with_a_file_where_a_run_goes_copies_nothing(tmp_path, capsys):
    for name in ("A", "B"):
        (tmp_path / "runs" / name / "run").mkdir(parents=True)
        (tmp_path / "runs" / name / "run" / "config.yaml").write_text("epochs: 1\n")
        (tmp_path / "runs" / name / "run" / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "B").write_text("not a folder")
    before = _tree(tmp_path)
    code, err = _run("cosinegate.experiments.archive", [str(tmp_path / "runs"), str(tmp_path / "kept")], capsys)
    assert code == 1 and str(tmp_path / "kept" / "B") in _one_error_line(err, "archive")
    assert _tree(tmp_path) == before


def test_write_all_puts_back_what_it_replaced_when_a_rename_fails(tmp_path, monkeypatch):
    targets = [tmp_path / "a.h", tmp_path / "b.h", tmp_path / "new" / "c.h"]
    targets[0].write_text("old a")
    targets[1].write_text("old b")
    before = _tree(tmp_path)
    replace = os.replace

    def fail_at_c(source, target):
        if Path(target).name == "c.h":
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(target))
        replace(source, target)
    monkeypatch.setattr(os, "replace", fail_at_c)
    with pytest.raises(OSError, match="Input/output error"):
        atomic.write_all({path: f"new {path.name}" for path in targets})
    assert _tree(tmp_path) == before
    monkeypatch.undo()
    atomic.write_all({path: f"new {path.name}" for path in targets})
    assert [path.read_text() for path in targets] == ["new a.h", "new b.h", "new c.h"]
    assert not [p for p in tmp_path.rglob("*") if atomic.TMP_MARK in p.name]


@pytest.mark.parametrize("root_exists", [True, False], ids=["root", "no_root"])
def test_reproduce_quotes_the_failing_stage_and_records_no_command(root_exists, tmp_path, capfd):
    root = tmp_path / "runs"
    if root_exists:
        root.mkdir()
        (root / "notes.txt").write_text("kept")
    before = _tree(tmp_path)
    code, err = _run("cosinegate.experiments.reproduce", ["--root", str(root), "bogus"], capfd)
    line = _one_error_line(err, "python -m cosinegate.experiments.reproduce")
    assert code == 1 and "bogus: cg-train: unknown preset 'bogus'" in line
    assert _tree(tmp_path) == before


def test_ablations_quotes_the_failing_training(tmp_path, capfd):
    before = _tree(tmp_path)
    code, err = _run("cosinegate.experiments.ablations",
                     ["--out", str(tmp_path / "ablations"), "--preset", "bogus", "--only", "plain"], capfd)
    line = _one_error_line(err, "python -m cosinegate.experiments.ablations")
    assert code == 1 and f"training {tmp_path / 'ablations' / 'plain'}: cg-train: unknown preset" in line
    assert _tree(tmp_path) == before


def test_demo_quotes_the_failing_step_in_its_own_line(tmp_path, capsys):
    (tmp_path / "demo").write_text("a file, not a folder")
    before = _tree(tmp_path)
    code, err = _run("cosinegate.bench.demo", ["--out", str(tmp_path / "demo"), "--no-progress"], capsys)
    line = _one_error_line(err, "cg-demo")
    assert code == 1 and line.startswith("cg-demo: error: train step: cg-train: Not a directory")
    assert _tree(tmp_path) == before


def test_qemu_looks_for_the_tflm_library_before_building(tmp_path, capsys):
    export = _sealed_export(tmp_path / "export")
    before = _tree(tmp_path)
    code, err = _run("cosinegate.bench.qemu", [str(export), "--tflm-root", str(tmp_path / "no-tflm"),
                                               "--build-dir", str(tmp_path / "build")], capsys)
    assert code == 1 and "no reference TFLM library" in _one_error_line(err, "qemu")
    assert _tree(tmp_path) == before


@pytest.mark.skipif(not (shutil.which("cmake") and shutil.which("arm-none-eabi-g++")),
                    reason="needs cmake and the arm-none-eabi toolchain")
def test_stm32f4_configure_failure_says_cmakes_reason(tmp_path, capsys):
    export = _sealed_export(tmp_path / "export")  # the report and model only: no model_settings.h
    library = tmp_path / "tflm" / "gen" / "cortex_m_generic_cortex-m4+fp_default_cmsis_nn_gcc" / "lib"
    library.mkdir(parents=True)
    (library / "libtensorflow-microlite.a").write_bytes(b"")
    code, err = _run("cosinegate.bench.stm32f4", [str(export), "--tflm-root", str(tmp_path / "tflm"),
                                                  "--build-dir", str(tmp_path / "build")], capsys)
    line = _one_error_line(err, "stm32f4")
    assert code == 1 and line.startswith("stm32f4: error: cmake configure failed: ") and "no model_settings.h" in line
