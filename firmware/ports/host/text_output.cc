// Text output on the host (seam tests only): appended to an in-memory buffer that
// captured_text.h exposes.
#include "core/text_output.h"

#include <string>

#include "ports/host/captured_text.h"

namespace {
std::string captured;
}  // namespace

void CgWriteText(const char* text) { captured += text; }

const char* CgCapturedText() { return captured.c_str(); }

void CgClearCapturedText() { captured.clear(); }
