"""The ports' start-up code, the STM32F4 clock and USART bring-up and the Cortex-M4 timing model
on real emulated execution, without TFLM (tests/bare/*.cc, a few seconds to build and run).

- m4_loop.cc on QEMU mps2-an386 with the instruction-count plugin: a loop of known instructions
  (ldr, ldr, smlad, subs, bne; 1000 times) must come out of the block trace with the TRM's
  cycles: 2 + 1 (pipelined load) + 1 + 1 + 1 per iteration, a refill per taken branch, and its
  2000 loads from flash must be counted as such.
- core_boot.cc on each QEMU core of cosinegate.bench.qemu.CORES (Cortex-M4, M7, M33, M55), with
  that core's GCC flags and linker script: the start-up must have initialised .data and .bss and
  enabled the FPU, and on the Cortex-M55 the MVE, whose instructions fault otherwise.
- stm32f4_hello.cc on QEMU netduinoplus2 (an STM32F405 model): text must arrive on USART1, the
  clock set-up must give up on the PLL QEMU does not model and report the 16 MHz HSI, and the
  reset handler must have initialised .data and .bss.
Needs arm-none-eabi-gcc + newlib, qemu-system-arm and cc.
"""
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from cosinegate.bench import qemu, stm32f4

TOOLS = ["arm-none-eabi-g++", "arm-none-eabi-nm", "qemu-system-arm", "cc"]
pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                reason=f"needs {', '.join(TOOLS)} (firmware/README.md)")

BARE = Path(__file__).parent / "bare"
PORTS = qemu.FIRMWARE_DIR / "ports"
CPU = ["-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard", "-mthumb"]
LOOP_ITERATIONS = 1000


def _link(sources, linker_script, elf: Path, defines=(), cpu=CPU) -> Path:
    command = ["arm-none-eabi-g++", *cpu, "-std=c++17", "-Os", "-fno-rtti", "-fno-exceptions",
               "-ffunction-sections", "-fdata-sections", f"-I{qemu.FIRMWARE_DIR}", *defines,
               # -L: the QEMU machines' scripts INCLUDE qemu_sections.ld from their folder
               f"-T{linker_script}", f"-L{Path(linker_script).parent}", "-Wl,--gc-sections", "-Wl,-u,g_cg_vector_table",
               "--specs=nano.specs", "--specs=nosys.specs", *map(str, sources), "-o", str(elf)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return elf


def test_known_loop_gets_the_trm_cycles(tmp_path):
    elf = _link([BARE / "m4_loop.cc", PORTS / "cortex_m" / "startup.cc",
                 PORTS / "qemu" / "text_output.cc", PORTS / "qemu" / "cost_meter.cc"],
                PORTS / "qemu" / "mps2_an386.ld", tmp_path / "loop.elf")
    result = qemu.run_firmware(elf, qemu.build_plugin(tmp_path), timeout_s=120, flash_loads=True)
    assert result.returncode == 0, result.output
    inference, = result.log.inferences
    assert inference.pred == inference.label == 0, result.output
    counted = inference.cost
    timing, = result.timing
    assert timing.instructions == counted
    # The loop, plus a few instructions around it inside the markers.
    assert 5 * LOOP_ITERATIONS <= counted < 5 * LOOP_ITERATIONS + 20
    assert timing.counts["mul"] == LOOP_ITERATIONS and timing.counts["load"] >= 2 * LOOP_ITERATIONS
    extra = counted - 5 * LOOP_ITERATIONS
    assert 6 * LOOP_ITERATIONS <= timing.fixed <= 6 * LOOP_ITERATIONS + 2 * extra
    # 999 taken loop branches, the fall-through one is not a refill; plus the calls around.
    assert LOOP_ITERATIONS - 1 <= timing.refills <= LOOP_ITERATIONS + 3
    assert timing.divides == 0
    # The operands are constants in one 8-byte flash word: every load is a flash load, and
    # after the first, the same word again.
    assert 2 * LOOP_ITERATIONS <= timing.flash_loads < 2 * LOOP_ITERATIONS + 10
    assert 1 <= timing.flash_words < 10


@pytest.mark.parametrize("core", qemu.CORES)
def test_start_up_enables_fpu_and_mve_on_each_qemu_core(core, tmp_path):
    spec = qemu.CORES[core]
    elf = _link([BARE / "core_boot.cc", PORTS / "cortex_m" / "startup.cc",
                 PORTS / "qemu" / "text_output.cc", PORTS / "qemu" / "cost_meter.cc"],
                spec.linker_script, tmp_path / "boot.elf", cpu=[*spec.cpu_flags.split(), "-mthumb"])
    # The vector table sits where the machine's core reads it at reset (the Secure alias on M33/M55).
    assert qemu.marker_addresses(elf)["begin"] >= spec.flash[0]
    result = qemu.run_firmware(elf, qemu.build_plugin(tmp_path), timeout_s=60, core=core)
    assert result.returncode == 0, result.output
    inference, = result.log.inferences
    assert inference.pred == inference.label == 0, result.output
    assert inference.cost > 0
    # The Cortex-M4 cycle model runs on the Cortex-M4 only.
    assert (result.timing is not None) == (core == qemu.TIMED_CORE)


def test_stm32f4_start_up_clock_and_usart_on_netduinoplus2(tmp_path):
    elf = _link([BARE / "stm32f4_hello.cc", PORTS / "cortex_m" / "startup.cc",
                 PORTS / "stm32f4" / "stm32f4_glue.cc"], PORTS / "stm32f4" / "stm32f405.ld",
                tmp_path / "hello.elf")
    process = subprocess.Popen(stm32f4.qemu_command(elf), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    watchdog = threading.Timer(120, process.kill)   # no line at all: fail, do not hang
    watchdog.start()
    try:
        line = process.stdout.readline()
    finally:
        watchdog.cancel()
        process.kill()
        process.wait()
    assert line.strip() == "CG-HELLO clock_hz=16000000 init=ok"
