"""Parse the CosineGate firmware's line protocol (firmware/core/main_functions.cc).

    CG-HEADER protocol=1 model=digits-1a2b core=cortex-m4 clock_hz=25000000 cost=instructions
              arena_bytes=6000 arena_used=5432 images=10 classes=10 gated_blocks=3   (one line)
    CG idx=3 label=5 pred=5 gates=101 instructions=123456      (`cycles=` on hardware)
    CG-SUMMARY images=10 correct=9 failed=0 gates_on=10,7,3
    CG-ERROR reason=arena <explanation>
    # TFLM: <message from TFLM>                                (kept as a comment)

Serial noise, boot messages and truncated lines are skipped and counted. Use:
    run = parse_text(serial_log)       # -> RunLog; raises ProtocolError if no CG lines at all
    python -m cosinegate.bench.protocol LOGFILE     # prints a short summary
"""
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cosinegate import errors

COST_UNITS = ("cycles", "instructions")
_LINE_START = re.compile(r"\bCG(-[A-Z]+)?\s")
_PAIR = re.compile(r"(\w+)=(\S*)")
_GATES = re.compile(r"[01]+|-")


class ProtocolError(ValueError):
    """The text holds no CosineGate protocol line at all."""


@dataclass(frozen=True)
class Header:
    protocol: int
    model: str
    core: str
    clock_hz: int
    cost_unit: str         # "cycles" on hardware, "instructions" under QEMU
    arena_bytes: int       # arena the firmware was built with
    arena_used: int        # interpreter.arena_used_bytes() after AllocateTensors
    images: int
    classes: int
    gated_blocks: int


@dataclass(frozen=True)
class Inference:
    idx: int
    label: int
    pred: int
    gates: str             # one '1' (computed) / '0' (skipped) per gated block; "" if none
    cost: int | None       # None when the line ended before the cost key
    cost_unit: str | None


@dataclass(frozen=True)
class Summary:
    images: int
    correct: int
    failed: int
    gates_on: tuple[int, ...]  # inferences in which each gated block was computed


@dataclass(frozen=True)
class FirmwareError:
    reason: str
    message: str


@dataclass
class RunLog:
    header: Header | None = None
    inferences: list[Inference] = field(default_factory=list)
    summary: Summary | None = None
    errors: list[FirmwareError] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)   # '# ...' lines, e.g. TFLM messages
    skipped_lines: int = 0                               # garbage or truncated lines

    @property
    def accuracy(self) -> float:
        return sum(i.pred == i.label for i in self.inferences) / max(len(self.inferences), 1)


def _fields(text: str, spec: dict) -> dict:
    """key=value pairs of `text` converted with `spec` {key: type}; KeyError/ValueError if bad."""
    pairs = dict(_PAIR.findall(text))
    return {key: kind(pairs[key]) for key, kind in spec.items()}


def _parse_gates(value: str) -> str:
    if not _GATES.fullmatch(value):
        raise ValueError(f"bad gates value {value!r}")
    return "" if value == "-" else value


def _parse_header(text: str) -> Header:
    values = _fields(text, {"protocol": int, "model": str, "core": str, "clock_hz": int,
                            "cost": str, "arena_bytes": int, "arena_used": int, "images": int,
                            "classes": int, "gated_blocks": int})
    values["cost_unit"] = values.pop("cost")
    if values["clock_hz"] <= 0:  # latency in ms divides by it
        raise ValueError(f"clock_hz must be positive, got {values['clock_hz']}")
    return Header(**values)


def _parse_inference(text: str, gated_blocks: int | None) -> Inference:
    values = _fields(text, {"idx": int, "label": int, "pred": int, "gates": _parse_gates})
    if gated_blocks is not None and len(values["gates"]) != gated_blocks:
        raise ValueError("gate string length differs from the run's gated blocks")
    pairs = dict(_PAIR.findall(text))
    unit = next((u for u in COST_UNITS if u in pairs), None)
    return Inference(**values, cost=int(pairs[unit]) if unit else None, cost_unit=unit)


def _parse_summary(text: str) -> Summary:
    values = _fields(text, {"images": int, "correct": int, "failed": int, "gates_on": str})
    gates_on = values.pop("gates_on")
    counts = () if gates_on == "-" else tuple(int(v) for v in gates_on.split(","))
    return Summary(**values, gates_on=counts)


def _parse_error(text: str) -> FirmwareError:
    match = re.match(r"\s*reason=(\S+)\s*(.*)", text)
    if not match:
        raise ValueError("error line without reason=")
    return FirmwareError(reason=match.group(1), message=match.group(2).strip())


def parse_lines(lines) -> RunLog:
    """Parse an iterable of text lines into a RunLog (see module docstring)."""
    run = RunLog()
    seen_protocol_line = False
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            run.comments.append(line.lstrip("# "))
            continue
        match = _LINE_START.search(line)
        if not match:
            run.skipped_lines += 1
            continue
        kind, rest = match.group(1), line[match.end():]
        try:
            if kind is None:
                # The header's gate count, else the first inference's: a line of another length
                # (cut by serial noise) is skipped, not read as a run of another model.
                gated_blocks = (run.header.gated_blocks if run.header else
                                len(run.inferences[0].gates) if run.inferences else None)
                run.inferences.append(_parse_inference(rest, gated_blocks))
            elif kind == "-HEADER":
                run.header = _parse_header(rest)
            elif kind == "-SUMMARY":
                run.summary = _parse_summary(rest)
            elif kind == "-ERROR":
                run.errors.append(_parse_error(rest))
            else:
                raise ValueError(f"unknown line kind CG{kind}")
        except (KeyError, ValueError, TypeError):
            run.skipped_lines += 1
            continue
        seen_protocol_line = True
    if not seen_protocol_line:
        raise ProtocolError(f"no CosineGate protocol line found ({run.skipped_lines} other "
                            "lines); is this the CosineGate firmware's output?")
    return run


def parse_text(text: str) -> RunLog:
    return parse_lines(text.splitlines())


@errors.command("python -m cosinegate.bench.protocol", expected=(OSError, ProtocolError))
def main(argv=None) -> int:
    parser = errors.ArgumentParser(prog="python -m cosinegate.bench.protocol",
                                     description="Summarise a firmware log: header, inferences, accuracy, errors.")
    parser.add_argument("logfile", type=Path, help="what the firmware printed (QEMU or a board)")
    args = parser.parse_args(argv)
    run = parse_text(args.logfile.read_text(errors="replace"))
    print(f"header: {run.header}")
    print(f"inferences: {len(run.inferences)}  accuracy: {run.accuracy:.3f}  "
          f"errors: {len(run.errors)}  skipped lines: {run.skipped_lines}")
    print(f"summary: {run.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
