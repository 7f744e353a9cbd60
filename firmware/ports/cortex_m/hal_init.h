// User seam: bring up clocks and the UART with the vendor HAL, and return the core
// clock in Hz (e.g. SystemCoreClock after SystemClock_Config() on STM32). Called
// once, before anything is printed. Examples in README.md.
#ifndef FIRMWARE_PORTS_CORTEX_M_HAL_INIT_H_
#define FIRMWARE_PORTS_CORTEX_M_HAL_INIT_H_

#include <cstdint>

uint32_t CgHalInit();

#endif  // FIRMWARE_PORTS_CORTEX_M_HAL_INIT_H_
