"""Read the firmware's line protocol from a board's serial port (pyserial).

    text = read_serial("/dev/ttyACM0", baud=115200, timeout_s=30)

Returns everything received up to and including the CG-SUMMARY line (or until the timeout once
protocol lines have arrived). Raises SerialTimeout when no protocol line arrives in time.
"""
import time

from cosinegate.bench.errors import BenchError


class SerialTimeout(BenchError):
    """The port opened but no CosineGate protocol line arrived within the timeout."""


def read_serial(port: str, baud: int = 115200, timeout_s: float = 30.0) -> str:
    import serial
    try:
        link = serial.Serial(port, baud, timeout=0.2)
    except serial.SerialException as e:
        raise BenchError(f"cannot open serial port {port}: {e}") from None
    lines, deadline, seen_protocol = [], time.monotonic() + timeout_s, False
    with link:
        while time.monotonic() < deadline:
            raw = link.readline()
            if not raw:
                continue
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            lines.append(line)
            seen_protocol = seen_protocol or "CG" in line
            if line.lstrip().startswith("CG-SUMMARY"):
                return "\n".join(lines) + "\n"
    if not seen_protocol:
        raise SerialTimeout(f"serial port {port} sent no CosineGate protocol line within {timeout_s:g} s "
                            "(is the firmware flashed and the baud rate right?)")
    return "\n".join(lines) + "\n"
