"""One line per failure at each command's edge (`cg-train: error: ...`), never a traceback.

Expected failures (bad input, missing files, a full disk) are typed errors that each command
catches and prints with `one_line`. `command` wraps a command's `main` so that anything else
still ends in one line, marked as an internal error; CG_TRACEBACK=1 shows the traceback instead.
A command that runs others as steps (`reproduce`, `ablations`, `cg-demo`) passes their output on
but keeps a failing step's error line, which its own one line quotes (`StepOutput`, `StepFailed`).
"""
import argparse
import codecs
import errno
import functools
import io
import os
import re
import signal
import subprocess
import sys
import threading

MAX_CHARS = 300
# The line a failing command ends with: `PROG: error: REASON` (PROG may hold spaces: `python -m ...`).
ERROR_LINE = re.compile(r"^(\S[^:\n]*): error: (.*)$")


class StepFailed(Exception):
    """A step one command runs for another (a child process, or a command's main called in-process)
    failed; the message quotes the step's own error line, so the caller's one line says why."""


def one_line(error: BaseException) -> str:
    """The error as one short line: its first line, cut to MAX_CHARS; OSErrors name the file."""
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        text = ("disk full" if error.errno == errno.ENOSPC else error.strerror) + where
        if error.errno == errno.EEXIST and _dangling_link(error.filename):
            text = f"{error.filename} is a symbolic link to {os.readlink(error.filename)}, which does not exist"
    else:
        text = str(error).strip() or type(error).__name__
    # Escape control characters: the text may quote a file or a device's log (ANSI escapes included).
    first = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text.splitlines()[0])
    return first if len(first) <= MAX_CHARS else first[:MAX_CHARS - 3] + "..."


def _dangling_link(path) -> bool:
    return isinstance(path, (str, bytes, os.PathLike)) and os.path.islink(path) and not os.path.exists(path)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that the clean-up of Ctrl-C runs for it too."""


def _raise_terminated(signum, frame):
    raise Terminated()


def interrupt_status(interrupt: KeyboardInterrupt) -> tuple[str, int]:
    """What stopped the command, and its exit status (128 plus the signal's number)."""
    return ("terminated", 143) if isinstance(interrupt, Terminated) else ("interrupted", 130)


def command(prog: str, expected: tuple = ()):
    """Decorate `main(argv) -> int` so that an `expected` exception prints `prog: error: ...`
    and anything else one line marked as an internal error; both exit 1. Ctrl-C and SIGTERM end
    in one line too (`prog: interrupted`, exit 130; `prog: terminated`, exit 143), after the
    clean-up a failure gets (staging folders and temporaries removed)."""
    def wrap(main):
        @functools.wraps(main)
        def guarded(*args, **kwargs):
            in_main_thread = threading.current_thread() is threading.main_thread()
            previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt as e:
                word, status = interrupt_status(e)
                print(f"{prog}: {word}", file=sys.stderr)
                return status
            except (*expected, StepFailed) as e:
                print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
                return 1
            except Exception as e:
                if os.environ.get("CG_TRACEBACK"):
                    raise
                print(f"{prog}: error: internal error ({type(e).__name__}: {one_line(e)}); "
                      "set CG_TRACEBACK=1 to see where", file=sys.stderr)
                return 1
            finally:
                if in_main_thread:  # None: the handler before was set outside Python
                    signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        return guarded
    return wrap


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose rejections are one line too (`prog: error: ...`, exit 2), without the usage
    block; `--help` still prints it."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class StepOutput(io.TextIOBase):
    """Where a step's stderr goes: passed on to `target` as it comes (progress bars included), all
    but the step's `PROG: error: ...` line, which is kept for the caller to quote in its own."""

    def __init__(self, target):
        super().__init__()
        self.target, self.error_line, self._pending = target, None, ""

    @property
    def encoding(self):
        return getattr(self.target, "encoding", None)

    def isatty(self) -> bool:
        return self.target.isatty()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            self._pass_on(line + "\n")
        if self._pending.startswith("\r"):  # a progress bar redrawing its line: shown at once
            self.target.write(self._pending)
            self.target.flush()
            self._pending = ""
        return len(text)

    def _pass_on(self, line: str) -> None:
        if ERROR_LINE.match(line.rstrip("\n")):
            self.error_line = line.rstrip("\n")
        else:
            self.target.write(line)
            self.target.flush()

    def flush(self) -> None:
        self.target.flush()

    def end(self, status, step: str | None = None) -> None:
        """Call once the step has ended with exit `status`: a failure raises StepFailed saying
        `[STEP: ]PROG: REASON` from the step's error line (or its exit status when it printed none)."""
        if self._pending:
            self._pass_on(self._pending)
            self._pending = ""
        if status in (0, None):
            if self.error_line is not None:  # not the end of a failure: the step's own output
                self.target.write(self.error_line + "\n")
            return
        match = ERROR_LINE.match(self.error_line or "")
        reason = f"{match[1]}: {match[2]}" if match else f"exit status {status}"
        raise StepFailed(f"{step}: {reason}" if step else reason)


def run_step(argv: list[str], step: str | None = None, stdout=None) -> None:
    """Run the command `argv` as a step of the calling command. Its stdout goes to `stdout` (default:
    ours) and its stderr, as it comes, there too or to ours, all but its error line: a failure
    raises StepFailed quoting that line, after `step` when given."""
    output = StepOutput(stdout or sys.stderr)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE) as child:
        # Raw reads, not lines: a progress bar redraws its line with '\r' and no newline.
        for chunk in iter(lambda: os.read(child.stderr.fileno(), 4096), b""):
            output.write(decoder.decode(chunk))
        output.write(decoder.decode(b"", final=True))
    output.end(child.returncode, step)
