// ESP32-S3: ESP-IDF has set up clocks and the console before app_main(); the CPU
// cycle counter needs no setup. Stopping parks the task. TFLM's own log goes to the
// console through esp-tflite-micro's DebugLog, without the "# TFLM: " prefix.
#include "core/board.h"

#include "freertos/FreeRTOS.h"
#include "freertos/task.h"
#include "sdkconfig.h"

namespace {
constexpr uint32_t kClockHz = CONFIG_ESP_DEFAULT_CPU_FREQ_MHZ * 1000000u;
}  // namespace

CgBoardInfo CgBoardInit() { return {"esp32s3", kClockHz, "cycles"}; }

void CgBoardStop(bool /*ok*/) {
  while (true) {
    vTaskDelay(portMAX_DELAY);
  }
}
