"""Tests for the firmware line-protocol parser (cosinegate.bench.protocol).

    .venv/bin/python -m pytest tests/test_protocol.py -q
"""
import pytest

from cosinegate.bench.protocol import ProtocolError, parse_lines, parse_text

HEADER = ("CG-HEADER protocol=1 model=digits-5a618d577a69 core=cortex-m4 clock_hz=25000000 "
          "cost=instructions arena_bytes=23120 arena_used=18756 images=3 classes=10 "
          "gated_blocks=3")
QEMU_RUN = f"""\
{HEADER}
CG idx=0 label=6 pred=6 gates=000 instructions=937515
CG idx=1 label=6 pred=4 gates=111 instructions=15728727
CG idx=2 label=2 pred=2 gates=101 instructions=10000000
CG-SUMMARY images=3 correct=2 failed=0 gates_on=2,1,2
"""


def test_parses_a_complete_qemu_run():
    run = parse_text(QEMU_RUN)
    assert run.header.model == "digits-5a618d577a69"
    assert run.header.cost_unit == "instructions"
    assert run.header.arena_used == 18756 and run.header.gated_blocks == 3
    assert [i.pred for i in run.inferences] == [6, 4, 2]
    assert [i.gates for i in run.inferences] == ["000", "111", "101"]
    assert run.inferences[1].cost == 15728727
    assert {i.cost_unit for i in run.inferences} == {"instructions"}
    assert run.summary.gates_on == (2, 1, 2) and run.summary.correct == 2
    assert run.accuracy == pytest.approx(2 / 3)
    assert run.skipped_lines == 0 and run.errors == []


def test_board_lines_use_cycles_and_a_plain_model_has_no_gates():
    run = parse_lines([
        "CG-HEADER protocol=1 model=m core=cortex-m7 clock_hz=480000000 cost=cycles "
        "arena_bytes=6000 arena_used=5000 images=1 classes=10 gated_blocks=0",
        "CG idx=0 label=1 pred=1 gates=- cycles=1234567",
        "CG-SUMMARY images=1 correct=1 failed=0 gates_on=-",
    ])
    inference = run.inferences[0]
    assert (inference.gates, inference.cost, inference.cost_unit) == ("", 1234567, "cycles")
    assert run.summary.gates_on == ()


def test_garbage_and_truncated_lines_are_skipped_and_counted():
    noisy = ("\x00\xffboot rom v1.2\n"
             f"{HEADER}\n"
             "CG idx=0 label=6 pred=6 gates=000 instructions=937515\n"
             "CG idx=1 label=6 pr\n"                       # cut mid-line
             "CG idx=2 label=2 pred=2 gates=1\n"           # gate string cut short
             "CG idx=3 label=x pred=2 gates=101 cycles=5\n"  # corrupted number
             "\x1b[0m>>> CG idx=4 label=1 pred=1 gates=110 instructions=42\n"
             "CG-SUMMARY images=5 correct=")
    run = parse_text(noisy)
    assert [i.idx for i in run.inferences] == [0, 4]
    assert run.skipped_lines == 5
    assert run.summary is None


def test_missing_cost_is_none_not_an_error():
    run = parse_text(HEADER + "\nCG idx=0 label=1 pred=1 gates=011\n")
    assert run.inferences[0].cost is None and run.inferences[0].cost_unit is None


def test_error_lines_and_tflm_comments():
    run = parse_text("# TFLM: Didn't find op for builtin opcode 'TRANSPOSE'\n"
                     "CG-ERROR reason=op AllocateTensors failed (see '# TFLM:' lines)\n")
    assert run.errors[0].reason == "op"
    assert run.errors[0].message.startswith("AllocateTensors failed")
    assert run.comments == ["TFLM: Didn't find op for builtin opcode 'TRANSPOSE'"]


def test_no_protocol_line_raises_a_clear_error():
    with pytest.raises(ProtocolError, match="no CosineGate protocol line"):
        parse_text("hello\nworld\n# TFLM: only a comment\n")
