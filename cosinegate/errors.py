"""One line per failure at each command's edge (`cg-train: error: ...`), never a traceback.

Expected failures (bad input, missing files, a full disk) are typed errors that each command
catches and prints with `one_line`. `command` wraps a command's `main` so that anything else
still ends in one line, marked as an internal error; CG_TRACEBACK=1 shows the traceback instead.
"""
import argparse
import errno
import functools
import os
import sys

MAX_CHARS = 300


def one_line(error: BaseException) -> str:
    """The error as one short line: its first line, cut to MAX_CHARS; OSErrors name the file."""
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        text = ("disk full" if error.errno == errno.ENOSPC else error.strerror) + where
    else:
        text = str(error).strip() or type(error).__name__
    # Escape control characters: the text may quote a file or a device's log (ANSI escapes included).
    first = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text.splitlines()[0])
    return first if len(first) <= MAX_CHARS else first[:MAX_CHARS - 3] + "..."


def command(prog: str, expected: tuple = ()):
    """Decorate `main(argv) -> int` so that an `expected` exception prints `prog: error: ...`
    and anything else one line marked as an internal error; both exit 1."""
    def wrap(main):
        @functools.wraps(main)
        def guarded(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except expected as e:
                print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
                return 1
            except Exception as e:
                if os.environ.get("CG_TRACEBACK"):
                    raise
                print(f"{prog}: error: internal error ({type(e).__name__}: {one_line(e)}); "
                      "set CG_TRACEBACK=1 to see where", file=sys.stderr)
                return 1
        return guarded
    return wrap


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose rejections are one line too (`prog: error: ...`, exit 2), without the usage
    block; `--help` still prints it."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
