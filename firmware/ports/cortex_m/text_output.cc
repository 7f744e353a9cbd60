// Text output on a generic Cortex-M board: character by character to the user's
// UART, with "\n" sent as "\r\n" for serial terminals.
#include "core/text_output.h"

#include "ports/cortex_m/uart_putchar.h"

void CgWriteText(const char* text) {
  for (const char* c = text; *c != '\0'; ++c) {
    if (*c == '\n') CgUartPutChar('\r');
    CgUartPutChar(*c);
  }
}
