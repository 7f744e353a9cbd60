# The portable harness (firmware/core) plus the exported model and test images, as
# the object library `cosinegate_core`, linked against a prebuilt TFLM library.
# Included by each port's CMakeLists.txt. Cache variables:
#   TFLM_ROOT           tflite-micro checkout in which TFLM's Makefile built the library
#                       (its tools/make/downloads/ holds flatbuffers)
#   TFLM_LIB            libtensorflow-microlite.a built for this CPU
#   TFLM_INCLUDE_DIRS   include directories; defaults to TFLM_ROOT and its flatbuffers
#   CG_TFLM_KERNELS     reference | cmsis_nn: which kernels TFLM_LIB holds
#   CG_MODEL_DIR        export folder with model_data.cc/.h and model_settings.h
#   CG_IMAGES_DIR       folder with test_images.cc/.h (defaults to CG_MODEL_DIR)
#   CG_ARENA_BYTES      tensor arena size; 0 keeps kTensorArenaSize from the export
set(TFLM_ROOT "" CACHE PATH "tflite-micro checkout used to build TFLM_LIB")
set(TFLM_LIB "" CACHE FILEPATH "Prebuilt libtensorflow-microlite.a")
set(TFLM_INCLUDE_DIRS "" CACHE STRING "TFLM include directories (default: from TFLM_ROOT)")
set(CG_TFLM_KERNELS "reference" CACHE STRING "Kernels in TFLM_LIB: reference or cmsis_nn")
set_property(CACHE CG_TFLM_KERNELS PROPERTY STRINGS reference cmsis_nn)
set(CG_MODEL_DIR "" CACHE PATH "Export folder holding model_data.cc and model_settings.h")
set(CG_IMAGES_DIR "" CACHE PATH "Folder holding test_images.cc (default: CG_MODEL_DIR)")
set(CG_ARENA_BYTES "0" CACHE STRING "Tensor arena bytes; 0 = size measured by the export")

if(NOT TFLM_LIB OR NOT EXISTS "${TFLM_LIB}")
  message(FATAL_ERROR "Set -DTFLM_LIB=<path to libtensorflow-microlite.a> (see firmware/README.md)")
endif()
if(NOT TFLM_INCLUDE_DIRS)
  if(NOT TFLM_ROOT)
    message(FATAL_ERROR "Set -DTFLM_ROOT=<tflite-micro checkout> or -DTFLM_INCLUDE_DIRS=...")
  endif()
  set(TFLM_INCLUDE_DIRS
      "${TFLM_ROOT}"
      "${TFLM_ROOT}/tensorflow/lite/micro/tools/make/downloads/flatbuffers/include"
      "${TFLM_ROOT}/tensorflow/lite/micro/tools/make/downloads/gemmlowp")
endif()
if(NOT EXISTS "${CG_MODEL_DIR}/model_settings.h")
  message(FATAL_ERROR "CG_MODEL_DIR='${CG_MODEL_DIR}' has no model_settings.h; run cg-export")
endif()
if(NOT CG_IMAGES_DIR)
  set(CG_IMAGES_DIR "${CG_MODEL_DIR}")
endif()
if(NOT EXISTS "${CG_IMAGES_DIR}/test_images.cc")
  message(FATAL_ERROR "CG_IMAGES_DIR='${CG_IMAGES_DIR}' has no test_images.cc; "
                      "run python -m cosinegate.export.test_images")
endif()

set(CMAKE_CXX_STANDARD 17)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(CMAKE_CXX_EXTENSIONS OFF)

add_library(tflm STATIC IMPORTED)
set_target_properties(tflm PROPERTIES IMPORTED_LOCATION "${TFLM_LIB}")
# TFLM's headers change struct layouts with these; they must match the library build.
target_compile_definitions(tflm INTERFACE TF_LITE_STATIC_MEMORY
                           $<$<STREQUAL:${CG_TFLM_KERNELS},cmsis_nn>:CMSIS_NN>)
target_include_directories(tflm SYSTEM INTERFACE ${TFLM_INCLUDE_DIRS})

get_filename_component(CG_FIRMWARE_DIR "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)
add_library(cosinegate_core OBJECT
    "${CG_FIRMWARE_DIR}/core/main_functions.cc"
    "${CG_FIRMWARE_DIR}/core/protocol_format.cc"
    "${CG_FIRMWARE_DIR}/core/tflm_log.cc"
    "${CG_MODEL_DIR}/model_data.cc"
    "${CG_IMAGES_DIR}/test_images.cc")
# Images first: an export folder may hold test_images.h of its own.
target_include_directories(cosinegate_core PUBLIC "${CG_FIRMWARE_DIR}" "${CG_IMAGES_DIR}"
                           "${CG_MODEL_DIR}")
target_compile_options(cosinegate_core PUBLIC
    -fno-rtti -fno-exceptions -fno-threadsafe-statics -ffunction-sections -fdata-sections
    -Wall -Wextra)
if(NOT CG_ARENA_BYTES STREQUAL "0")
  target_compile_definitions(cosinegate_core PRIVATE CG_ARENA_BYTES=${CG_ARENA_BYTES})
endif()
target_link_libraries(cosinegate_core PUBLIC tflm)
