// TFLM's log messages (a missing op, the arena shortfall) as protocol comment lines:
// each line gets a "# TFLM: " prefix so cosinegate.bench.protocol keeps it apart.
// Ports whose TFLM build sends DebugLog() to a callback (TFLM's cortex_m_generic
// target) register this function in CgBoardInit().
#ifndef FIRMWARE_CORE_TFLM_LOG_H_
#define FIRMWARE_CORE_TFLM_LOG_H_

void CgWriteTflmLog(const char* message);

#endif  // FIRMWARE_CORE_TFLM_LOG_H_
