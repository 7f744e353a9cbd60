// Text output on ESP32-S3: stdout, i.e. the ESP-IDF console (UART0 or USB-Serial/JTAG).
#include "core/text_output.h"

#include <cstdio>

void CgWriteText(const char* text) {
  fputs(text, stdout);
  fflush(stdout);
}
