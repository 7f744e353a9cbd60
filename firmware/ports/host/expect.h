// Host port only: minimal checks for the seam tests (core/*_test.cc), in the spirit of
// TFLM's micro_test.h. A failed check prints its file, line and expression and makes
// CgTestExitCode() non-zero; tests go on so one run reports every failure.
#ifndef FIRMWARE_PORTS_HOST_EXPECT_H_
#define FIRMWARE_PORTS_HOST_EXPECT_H_

#include <cstdio>
#include <cstring>

inline int g_failed_checks = 0;

inline void CgExpect(bool ok, const char* expression, const char* file, int line) {
  if (ok) return;
  ++g_failed_checks;
  fprintf(stderr, "%s:%d: FAILED: %s\n", file, line, expression);
}

inline void CgExpectStrEq(const char* actual, const char* expected, const char* file,
                          int line) {
  if (strcmp(actual, expected) == 0) return;
  ++g_failed_checks;
  fprintf(stderr, "%s:%d: FAILED:\n  actual:   \"%s\"\n  expected: \"%s\"\n", file, line,
          actual, expected);
}

inline int CgTestExitCode() { return g_failed_checks == 0 ? 0 : 1; }

#define CG_EXPECT(condition) CgExpect((condition), #condition, __FILE__, __LINE__)
#define CG_EXPECT_STREQ(actual, expected) CgExpectStrEq((actual), (expected), __FILE__, __LINE__)

#endif  // FIRMWARE_PORTS_HOST_EXPECT_H_
