"""The Cortex-M4 timing model (cosinegate.bench.m4_timing): decoding, pipelining, ELF and trace.

The encodings are arm-none-eabi-as output for the instruction in each comment; the cycle counts
are those of the Cortex-M4 TRM's table 3-1 at zero wait states. No toolchain needed.
"""
import struct

import pytest

from cosinegate.bench import m4_timing

# (halfwords, class, fixed cycles): one row per instruction kind the model separates.
ENCODINGS = [
    ((0x1C48,), "alu", 1),               # adds r0, r1, #1
    ((0x4348,), "mul", 1),               # muls r0, r1
    ((0xFB01, 0x3002), "mul", 1),        # mla r0, r1, r2, r3
    ((0xFB21, 0x3002), "mul", 1),        # smlad r0, r1, r2, r3
    ((0xFB82, 0x0103), "mul", 1),        # smull r0, r1, r2, r3
    ((0xFB91, 0xF0F2), "div", 0),        # sdiv r0, r1, r2   (D cycles, added per divide)
    ((0xFBB1, 0xF0F2), "div", 0),        # udiv r0, r1, r2
    ((0x6808,), "load", 2),              # ldr r0, [r1]
    ((0x5888,), "load", 2),              # ldr r0, [r1, r2]
    ((0xF8D6, 0x5064), "load", 2),       # ldr.w r5, [r6, #100]
    ((0xF916, 0x5007), "load", 2),       # ldrsb.w r5, [r6, r7]
    ((0x4807,), "load", 2),              # ldr r0, [pc, #28]
    ((0x8863,), "load", 2),              # ldrh r3, [r4, #2]
    ((0xE851, 0x0F00), "load", 2),       # ldrex r0, [r1]
    ((0x6008,), "store", 1),             # str r0, [r1]
    ((0xF841, 0x0F08), "store", 1),      # str.w r0, [r1, #8]!
    ((0xF841, 0x0022), "store", 2),      # str.w r0, [r1, r2, lsl #2]
    ((0xE9D2, 0x0100), "multiple", 3),   # ldrd r0, r1, [r2]
    ((0xE9C2, 0x0102), "multiple", 3),   # strd r0, r1, [r2, #8]
    ((0xC80E,), "multiple", 4),          # ldmia r0!, {r1, r2, r3}
    ((0xB530,), "multiple", 4),          # push {r4, r5, lr}
    ((0xBD30,), "multiple", 4),          # pop {r4, r5, pc}       (+P from the trace)
    ((0xE92D, 0x4FF0), "multiple", 10),  # push.w {r4-r11, lr}
    ((0xE7FF,), "branch", 1),            # b.n
    ((0xD0FE,), "branch", 1),            # beq.n
    ((0xB108,), "branch", 1),            # cbz r0, ...
    ((0x4770,), "branch", 1),            # bx lr
    ((0x4798,), "branch", 1),            # blx r3
    ((0x4687,), "branch", 1),            # mov pc, r0
    ((0xF7FF, 0xFFF9), "branch", 1),     # bl
    ((0xE8D0, 0xF001), "branch", 2),     # tbb [r0, r1]
    ((0xF85D, 0xFB04), "load", 2),       # ldr.w pc, [sp], #4
    ((0xBF08,), "other", 1),             # it eq
    ((0xF890, 0xF000), "other", 1),      # pld [r0]
    ((0xF3BF, 0x8F5F), "other", 2),      # dmb sy
    ((0xF301, 0x0007), "alu", 1),        # ssat r0, #8, r1
    ((0xFA2F, 0xF081), "alu", 1),        # sxtb16 r0, r1
    ((0xFA91, 0xF002), "alu", 1),        # sadd16 r0, r1, r2
    ((0xEE00, 0x0A81), "fp", 3),         # vmla.f32 s0, s1, s2
    ((0xEE30, 0x0A81), "fp", 1),         # vadd.f32 s0, s1, s2
    ((0xEE80, 0x0A81), "fp", 14),        # vdiv.f32 s0, s1, s2
    ((0xEEB1, 0x0AE0), "fp", 14),        # vsqrt.f32 s0, s1
    ((0xED90, 0x0A00), "fp", 2),         # vldr s0, [r0]
    ((0xED2D, 0x8A04), "fp", 5),         # vpush {s16-s19}
    ((0xEE10, 0x0A10), "fp", 1),         # vmov r0, s0
]


def _code(*halfwords) -> bytes:
    return b"".join(struct.pack("<H", h) for h in halfwords)


@pytest.mark.parametrize("halfwords, cls, cycles", ENCODINGS, ids=lambda v: f"{v}" if isinstance(v, str) else None)
def test_decode_class_and_cycles(halfwords, cls, cycles):
    insn = m4_timing.decode(_code(*halfwords))
    assert (insn.size, insn.cls, insn.cycles) == (2 * len(halfwords), cls, cycles)


def test_consecutive_loads_pipeline_unless_the_address_depends_on_the_load():
    ldr_r0_r1, ldr_r2_r3_4, ldr_r1_r0 = 0x6808, 0x685A, 0x6801   # ldr r1, [r0] depends on r0
    assert m4_timing.block_cost(_code(ldr_r0_r1, ldr_r2_r3_4), 0, 2).fixed == 3   # 2 + 1
    assert m4_timing.block_cost(_code(ldr_r0_r1, ldr_r1_r0), 0, 2).fixed == 4     # 2 + 2
    # Nothing pipelines after a store: str r0, [r1]; ldr r2, [r3, #4] = 1 + 2.
    assert m4_timing.block_cost(_code(0x6008, ldr_r2_r3_4), 0, 2).fixed == 3
    # A register-offset store after a load takes 1: ldr r0, [r1]; str.w r0, [r1, r2, lsl #2].
    assert m4_timing.block_cost(_code(ldr_r0_r1, 0xF841, 0x0022), 0, 2).fixed == 3


def _elf(code: bytes, address: int) -> bytes:
    """A minimal ELF32 with one executable PT_LOAD segment holding `code` at `address`."""
    header = bytearray(52)
    header[:6] = b"\x7fELF\x01\x01"
    struct.pack_into("<HHIIIIIHHHHHH", header, 16, 2, 40, 1, address, 52, 0, 0, 52, 32, 1, 0, 0, 0)
    program = struct.pack("<8I", 1, 84, address, address, len(code), len(code), 5, 4)
    return bytes(header) + program + code


def test_estimate_adds_refills_for_jumps_and_divides(tmp_path):
    # Block A at 0x100: ldr r0, [r1]; ldr r2, [r3, #4]; sdiv r0, r1, r2; beq.n  -> fixed 2+1+0+1
    # Block B at 0x10a: adds r0, r1, #1; bx lr                                    -> fixed 2
    code = _code(0x6808, 0x685A, 0xFB91, 0xF0F2, 0xD0FE, 0x1C48, 0x4770)
    elf = tmp_path / "fw.elf"
    elf.write_bytes(_elf(code, 0x100))
    blocks = tmp_path / "blocks.txt"
    # 10 runs of A, 4 of them branching away; 6 runs of B, all returning (jumps).
    blocks.write_text("inference 0\nflash 20 7\n0x100 4 10 4\n0x10a 2 6 6\ninference 1\nflash 0 0\n"
                      "0x10a 2 1 1\n")
    first, second = m4_timing.estimate(elf, blocks)
    assert first.instructions == 4 * 10 + 2 * 6
    assert (first.fixed, first.refills, first.divides) == (4 * 10 + 2 * 6, 10, 10)
    assert first.cycles(refill=2, divide=7) == 52 + 2 * 10 + 7 * 10
    assert first.bounds() == (52 + 10 + 20, 52 + 30 + 120)
    assert first.counts == {"load": 20, "div": 10, "branch": 16, "alu": 6}
    assert second.cycles(refill=3, divide=2) == 2 + 3
    assert (first.flash_loads, first.flash_words) == (20, 7)
    assert first.cycles_with_flash(5) == 142 + 5 * 7
    summary = m4_timing.summarize([first, second], clock_hz=1000, flash_wait_states=5)
    assert summary["cycles"] == pytest.approx((142 + 4) / 2)
    assert summary["ms"] == pytest.approx(1e3 * 73 / 1000)
    assert summary["cycles_flash"] == pytest.approx((142 + 35 + 4) / 2)
    assert "flash_words" not in m4_timing.summarize([second], clock_hz=1000)


def test_an_address_outside_the_elf_is_an_error(tmp_path):
    elf = tmp_path / "fw.elf"
    elf.write_bytes(_elf(_code(0x4770), 0x100))
    blocks = tmp_path / "blocks.txt"
    blocks.write_text("inference 0\n0x2000 1 1 1\n")
    with pytest.raises(ValueError, match="0x2000"):
        m4_timing.estimate(elf, blocks)
