"""Every entry point explains itself (each console script and each `python -m` tool answers
--help) and ends any failure in one line (its main is wrapped by errors.command), Ctrl-C and
SIGTERM included."""
import importlib
import signal
import subprocess
import sys
import threading
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


@pytest.fixture
def ctrl_c_delivered():
    """The interpreter's own SIGINT handler for the test: a shell starts a background job with
    SIGINT ignored, and Python keeps it so, but these tests are about a Ctrl-C that arrives."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signum, word, status", [(signal.SIGINT, "interrupted", 130),
                                                  (signal.SIGTERM, "terminated", 143)])
def test_a_signal_ends_a_command_in_one_line_after_its_clean_up(signum, word, status, capsys, ctrl_c_delivered):
    from cosinegate import errors
    cleaned = []

    @errors.command("prog")
    def main(argv=None):
        try:
            # To this thread: a process-wide kill may land on one of torch's threads, and the
            # handler's flag could be set only after the next line has run.
            signal.pthread_kill(threading.get_ident(), signum)
            signal.sigtimedwait([], 0)  # let the handler run before anything else
            raise AssertionError("the signal did not stop the command")
        finally:
            cleaned.append(True)

    before = signal.getsignal(signal.SIGTERM)
    assert main() == status and cleaned == [True]
    assert capsys.readouterr().err == f"prog: {word}\n"
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_stops_training_with_the_last_epoch_kept(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "cosinegate.train.cli", "--preset", "demo", "--depth", "8",
                             "--epochs", "200", "--threads", "1", "--no-progress", "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    epochs = (line for line in proc.stdout if line.startswith("epoch"))
    next(epochs), next(epochs)  # epoch 2 is logged after epoch 1's checkpoint was written
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert err.strip().splitlines() == [f"cg-train: terminated; the last finished epoch is in last.pt "
                                        f"(continue with: cg-train --resume {run})"]
    from cosinegate.train import checkpoint
    assert checkpoint.load(run / "last.pt")["epoch"] >= 1


def test_sigterm_before_the_first_epoch_leaves_no_run_behind(tmp_path):
    run = tmp_path / "runs" / "run"
    proc = subprocess.Popen([sys.executable, "-m", "cosinegate.train.cli", "--preset", "demo", "--depth", "8",
                             "--epochs", "2", "--threads", "1", "--no-progress", "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # the run's banner: its folder is claimed, no epoch has finished
        if line.startswith("cg-train: demo"):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert err.strip().splitlines() == ["cg-train: terminated before the first epoch finished; nothing was kept"]
    assert not (tmp_path / "runs").exists()
