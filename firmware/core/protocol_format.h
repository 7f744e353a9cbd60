// The protocol lines the harness prints (parsed by cosinegate.bench.protocol), formatted
// into a caller's buffer. Kept free of TFLM so the host test protocol_format_test.cc
// can pin the exact bytes; main_functions.cc sends the lines with CgWriteText().
// Each function writes a NUL-terminated line, truncated to fit `size` bytes.
#ifndef FIRMWARE_CORE_PROTOCOL_FORMAT_H_
#define FIRMWARE_CORE_PROTOCOL_FORMAT_H_

#include "core/board.h"

// What the header line states about the build and the board.
struct CgRunInfo {
  const char* model;    // kModelId from the export
  CgBoardInfo board;
  int arena_bytes;      // arena the firmware was built with
  unsigned arena_used;  // interpreter's arena_used_bytes() after AllocateTensors()
  int images;
  int classes;
  int gated_blocks;
};

// "CG-HEADER protocol=1 model=... gated_blocks=<n>\n"
void CgFormatHeaderLine(const CgRunInfo& info, char* line, int size);

// "CG idx=<i> label=<l> pred=<p> gates=<0/1 per block, or ->" with no newline: the
// cost meter appends its " <unit>=<count>" before the harness ends the line.
void CgFormatInferenceLine(int index, int label, int prediction, const bool* gates,
                           int gated_blocks, char* line, int size);

// "CG-SUMMARY images=<n> correct=<n> failed=<n> gates_on=<count per block, or ->\n"
void CgFormatSummaryLine(int images, int correct, int failed, const int* gates_on,
                         int gated_blocks, char* line, int size);

// "CG-ERROR reason=<reason> <explanation>\n"
void CgFormatErrorLine(const char* reason, const char* explanation, char* line, int size);

#endif  // FIRMWARE_CORE_PROTOCOL_FORMAT_H_
