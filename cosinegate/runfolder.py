"""Who may write a run folder: one rule for a new run, and one writer at a time.

A folder holding any run file (RUN_FILES) belongs to that run: a new run is refused there, only
`--resume` continues it. While a run writes, it holds an exclusive `flock` on DIR/.lock (the
file holds its pid), so a second writer on the same folder stops at once instead of both
"succeeding" over each other's files. The kernel drops the lock when the process dies, so a
killed run never leaves the folder locked.

    with claim(Path("runs/demo"), resume=False):
        ...   # train; run files written here are this process's alone
"""
import contextlib
import fcntl
import os
import shutil
from pathlib import Path

from cosinegate import atomic

RUN_FILES = ("best.pt", "last.pt", "metrics.jsonl", "config.yaml", "plots")
LOCK_NAME = ".lock"


class RunFolderError(RuntimeError):
    """The folder belongs to another run, or another process is writing it."""


def run_files(folder: Path) -> list[str]:
    return [name for name in RUN_FILES if (folder / name).exists()]


def check_new(folder: Path) -> None:
    """Refuse to start a new run in a folder that holds any run file."""
    held = run_files(folder)
    if held:
        raise RunFolderError(f"{folder} already holds a run ({', '.join(held)}); continue it with "
                             f"--resume {folder} or choose another --out")


def _lock(folder: Path):
    """An open file holding the exclusive lock on folder/.lock, or RunFolderError."""
    path = folder / LOCK_NAME
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # A holder that was just releasing it may have unlinked the file we opened: then the lock
        # we hold guards nothing, and the folder is still in use.
        if os.fstat(f.fileno()).st_ino != os.stat(path).st_ino:
            raise BlockingIOError
    except (BlockingIOError, FileNotFoundError):
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise RunFolderError(f"{folder} is being written by another process (pid {holder}); "
                             "wait for it to finish or choose another --out") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


@contextlib.contextmanager
def claim(folder: Path, resume: bool):
    """Hold `folder` for one run: lock it, check ownership, clear stale temporary files. If the
    run fails before its first checkpoint, the files it wrote go again and a new run may start there."""
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # innermost first
    folder.mkdir(parents=True, exist_ok=True)
    lock = _lock(folder)
    try:
        if not resume:
            check_new(folder)
        atomic.remove_stale(folder)
        try:
            yield
        except BaseException:
            if not resume and not (folder / "last.pt").exists() and not (folder / "best.pt").exists():
                for name in RUN_FILES:
                    path = folder / name
                    if path.is_dir():  # plots/
                        shutil.rmtree(path)
                    else:
                        path.unlink(missing_ok=True)
            raise
    finally:
        (folder / LOCK_NAME).unlink(missing_ok=True)
        lock.close()
        for path in created:
            with contextlib.suppress(OSError):
                path.rmdir()  # only if the failed run left it empty
