// Vector table and reset handler for ports that bring no vendor start-up file: QEMU's MPS2/MPS3
// boards (ports/qemu: Cortex-M4, M7, M33, M55) and the STM32F405/407 (ports/stm32f4).
//
// The core starts at the reset vector of the table the linker script puts first in
// flash: at 0x0 on mps2-an386/an500; on the STM32F4 at 0x08000000, aliased at 0x0; on the
// TrustZone boards (mps2-an505 Cortex-M33, mps3-an547 Cortex-M55) at the Secure alias
// 0x10000000 of the boot memory, since they reset into Secure state and Secure code must
// run from Secure addresses. The reset handler enables the FPU (the TFLM library is built
// hard-float), copies .data, zeroes .bss, runs static constructors and calls main(); a
// port's CgBoardInit() brings up clocks and the UART later. The table is kept alive with
// `-u g_cg_vector_table` because nothing references it. The linker script defines
// __stack_top and the __data_* / __bss_* bounds.
#include <cstdint>

extern "C" {
extern uint32_t __data_load, __data_start, __data_end, __bss_start, __bss_end, __stack_top;
extern void (*__preinit_array_start[])(), (*__preinit_array_end[])();
extern void (*__init_array_start[])(), (*__init_array_end[])();
int main();
[[noreturn]] void CgResetHandler();
}

namespace {

// Coprocessor Access Control Register; CP10/CP11 full access turns the FPU on, and on the
// Cortex-M55 also its MVE (Helium) vector instructions, which use the same coprocessor
// space. In Secure state this address is the Secure CPACR, the one Secure code obeys.
volatile uint32_t* const kCpacr = reinterpret_cast<volatile uint32_t*>(0xE000ED88);
constexpr uint32_t kCpacrFpuFullAccess = 0xFu << 20;
constexpr int kNumCoreVectors = 16;

[[noreturn]] void HaltOnFault() {
  while (true) {
  }
}

}  // namespace

extern "C" [[noreturn]] void CgResetHandler() {
  *kCpacr |= kCpacrFpuFullAccess;
  __asm volatile("dsb\n isb");
  uint32_t* source = &__data_load;
  for (uint32_t* target = &__data_start; target < &__data_end;) *target++ = *source++;
  for (uint32_t* target = &__bss_start; target < &__bss_end;) *target++ = 0;
  for (auto* init = __preinit_array_start; init < __preinit_array_end; ++init) (*init)();
  for (auto* init = __init_array_start; init < __init_array_end; ++init) (*init)();
  main();
  HaltOnFault();
}

// Only the core exceptions: the harness enables no peripheral interrupt.
extern "C" __attribute__((section(".vectors"), used)) const void* const
    g_cg_vector_table[kNumCoreVectors] = {
        &__stack_top,
        reinterpret_cast<const void*>(CgResetHandler),
        reinterpret_cast<const void*>(HaltOnFault),  // NMI
        reinterpret_cast<const void*>(HaltOnFault),  // HardFault
        reinterpret_cast<const void*>(HaltOnFault),  // MemManage
        reinterpret_cast<const void*>(HaltOnFault),  // BusFault
        reinterpret_cast<const void*>(HaltOnFault),  // UsageFault
};
