// Host port only: what CgWriteText() has sent, so host tests can check the exact
// bytes the core and the other seams write.
#ifndef FIRMWARE_PORTS_HOST_CAPTURED_TEXT_H_
#define FIRMWARE_PORTS_HOST_CAPTURED_TEXT_H_

// Everything written since the last CgClearCapturedText() (or program start).
const char* CgCapturedText();
void CgClearCapturedText();

#endif  // FIRMWARE_PORTS_HOST_CAPTURED_TEXT_H_
