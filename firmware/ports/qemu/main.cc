// QEMU (mps2-an386, Cortex-M4) entry point: setup() once, then loop() forever.
#include "core/main_functions.h"

int main() {
  setup();
  while (true) {
    loop();
  }
}
