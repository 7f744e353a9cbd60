"""JSON files another command wrote (bench.json, sweep.json, export_report.json, metrics.jsonl,
...), read and checked against the shape their reader needs: a file of another shape is refused
in one line naming the file and the field, before anything is computed from it.

A shape is a type (`float` accepts any number, `Finite` any but NaN and infinities, no type
accepts a bool but `bool`), a dict {key: shape} (a key ending in "?" may be absent or null; other
keys are not checked), `{str: shape}` (a mapping of any names to values of that shape), or
`[shape]` (a list of them).
"""
import json
import math
import reprlib
from pathlib import Path


class FileFormatError(ValueError):
    """A file that is not valid JSON, or that lacks a field its reader needs."""


class Finite:
    """The shape of a number that is neither NaN nor infinite (Python's json reads `NaN` and
    `Infinity`), for a reader that computes with it."""


_NAMES = {int: "an integer", float: "a number", Finite: "a finite number", str: "a string", bool: "true or false",
          dict: "an object", list: "a list"}


def _is(value, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is Finite:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, (int, float) if kind is float else kind)


def check(value, shape, where, at: str = ""):
    """`value` if it has `shape`, else FileFormatError naming `where` (the file) and the field."""
    field = at or "its content"
    if isinstance(shape, list):
        if not isinstance(value, list):
            raise FileFormatError(f"{where}: {field} must be a list, got {_got(value)}")
        for i, item in enumerate(value):
            check(item, shape[0], where, f"{at}[{i}]")
    elif isinstance(shape, dict) and list(shape) == [str]:
        if not isinstance(value, dict):
            raise FileFormatError(f"{where}: {field} must be an object, got {_got(value)}")
        for key, item in value.items():
            check(item, shape[str], where, f"{at}.{key}" if at else key)
    elif isinstance(shape, dict):
        if not isinstance(value, dict):
            raise FileFormatError(f"{where}: {field} must be an object, got {_got(value)}")
        for key, inner in shape.items():
            name, optional = key.removesuffix("?"), key.endswith("?")
            path = f"{at}.{name}" if at else name
            if value.get(name) is None:
                if not optional:
                    raise FileFormatError(f"{where}: {path} is missing (or null)")
                continue
            check(value[name], inner, where, path)
    elif not _is(value, shape):
        raise FileFormatError(f"{where}: {field} must be {_NAMES[shape]}, got {_got(value)}")
    return value


def _got(value) -> str:
    return f"{type(value).__name__} {reprlib.repr(value)[:40]}"


def loads(text: str, where):
    try:
        return json.loads(text)
    except ValueError as e:  # JSONDecodeError
        raise FileFormatError(f"{where} is not valid JSON ({e})") from None


def read(path: Path, shape):
    """The JSON file at `path`, checked against `shape`."""
    return check(loads(_text(path), path), shape, path)


def read_lines(path: Path, shape) -> list:
    """A JSON-lines file (one object per line, blank lines skipped), each line checked against
    `shape`; at least one line."""
    lines = [(n, line) for n, line in enumerate(_text(path).splitlines(), 1) if line.strip()]
    if not lines:
        raise FileFormatError(f"{path} holds no lines")
    return [check(loads(line, f"{path} line {n}"), shape, f"{path} line {n}") for n, line in lines]


def _text(path: Path) -> str:
    try:
        return Path(path).read_text()
    except UnicodeDecodeError as e:
        raise FileFormatError(f"{path} is not text ({e.reason} at byte {e.start})") from None
