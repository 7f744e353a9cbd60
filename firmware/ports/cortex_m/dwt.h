// The Cortex-M DWT cycle counter (ARMv7-M/ARMv8-M Mainline: M3, M4, M7, M33, M55),
// by register address so the port needs no vendor CMSIS device header.
#ifndef FIRMWARE_PORTS_CORTEX_M_DWT_H_
#define FIRMWARE_PORTS_CORTEX_M_DWT_H_

#include <cstdint>

inline volatile uint32_t& DwtRegister(uintptr_t address) {
  return *reinterpret_cast<volatile uint32_t*>(address);
}

constexpr uintptr_t kDemcr = 0xE000EDFC;      // Debug Exception and Monitor Control
constexpr uint32_t kDemcrTrcena = 1u << 24;   // enables the DWT block
constexpr uintptr_t kDwtCtrl = 0xE0001000;
constexpr uint32_t kDwtCtrlCyccntena = 1u << 0;
constexpr uintptr_t kDwtCyccnt = 0xE0001004;
constexpr uintptr_t kDwtLar = 0xE0001FB0;     // lock access; Cortex-M7 parts need unlocking
constexpr uint32_t kDwtLarUnlock = 0xC5ACCE55;

#endif  // FIRMWARE_PORTS_CORTEX_M_DWT_H_
