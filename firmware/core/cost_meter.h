// Hardware seam: the cost of one inference. The harness calls Begin right before
// Invoke(), End right after it, and Report while the inference line is half
// written; Report appends " <unit>=<count>" to that line. Boards count CPU cycles
// (key `cycles`); under QEMU, which has no cycle counter, the three functions are
// empty markers and the project's TCG plugin appends `instructions` executed.
#ifndef FIRMWARE_CORE_COST_METER_H_
#define FIRMWARE_CORE_COST_METER_H_

// C linkage gives the QEMU plugin plain symbol names to look up.
extern "C" {
void CgCostMeterBegin();
void CgCostMeterEnd();
void CgCostMeterReport();
}

#endif  // FIRMWARE_CORE_COST_METER_H_
