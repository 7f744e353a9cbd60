// The STM32F4 port's start-up, clock set-up and USART without TFLM, for tests/test_bare_ports.py:
// prints the clock CgHalInit() reports and whether .data and .bss were initialised.
#include <cstdint>

#include "ports/cortex_m/hal_init.h"
#include "ports/cortex_m/uart_putchar.h"

namespace {
volatile uint32_t g_data = 0x12345678;  // .data: copied from flash by the reset handler
volatile uint32_t g_bss;                 // .bss: zeroed by the reset handler

void Print(const char* text) {
  while (*text) CgUartPutChar(*text++);
}

void PrintNumber(uint32_t value) {
  char digits[11];
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + value % 10);
    value /= 10;
  } while (value);
  while (n) CgUartPutChar(digits[--n]);
}
}  // namespace

int main() {
  const uint32_t clock_hz = CgHalInit();
  Print("CG-HELLO clock_hz=");
  PrintNumber(clock_hz);
  Print(g_data == 0x12345678 && g_bss == 0 ? " init=ok\r\n" : " init=bad\r\n");
  while (true) {
  }
}
