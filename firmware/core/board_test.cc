// Seam test for board.h: CgBoardInit() describes the board with values the header line
// can carry (one token each, a known cost unit, a clock), and CgBoardStop() never
// returns; on the host port it exits with status 0 (ok) or 1, as QEMU does.
// Run: .venv/bin/python -m pytest tests/test_firmware_seams.py (g++ with ports/host/,
// no TFLM). POSIX only (fork).
#include "core/board.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "ports/host/expect.h"

namespace {

// The header line is space-separated key=value pairs: a value must be one token.
bool IsToken(const char* value) {
  return value != nullptr && value[0] != '\0' && strpbrk(value, " \t\r\n=") == nullptr;
}

// Exit status of a child process that calls CgBoardStop(ok); -1 if it did not exit.
int StopStatus(bool ok) {
  const pid_t child = fork();
  if (child == 0) {
    CgBoardStop(ok);
  }
  int status = 0;
  waitpid(child, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

int main() {
  const CgBoardInfo board = CgBoardInit();
  CG_EXPECT(IsToken(board.core));
  CG_EXPECT(board.clock_hz > 0);
  CG_EXPECT(strcmp(board.cost_unit, "cycles") == 0 ||
            strcmp(board.cost_unit, "instructions") == 0);

  CG_EXPECT(StopStatus(true) == 0);
  CG_EXPECT(StopStatus(false) == 1);
  return CgTestExitCode();
}
