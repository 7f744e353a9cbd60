// Generic Cortex-M board: the user's HAL brings up clocks and the UART, this file
// starts the DWT cycle counter and routes TFLM's log; stopping idles the core.
#include "core/board.h"

#include "core/tflm_log.h"
#include "ports/cortex_m/dwt.h"
#include "ports/cortex_m/hal_init.h"
#include "tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h"

#ifndef CG_CORE_NAME
#define CG_CORE_NAME "cortex-m"
#endif

CgBoardInfo CgBoardInit() {
  const uint32_t clock_hz = CgHalInit();
  DwtRegister(kDemcr) |= kDemcrTrcena;
  DwtRegister(kDwtLar) = kDwtLarUnlock;
  DwtRegister(kDwtCyccnt) = 0;
  DwtRegister(kDwtCtrl) |= kDwtCtrlCyccntena;
  RegisterDebugLogCallback(CgWriteTflmLog);
  return {CG_CORE_NAME, clock_hz, "cycles"};
}

void CgBoardStop(bool /*ok*/) {
  while (true) {
    __asm volatile("wfi");
  }
}
