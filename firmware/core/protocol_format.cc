// Formats the protocol lines (see protocol_format.h). Appends go through one helper
// that clamps to the buffer, so a long gate list truncates the line instead of
// writing past it.
#include "core/protocol_format.h"

#include <cstdarg>
#include <cstdio>

namespace {

constexpr int kProtocolVersion = 1;

// Appends printf-style text at line[length], never past line[size - 1]; `length`
// stays the string's length.
void Append(char* line, int size, int& length, const char* format, ...)
    __attribute__((format(printf, 4, 5)));
void Append(char* line, int size, int& length, const char* format, ...) {
  if (length >= size - 1) return;
  va_list args;
  va_start(args, format);
  const int written = vsnprintf(line + length, size - length, format, args);
  va_end(args);
  if (written > 0) length = written < size - length ? length + written : size - 1;
}

}  // namespace

void CgFormatHeaderLine(const CgRunInfo& info, char* line, int size) {
  int length = 0;
  Append(line, size, length,
         "CG-HEADER protocol=%d model=%s core=%s clock_hz=%lu cost=%s arena_bytes=%d "
         "arena_used=%u images=%d classes=%d gated_blocks=%d\n",
         kProtocolVersion, info.model, info.board.core,
         static_cast<unsigned long>(info.board.clock_hz), info.board.cost_unit,
         info.arena_bytes, info.arena_used, info.images, info.classes, info.gated_blocks);
}

void CgFormatInferenceLine(int index, int label, int prediction, const bool* gates,
                           int gated_blocks, char* line, int size) {
  int length = 0;
  Append(line, size, length, "CG idx=%d label=%d pred=%d gates=%s", index, label,
         prediction, gated_blocks == 0 ? "-" : "");
  for (int block = 0; block < gated_blocks; ++block) {
    Append(line, size, length, "%c", gates[block] ? '1' : '0');
  }
}

void CgFormatSummaryLine(int images, int correct, int failed, const int* gates_on,
                         int gated_blocks, char* line, int size) {
  int length = 0;
  Append(line, size, length, "CG-SUMMARY images=%d correct=%d failed=%d gates_on=%s",
         images, correct, failed, gated_blocks == 0 ? "-" : "");
  for (int block = 0; block < gated_blocks; ++block) {
    Append(line, size, length, "%s%d", block == 0 ? "" : ",", gates_on[block]);
  }
  Append(line, size, length, "\n");
}

void CgFormatErrorLine(const char* reason, const char* explanation, char* line, int size) {
  int length = 0;
  Append(line, size, length, "CG-ERROR reason=%s %s\n", reason, explanation);
}
