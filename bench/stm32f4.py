"""Build the STM32F405/407 port (firmware/ports/stm32f4) for an export; run it under QEMU's
`netduinoplus2` (an STM32F405 model, text read from the emulated USART1) or flash it with pyOCD.

    python -m cosinegate.bench.stm32f4 EXPORT_DIR --tflm-root $CG_TFLM_ROOT --images-dir IMAGES --qemu
    python -m cosinegate.bench.stm32f4 EXPORT_DIR --tflm-root $CG_TFLM_ROOT --images-dir IMAGES --flash
    cg-bench EXPORT_DIR --serial /dev/ttyACM0 --out runs/stm32f4     # then read the board

`--flash` runs `pyocd flash --target stm32f405rg ELF` (pip install pyocd; any CMSIS-DAP,
ST-LINK or J-Link probe pyOCD drives). The board prints the protocol lines with `cycles=`
(DWT) at 115200 baud on USART1 (TX PA9) unless `--usart 2` (TX PA2). Under QEMU the clock tree
and the DWT are not modelled: the firmware stays on the 16 MHz HSI and prints `cycles=0`, so
the QEMU run checks the port (start-up, USART, predictions, gates), not its speed.
"""
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from cosinegate import errors
from cosinegate.bench.protocol import RunLog, parse_text
from cosinegate.bench.qemu import (FIRMWARE_DIR, TOOLCHAIN_FILE, FirmwareBuildError, _run,
                                   find_tflm_library, firmware_size)
from cosinegate.export.integrity import IntegrityError, read_export

PORT_DIR = FIRMWARE_DIR / "ports" / "stm32f4"
QEMU_MACHINE = "netduinoplus2"
PYOCD_TARGET = "stm32f405rg"
RUN_TIMEOUT_S = 900
# The lines after which the firmware prints nothing more (it then idles in WFI, never exits).
LAST_LINES = ("CG-SUMMARY", "CG-ERROR")


def build_firmware(export_dir, tflm_root, tflm_lib, kernels: str, build_dir, images_dir=None,
                   usart: int = 1, hse_hz: int = 8_000_000) -> Path:
    """Configure and build the STM32F4 port with CMake; returns the .elf path."""
    build_dir = Path(build_dir)
    _run(["cmake", "-S", PORT_DIR, "-B", build_dir, f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN_FILE}",
          "-DCMAKE_BUILD_TYPE=Release", f"-DTFLM_ROOT={Path(tflm_root).resolve()}",
          f"-DTFLM_LIB={Path(tflm_lib).resolve()}", f"-DCG_TFLM_KERNELS={kernels}",
          f"-DCG_MODEL_DIR={Path(export_dir).resolve()}",
          f"-DCG_IMAGES_DIR={Path(images_dir or export_dir).resolve()}",
          f"-DCG_STM32_USART={usart}", f"-DCG_STM32_HSE_HZ={hse_hz}"], "cmake configure")
    _run(["cmake", "--build", build_dir, "-j2"], "cmake build")
    return build_dir / "cosinegate_stm32f4.elf"


def qemu_command(elf) -> list[str]:
    # -serial stdio is USART1; the board's DWT writes go to QEMU's unmodelled PPB space.
    return ["qemu-system-arm", "-M", QEMU_MACHINE, "-nographic", "-monitor", "none",
            "-serial", "stdio", "-kernel", str(elf)]


def run_qemu(elf, timeout_s: float = RUN_TIMEOUT_S) -> tuple[RunLog, str]:
    """Run the firmware under netduinoplus2 until its last protocol line; (parsed log, text)."""
    process = subprocess.Popen(qemu_command(elf), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, text=True, errors="replace")
    watchdog = threading.Timer(timeout_s, process.kill)
    watchdog.start()
    lines, finished = [], False
    try:
        for line in process.stdout:
            lines.append(line)
            if line.lstrip().startswith(LAST_LINES):
                finished = True
                break
    finally:
        watchdog.cancel()
        process.kill()
        process.wait()
    output = "".join(lines)
    if not finished:
        raise FirmwareBuildError(f"{elf}: no CG-SUMMARY or CG-ERROR line within {timeout_s:g} s; "
                                 f"last output:\n{output[-2000:]}")
    return parse_text(output), output


def find_pyocd() -> str | None:
    """pyocd beside this Python (a virtual environment's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "pyocd"
    return str(beside) if beside.is_file() else shutil.which("pyocd")


def flash(elf, target: str = PYOCD_TARGET, probe: str | None = None) -> str:
    """Program the board through pyOCD; FirmwareBuildError with pyOCD's words when it cannot."""
    pyocd = find_pyocd()
    if pyocd is None:
        raise FirmwareBuildError("pyocd is not on PATH: pip install pyocd")
    command = [pyocd, "flash", "--no-wait", "--target", target, *(["--uid", probe] if probe else []), str(elf)]
    result = subprocess.run(command, capture_output=True, text=True)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise FirmwareBuildError(f"{' '.join(command)} failed: {output[-1000:]}")
    return output


@errors.command("stm32f4", expected=(OSError, FirmwareBuildError, IntegrityError))
def main(argv=None) -> int:
    parser = errors.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--tflm-root", type=Path, required=True,
                        help="tflite-micro checkout where TFLM's Makefile built the Cortex-M4 library")
    parser.add_argument("--kernels", choices=("reference", "cmsis_nn"), default="cmsis_nn")
    parser.add_argument("--images-dir", type=Path, help="test_images.cc folder (default: export)")
    parser.add_argument("--build-dir", type=Path, default=Path("build/firmware-stm32f4"))
    parser.add_argument("--usart", type=int, choices=(1, 2), default=1, help="1: TX PA9, 2: TX PA2")
    parser.add_argument("--hse-hz", type=int, default=8_000_000, help="HSE crystal; 0 = none (HSI)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--qemu", action="store_true", help="run it under qemu-system-arm -M netduinoplus2")
    action.add_argument("--flash", action="store_true", help="program the board with pyocd")
    parser.add_argument("--target", default=PYOCD_TARGET, help=f"pyOCD target (default {PYOCD_TARGET})")
    parser.add_argument("--probe", help="pyOCD probe unique id, when several are connected")
    args = parser.parse_args(argv)
    read_export(args.export_dir)
    lib = find_tflm_library(args.tflm_root, args.kernels)
    elf = build_firmware(args.export_dir, args.tflm_root, lib, args.kernels, args.build_dir,
                         args.images_dir, args.usart, args.hse_hz)
    size = firmware_size(elf)
    print(f"stm32f4: {elf}: flash {size.flash:,} B of 1,048,576, RAM {size.ram + size.stack:,} B "
          f"of 131,072 ({size.stack:,} B of it stack)")
    if args.qemu:
        log, _ = run_qemu(elf)
        print(f"stm32f4: {QEMU_MACHINE}: {log.header}")
        print(f"stm32f4: {len(log.inferences)} inferences, accuracy {log.accuracy:.3f}, "
              f"errors {[e.reason for e in log.errors]}")
        return 1 if log.errors or log.header is None else 0
    if args.flash:
        print(flash(elf, args.target, args.probe))
        print(f"stm32f4: flashed; read it with: cg-bench {args.export_dir} --serial PORT --baud 115200")
    return 0


if __name__ == "__main__":
    sys.exit(main())
