// Cost on the host (seam tests only): nanoseconds of the steady clock, reported as
// `cycles` of the nominal 1 GHz clock that board.cc states.
#include "core/cost_meter.h"

#include <chrono>
#include <cstdio>

#include "core/text_output.h"

namespace {
std::chrono::steady_clock::time_point begin_time;
long long invoke_nanoseconds = 0;
}  // namespace

void CgCostMeterBegin() { begin_time = std::chrono::steady_clock::now(); }

void CgCostMeterEnd() {
  invoke_nanoseconds = std::chrono::duration_cast<std::chrono::nanoseconds>(
                           std::chrono::steady_clock::now() - begin_time)
                           .count();
}

void CgCostMeterReport() {
  char text[32];
  snprintf(text, sizeof text, " cycles=%lld", invoke_nanoseconds);
  CgWriteText(text);
}
