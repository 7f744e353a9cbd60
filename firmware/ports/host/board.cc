// The host as a board (seam tests only): nothing to bring up; stopping exits the
// process with status 0 (ok) or 1, as QEMU does.
#include "core/board.h"

#include <cstdlib>

namespace {
// cost_meter.cc counts steady-clock nanoseconds: a nominal 1 GHz cycle counter.
constexpr uint32_t kClockHz = 1000000000;
}  // namespace

CgBoardInfo CgBoardInit() { return {"host", kClockHz, "cycles"}; }

void CgBoardStop(bool ok) { std::exit(ok ? EXIT_SUCCESS : EXIT_FAILURE); }
