// Generic Cortex-M board entry point: setup() once, then loop() forever.
// Reset, clocks and the UART are the user's (see README.md).
#include "core/main_functions.h"

int main() {
  setup();
  while (true) {
    loop();
  }
}
