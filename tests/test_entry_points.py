"""Every entry point explains itself (each console script and each `python -m` tool answers
--help) and ends any failure in one line (its main is wrapped by errors.command)."""
import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
# Every module with a command line (`if __name__ == "__main__"`), except the arena-sizing helper
# process that export.tflm starts for itself.
MODULES = sorted(
    f"cosinegate.{package}.{path.stem}"
    for package in ("train", "export", "bench", "experiments")
    for path in (ROOT / package).glob("*.py")
    if 'if __name__ == "__main__"' in path.read_text() and path.stem != "tflm")


def _help(main, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_answers_help(script, capsys):
    module, function = SCRIPTS[script].split(":")
    out = _help(getattr(importlib.import_module(module), function), capsys)
    assert out.startswith(f"usage: {script}")


@pytest.mark.parametrize("module", MODULES)
def test_python_m_tool_answers_help(module, capsys):
    assert len(MODULES) >= 10  # the discovery above found the tools
    out = _help(importlib.import_module(module).main, capsys)
    assert out.startswith("usage: ") and "-h, --help" in out


@pytest.mark.parametrize("module", sorted({*MODULES, *(target.split(":")[0] for target in SCRIPTS.values())}))
def test_every_command_ends_a_failure_in_one_line(module):
    assert hasattr(importlib.import_module(module).main, "__wrapped__")  # set by errors.command
