"""Flashing the STM32F4 port with pyOCD (cosinegate.bench.stm32f4.flash) without a board.

With no debug probe attached, flashing must stop at once with pyOCD's own reason, not wait for
a probe or report success. Needs pyocd (the `dev` and `board` extras); no TFLM, no toolchain.
"""
import pytest

from cosinegate.bench import stm32f4
from cosinegate.bench.qemu import FirmwareBuildError

pytestmark = pytest.mark.skipif(stm32f4.find_pyocd() is None,
                                reason="pyocd is not installed (pip install -e '.[board]')")


def test_flash_without_a_probe_says_so(tmp_path):
    elf = tmp_path / "cosinegate_stm32f4.elf"
    elf.write_bytes(b"\x7fELF")
    with pytest.raises(FirmwareBuildError, match="No connected debug probes"):
        stm32f4.flash(elf)


def test_the_command_names_the_part_and_does_not_wait(monkeypatch, tmp_path):
    seen = {}

    def fake_run(command, **kwargs):
        seen["command"] = command
        raise SystemExit
    monkeypatch.setattr(stm32f4.subprocess, "run", fake_run)
    with pytest.raises(SystemExit):
        stm32f4.flash(tmp_path / "fw.elf", probe="0669FF")
    assert seen["command"][1:] == ["flash", "--no-wait", "--target", "stm32f405rg", "--uid", "0669FF",
                                   str(tmp_path / "fw.elf")]
