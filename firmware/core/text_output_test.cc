// Seam test for text_output.h: CgWriteText() sends each text whole and in call order
// (a UART port may turn "\n" into "\r\n"); the harness relies on that to build one
// protocol line from several calls (inference line, cost meter's key, "\n").
// Run: .venv/bin/python -m pytest tests/test_firmware_seams.py (g++ with ports/host/,
// no TFLM).
#include "core/text_output.h"

#include "ports/host/captured_text.h"
#include "ports/host/expect.h"

int main() {
  CgWriteText("CG idx=0 label=6 pred=6 gates=010");
  CgWriteText("");
  CgWriteText(" cycles=4131183");
  CgWriteText("\n");
  CG_EXPECT_STREQ(CgCapturedText(), "CG idx=0 label=6 pred=6 gates=010 cycles=4131183\n");

  // One call may hold several lines (TFLM log messages do).
  CgClearCapturedText();
  CgWriteText("# TFLM: first\n# TFLM: second\n");
  CG_EXPECT_STREQ(CgCapturedText(), "# TFLM: first\n# TFLM: second\n");
  return CgTestExitCode();
}
