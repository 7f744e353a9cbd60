// A known loop between the cost markers, for the timing-model test (tests/test_bare_ports.py):
// 1000 iterations of ldr, ldr (pipelined), smlad, subs, bne, the loads from flash. Built with the QEMU port's
// start-up, linker script, semihosting text output and cost-meter markers, without TFLM.
#include <cstdint>

#include "core/cost_meter.h"
#include "core/text_output.h"
#include "ports/qemu/semihosting.h"

namespace {
// In flash (.rodata), both in one 8-byte flash word: 2000 flash loads reading 1 word anew.
alignas(8) const int32_t g_operands[2] = {0x00020003, 0x00040005};
}  // namespace

int main() {
  int32_t acc = 0;
  CgCostMeterBegin();
  __asm volatile(
      "  mov r3, #1000\n"
      "1: ldr r4, [%1]\n"
      "  ldr r5, [%2]\n"
      "  smlad %0, r4, r5, %0\n"
      "  subs r3, r3, #1\n"
      "  bne 1b\n"
      : "+r"(acc)
      : "r"(&g_operands[0]), "r"(&g_operands[1])
      : "r3", "r4", "r5", "cc", "memory");
  CgCostMeterEnd();
  // One protocol inference line: pred=0 (= label) when the loop computed the right sum.
  CgWriteText(acc == 1000 * (2 * 4 + 3 * 5) ? "CG idx=0 label=0 pred=0 gates=-" : "CG idx=0 label=0 pred=1 gates=-");
  CgCostMeterReport();
  CgWriteText("\n");
  SemihostingCall(kSemihostingExit, reinterpret_cast<const void*>(kExitApplicationOk));
  while (true) {
  }
}
