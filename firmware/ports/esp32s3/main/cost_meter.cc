// Cost on ESP32-S3: CPU cycles (the Xtensa CCOUNT register) spent in Invoke().
// 32 bits wrap after about 17 s at 240 MHz, far longer than one inference.
#include "core/cost_meter.h"

#include <cstdio>

#include "core/text_output.h"
#include "esp_cpu.h"

namespace {
uint32_t begin_cycles = 0;
uint32_t invoke_cycles = 0;
}  // namespace

void CgCostMeterBegin() { begin_cycles = esp_cpu_get_cycle_count(); }

void CgCostMeterEnd() { invoke_cycles = esp_cpu_get_cycle_count() - begin_cycles; }

void CgCostMeterReport() {
  char text[24];
  snprintf(text, sizeof text, " cycles=%lu", static_cast<unsigned long>(invoke_cycles));
  CgWriteText(text);
}
