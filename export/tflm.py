"""Run an int8 model in the TFLM Python interpreter: op check, arena measurement, inference.

    check_tflm_ops(tflite_bytes)            # TflmError naming any op TFLM cannot run
    arena = measure_arena(tflite_bytes)      # smallest arena (bytes) that allocates, by bisection
    runner = TflmRunner(tflite_bytes, arena)
    logits, gates = runner(x_int8)           # x (1, H, W, C) int8

TFLM reports its errors on the C stderr, not in the exception, so the calls that can fail
capture file descriptor 2 and turn its text into one line.
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from cosinegate.export.native import captured_stderr

# Arena used to tell "cannot run" from "arena too small", and the bisection's upper bound.
_LARGE_ARENA = 64 << 20
_ARENA_STEP = 16  # bytes: TFLM aligns arena allocations to 16


class TflmError(RuntimeError):
    """TFLM cannot load or run the model."""


def _interpreter(tflite_bytes: bytes, arena_size: int):
    from tflite_micro.python.tflite_micro import runtime
    return runtime.Interpreter.from_bytes(tflite_bytes, arena_size=arena_size)


def _run_helper(tflite_bytes: bytes, *args: str) -> subprocess.CompletedProcess:
    """Run this module as a helper process on the model (`__main__` below): TFLM can abort the
    whole process (a failed TFLITE_CHECK), which must not take the caller with it."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.tflite"
        path.write_bytes(tflite_bytes)
        return subprocess.run([sys.executable, "-m", "cosinegate.export.tflm", *args, str(path)],
                              capture_output=True, text=True, check=False)


def _try_load(tflite_bytes: bytes, arena_size: int) -> tuple[bool, str]:
    """(loaded, TFLM's messages), loaded in the helper process."""
    result = _run_helper(tflite_bytes, "--load", str(arena_size))
    if result.returncode < 0:
        raise TflmError(f"TFLM crashed loading the model ({signal.Signals(-result.returncode).name}; "
                        "a kernel's Prepare failed a check): the model is not deployable")
    return result.returncode == 0, result.stderr


def _load_and_report(arena_size: int, path: str) -> int:
    """The helper's `--load`: TFLM prints its own messages on fd 2; exit status 0 when it loads."""
    try:
        _interpreter(Path(path).read_bytes(), arena_size)
        return 0
    except RuntimeError:
        return 1


def check_tflm_ops(tflite_bytes: bytes) -> None:
    """Raise TflmError when TFLM lacks a kernel for an op of the model, or cannot load it."""
    ok, log = _try_load(tflite_bytes, _LARGE_ARENA)
    missing = sorted(set(re.findall(r"Didn't find op for builtin opcode '(\w+)'", log)))
    if missing:
        raise TflmError(f"TFLM cannot run op{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(missing)}: the model is not deployable")
    if not ok:
        last = [line for line in log.splitlines() if line.strip()]
        raise TflmError(f"TFLM cannot load the model ({last[-1] if last else 'no message'})")


def measure_arena(tflite_bytes: bytes) -> int:
    """Smallest arena size (multiple of 16 bytes) with which TFLM allocates the model.

    TFLM can crash (not just fail) on some too-small arenas, so every probe runs in a forked
    child of a helper process that has loaded nothing but TFLM (`python -m` this module)."""
    result = _run_helper(tflite_bytes)
    if result.returncode != 0 or not result.stdout.strip():
        check_tflm_ops(tflite_bytes)  # raises with the reason where the model cannot load at all
        raise TflmError(f"TFLM arena measurement failed: {result.stderr.strip()[-300:]}")
    return int(result.stdout.split()[-1])


def _allocates(path: str, arena_size: int) -> bool:
    """Whether TFLM allocates the model in `arena_size` bytes, tried in a forked child."""
    pid = os.fork()
    if pid == 0:  # child: silence TFLM's messages, report through the exit status only
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        try:
            _interpreter(Path(path).read_bytes(), arena_size)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _bisect_arena(path: str) -> int:
    low, high = 0, _LARGE_ARENA  # low fails, high allocates
    if not _allocates(path, high):
        raise TflmError(f"TFLM cannot allocate the model even in {high} bytes")
    while high - low > _ARENA_STEP:
        mid = (low + high) // 2 // _ARENA_STEP * _ARENA_STEP
        if mid <= low:
            break
        if _allocates(path, mid):
            high = mid
        else:
            low = mid
    return high


class TflmRunner:
    """Batch-1 inference in TFLM: returns (logits int8 (1, classes), gates bool (n_gated,))."""

    def __init__(self, tflite_bytes: bytes, arena_size: int, num_outputs: int):
        with captured_stderr() as read:
            try:
                self.interpreter = _interpreter(tflite_bytes, arena_size)
            except RuntimeError:
                raise TflmError(f"TFLM cannot load the model: {read().strip()[-200:]}") from None
        self.num_outputs = num_outputs

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.interpreter.set_input(x, 0)
        self.interpreter.invoke()
        logits = self.interpreter.get_output(0).copy()
        gates = np.array([bool(self.interpreter.get_output(i).reshape(-1)[0])
                          for i in range(1, self.num_outputs)], dtype=bool)
        return logits, gates


if __name__ == "__main__":  # the helper process: `--load ARENA MODEL`, or `MODEL` to print its arena size
    if sys.argv[1] == "--load":
        sys.exit(_load_and_report(int(sys.argv[2]), sys.argv[3]))
    print(_bisect_arena(sys.argv[1]))
