"""Build the QEMU firmware port for an export and run it on an emulated Cortex-M4, M7, M33 or M55.

The cost under QEMU is instructions executed inside Invoke(), counted by the project's
TCG plugin (firmware/ports/qemu/plugin) with `-icount shift=0`, so counts repeat exactly.
Needs arm-none-eabi-gcc + newlib, cmake, qemu-system-arm and a host C compiler, plus a
TFLM library built by TFLM's own Makefile for the core (firmware/README.md says how).

    python -m cosinegate.bench.qemu EXPORT_DIR --tflm-root /path/to/tflite-micro [--core m4] \
        [--kernels reference cmsis_nn] [--images-dir DIR] [--build-dir DIR] [--profile 25]

`--core` picks the QEMU machine (CORES: m4 mps2-an386, m7 mps2-an500, m33 mps2-an505,
m55 mps3-an547) and the TFLM library built for it. `--profile N` also prints where the
instructions go: the N functions that execute the most instructions per inference (the
plugin's per-block counts mapped to symbols with nm).

On the Cortex-M4 it also prints estimated cycles and milliseconds at `--clock-mhz` (default
120): the Cortex-M4 TRM's instruction timings at zero wait states applied to the executed
blocks (cosinegate.bench.m4_timing), with the bounds of the TRM's ranges. That model is the
M4's alone, so for the other cores the figure is instructions only: the M7 can issue two
instructions per cycle, the M55 runs its vector instructions in beats, and QEMU times nothing.

From Python:
    lib = find_tflm_library(tflm_root, "cmsis_nn", CORES["m7"].tflm_target_arch)
    elf = build_firmware(export_dir, tflm_root, lib, "cmsis_nn", build_dir, core="m7")
    result = run_firmware(elf, build_plugin(build_dir), core="m7")   # result.log is a RunLog
"""
import bisect
import importlib.resources
import json
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from cosinegate import errors
from cosinegate.bench import m4_timing
from cosinegate.bench.protocol import RunLog, parse_text
from cosinegate.export.integrity import IntegrityError, read_export

# The firmware sources ship inside the package (cosinegate.firmware), editable install or not.
FIRMWARE_DIR = Path(str(importlib.resources.files("cosinegate.firmware")))
QEMU_PORT_DIR = FIRMWARE_DIR / "ports" / "qemu"
TOOLCHAIN_FILE = FIRMWARE_DIR / "cmake" / "arm-none-eabi.cmake"
PLUGIN_SOURCE = QEMU_PORT_DIR / "plugin" / "cg_insn_count.c"
KERNELS = ("reference", "cmsis_nn")


@dataclass(frozen=True)
class QemuCore:
    """One emulated core: the QEMU machine, the TFLM library and the GCC flags to build for it."""
    name: str               # e.g. "cortex-m7", as the firmware's header line prints it
    machine: str            # qemu-system-arm -M; the port's CMakeLists.txt and linker script key
    tflm_target_arch: str   # TFLM's TARGET_ARCH (cortex_m_generic) the library is built for
    cpu_flags: str          # CG_ARM_CPU_FLAGS: what TFLM's cortex_m_generic target passes for that arch
    flash: tuple[int, int]  # [start, end) of the code and constants (the model's weights), per the linker script

    @property
    def linker_script(self) -> Path:
        return QEMU_PORT_DIR / f"{self.machine.replace('-', '_')}.ld"


# Memory maps from QEMU's hw/arm/mps2.c and mps2-tz.c; the TrustZone boards (an505, an547)
# boot Secure and run from the Secure alias (address bit 28 set) of their boot memory.
CORES = {
    "m4": QemuCore("cortex-m4", "mps2-an386", "cortex-m4+fp", "-mcpu=cortex-m4 -mfpu=fpv4-sp-d16 -mfloat-abi=hard",
                   (0x0, 0x400000)),
    "m7": QemuCore("cortex-m7", "mps2-an500", "cortex-m7+fp", "-mcpu=cortex-m7 -mfpu=fpv5-d16 -mfloat-abi=hard",
                   (0x0, 0x400000)),
    "m33": QemuCore("cortex-m33", "mps2-an505", "cortex-m33", "-mcpu=cortex-m33 -mfpu=fpv5-sp-d16 -mfloat-abi=hard",
                    (0x10000000, 0x10400000)),
    # -mfpu=auto: the FPU and the MVE (Helium) that -mcpu=cortex-m55 implies, as TFLM builds it.
    "m55": QemuCore("cortex-m55", "mps3-an547", "cortex-m55", "-mcpu=cortex-m55 -mfpu=auto -mfloat-abi=hard",
                    (0x10000000, 0x10080000)),
}
DEFAULT_CORE = "m4"
# The Cortex-M4 cycle model (m4_timing) applies to this core only.
TIMED_CORE = "m4"
MARKERS = {"begin": "CgCostMeterBegin", "end": "CgCostMeterEnd", "report": "CgCostMeterReport"}
RUN_TIMEOUT_S = 600
# What TFLM prints (through the "# TFLM: " log) before it spins forever on a failed check.
TFLM_HALT_MESSAGE = "HALTED"


class FirmwareBuildError(RuntimeError):
    """Configuring, building or running the firmware failed; the message holds the tool output."""


@dataclass(frozen=True)
class QemuResult:
    log: RunLog
    output: str            # everything QEMU printed (firmware text and plugin counts)
    returncode: int        # 0 when the firmware stopped with every inference ok
    timing: list | None = None   # m4_timing.InferenceTiming per inference, when blocks were traced (M4)


@dataclass(frozen=True)
class FirmwareSize:
    text: int              # bytes: code, read-only data (the model, the images), exidx
    data: int              # initialised RAM, also stored in flash
    bss: int               # zeroed RAM: the tensor arena, interpreter state
    stack: int             # main stack reserved by the linker script

    @property
    def flash(self) -> int:
        return self.text + self.data

    @property
    def ram(self) -> int:
        return self.data + self.bss


def missing_tools() -> list[str]:
    """Executables this module needs that are not on PATH."""
    tools = ["arm-none-eabi-g++", "arm-none-eabi-nm", "arm-none-eabi-size", "cmake",
             "qemu-system-arm", "cc"]
    return [tool for tool in tools if shutil.which(tool) is None]


def find_tflm_library(tflm_root, kernels: str, target_arch: str = CORES[DEFAULT_CORE].tflm_target_arch) -> Path:
    """libtensorflow-microlite.a that TFLM's Makefile built under tflm_root/gen for `kernels`.

    TFLM names its output folder cortex_m_generic_<arch>_<build type>[_cmsis_nn]_gcc.
    """
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    candidates = sorted(Path(tflm_root).glob(
        f"gen/cortex_m_generic_{target_arch}_*_gcc/lib/libtensorflow-microlite.a"))
    matching = [lib for lib in candidates
                if ("_cmsis_nn_" in lib.parent.parent.name) == (kernels == "cmsis_nn")]
    if not matching:
        kernel_dir = " OPTIMIZED_KERNEL_DIR=cmsis_nn" if kernels == "cmsis_nn" else ""
        raise FileNotFoundError(
            f"no {kernels} TFLM library for {target_arch} under {tflm_root}/gen; build it in that checkout "
            f"with: make -f tensorflow/lite/micro/tools/make/Makefile TARGET=cortex_m_generic "
            f"TARGET_ARCH={target_arch}{kernel_dir} TARGET_TOOLCHAIN_ROOT=/usr/bin/ microlite "
            "(firmware/README.md)")
    # Prefer the default build type (keeps TFLM's error messages).
    return next((lib for lib in matching if "_default_" in str(lib)), matching[0])


# Lines that only say that something failed earlier in the output, not what.
_FOLLOW_UP_LINE = re.compile(r"^(g?make(\[\d+\])?: \*\*\*|ninja: build stopped|collect2: error: ld returned"
                             r"|compilation terminated|-- Configuring incomplete|See also )")


def failure_reason(output: str) -> str:
    """The line of a tool's output that says why it failed: CMake's last error message, else the
    last line naming an error (a compiler's or linker's), else the last line."""
    raw = output.splitlines()
    cmake_errors = [i for i, line in enumerate(raw) if line.startswith("CMake Error")]
    if cmake_errors:
        header = raw[cmake_errors[-1]].strip()
        if not header.endswith(":"):  # `CMake Error: the message`
            return header.removeprefix("CMake Error").lstrip(": ")
        # `CMake Error at FILE:LINE (message):`, then the message wrapped on indented lines
        message = []
        for line in raw[cmake_errors[-1] + 1:]:
            if not line[:1].isspace():
                break
            message.append(line.strip())
        return " ".join(part for part in message if part) or header
    lines = [line.strip() for line in raw]
    said = [line for line in lines if line and not _FOLLOW_UP_LINE.match(line)]
    naming = [line for line in said if re.search(r"\berror\b|undefined reference", line, re.I)]
    return (naming or said or ["no output"])[-1]


def _run(command: list, what: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        # The first line (the one a command's error line shows) says why; the rest keeps the detail.
        reason = failure_reason(result.stdout + "\n" + result.stderr)
        raise FirmwareBuildError(f"{what} failed: {reason}\n{' '.join(map(str, command))}\n"
                                 f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def build_plugin(build_dir) -> Path:
    """Compile the instruction-count TCG plugin with the host C compiler (once)."""
    plugin = Path(build_dir) / "libcg_insn_count.so"
    if not plugin.exists() or plugin.stat().st_mtime < PLUGIN_SOURCE.stat().st_mtime:
        plugin.parent.mkdir(parents=True, exist_ok=True)
        _run(["cc", "-shared", "-fPIC", "-O2", "-Wall", "-o", plugin, PLUGIN_SOURCE],
             "building the QEMU plugin")
    return plugin


def build_firmware(export_dir, tflm_root, tflm_lib, kernels: str, build_dir,
                   images_dir=None, arena_bytes: int | None = None, core: str = DEFAULT_CORE) -> Path:
    """Configure and build the QEMU port with CMake for `core` (a CORES key); returns the .elf path."""
    build_dir = Path(build_dir)
    spec = CORES[core]
    cache = build_dir / "CMakeCache.txt"
    # The toolchain file turns CG_ARM_CPU_FLAGS into the compiler flags at the first configure
    # only: a build folder configured for another core starts afresh.
    if cache.exists() and not re.search(rf"^CG_QEMU_MACHINE:\w+={spec.machine}$", cache.read_text(), re.M):
        cache.unlink()
        shutil.rmtree(build_dir / "CMakeFiles", ignore_errors=True)
    configure = [
        "cmake", "-S", QEMU_PORT_DIR, "-B", build_dir,
        f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN_FILE}",
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DCG_QEMU_MACHINE={spec.machine}",
        f"-DCG_ARM_CPU_FLAGS={spec.cpu_flags}",
        f"-DTFLM_ROOT={Path(tflm_root).resolve()}",
        f"-DTFLM_LIB={Path(tflm_lib).resolve()}",
        f"-DCG_TFLM_KERNELS={kernels}",
        f"-DCG_MODEL_DIR={Path(export_dir).resolve()}",
        f"-DCG_IMAGES_DIR={Path(images_dir or export_dir).resolve()}",
        f"-DCG_ARENA_BYTES={arena_bytes or 0}",
    ]
    _run(configure, "cmake configure")
    _run(["cmake", "--build", build_dir, "-j2"], "cmake build")
    return build_dir / "cosinegate_qemu.elf"


def marker_addresses(elf) -> dict[str, int]:
    """Addresses of the cost-meter markers, for the plugin's begin=/end=/report= arguments."""
    symbols = {}
    for line in _run(["arm-none-eabi-nm", elf], "nm").stdout.splitlines():
        parts = line.split()
        if len(parts) == 3:
            symbols[parts[2]] = int(parts[0], 16)
    missing = [name for name in MARKERS.values() if name not in symbols]
    if missing:
        raise FirmwareBuildError(f"{elf} lacks the marker functions {missing}")
    return {key: symbols[name] for key, name in MARKERS.items()}


def qemu_command(elf, plugin, profile_path=None, blocks_path=None, flash_loads=False,
                 core: str = DEFAULT_CORE) -> list[str]:
    spec = CORES[core]
    markers = ",".join(f"{key}=0x{address:x}" for key, address in marker_addresses(elf).items())
    if profile_path:
        markers += f",profile={profile_path}"
    if blocks_path:
        markers += f",blocks={blocks_path}"
    if blocks_path and flash_loads:
        markers += f",flash=0x{spec.flash[0]:x}:0x{spec.flash[1]:x}"
    return ["qemu-system-arm", "-M", spec.machine, "-nographic", "-monitor", "none",
            "-serial", "none", "-semihosting-config", "enable=on,target=native",
            "-icount", "shift=0", "-d", "plugin", "-plugin", f"{plugin},{markers}",
            "-kernel", str(elf)]


def run_firmware(elf, plugin, timeout_s: float = RUN_TIMEOUT_S, profile_path=None,
                 timing: bool = True, flash_loads: bool = False, core: str = DEFAULT_CORE) -> QemuResult:
    """Run the firmware to its end on `core`'s QEMU machine and parse what it printed. With
    `profile_path` the plugin writes its per-block instruction counts there (see
    `function_profile`). With `timing` (Cortex-M4 only; ignored for other cores) the plugin
    traces the executed blocks (ELF.blocks.txt beside the ELF) and the result carries the
    Cortex-M4 cycle estimate of each inference; `flash_loads` also counts the data loads from
    flash (slower: a callback per load).

    Raises FirmwareBuildError when TFLM halts in an assertion (it then spins forever,
    e.g. with a far too small arena) or the run exceeds `timeout_s`.
    """
    # One stream: the plugin's " instructions=N" lands inside the firmware's line.
    timing = timing and core == TIMED_CORE
    blocks_path = Path(f"{elf}.blocks.txt") if timing else None
    process = subprocess.Popen(qemu_command(elf, plugin, profile_path, blocks_path, flash_loads, core),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    timed_out = threading.Event()

    def stop_on_timeout():
        timed_out.set()
        process.kill()

    watchdog = threading.Timer(timeout_s, stop_on_timeout)
    watchdog.start()
    lines, problem = [], None
    try:
        for line in process.stdout:
            lines.append(line)
            if line.rstrip().endswith(TFLM_HALT_MESSAGE):
                problem = "TFLM halted in an assertion"
                process.kill()
        returncode = process.wait()
    finally:
        watchdog.cancel()
    if timed_out.is_set():
        problem = f"did not finish within {timeout_s:g} s"
    output = "".join(lines)
    if problem:
        raise FirmwareBuildError(f"{elf}: {problem}; last output:\n{output[-2000:]}")
    estimates = m4_timing.estimate(elf, blocks_path) if timing else None
    return QemuResult(log=parse_text(output), output=output, returncode=returncode, timing=estimates)


def function_profile(elf, profile_path, inferences: int) -> list[tuple[str, float]]:
    """[(function, instructions per inference)], largest first, from the plugin's profile file."""
    starts, names = [], []
    listing = _run(["arm-none-eabi-nm", "-C", "-S", "--defined-only", "--numeric-sort", elf], "nm").stdout
    for line in listing.splitlines():
        parts = line.split(maxsplit=3)
        if len(parts) == 4 and parts[2] in "tTwW":      # address size type name (code only)
            starts.append(int(parts[0], 16) & ~1)        # Thumb symbols carry bit 0
            names.append((int(parts[1], 16), parts[3]))
    totals: dict[str, int] = {}
    for line in Path(profile_path).read_text().splitlines():
        address, count = (int(v, 0) for v in line.split())
        k = bisect.bisect_right(starts, address) - 1
        inside = k >= 0 and address < starts[k] + max(names[k][0], 1)
        name = names[k][1] if inside else f"0x{address:x}"
        totals[name] = totals.get(name, 0) + count
    return sorted(((n, c / max(inferences, 1)) for n, c in totals.items()), key=lambda item: -item[1])


def firmware_size(elf) -> FirmwareSize:
    """Section sizes from `arm-none-eabi-size -A`."""
    sizes = {}
    for line in _run(["arm-none-eabi-size", "-A", elf], "size").stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith("."):
            sizes[parts[0]] = int(parts[1])
    return FirmwareSize(text=sizes.get(".text", 0) + sizes.get(".ARM.exidx", 0),
                        data=sizes.get(".data", 0), bss=sizes.get(".bss", 0),
                        stack=sizes.get(".stack", 0))


@errors.command("qemu", expected=(OSError, FirmwareBuildError, IntegrityError))
def main(argv=None) -> int:
    parser = errors.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--tflm-root", type=Path, required=True,
                        help="tflite-micro checkout where TFLM's Makefile built the libraries")
    parser.add_argument("--core", choices=CORES, default=DEFAULT_CORE,
                        help="emulated core: " + ", ".join(f"{k} ({c.name}, {c.machine})" for k, c in CORES.items())
                        + f" (default {DEFAULT_CORE})")
    parser.add_argument("--kernels", nargs="+", choices=KERNELS, default=list(KERNELS))
    parser.add_argument("--images-dir", type=Path, help="test_images.cc folder (default: export)")
    parser.add_argument("--build-dir", type=Path, default=Path("build/firmware-qemu"))
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--profile", type=int, metavar="N",
                        help="print the N functions that execute the most instructions per inference")
    parser.add_argument("--clock-mhz", type=float, default=m4_timing.DEFAULT_CLOCK_HZ / 1e6,
                        help="core clock for the Cortex-M4's estimated milliseconds (default 120)")
    parser.add_argument("--flash-wait-states", type=int, metavar="WS",
                        help="Cortex-M4: also count data loads from flash and charge WS cycles per new 8-byte word")
    args = parser.parse_args(argv)
    if args.flash_wait_states is not None and args.core != TIMED_CORE:
        parser.error(f"--flash-wait-states needs --core {TIMED_CORE}: the cycle model is the Cortex-M4's")
    core = CORES[args.core]
    read_export(args.export_dir)  # build only from the files the export wrote
    summary = {}
    # Every library is found before the plugin is built: a missing one leaves no build folder behind.
    libraries = {kernels: find_tflm_library(args.tflm_root, kernels, core.tflm_target_arch) for kernels in args.kernels}
    plugin = build_plugin(args.build_dir)
    for kernels, lib in libraries.items():
        # The Cortex-M4's folders stay where they always were; other cores get their own.
        build_dir = args.build_dir / kernels if args.core == DEFAULT_CORE else args.build_dir / args.core / kernels
        elf = build_firmware(args.export_dir, args.tflm_root, lib, kernels, build_dir, args.images_dir,
                             core=args.core)
        profile_path = build_dir / "profile.txt" if args.profile else None
        result = run_firmware(elf, plugin, profile_path=profile_path,
                              flash_loads=args.flash_wait_states is not None, core=args.core)
        size = firmware_size(elf)
        costs = [i.cost for i in result.log.inferences if i.cost is not None]
        print(f"[{kernels}] {result.log.header}")
        print(f"[{kernels}] flash={size.flash} B ram={size.ram} B (+{size.stack} B stack) "
              f"accuracy={result.log.accuracy:.3f} "
              f"instructions/inference min={min(costs, default=0)} max={max(costs, default=0)} "
              f"mean={sum(costs) / max(len(costs), 1):.0f}")
        for error in result.log.errors:
            print(f"[{kernels}] firmware error: {error.reason}: {error.message}")
        if result.log.header is None or result.log.errors:
            reason = "; ".join(f"{e.reason}: {e.message}" for e in result.log.errors) or "no header line"
            print(f"qemu: error: the {kernels} firmware stopped ({reason})", file=sys.stderr)
            return 1
        summary[kernels] = {"core": core.name, "machine": core.machine,
                            "flash_bytes": size.flash, "ram_bytes": size.ram, "stack_bytes": size.stack,
                            "arena_bytes": result.log.header.arena_bytes, "arena_used": result.log.header.arena_used,
                            "images": len(costs), "instructions_mean": sum(costs) / max(len(costs), 1),
                            "gates": [i.gates for i in result.log.inferences],
                            "predictions": [i.pred for i in result.log.inferences],
                            # per image, in log order: the worst case matters as much as the mean
                            "instructions_per_image": costs}
        if result.timing is not None:
            timing = m4_timing.summarize(result.timing, int(args.clock_mhz * 1e6), args.flash_wait_states)
            print(f"[{kernels}] Cortex-M4 estimate (zero wait states): cycles/inference "
                  f"{timing['cycles']:,.0f} ({timing['cycles_low']:,.0f}..{timing['cycles_high']:,.0f}) "
                  f"= {timing['ms']:.2f} ms at {args.clock_mhz:g} MHz ({timing['ms_low']:.2f}..{timing['ms_high']:.2f})")
            if "cycles_flash" in timing:
                print(f"[{kernels}] with {args.flash_wait_states} flash wait states per new 8-byte word of the "
                      f"{timing['flash_loads']:,.0f} flash data loads ({timing['flash_words']:,.0f} words): "
                      f"{timing['cycles_flash']:,.0f} cycles = {timing['ms_flash']:.2f} ms")
            summary[kernels]["m4_estimate"] = timing
        else:
            print(f"[{kernels}] {core.name}: instructions only (the cycle model is the Cortex-M4's; "
                  "instructions are not cycles)")
        profile = function_profile(elf, profile_path, len(costs)) if args.profile else []
        for name, count in profile[:args.profile]:
            print(f"[{kernels}]   {count:>14,.0f} instr/inference  {name}")
        if profile:
            summary[kernels]["profile"] = [{"function": n, "instructions_per_inference": c}
                                           for n, c in profile[:args.profile]]
    if args.json:
        from cosinegate import atomic
        atomic.write_text(args.json, json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
