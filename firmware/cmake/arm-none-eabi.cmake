# CMake toolchain file for bare-metal Arm Cortex-M with arm-none-eabi-gcc and newlib
# (Debian: gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib).
#   cmake -DCMAKE_TOOLCHAIN_FILE=firmware/cmake/arm-none-eabi.cmake \
#         -DCG_ARM_CPU_FLAGS="-mcpu=cortex-m4 -mfpu=fpv4-sp-d16 -mfloat-abi=hard" ...
# CG_ARM_CPU_FLAGS must match the TARGET_ARCH the TFLM library was built for.
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR arm)

set(CG_ARM_TOOLCHAIN_PREFIX "arm-none-eabi-" CACHE STRING "Prefix (may include a path) of the GCC tools")
set(CMAKE_C_COMPILER ${CG_ARM_TOOLCHAIN_PREFIX}gcc)
set(CMAKE_CXX_COMPILER ${CG_ARM_TOOLCHAIN_PREFIX}g++)
set(CMAKE_ASM_COMPILER ${CG_ARM_TOOLCHAIN_PREFIX}gcc)
set(CMAKE_OBJCOPY ${CG_ARM_TOOLCHAIN_PREFIX}objcopy CACHE FILEPATH "")
set(CMAKE_SIZE ${CG_ARM_TOOLCHAIN_PREFIX}size CACHE FILEPATH "")

# Cortex-M4F by default, as TFLM's TARGET_ARCH=cortex-m4+fp.
set(CG_ARM_CPU_FLAGS "-mcpu=cortex-m4 -mfpu=fpv4-sp-d16 -mfloat-abi=hard"
    CACHE STRING "CPU, FPU and float ABI flags; must match the TFLM library")
set(CMAKE_C_FLAGS_INIT "${CG_ARM_CPU_FLAGS} -mthumb")
set(CMAKE_CXX_FLAGS_INIT "${CG_ARM_CPU_FLAGS} -mthumb")
set(CMAKE_ASM_FLAGS_INIT "${CG_ARM_CPU_FLAGS} -mthumb")
set(CMAKE_EXE_LINKER_FLAGS_INIT "--specs=nano.specs --specs=nosys.specs")

# No host executables can run: test the compiler by building a static library.
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
