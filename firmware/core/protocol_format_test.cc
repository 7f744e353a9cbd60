// Test for protocol_format.h against golden lines: the README's example run (CMSIS-NN
// digits demo under QEMU), byte for byte, as main_functions.cc printed them before the
// formatting moved here. Then prints a short run to stdout, sent the way the harness
// sends it (host text output and cost meter), which tests/test_firmware_seams.py feeds
// to cosinegate.bench.protocol.parse_text.
// Run: .venv/bin/python -m pytest tests/test_firmware_seams.py (g++ with ports/host/,
// no TFLM).
#include "core/protocol_format.h"

#include <cstdio>
#include <cstring>

#include "core/board.h"
#include "core/cost_meter.h"
#include "core/text_output.h"
#include "ports/host/captured_text.h"
#include "ports/host/expect.h"

namespace {

constexpr int kLineSize = 256;  // as in main_functions.cc
constexpr int kReadmeGatedBlocks = 9;

void TestHeaderLine() {
  const CgRunInfo info = {"digits-7fa2a4ca3a0d", {"cortex-m4", 25000000, "instructions"},
                          40736, 24740, 10, 10, kReadmeGatedBlocks};
  char line[kLineSize];
  CgFormatHeaderLine(info, line, sizeof line);
  CG_EXPECT_STREQ(line,
                  "CG-HEADER protocol=1 model=digits-7fa2a4ca3a0d core=cortex-m4 "
                  "clock_hz=25000000 cost=instructions arena_bytes=40736 arena_used=24740 "
                  "images=10 classes=10 gated_blocks=9\n");
}

void TestInferenceLine() {
  const bool gates[kReadmeGatedBlocks] = {false, true, false, true, false,
                                          false, true, true,  true};
  char line[kLineSize];
  CgFormatInferenceLine(1, 6, 6, gates, kReadmeGatedBlocks, line, sizeof line);
  CG_EXPECT_STREQ(line, "CG idx=1 label=6 pred=6 gates=010100111");
  // A model without gated blocks.
  CgFormatInferenceLine(0, 1, 7, nullptr, 0, line, sizeof line);
  CG_EXPECT_STREQ(line, "CG idx=0 label=1 pred=7 gates=-");
}

void TestSummaryLine() {
  const int gates_on[kReadmeGatedBlocks] = {0, 10, 0, 10, 0, 0, 10, 10, 10};
  char line[kLineSize];
  CgFormatSummaryLine(10, 10, 0, gates_on, kReadmeGatedBlocks, line, sizeof line);
  CG_EXPECT_STREQ(line,
                  "CG-SUMMARY images=10 correct=10 failed=0 gates_on=0,10,0,10,0,0,10,10,10\n");
  CgFormatSummaryLine(1, 0, 1, nullptr, 0, line, sizeof line);
  CG_EXPECT_STREQ(line, "CG-SUMMARY images=1 correct=0 failed=1 gates_on=-\n");
}

void TestErrorLine() {
  char line[kLineSize];
  CgFormatErrorLine("invoke", "idx=3 Invoke() failed, continuing", line, sizeof line);
  CG_EXPECT_STREQ(line, "CG-ERROR reason=invoke idx=3 Invoke() failed, continuing\n");
}

void TestLongLinesAreCutInsideTheBuffer() {
  // 100 blocks of "1000," need 500 bytes; the line must stop at size - 1 and the
  // bytes after the buffer stay untouched.
  constexpr int kBlocks = 100;
  constexpr char kGuard = '#';
  int gates_on[kBlocks];
  bool gates[kBlocks];
  for (int block = 0; block < kBlocks; ++block) {
    gates_on[block] = 1000;
    gates[block] = true;
  }
  char buffer[kLineSize + 16];
  memset(buffer, kGuard, sizeof buffer);
  CgFormatSummaryLine(1000, 1000, 0, gates_on, kBlocks, buffer, kLineSize);
  CG_EXPECT(strlen(buffer) == kLineSize - 1);
  constexpr char kStart[] = "CG-SUMMARY images=1000 correct=1000 failed=0 gates_on=1000,";
  CG_EXPECT(strncmp(buffer, kStart, sizeof kStart - 1) == 0);
  CG_EXPECT(buffer[kLineSize] == kGuard && buffer[kLineSize + 15] == kGuard);

  constexpr int kSmallSize = 40;
  memset(buffer, kGuard, sizeof buffer);
  CgFormatInferenceLine(0, 0, 0, gates, kBlocks, buffer, kSmallSize);
  CG_EXPECT_STREQ(buffer, "CG idx=0 label=0 pred=0 gates=111111111");
  CG_EXPECT(buffer[kSmallSize] == kGuard);
}

// Golden run for the Python round trip; keep in step with tests/test_firmware_seams.py.
void PrintRun() {
  constexpr int kBlocks = 3;
  const CgRunInfo info = {"digits-5a618d577a69", CgBoardInit(), 23120, 18756, 3, 10, kBlocks};
  const bool gates[][kBlocks] = {{true, false, true}, {false, false, false}};
  const int labels[] = {6, 2};
  const int predictions[] = {6, 4};
  const int gates_on[kBlocks] = {1, 0, 1};
  char line[kLineSize];

  CgClearCapturedText();
  CgFormatHeaderLine(info, line, sizeof line);
  CgWriteText(line);
  for (int index = 0; index < 2; ++index) {
    CgCostMeterBegin();
    CgCostMeterEnd();
    CgFormatInferenceLine(index, labels[index], predictions[index], gates[index], kBlocks, line,
                          sizeof line);
    CgWriteText(line);
    CgCostMeterReport();
    CgWriteText("\n");
  }
  CgFormatErrorLine("invoke", "idx=2 Invoke() failed, continuing", line, sizeof line);
  CgWriteText(line);
  CgFormatSummaryLine(3, 1, 1, gates_on, kBlocks, line, sizeof line);
  CgWriteText(line);
  fputs(CgCapturedText(), stdout);
}

}  // namespace

int main() {
  TestHeaderLine();
  TestInferenceLine();
  TestSummaryLine();
  TestErrorLine();
  TestLongLinesAreCutInsideTheBuffer();
  PrintRun();
  return CgTestExitCode();
}
