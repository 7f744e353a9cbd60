// Arm semihosting calls (BKPT 0xAB on M-profile), served by `qemu-system-arm -semihosting`.
#ifndef FIRMWARE_PORTS_QEMU_SEMIHOSTING_H_
#define FIRMWARE_PORTS_QEMU_SEMIHOSTING_H_

#include <cstdint>

constexpr uint32_t kSemihostingWrite0 = 0x04;  // print a NUL-terminated string
constexpr uint32_t kSemihostingExit = 0x18;    // end the simulation
constexpr uint32_t kExitApplicationOk = 0x20026;     // ADP_Stopped_ApplicationExit: status 0
constexpr uint32_t kExitRunTimeError = 0x20023;      // ADP_Stopped_RunTimeErrorUnknown: status 1

inline uint32_t SemihostingCall(uint32_t operation, const void* argument) {
  register uint32_t r0 __asm("r0") = operation;
  register const void* r1 __asm("r1") = argument;
  __asm volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

#endif  // FIRMWARE_PORTS_QEMU_SEMIHOSTING_H_
