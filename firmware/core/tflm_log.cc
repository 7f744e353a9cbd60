// Prefixes each line of TFLM's log with "# TFLM: " (see tflm_log.h). TFLM sends a
// message in pieces (text, then "\r\n"), so line starts are tracked across calls.
#include "core/tflm_log.h"

#include "core/text_output.h"

namespace {

constexpr int kMaxPieceSize = 256;
constexpr char kPrefix[] = "# TFLM: ";
bool at_line_start = true;

}  // namespace

void CgWriteTflmLog(const char* message) {
  char text[kMaxPieceSize + sizeof kPrefix];
  int length = 0;
  for (const char* c = message; *c != '\0' && length < kMaxPieceSize; ++c) {
    if (*c == '\r') continue;
    if (at_line_start && *c != '\n') {
      for (const char* p = kPrefix; *p != '\0'; ++p) text[length++] = *p;
    }
    text[length++] = *c;
    at_line_start = (*c == '\n');
  }
  text[length] = '\0';
  CgWriteText(text);
}
