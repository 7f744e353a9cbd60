// QEMU (MPS2/MPS3 boards) entry point: setup() once, then loop() forever.
#include "core/main_functions.h"

int main() {
  setup();
  while (true) {
    loop();
  }
}
