// User seam: send one character on the UART the host reads (115200 8N1 is usual),
// blocking until it is queued. Examples for STM32 HAL and nRF in README.md.
#ifndef FIRMWARE_PORTS_CORTEX_M_UART_PUTCHAR_H_
#define FIRMWARE_PORTS_CORTEX_M_UART_PUTCHAR_H_

void CgUartPutChar(char c);

#endif  // FIRMWARE_PORTS_CORTEX_M_UART_PUTCHAR_H_
