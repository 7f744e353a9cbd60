"""Atomic, durable file writes: a reader (or a crash, or a power cut) sees the old file or the
new one, never half of one.

Each write goes to a temporary file in the same folder, is fsynced, renamed over the target, and
the folder is fsynced so the rename itself survives a power cut. Temporary names carry the
writer's pid (`.NAME.PID-XXXX.cgtmp[.SUFFIX]`): a failed write removes its own, and
`remove_stale(folder)` removes those a killed process left behind.

`save_all`/`write_all` write a set of files that belong together (a firmware's sources, a
published model and its manifest entry) all or none: nothing is renamed into place before every
file is written, and a failure leaves each target as it was.
"""
import contextlib
import errno
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

TMP_MARK = ".cgtmp"
# .NAME.PID-RANDOM.cgtmp[.SUFFIX] (files) or .NAME.PID-RANDOM.cgtmp.staging (folders)
_TMP_NAME = re.compile(r"^\..*\.(\d+)-[A-Za-z0-9_]+" + re.escape(TMP_MARK) + r"(\.[A-Za-z0-9_]+)?$")


def _umask_mode() -> int:
    """The mode a plainly created file gets (mkstemp alone would leave 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-"


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make renames and creations in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _replace(tmp: str | os.PathLike, path: Path) -> None:
    """os.replace whose error names the target: the temporary's name means nothing to a reader."""
    try:
        os.replace(tmp, path)
    except OSError as e:
        raise type(e)(e.errno, e.strerror, str(path)) from None


def _save_temporary(path: Path, save_fn) -> str:
    """A fsynced temporary beside `path` holding what `save_fn(file_path)` writes."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=TMP_MARK + path.suffix)
    os.close(fd)
    os.chmod(tmp, _umask_mode())
    try:
        save_fn(tmp)
        _fsync_file(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def save_with(path: str | os.PathLike, save_fn) -> Path:
    """Atomically write whatever `save_fn(file_path)` writes (torch.save, savefig, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _save_temporary(path, save_fn)
    try:
        _replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return save_with(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())


def check_writable_as_file(path: Path) -> None:
    """Refuse, naming it, a folder where `path` goes or a file where one of its folders goes."""
    if path.is_dir() and not path.is_symlink():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    existing = next(p for p in path.parents if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))


def _keep_copy(path: Path) -> Path:
    """A temporary beside `path` holding what it holds now (a hard link where the file system has them)."""
    copy = path.with_name(f"{temp_prefix(path)}{secrets.token_hex(6)}{TMP_MARK}.old")
    try:
        os.link(path, copy, follow_symlinks=False)
    except OSError:
        shutil.copy2(path, copy, follow_symlinks=False)
    return copy


def save_all(savers: dict) -> list[Path]:
    """Write several files as one: all of them or, on a failure, none.

    `savers` maps each target to a `save_fn(file_path)` as `save_with` takes. Every target is
    checked first, then every file is written to a fsynced temporary beside its target, and only
    then are the temporaries renamed over their targets. A rename failing part-way puts back the
    files already replaced, and the folders created for the targets are removed again.
    """
    targets = [Path(p) for p in savers]
    for path in targets:
        check_writable_as_file(path)
    created = sorted({p for path in targets for p in path.parents if not p.exists()},
                     key=lambda p: len(p.parts), reverse=True)  # innermost first
    temporaries, old_copies, replaced = {}, {}, []
    try:
        for path, save_fn in zip(targets, savers.values()):
            path.parent.mkdir(parents=True, exist_ok=True)
            temporaries[path] = _save_temporary(path, save_fn)
        for path in targets:
            if path.exists() or path.is_symlink():
                old_copies[path] = _keep_copy(path)
            _replace(temporaries[path], path)
            del temporaries[path]
            replaced.append(path)
    except BaseException:
        for path in reversed(replaced):
            with contextlib.suppress(OSError):
                if path in old_copies:
                    os.replace(old_copies.pop(path), path)
                else:
                    path.unlink()
        for leftover in [*temporaries.values(), *old_copies.values()]:
            Path(leftover).unlink(missing_ok=True)
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    for copy in old_copies.values():
        copy.unlink()
    for folder in dict.fromkeys(path.parent for path in targets):
        fsync_dir(folder)
    return targets


def write_all(contents: dict) -> list[Path]:
    """`save_all` for {target: bytes or str}: every file written, or on a failure none."""
    def writer(data: bytes | str):
        return lambda tmp: Path(tmp).write_bytes(data.encode() if isinstance(data, str) else data)
    return save_all({path: writer(data) for path, data in contents.items()})


def is_temporary(name: str) -> bool:
    return bool(_TMP_NAME.match(name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders that writers no longer running left in `folder`."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TMP_NAME.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def staging(out_dir: Path):
    """A fresh staging folder beside `out_dir` for a command that builds its output there and then
    publishes it into `out_dir`. Staging folders of killed writers are removed first; this one is
    removed on the way out, and so are the parent folders created for it if `out_dir` does not
    exist by then (a failed command leaves no new folder)."""
    out_dir = Path(out_dir)
    created = [p for p in out_dir.parents if not p.exists()]  # innermost first
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage_dir = None
    try:
        remove_stale(out_dir.parent)
        stage_dir = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=temp_prefix(out_dir),
                                          suffix=TMP_MARK + ".staging"))
        yield stage_dir
    finally:
        if stage_dir is not None:
            shutil.rmtree(stage_dir, ignore_errors=True)
        for path in created if not out_dir.exists() else ():
            with contextlib.suppress(OSError):
                path.rmdir()
