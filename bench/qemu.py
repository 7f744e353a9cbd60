"""Build the QEMU firmware port (Cortex-M4, mps2-an386) for an export and run it.

The cost under QEMU is instructions executed inside Invoke(), counted by the project's
TCG plugin (firmware/ports/qemu/plugin) with `-icount shift=0`, so counts repeat exactly.
Needs arm-none-eabi-gcc + newlib, cmake, qemu-system-arm and a host C compiler, plus a
TFLM library built by TFLM's own Makefile (firmware/README.md says how).

    python -m cosinegate.bench.qemu EXPORT_DIR --tflm-root /path/to/tflite-micro \
        [--kernels reference cmsis_nn] [--images-dir DIR] [--build-dir DIR] [--profile 25]

`--profile N` also prints where the instructions go: the N functions that execute the most
instructions per inference (the plugin's per-block counts mapped to symbols with nm).

Beside instructions it prints estimated Cortex-M4 cycles and milliseconds at `--clock-mhz`
(default 120): the Cortex-M4 TRM's instruction timings at zero wait states applied to the
executed blocks (cosinegate.bench.m4_timing), with the bounds of the TRM's ranges.

From Python:
    lib = find_tflm_library(tflm_root, "cmsis_nn")
    elf = build_firmware(export_dir, tflm_root, lib, "cmsis_nn", build_dir)
    result = run_firmware(elf, build_plugin(build_dir))     # result.log is a RunLog
"""
import argparse
import bisect
import importlib.resources
import json
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
# TFLM's TARGET_ARCH for mps2-an386's Cortex-M4F, and the matching GCC flags.
TFLM_TARGET_ARCH = "cortex-m4+fp"
MARKERS = {"begin": "CgCostMeterBegin", "end": "CgCostMeterEnd", "report": "CgCostMeterReport"}
RUN_TIMEOUT_S = 600
# mps2_an386.ld: code and constants (the model's weights among them) in the 4 MiB at 0x0.
FLASH_RANGE = (0x0, 0x400000)
# What TFLM prints (through the "# TFLM: " log) before it spins forever on a failed check.
TFLM_HALT_MESSAGE = "HALTED"


class FirmwareBuildError(RuntimeError):
    """Configuring, building or running the firmware failed; the message holds the tool output."""


@dataclass(frozen=True)
class QemuResult:
    log: RunLog
    output: str            # everything QEMU printed (firmware text and plugin counts)
    returncode: int        # 0 when the firmware stopped with every inference ok
    timing: list | None = None   # m4_timing.InferenceTiming per inference, when blocks were traced


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


def find_tflm_library(tflm_root, kernels: str, target_arch: str = TFLM_TARGET_ARCH) -> Path:
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
        raise FileNotFoundError(
            f"no {kernels} TFLM library for {target_arch} under {tflm_root}/gen; build it with "
            "TFLM's Makefile as firmware/README.md shows")
    # Prefer the default build type (keeps TFLM's error messages).
    return next((lib for lib in matching if "_default_" in str(lib)), matching[0])


def _run(command: list, what: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise FirmwareBuildError(f"{what} failed ({' '.join(map(str, command))}):\n"
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
                   images_dir=None, arena_bytes: int | None = None) -> Path:
    """Configure and build the QEMU port with CMake; returns the .elf path."""
    build_dir = Path(build_dir)
    configure = [
        "cmake", "-S", QEMU_PORT_DIR, "-B", build_dir,
        f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN_FILE}",
        "-DCMAKE_BUILD_TYPE=Release",
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


def qemu_command(elf, plugin, profile_path=None, blocks_path=None, flash_loads=False) -> list[str]:
    markers = ",".join(f"{key}=0x{address:x}" for key, address in marker_addresses(elf).items())
    if profile_path:
        markers += f",profile={profile_path}"
    if blocks_path:
        markers += f",blocks={blocks_path}"
    if blocks_path and flash_loads:
        markers += f",flash=0x{FLASH_RANGE[0]:x}:0x{FLASH_RANGE[1]:x}"
    return ["qemu-system-arm", "-M", "mps2-an386", "-nographic", "-monitor", "none",
            "-serial", "none", "-semihosting-config", "enable=on,target=native",
            "-icount", "shift=0", "-d", "plugin", "-plugin", f"{plugin},{markers}",
            "-kernel", str(elf)]


def run_firmware(elf, plugin, timeout_s: float = RUN_TIMEOUT_S, profile_path=None,
                 timing: bool = True, flash_loads: bool = False) -> QemuResult:
    """Run the firmware to its end under QEMU and parse what it printed. With `profile_path`
    the plugin writes its per-block instruction counts there (see `function_profile`). With
    `timing` the plugin traces the executed blocks (ELF.blocks.txt beside the ELF) and the result
    carries the Cortex-M4 cycle estimate of each inference; `flash_loads` also counts the data
    loads from flash (slower: a callback per load).

    Raises FirmwareBuildError when TFLM halts in an assertion (it then spins forever,
    e.g. with a far too small arena) or the run exceeds `timeout_s`.
    """
    # One stream: the plugin's " instructions=N" lands inside the firmware's line.
    blocks_path = Path(f"{elf}.blocks.txt") if timing else None
    process = subprocess.Popen(qemu_command(elf, plugin, profile_path, blocks_path, flash_loads), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace")
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--tflm-root", type=Path, required=True,
                        help="tflite-micro checkout where TFLM's Makefile built the libraries")
    parser.add_argument("--kernels", nargs="+", choices=KERNELS, default=list(KERNELS))
    parser.add_argument("--images-dir", type=Path, help="test_images.cc folder (default: export)")
    parser.add_argument("--build-dir", type=Path, default=Path("build/firmware-qemu"))
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--profile", type=int, metavar="N",
                        help="print the N functions that execute the most instructions per inference")
    parser.add_argument("--clock-mhz", type=float, default=m4_timing.DEFAULT_CLOCK_HZ / 1e6,
                        help="core clock for the estimated milliseconds (default 120)")
    parser.add_argument("--flash-wait-states", type=int, metavar="WS",
                        help="also count data loads from flash and charge WS cycles per new 8-byte word")
    args = parser.parse_args(argv)
    read_export(args.export_dir)  # build only from the files the export wrote
    summary = {}
    plugin = build_plugin(args.build_dir)
    for kernels in args.kernels:
        lib = find_tflm_library(args.tflm_root, kernels)
        elf = build_firmware(args.export_dir, args.tflm_root, lib, kernels,
                             args.build_dir / kernels, args.images_dir)
        profile_path = args.build_dir / kernels / "profile.txt" if args.profile else None
        result = run_firmware(elf, plugin, profile_path=profile_path,
                              flash_loads=args.flash_wait_states is not None)
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
        timing = m4_timing.summarize(result.timing, int(args.clock_mhz * 1e6), args.flash_wait_states)
        print(f"[{kernels}] Cortex-M4 estimate (zero wait states): cycles/inference "
              f"{timing['cycles']:,.0f} ({timing['cycles_low']:,.0f}..{timing['cycles_high']:,.0f}) "
              f"= {timing['ms']:.2f} ms at {args.clock_mhz:g} MHz ({timing['ms_low']:.2f}..{timing['ms_high']:.2f})")
        if "cycles_flash" in timing:
            print(f"[{kernels}] with {args.flash_wait_states} flash wait states per new 8-byte word of the "
                  f"{timing['flash_loads']:,.0f} flash data loads ({timing['flash_words']:,.0f} words): "
                  f"{timing['cycles_flash']:,.0f} cycles = {timing['ms_flash']:.2f} ms")
        profile = function_profile(elf, profile_path, len(costs)) if args.profile else []
        for name, count in profile[:args.profile]:
            print(f"[{kernels}]   {count:>14,.0f} instr/inference  {name}")
        summary[kernels] = {"flash_bytes": size.flash, "ram_bytes": size.ram, "stack_bytes": size.stack,
                            "arena_bytes": result.log.header.arena_bytes, "arena_used": result.log.header.arena_used,
                            "images": len(costs), "instructions_mean": sum(costs) / max(len(costs), 1),
                            "gates": [i.gates for i in result.log.inferences],
                            # per image, in log order: the worst case matters as much as the mean
                            "instructions_per_image": costs,
                            "m4_estimate": timing}
        if profile:
            summary[kernels]["profile"] = [{"function": n, "instructions_per_inference": c}
                                           for n, c in profile[:args.profile]]
    if args.json:
        from cosinegate import atomic
        atomic.write_text(args.json, json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
