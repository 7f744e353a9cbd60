// Cost under QEMU: these are markers only. The TCG plugin plugin/cg_insn_count.c
// is given their addresses, counts instructions executed between Begin and End
// and prints " instructions=N" when Report runs. noipa (no inlining, no folding of
// identical bodies) keeps each one a real, distinct function the plugin can find.
#include "core/cost_meter.h"

__attribute__((noipa)) void CgCostMeterBegin() { __asm volatile("" ::: "memory"); }
__attribute__((noipa)) void CgCostMeterEnd() { __asm volatile("" ::: "memory"); }
__attribute__((noipa)) void CgCostMeterReport() { __asm volatile("" ::: "memory"); }
