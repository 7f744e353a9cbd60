// Entry points of the CosineGate harness, called by each port's trivial main():
// setup() once, then loop() forever. loop() runs one embedded test image per call
// and stops the board after the last one.
#ifndef FIRMWARE_CORE_MAIN_FUNCTIONS_H_
#define FIRMWARE_CORE_MAIN_FUNCTIONS_H_

#ifdef __cplusplus
extern "C" {
#endif

void setup();
void loop();

#ifdef __cplusplus
}
#endif

#endif  // FIRMWARE_CORE_MAIN_FUNCTIONS_H_
