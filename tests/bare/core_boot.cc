// Start-up on each QEMU core (tests/test_bare_ports.py), without TFLM: after the reset handler
// .data holds its values, .bss is zero and the FPU works; on the Cortex-M55 the MVE (Helium)
// vector instructions work too. A disabled coprocessor would fault (the handler spins and the
// test times out). Prints one protocol inference line, pred=0 (= label) when all is well.
#include <cstdint>

#include "core/cost_meter.h"
#include "core/text_output.h"
#include "ports/qemu/semihosting.h"
#if defined(__ARM_FEATURE_MVE)
#include <arm_mve.h>
#endif

namespace {
volatile float g_scale = 1.5f;        // .data
volatile int32_t g_zeroed;            // .bss
volatile int32_t g_lanes[4] = {1, 2, 3, 4};
}  // namespace

int main() {
  bool ok = g_zeroed == 0 && g_lanes[3] == 4;
  CgCostMeterBegin();
  ok = ok && g_scale * g_scale + 0.75f == 3.0f;                  // VMUL/VADD (or VFMA)
#if defined(__ARM_FEATURE_MVE)
  int32x4_t lanes = vldrwq_s32(const_cast<const int32_t*>(g_lanes));
  ok = ok && vaddvq_s32(vaddq_s32(lanes, lanes)) == 20;          // VLDRW, VADD, VADDV
#endif
  CgCostMeterEnd();
  CgWriteText(ok ? "CG idx=0 label=0 pred=0 gates=-" : "CG idx=0 label=0 pred=1 gates=-");
  CgCostMeterReport();
  CgWriteText("\n");
  SemihostingCall(kSemihostingExit, reinterpret_cast<const void*>(kExitApplicationOk));
  while (true) {
  }
}
