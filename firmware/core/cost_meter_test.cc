// Seam test for cost_meter.h on ports whose meter reports itself (boards, host; under
// QEMU the functions are markers and the TCG plugin prints the count): Report appends
// exactly " <unit>=<count>" with the board's unit and no newline, and Begin/End around
// a known wait give a count that, at the board's clock_hz, matches that wait.
// Run: .venv/bin/python -m pytest tests/test_firmware_seams.py (g++ with ports/host/,
// no TFLM).
#include "core/cost_meter.h"

#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "core/board.h"
#include "ports/host/captured_text.h"
#include "ports/host/expect.h"

namespace {

constexpr double kWaitSeconds = 0.002;
// A busy host (or an interrupt on a board) only lengthens the measured wait.
constexpr double kMaxMeasuredSeconds = 1.0;

}  // namespace

int main() {
  const CgBoardInfo board = CgBoardInit();

  CgCostMeterBegin();
  std::this_thread::sleep_for(std::chrono::duration<double>(kWaitSeconds));
  CgCostMeterEnd();
  CgClearCapturedText();
  CgCostMeterReport();

  const char* text = CgCapturedText();
  char unit[32] = "";
  unsigned long long count = 0;
  int consumed = 0;
  const bool parsed = sscanf(text, " %31[a-z]=%llu%n", unit, &count, &consumed) == 2;
  CG_EXPECT(parsed);
  CG_EXPECT(text[0] == ' ');
  CG_EXPECT(static_cast<size_t>(consumed) == strlen(text));  // nothing after the count
  CG_EXPECT_STREQ(unit, board.cost_unit);

  const double seconds = static_cast<double>(count) / board.clock_hz;
  CG_EXPECT(seconds >= kWaitSeconds);
  CG_EXPECT(seconds < kMaxMeasuredSeconds);
  return CgTestExitCode();
}
