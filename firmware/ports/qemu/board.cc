// QEMU's MPS2/MPS3 boards: nothing to initialise (startup.cc enabled the FPU) but TFLM's
// log; stopping exits QEMU through semihosting with status 0 (ok) or 1. CMakeLists.txt
// defines the core's name and the FPGA image's nominal clock for the machine it builds for.
#include "core/board.h"

#include "core/tflm_log.h"
#include "ports/qemu/semihosting.h"
#include "tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h"

CgBoardInfo CgBoardInit() {
  RegisterDebugLogCallback(CgWriteTflmLog);
  return {CG_CORE_NAME, CG_CLOCK_HZ, "instructions"};
}

void CgBoardStop(bool ok) {
  SemihostingCall(kSemihostingExit,
                  reinterpret_cast<const void*>(ok ? kExitApplicationOk : kExitRunTimeError));
  while (true) {
  }
}
