"""Cortex-M4 cycles from QEMU's instruction trace: a timing model on per-block counts.

QEMU counts instructions, not cycles. The TCG plugin (firmware/ports/qemu/plugin) also writes,
per inference, every translation block it ran with its executions and how often control then
jumped elsewhere (`blocks=PATH`). This module decodes each block's Thumb-2 instructions from
the ELF and applies the instruction timings of Arm's Cortex-M4 Technical Reference Manual
(DDI 0439, table 3-1 and section 3.3.2), assuming ZERO-WAIT-STATE memory:

  one cycle        data processing, MUL/MLA/MLS, long multiplies, SMLAD and the other DSP MACs,
                   saturation, bitfield, extend, IT, store with immediate offset
  2 (1 pipelined)  single LDR/LDRB/LDRH/LDRSx; 1 when it follows a single load whose
                   destination is not its base or index register (TRM 3.3.2), else 2
  2 (1 after LDR)  STR with register offset (nothing pipelines after a store)
  1+N              LDM/STM/PUSH/POP (N registers), LDRD/STRD (N=2), VLDM/VSTM/VLDR/VSTR (N words)
  +P               every taken branch, call, return, table branch or load to PC: the pipeline
                   refill, P = 1..3 cycles (target alignment and width, speculation); counted
                   from the trace, so a conditional branch costs 1 when it falls through
  D                SDIV/UDIV, D = 2..12 (early termination on the operands)
  VMLA/VFMA 3, VDIV/VSQRT 14, other FPU data processing 1

    cycles = fixed + P * refills + D * divides

The estimate leaves out what a real part adds: flash wait states and whatever the flash
accelerator or cache does not hide, bus contention, interrupts, unaligned-access penalties and
the cycle an LDR to PC-relative literals may lose to the fetch. For the flash, the plugin can
also count the data loads from flash (`flash=LO:HI`) and the 8-byte flash words they read anew:
`cycles_with_flash(wait_states)` charges the wait states once per such word, what a flash
without a data cache costs when instruction fetches all hit the accelerator. docs/latency.md
compares both with a published board measurement.

    python -m cosinegate.bench.m4_timing FIRMWARE.elf BLOCKS.txt [--p 2] [--divide 7] [--clock-mhz 120]
"""
import math
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cosinegate import errors

# Model parameters: defaults in the middle of the TRM's ranges, bounds for the error bars.
REFILL_CYCLES = {"low": 1, "default": 2, "high": 3}
DIVIDE_CYCLES = {"low": 2, "default": 7, "high": 12}
DEFAULT_CLOCK_HZ = 120_000_000
CLASSES = ("alu", "mul", "div", "load", "store", "multiple", "branch", "fp", "other")
_PC = 15
_ELF_HEADER_BYTES, _PROGRAM_HEADER_BYTES = 52, 32   # ELF32


class TimingInputError(ValueError):
    """An ELF or blocks file the timing model cannot read: one line naming the file."""


@dataclass(frozen=True)
class Insn:
    size: int                        # bytes, 2 or 4
    cls: str                         # one of CLASSES
    cycles: int                      # fixed cycles, before pipelining, refills and divides
    load_dest: int | None = None     # a single load's destination (can pipeline the next access)
    address_regs: frozenset = frozenset()   # base and index of a single load or store
    pipelinable: bool = False        # a single load, or a register-offset store, may take 1 cycle


def _single(cls: str, cycles: int, dest, *regs, pipelinable=True) -> Insn:
    return Insn(4, cls, cycles, dest, frozenset(r for r in regs if r is not None), pipelinable)


def _popcount(value: int) -> int:
    return bin(value).count("1")


def decode16(h: int) -> Insn:
    """One 16-bit Thumb instruction."""
    def insn(cls, cycles=1, **kw):
        return Insn(2, cls, cycles, **kw)

    if h >> 14 == 0b00:                                   # shift, add, sub, mov, cmp immediate
        return insn("alu")
    if h >> 10 == 0b010000:                               # data processing (register)
        return insn("mul" if (h >> 6) & 0xF == 0b1101 else "alu")
    if h >> 10 == 0b010001:                               # high registers, BX/BLX
        op = (h >> 6) & 0xF
        rd = ((h >> 4) & 0x8) | (h & 7)
        if op >> 2 == 0b11 or (op >> 2 in (0b00, 0b10) and rd == _PC):
            return insn("branch")
        return insn("alu")
    if h >> 11 == 0b01001:                                # LDR literal
        return insn("load", 2, load_dest=(h >> 8) & 7, address_regs=frozenset({_PC}),
                    pipelinable=True)
    if h >> 12 == 0b0101:                                 # load/store register offset
        rt, rn, rm = h & 7, (h >> 3) & 7, (h >> 6) & 7
        if (h >> 9) & 7 >= 3:
            return insn("load", 2, load_dest=rt, address_regs=frozenset({rn, rm}), pipelinable=True)
        return insn("store", 2, address_regs=frozenset({rn, rm}), pipelinable=True)
    if h >> 13 == 0b011 or h >> 12 in (0b1000, 0b1001):  # immediate offset, SP-relative
        sp_relative = h >> 12 == 0b1001
        rt = (h >> 8) & 7 if sp_relative else h & 7
        rn = 13 if sp_relative else (h >> 3) & 7
        if (h >> 11) & 1:
            return insn("load", 2, load_dest=rt, address_regs=frozenset({rn}), pipelinable=True)
        return insn("store", 1)
    if h >> 12 == 0b1010:                                 # ADR, ADD SP
        return insn("alu")
    if h >> 12 == 0b1011:                                 # miscellaneous
        op = (h >> 8) & 0xF
        if op & 0b0101 == 0b0001:                         # CBZ/CBNZ
            return insn("branch")
        if op in (0b0100, 0b0101, 0b1100, 0b1101):        # PUSH/POP (+LR/PC)
            return insn("multiple", 1 + _popcount(h & 0xFF) + ((h >> 8) & 1))
        if op in (0b1110, 0b1111):                        # BKPT, IT, hints
            return insn("other")
        return insn("alu")                                # ADD/SUB SP, extend, REV, CPS
    if h >> 12 == 0b1100:                                 # STM/LDM
        return insn("multiple", 1 + _popcount(h & 0xFF))
    return insn("branch")                                 # B<cond>, B, SVC, UDF


def _decode_coprocessor(h1: int, h2: int) -> Insn:
    if (h1 >> 9) & 7 == 0b110:                            # extension register load/store
        opc = (h1 >> 4) & 0x1F
        if opc & 0b11110 == 0b00100:                      # VMOV two core registers
            return Insn(4, "fp", 2)
        if (h1 >> 8) & 1 and not (h1 >> 5) & 1:           # VLDR/VSTR
            return Insn(4, "fp", 1 + (2 if (h2 >> 8) & 1 else 1))
        return Insn(4, "fp", 1 + (h2 & 0xFF))            # VLDM/VSTM/VPUSH/VPOP
    if (h1 >> 8) & 0xF == 0b1110 and (h2 >> 9) & 7 == 0b101:
        if h2 & 0x10:                                     # VMOV core<->single, VMRS/VMSR
            return Insn(4, "fp", 1)
        opc1 = (h1 >> 4) & 0b1011
        if opc1 in (0b0000, 0b0001, 0b1001, 0b1010):      # VMLA/VMLS/VNMLA/VNMLS/VFMA/VFNMA
            return Insn(4, "fp", 3)
        if opc1 == 0b1000 or (opc1 == 0b1011 and h1 & 0xF == 1 and (h2 >> 6) & 3 == 3):
            return Insn(4, "fp", 14)                      # VDIV, VSQRT
        return Insn(4, "fp", 1)
    return Insn(4, "other", 1)


def decode32(h1: int, h2: int) -> Insn:
    """One 32-bit Thumb-2 instruction (first halfword h1, second h2)."""
    op1, op2 = (h1 >> 11) & 3, (h1 >> 4) & 0x7F
    rn = h1 & 0xF
    if op1 == 1:
        if op2 & 0b1100100 == 0:                          # LDM/STM/PUSH.W/POP.W
            return Insn(4, "multiple", 1 + _popcount(h2))
        if op2 & 0b1100100 == 0b0000100:                  # dual, exclusive, table branch
            o1, o2 = (h1 >> 7) & 3, (h1 >> 4) & 3
            if o1 & 2 or o2 & 2:
                return Insn(4, "multiple", 3)                 # LDRD/STRD
            if o2 == 0:
                return _single("store", 2, None, rn, pipelinable=False)   # STREX(B/H)
            if o1 == 1 and (h2 >> 4) & 0xF < 2:
                return Insn(4, "branch", 2)                   # TBB/TBH: 2 + P
            return _single("load", 2, (h2 >> 12) & 0xF, rn)   # LDREX, LDREXB/H
        if op2 & 0b1100000 == 0b0100000:                  # data processing (shifted register)
            return Insn(4, "alu", 1)
        return _decode_coprocessor(h1, h2)
    if op1 == 2:
        if not h2 & 0x8000:                               # data processing (immediate)
            return Insn(4, "alu", 1)
        if (h2 >> 12) & 0b101 == 0 and (h1 >> 7) & 7 == 7:
            return Insn(4, "other", 2)                    # MSR/MRS, barriers, hints
        return Insn(4, "branch", 1)                       # B<cond>.W, B.W, BL
    # op1 == 3
    rt = (h2 >> 12) & 0xF
    register_offset = not (h1 >> 7) & 1 and (h2 >> 6) & 0x3F == 0 and rn != _PC
    index = h2 & 0xF if register_offset else None
    if op2 & 0b1110001 == 0 and not (h1 >> 8) & 1:       # STR/STRB/STRH
        if register_offset:
            return _single("store", 2, None, rn, index)
        return Insn(4, "store", 1)
    if op2 & 0b1100001 == 0b0000001:                      # LDR/LDRB/LDRH/LDRSx
        if rt == _PC:
            if (h1 >> 5) & 3 == 0b10:                     # LDR PC: 2 + P
                return _single("load", 2, None, rn, index, pipelinable=False)
            return Insn(4, "other", 1)                    # PLD/PLI
        return _single("load", 2, rt, rn, index)
    if op2 & 0b1110000 == 0b0100000:                      # data processing (register), SIMD add
        return Insn(4, "alu", 1)
    if op2 & 0b1111000 == 0b0110000:                      # MUL/MLA/MLS, SMLAD, SMLAxy, USADA8
        return Insn(4, "mul", 1)
    if op2 & 0b1111000 == 0b0111000:                      # long multiply, divide
        return Insn(4, "div", 0) if (h1 >> 4) & 7 in (1, 3) else Insn(4, "mul", 1)
    if op2 & 0b1000000:
        return _decode_coprocessor(h1, h2)
    return Insn(4, "other", 1)


def decode(code: bytes, offset: int = 0) -> Insn:
    h1 = int.from_bytes(code[offset:offset + 2], "little")
    if h1 >> 11 in (0b11101, 0b11110, 0b11111):
        return decode32(h1, int.from_bytes(code[offset + 2:offset + 4], "little"))
    return decode16(h1)


@dataclass
class BlockCost:
    fixed: int = 0                   # cycles at zero wait states, refills and divides excluded
    divides: int = 0
    counts: dict = field(default_factory=dict)   # instructions per class
    cycles: dict = field(default_factory=dict)   # fixed cycles per class


def block_cost(code: bytes, offset: int, n_insns: int) -> BlockCost:
    """Static cost of one translation block starting at code[offset]. The instruction before a
    block ended the previous one (usually a branch), so the first access does not pipeline."""
    cost, prev_load_dest = BlockCost(), None
    for _ in range(n_insns):
        insn = decode(code, offset)
        offset += insn.size
        cycles = insn.cycles
        if (insn.pipelinable and insn.cycles == 2 and prev_load_dest is not None
                and prev_load_dest not in insn.address_regs):
            cycles = 1
        prev_load_dest = insn.load_dest if insn.cls == "load" and insn.pipelinable else None
        cost.fixed += cycles
        cost.divides += insn.cls == "div"
        cost.counts[insn.cls] = cost.counts.get(insn.cls, 0) + 1
        cost.cycles[insn.cls] = cost.cycles.get(insn.cls, 0) + cycles
    return cost


class ElfImage:
    """The loadable bytes of a 32-bit little-endian ELF, addressed as the CPU sees them."""

    def __init__(self, elf):
        self.path = elf
        data = Path(elf).read_bytes()
        if data[:6] != b"\x7fELF\x01\x01":
            raise TimingInputError(f"{elf}: not a 32-bit little-endian ELF")
        if len(data) < _ELF_HEADER_BYTES:
            raise TimingInputError(f"{elf} is too short for an ELF header ({len(data)} bytes): truncated?")
        phoff, = struct.unpack_from("<I", data, 28)
        phentsize, phnum = struct.unpack_from("<HH", data, 42)
        if phnum and (phentsize < _PROGRAM_HEADER_BYTES or phoff + phnum * phentsize > len(data)):
            raise TimingInputError(f"{elf}: its {phnum} program headers of {phentsize} bytes at offset {phoff} "
                                   f"do not fit the file ({len(data)} bytes)")
        self.segments = []
        for k in range(phnum):
            kind, offset, vaddr, _, filesz, _, flags, _ = struct.unpack_from(
                "<8I", data, phoff + k * phentsize)
            if kind == 1 and filesz and flags & 1:       # PT_LOAD, executable
                if offset + filesz > len(data):
                    raise TimingInputError(f"{elf}: executable segment {k} ends past the end of the file: truncated?")
                self.segments.append((vaddr, data[offset:offset + filesz]))

    def at(self, address: int) -> tuple[bytes, int]:
        for start, content in self.segments:
            if start <= address < start + len(content):
                return content, address - start
        raise TimingInputError(f"address 0x{address:x} is in no executable segment of {self.path}")


@dataclass
class InferenceTiming:
    instructions: int = 0
    fixed: int = 0                   # cycles at zero wait states without refills and divides
    refills: int = 0                 # taken branches: pipeline refills of P cycles each
    divides: int = 0
    flash_loads: int | None = None   # data loads from flash (None: not traced)
    flash_words: int | None = None   # of those, reads of another 8-byte word than the last one
    counts: dict = field(default_factory=dict)
    cycles_by_class: dict = field(default_factory=dict)

    def cycles(self, refill: int = REFILL_CYCLES["default"], divide: int = DIVIDE_CYCLES["default"]) -> int:
        return self.fixed + refill * self.refills + divide * self.divides

    def cycles_with_flash(self, wait_states: int, refill: int = REFILL_CYCLES["default"],
                          divide: int = DIVIDE_CYCLES["default"]) -> int:
        """Cycles when every new flash word a data load reads costs `wait_states` more."""
        if self.flash_words is None:
            raise ValueError("flash loads were not traced (run with the plugin's flash=LO:HI)")
        return self.cycles(refill, divide) + wait_states * self.flash_words

    def bounds(self) -> tuple[int, int]:
        return (self.cycles(REFILL_CYCLES["low"], DIVIDE_CYCLES["low"]),
                self.cycles(REFILL_CYCLES["high"], DIVIDE_CYCLES["high"]))


def read_blocks(path) -> list[tuple[list[tuple[int, int, int, int]], tuple[int, int] | None]]:
    """The plugin's blocks file: per inference, ([(address, n_insns, executions, jumps)],
    (flash loads, flash words) or None). A line of another form is refused naming the file and line."""
    try:
        lines = Path(path).read_text().splitlines()
    except UnicodeDecodeError as e:
        raise TimingInputError(f"{path} is not text ({e.reason} at byte {e.start}): not a blocks file") from None
    inferences = []
    for n, line in enumerate(lines, 1):
        if line.startswith("inference"):
            inferences.append(([], None))
        elif line.strip() and not inferences:
            raise TimingInputError(f"{path} line {n} comes before the first 'inference' line: not a blocks file")
        elif line.startswith("flash"):
            inferences[-1] = (inferences[-1][0], _counts(line.split()[1:3], 10, 2, f"{path} line {n}",
                                                         "flash LOADS WORDS"))
        elif line.strip():
            inferences[-1][0].append(_counts(line.split(), 0, 4, f"{path} line {n}",
                                             "ADDRESS INSNS EXECUTIONS JUMPS"))
    if not inferences:
        raise TimingInputError(f"{path} holds no 'inference' line: not a blocks file")
    return inferences


def _counts(words: list[str], base: int, count: int, where: str, form: str) -> tuple:
    """`count` integers >= 0 (in `base`; 0: with a 0x prefix or without) from `words`."""
    try:
        values = tuple(int(word, base) for word in words)
    except ValueError:
        values = ()
    if len(values) != count or min(values) < 0:
        raise TimingInputError(f"{where} is not `{form}` (integers >= 0): {' '.join(words)[:60]!r}")
    return values


def estimate(elf, blocks_path) -> list[InferenceTiming]:
    """Cycle components of each inference from the plugin's blocks file."""
    image, cache, timings = ElfImage(elf), {}, []
    for blocks, flash in read_blocks(blocks_path):
        timing = InferenceTiming()
        if flash is not None:
            timing.flash_loads, timing.flash_words = flash
        for address, n_insns, execs, jumps in blocks:
            if (address, n_insns) not in cache:
                code, offset = image.at(address)
                cache[address, n_insns] = block_cost(code, offset, n_insns)
            cost = cache[address, n_insns]
            timing.instructions += n_insns * execs
            timing.fixed += cost.fixed * execs
            timing.divides += cost.divides * execs
            timing.refills += jumps
            for cls, n in cost.counts.items():
                timing.counts[cls] = timing.counts.get(cls, 0) + n * execs
                timing.cycles_by_class[cls] = timing.cycles_by_class.get(cls, 0) + cost.cycles[cls] * execs
        timings.append(timing)
    return timings


def summarize(timings: list[InferenceTiming], clock_hz: int = DEFAULT_CLOCK_HZ,
              flash_wait_states: int | None = None) -> dict:
    """Mean per inference: instructions, estimated cycles (with bounds), milliseconds at clock_hz;
    with `flash_wait_states` (and traced flash loads) also the flash-charged cycles."""
    n = max(len(timings), 1)
    mean = lambda values: sum(values) / n                       # noqa: E731
    cycles = mean([t.cycles() for t in timings])
    low, high = mean([t.bounds()[0] for t in timings]), mean([t.bounds()[1] for t in timings])
    flash = {}
    if flash_wait_states is not None and timings and timings[0].flash_words is not None:
        charged = mean([t.cycles_with_flash(flash_wait_states) for t in timings])
        flash = {"flash_wait_states": flash_wait_states,
                 "flash_loads": mean([t.flash_loads for t in timings]),
                 "flash_words": mean([t.flash_words for t in timings]),
                 "cycles_flash": charged, "ms_flash": 1e3 * charged / clock_hz}
    return {
        "model": "cortex-m4 TRM timings, zero wait states",
        "refill_cycles": REFILL_CYCLES, "divide_cycles": DIVIDE_CYCLES,
        "clock_hz": clock_hz, "inferences": len(timings),
        "instructions": mean([t.instructions for t in timings]),
        "cycles": cycles, "cycles_low": low, "cycles_high": high,
        "ms": 1e3 * cycles / clock_hz, "ms_low": 1e3 * low / clock_hz, "ms_high": 1e3 * high / clock_hz,
        "refills": mean([t.refills for t in timings]), "divides": mean([t.divides for t in timings]),
        "by_class": {cls: {"instructions": mean([t.counts.get(cls, 0) for t in timings]),
                           "cycles": mean([t.cycles_by_class.get(cls, 0) for t in timings])}
                     for cls in CLASSES},
        **flash,
    }


def format_summary(summary: dict) -> str:
    lines = [f"instructions {summary['instructions']:,.0f}  cycles {summary['cycles']:,.0f} "
             f"(P=1,D=2 {summary['cycles_low']:,.0f} .. P=3,D=12 {summary['cycles_high']:,.0f})  "
             f"{summary['ms']:.2f} ms at {summary['clock_hz'] / 1e6:g} MHz "
             f"({summary['ms_low']:.2f}..{summary['ms_high']:.2f})",
             f"taken branches {summary['refills']:,.0f}  divides {summary['divides']:,.0f}"
             + (f"  flash data loads {summary['flash_loads']:,.0f} ({summary['flash_words']:,.0f} new "
                f"8-byte words): {summary['cycles_flash']:,.0f} cycles = {summary['ms_flash']:.2f} ms "
                f"at {summary['flash_wait_states']} wait states" if "flash_words" in summary else ""),
             f"{'class':<10}{'instructions':>15}{'cycles':>15}"]
    for cls, row in summary["by_class"].items():
        lines.append(f"{cls:<10}{row['instructions']:>15,.0f}{row['cycles']:>15,.0f}")
    return "\n".join(lines)


@errors.command("python -m cosinegate.bench.m4_timing", expected=(OSError, ValueError))
def main(argv=None) -> int:
    parser = errors.ArgumentParser(prog="python -m cosinegate.bench.m4_timing", description=__doc__.splitlines()[0])
    parser.add_argument("elf", type=Path)
    parser.add_argument("blocks", type=Path, help="the plugin's blocks=PATH file")
    parser.add_argument("--clock-mhz", type=float, default=DEFAULT_CLOCK_HZ / 1e6)
    parser.add_argument("--flash-wait-states", type=int, help="charge traced flash loads this many cycles per new word")
    args = parser.parse_args(argv)
    clock_hz = args.clock_mhz * 1e6
    if not 1 <= clock_hz < math.inf:  # NaN fails the comparison too
        parser.error(f"--clock-mhz must be finite and at least 0.000001 (1 Hz), got {args.clock_mhz:g}")
    if args.flash_wait_states is not None and args.flash_wait_states < 0:
        parser.error(f"--flash-wait-states must be at least 0, got {args.flash_wait_states}")
    print(format_summary(summarize(estimate(args.elf, args.blocks), int(clock_hz), args.flash_wait_states)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
