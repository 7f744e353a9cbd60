// Hardware seam: text output. Each port sends `text` (NUL-terminated, may hold
// several lines) to wherever a person or bench/protocol.py reads it: semihosting
// under QEMU, a UART on a board, the console on ESP32.
#ifndef FIRMWARE_CORE_TEXT_OUTPUT_H_
#define FIRMWARE_CORE_TEXT_OUTPUT_H_

void CgWriteText(const char* text);

#endif  // FIRMWARE_CORE_TEXT_OUTPUT_H_
