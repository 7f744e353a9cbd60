"""Host tests for the firmware's hardware seams and protocol lines, without TFLM.

Compiles each firmware/core/*_test.cc with the host g++ against the host port
(firmware/ports/host: captured text, steady-clock cost, exiting board), runs it and
expects exit status 0; then feeds the run that protocol_format_test prints to
cosinegate.bench.protocol.parse_text and checks every value comes back (C++ formats,
Python parses: the two sides of the protocol agree).

    .venv/bin/python -m pytest tests/test_firmware_seams.py -q
Needs g++ (skips without it); a few seconds.
"""
import shutil
import subprocess
from pathlib import Path

import pytest

from cosinegate.bench.protocol import FirmwareError, Header, Summary, parse_text

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware"
HOST_PORT = ["ports/host/text_output.cc", "ports/host/cost_meter.cc", "ports/host/board.cc"]
# Each test's core sources besides the test itself; every test links the host port.
SEAM_TESTS = {
    "text_output_test": [],
    "cost_meter_test": [],
    "board_test": [],
    "tflm_log_test": ["core/tflm_log.cc"],
    "protocol_format_test": ["core/protocol_format.cc"],
}
CXXFLAGS = ["-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{FIRMWARE}"]
RUN_TIMEOUT_S = 30

if shutil.which("g++") is None:
    pytest.skip("g++ not found: the firmware seam tests compile with the host g++",
                allow_module_level=True)


@pytest.fixture(scope="module")
def host_port_objects(tmp_path_factory):
    """The host port compiled once (-c) for every test to link."""
    out = tmp_path_factory.mktemp("host_port")
    objects = []
    for source in HOST_PORT:
        obj = out / (Path(source).stem + ".o")
        build = subprocess.run(["g++", *CXXFLAGS, "-c", str(FIRMWARE / source), "-o", str(obj)],
                               capture_output=True, text=True)
        assert build.returncode == 0, build.stderr
        objects.append(str(obj))
    return objects


def _build_and_run(name: str, objects: list[str], out: Path) -> subprocess.CompletedProcess:
    binary = out / name
    sources = [str(FIRMWARE / path) for path in [f"core/{name}.cc", *SEAM_TESTS[name]]]
    build = subprocess.run(["g++", *CXXFLAGS, *sources, *objects, "-o", str(binary)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    return subprocess.run([str(binary)], capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


@pytest.fixture(scope="module")
def protocol_run(host_port_objects, tmp_path_factory):
    return _build_and_run("protocol_format_test", host_port_objects,
                          tmp_path_factory.mktemp("protocol_format"))


@pytest.mark.parametrize("name", [n for n in SEAM_TESTS if n != "protocol_format_test"])
def test_seam_test_passes(name, host_port_objects, tmp_path):
    result = _build_and_run(name, host_port_objects, tmp_path)
    assert result.returncode == 0, result.stderr


def test_protocol_format_matches_golden_lines(protocol_run):
    assert protocol_run.returncode == 0, protocol_run.stderr


def test_python_parser_reads_what_the_firmware_prints(protocol_run):
    # The values PrintRun() in firmware/core/protocol_format_test.cc formats.
    run = parse_text(protocol_run.stdout)
    assert run.skipped_lines == 0 and run.comments == []
    assert run.header == Header(protocol=1, model="digits-5a618d577a69", core="host",
                                clock_hz=1_000_000_000, cost_unit="cycles", arena_bytes=23120,
                                arena_used=18756, images=3, classes=10, gated_blocks=3)
    assert [(i.idx, i.label, i.pred, i.gates) for i in run.inferences] == [
        (0, 6, 6, "101"), (1, 2, 4, "000")]
    # The host meter's count varies run to run; its key and a whole number must not.
    assert all(i.cost_unit == "cycles" and i.cost >= 0 for i in run.inferences)
    assert run.errors == [FirmwareError(reason="invoke",
                                        message="idx=2 Invoke() failed, continuing")]
    assert run.summary == Summary(images=3, correct=1, failed=1, gates_on=(1, 0, 1))
