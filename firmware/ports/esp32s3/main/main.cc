// ESP32-S3 entry point: setup() once, then loop() forever, yielding to FreeRTOS
// between inferences so the idle task (and its watchdog) runs.
#include "core/main_functions.h"
#include "freertos/FreeRTOS.h"
#include "freertos/task.h"

extern "C" void app_main(void) {
  setup();
  while (true) {
    loop();
    vTaskDelay(1);
  }
}
