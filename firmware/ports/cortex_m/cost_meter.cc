// Cost on a Cortex-M board: DWT cycles spent in Invoke(). The counter is 32 bits:
// unsigned subtraction is right for inferences shorter than 2^32 cycles (about 9 s
// at 480 MHz).
#include "core/cost_meter.h"

#include <cstdio>

#include "core/text_output.h"
#include "ports/cortex_m/dwt.h"

namespace {
uint32_t begin_cycles = 0;
uint32_t invoke_cycles = 0;
}  // namespace

void CgCostMeterBegin() { begin_cycles = DwtRegister(kDwtCyccnt); }

void CgCostMeterEnd() { invoke_cycles = DwtRegister(kDwtCyccnt) - begin_cycles; }

void CgCostMeterReport() {
  char text[24];
  snprintf(text, sizeof text, " cycles=%lu", static_cast<unsigned long>(invoke_cycles));
  CgWriteText(text);
}
