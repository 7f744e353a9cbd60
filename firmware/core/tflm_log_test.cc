// Test for tflm_log.h, the TFLM log callback: every line TFLM prints becomes one
// "# TFLM: " comment line, whatever pieces TFLM sends it in, so
// cosinegate.bench.protocol keeps TFLM's text apart from the CG lines.
// Run: .venv/bin/python -m pytest tests/test_firmware_seams.py (g++ with ports/host/,
// no TFLM).
#include "core/tflm_log.h"

#include <string>

#include "ports/host/captured_text.h"
#include "ports/host/expect.h"

namespace {

// tflm_log.cc handles at most this many output bytes (prefixes included) per call.
constexpr int kMaxPieceSize = 256;
constexpr char kPrefix[] = "# TFLM: ";

void TestPiecesOfOneLineGetOnePrefix() {
  // TFLM's DebugLog sends the formatted message, then "\r\n" on its own.
  CgClearCapturedText();
  CgWriteTflmLog("Failed to allocate tail memory. Requested: ");
  CgWriteTflmLog("1024, available 512");
  CgWriteTflmLog("\r\n");
  CG_EXPECT_STREQ(CgCapturedText(),
                  "# TFLM: Failed to allocate tail memory. Requested: 1024, available 512\n");
}

void TestEveryLineOfAPieceIsPrefixed() {
  CgClearCapturedText();
  CgWriteTflmLog("Didn't find op for builtin opcode 'MEAN'\r\nFailed to get registration\r\n");
  CG_EXPECT_STREQ(CgCapturedText(),
                  "# TFLM: Didn't find op for builtin opcode 'MEAN'\n"
                  "# TFLM: Failed to get registration\n");
}

void TestEmptyLinesStayEmpty() {
  CgClearCapturedText();
  CgWriteTflmLog("\r\n");
  CG_EXPECT_STREQ(CgCapturedText(), "\n");
}

void TestLongPieceIsCutNotOverrun() {
  // The first character brings the prefix, so the text keeps kMaxPieceSize - 8 of 300.
  const std::string message(300, 'x');
  CgClearCapturedText();
  CgWriteTflmLog(message.c_str());
  CgWriteTflmLog("\r\n");
  const std::string expected =
      kPrefix + std::string(kMaxPieceSize - (sizeof kPrefix - 1), 'x') + "\n";
  CG_EXPECT_STREQ(CgCapturedText(), expected.c_str());
}

}  // namespace

int main() {
  TestPiecesOfOneLineGetOnePrefix();
  TestEveryLineOfAPieceIsPrefixed();
  TestEmptyLinesStayEmpty();
  TestLongPieceIsCutNotOverrun();
  return CgTestExitCode();
}
