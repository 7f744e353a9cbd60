// Hardware seam: bring the board up and describe it for the header line; stop it
// when the run is over (QEMU exits with a status, a board idles).
#ifndef FIRMWARE_CORE_BOARD_H_
#define FIRMWARE_CORE_BOARD_H_

#include <cstdint>

struct CgBoardInfo {
  const char* core;       // e.g. "cortex-m4"
  uint32_t clock_hz;      // CPU clock the cost counter runs at (nominal under QEMU)
  const char* cost_unit;  // "cycles", or "instructions" under QEMU
};

// Initialises clocks, the cost counter and the text output; called once by setup().
CgBoardInfo CgBoardInit();

// Called after the summary line (ok) or after an error line (!ok); never returns.
[[noreturn]] void CgBoardStop(bool ok);

#endif  // FIRMWARE_CORE_BOARD_H_
