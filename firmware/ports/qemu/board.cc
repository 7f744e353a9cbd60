// mps2-an386 under QEMU: nothing to initialise (startup.cc enabled the FPU) but
// TFLM's log; stopping exits QEMU through semihosting with status 0 (ok) or 1.
#include "core/board.h"

#include "core/tflm_log.h"
#include "ports/qemu/semihosting.h"
#include "tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h"

namespace {
// The AN386 FPGA image clocks the core at 25 MHz; QEMU only models it nominally.
constexpr uint32_t kClockHz = 25000000;
}  // namespace

CgBoardInfo CgBoardInit() {
  RegisterDebugLogCallback(CgWriteTflmLog);
  return {"cortex-m4", kClockHz, "instructions"};
}

void CgBoardStop(bool ok) {
  SemihostingCall(kSemihostingExit,
                  reinterpret_cast<const void*>(ok ? kExitApplicationOk : kExitRunTimeError));
  while (true) {
  }
}
