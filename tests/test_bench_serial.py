"""The serial reader against a pseudo-terminal pair fed with a recorded firmware log."""
import os
import threading
import time

import pytest

from cosinegate.bench.protocol import parse_text
from cosinegate.bench.serial_reader import SerialTimeout, read_serial

RECORDED = """\
boot rom v1.2 \x00\x7f garbage
CG-HEADER protocol=1 model=digits-1a2b core=cortex-m4 clock_hz=25000000 cost=instructions arena_bytes=20000 arena_used=18432 images=3 classes=10 gated_blocks=3
CG idx=0 label=5 pred=5 gates=101 instructions=1234567
CG idx=1 label=3 pred=3 gat
CG idx=2 label=7 pred=1 gates=001 instructions=987654
CG-SUMMARY images=3 correct=1 failed=0 gates_on=1,0,3
"""


def _pty_pair():
    master, slave = os.openpty()
    return master, os.ttyname(slave), slave


def test_reads_until_summary_and_tolerates_garbage():
    master, name, slave = _pty_pair()

    def feed():
        time.sleep(0.2)
        for line in RECORDED.splitlines(keepends=True):
            os.write(master, line.encode("latin-1"))
            time.sleep(0.01)

    threading.Thread(target=feed, daemon=True).start()
    text = read_serial(name, timeout_s=10)
    run = parse_text(text)
    assert [i.idx for i in run.inferences] == [0, 2]        # the truncated line is skipped
    assert run.skipped_lines >= 2 and run.summary.images == 3
    assert run.header.cost_unit == "instructions"
    os.close(master), os.close(slave)


def test_silent_port_times_out_with_one_line():
    master, name, slave = _pty_pair()
    t0 = time.monotonic()
    with pytest.raises(SerialTimeout, match="no CosineGate protocol line within 1 s"):
        read_serial(name, timeout_s=1)
    assert time.monotonic() - t0 < 5
    os.close(master), os.close(slave)
