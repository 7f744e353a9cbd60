// STM32F405/407 bring-up at register level (RM0090), for the generic Cortex-M port's seams:
// CgHalInit() sets the clock tree and the USART, CgUartPutChar() sends one character.
// No vendor code: the few registers are named here by address.
//
// Clock: the PLL at 168 MHz (VCO 336 MHz, /2), from an HSE crystal of CG_STM32_HSE_HZ
// (8 MHz on most boards; 0 = none) or else from the 16 MHz HSI; flash at 5 wait states
// with prefetch and the ART instruction and data caches on, APB1 at /4, APB2 at /2. Every
// wait on a ready flag is bounded: where the oscillator or the PLL does not start (an
// emulator without a clock model, QEMU's netduinoplus2 among them), the core stays on
// the HSI, and the clock reported is the one read back from the RCC, never assumed.
//
// USART: CG_STM32_USART = 1 (TX on PA9, the default and QEMU's first serial port) or
// 2 (TX on PA2), AF7, 8N1 at CG_STM32_BAUD (115200 by default).
#include <cstdint>

#include "ports/cortex_m/hal_init.h"
#include "ports/cortex_m/uart_putchar.h"

#ifndef CG_STM32_HSE_HZ
#define CG_STM32_HSE_HZ 8000000
#endif
#ifndef CG_STM32_USART
#define CG_STM32_USART 1
#endif
#ifndef CG_STM32_BAUD
#define CG_STM32_BAUD 115200
#endif

namespace {

inline volatile uint32_t& Reg(uintptr_t address) {
  return *reinterpret_cast<volatile uint32_t*>(address);
}

constexpr uintptr_t kRcc = 0x40023800;
constexpr uintptr_t kRccCr = kRcc + 0x00;
constexpr uintptr_t kRccPllcfgr = kRcc + 0x04;
constexpr uintptr_t kRccCfgr = kRcc + 0x08;
constexpr uintptr_t kRccAhb1enr = kRcc + 0x30;
constexpr uintptr_t kRccApb1enr = kRcc + 0x40;
constexpr uintptr_t kRccApb2enr = kRcc + 0x44;
constexpr uint32_t kCrHseOn = 1u << 16, kCrHseRdy = 1u << 17;
constexpr uint32_t kCrPllOn = 1u << 24, kCrPllRdy = 1u << 25;
constexpr uint32_t kPllcfgrSrcHse = 1u << 22;
constexpr uint32_t kCfgrSwPll = 2u, kCfgrSwsShift = 2;
constexpr uint32_t kCfgrPpre1Div4 = 5u << 10, kCfgrPpre2Div2 = 4u << 13;
constexpr uint32_t kApb1PwrEn = 1u << 28;
constexpr uintptr_t kPwrCr = 0x40007000;
constexpr uint32_t kPwrCrVosScale1 = 1u << 14;
constexpr uintptr_t kFlashAcr = 0x40023C00;
constexpr uint32_t kFlashAcr5WaitPrefetchCaches = 5u | 1u << 8 | 1u << 9 | 1u << 10;
constexpr uint32_t kHsiHz = 16000000;
constexpr uint32_t kPllN = 336, kPllP = 2, kPllQ = 7;  // 1 MHz PLL input -> 168 MHz, 48 MHz
constexpr int kReadyPolls = 200000;                     // > 10 ms at 16 MHz

#if CG_STM32_USART == 1
constexpr uintptr_t kUsart = 0x40011000;
constexpr uintptr_t kUsartEnable = kRccApb2enr;
constexpr uint32_t kUsartEnableBit = 1u << 4;
constexpr int kTxPin = 9;      // PA9
constexpr bool kOnApb2 = true;
#elif CG_STM32_USART == 2
constexpr uintptr_t kUsart = 0x40004400;
constexpr uintptr_t kUsartEnable = kRccApb1enr;
constexpr uint32_t kUsartEnableBit = 1u << 17;
constexpr int kTxPin = 2;      // PA2
constexpr bool kOnApb2 = false;
#else
#error "CG_STM32_USART must be 1 or 2"
#endif
constexpr uintptr_t kUsartSr = kUsart + 0x00, kUsartDr = kUsart + 0x04;
constexpr uintptr_t kUsartBrr = kUsart + 0x08, kUsartCr1 = kUsart + 0x0C;
constexpr uint32_t kSrTxe = 1u << 7;
constexpr uint32_t kCr1UeTe = 1u << 13 | 1u << 3;
constexpr uintptr_t kGpioA = 0x40020000;
constexpr uint32_t kAhb1GpioAEn = 1u << 0;
constexpr uint32_t kAf7Usart = 7;

bool WaitFor(uintptr_t reg, uint32_t mask) {
  for (int i = 0; i < kReadyPolls; ++i) {
    if (Reg(reg) & mask) return true;
  }
  return false;
}

void StartPll() {
  bool hse = false;
  if (CG_STM32_HSE_HZ != 0) {
    Reg(kRccCr) |= kCrHseOn;
    hse = WaitFor(kRccCr, kCrHseRdy);
  }
  const uint32_t input_hz = hse ? CG_STM32_HSE_HZ : kHsiHz;
  Reg(kRccApb1enr) |= kApb1PwrEn;
  Reg(kPwrCr) |= kPwrCrVosScale1;
  Reg(kRccPllcfgr) = (input_hz / 1000000) | kPllN << 6 | (kPllP / 2 - 1) << 16 |
                     (hse ? kPllcfgrSrcHse : 0) | kPllQ << 24;
  Reg(kRccCr) |= kCrPllOn;
  if (!WaitFor(kRccCr, kCrPllRdy)) return;  // stay on the HSI
  Reg(kFlashAcr) = kFlashAcr5WaitPrefetchCaches;
  Reg(kRccCfgr) = kCfgrPpre1Div4 | kCfgrPpre2Div2 | kCfgrSwPll;
  for (int i = 0; i < kReadyPolls && ((Reg(kRccCfgr) >> kCfgrSwsShift) & 3) != kCfgrSwPll; ++i) {
  }
}

// The core clock the RCC reports running: HSI, HSE or PLL (RM0090, 6.3.2 and 6.3.3).
uint32_t CoreClockHz() {
  const uint32_t cfgr = Reg(kRccCfgr), pllcfgr = Reg(kRccPllcfgr);
  switch ((cfgr >> kCfgrSwsShift) & 3) {
    case 1:
      return CG_STM32_HSE_HZ;
    case 2: {
      const uint32_t input = pllcfgr & kPllcfgrSrcHse ? CG_STM32_HSE_HZ : kHsiHz;
      const uint32_t m = pllcfgr & 0x3F, n = (pllcfgr >> 6) & 0x1FF;
      const uint32_t p = (((pllcfgr >> 16) & 3) + 1) * 2;
      return static_cast<uint32_t>(uint64_t{input} / m * n / p);
    }
    default:
      return kHsiHz;
  }
}

// The APB clock of the USART: AHB (= core) divided by PPRE1 or PPRE2.
uint32_t UsartClockHz(uint32_t core_hz) {
  const uint32_t ppre = (Reg(kRccCfgr) >> (kOnApb2 ? 13 : 10)) & 7;
  return ppre < 4 ? core_hz : core_hz >> (ppre - 3);
}

}  // namespace

uint32_t CgHalInit() {
  StartPll();
  const uint32_t core_hz = CoreClockHz();
  Reg(kRccAhb1enr) |= kAhb1GpioAEn;
  Reg(kUsartEnable) |= kUsartEnableBit;
  const uintptr_t afr = kGpioA + (kTxPin < 8 ? 0x20 : 0x24);
  const int af_shift = (kTxPin % 8) * 4;
  Reg(afr) = (Reg(afr) & ~(0xFu << af_shift)) | kAf7Usart << af_shift;
  Reg(kGpioA) = (Reg(kGpioA) & ~(3u << (2 * kTxPin))) | 2u << (2 * kTxPin);  // MODER: AF
  // 16x oversampling: BRR = f_apb / baud, mantissa and 4-bit fraction in one value, rounded.
  Reg(kUsartBrr) = (UsartClockHz(core_hz) + CG_STM32_BAUD / 2) / CG_STM32_BAUD;
  Reg(kUsartCr1) = kCr1UeTe;
  return core_hz;
}

void CgUartPutChar(char c) {
  while (!(Reg(kUsartSr) & kSrTxe)) {
  }
  Reg(kUsartDr) = static_cast<uint8_t>(c);
}
