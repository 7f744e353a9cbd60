// Vector table and reset handler for ports that bring no vendor start-up file: QEMU's
// mps2-an386 and the STM32F405/407 (ports/qemu, ports/stm32f4).
//
// The core starts at the reset vector of the table the linker script puts first in
// flash (0x0 on mps2-an386; 0x08000000, aliased at 0x0, on the STM32F4). The reset
// handler enables the FPU (the TFLM library is built hard-float), copies .data, zeroes
// .bss, runs static constructors and calls main(); a port's CgBoardInit() brings up
// clocks and the UART later. The table is kept alive with `-u g_cg_vector_table`
// because nothing references it. The linker script defines __stack_top and the
// __data_* / __bss_* bounds.
#include <cstdint>

extern "C" {
extern uint32_t __data_load, __data_start, __data_end, __bss_start, __bss_end, __stack_top;
extern void (*__preinit_array_start[])(), (*__preinit_array_end[])();
extern void (*__init_array_start[])(), (*__init_array_end[])();
int main();
[[noreturn]] void CgResetHandler();
}

namespace {

// Coprocessor Access Control Register; CP10/CP11 full access turns the FPU on.
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
