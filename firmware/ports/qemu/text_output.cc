// Text output under QEMU: semihosting SYS_WRITE0, shown on QEMU's console.
#include "core/text_output.h"

#include "ports/qemu/semihosting.h"

void CgWriteText(const char* text) { SemihostingCall(kSemihostingWrite0, text); }
