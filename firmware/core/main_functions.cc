// CosineGate harness: runs the exported int8 model on each embedded test image and
// prints, per inference, the prediction, each gated block's decision and the cost.
//
// Protocol (one line each; formatted by protocol_format.cc, parsed by
// cosinegate.bench.protocol):
//   CG-HEADER protocol=1 model=<id> core=<core> clock_hz=<hz> cost=<unit>
//             arena_bytes=<size> arena_used=<bytes> images=<n> classes=<n> gated_blocks=<n>
//   CG idx=<i> label=<l> pred=<p> gates=<0/1 per block, or -> <unit>=<count>
//   CG-SUMMARY images=<n> correct=<n> failed=<n> gates_on=<count per block, or ->
//   CG-ERROR reason=<schema|op|arena|input|output|invoke> <explanation>
// Model constants come from the export (model_settings.h, generated); the images
// from cosinegate.export.test_images (test_images.h). Build: see firmware/README.md.
#include "core/main_functions.h"

#include <algorithm>
#include <cstdarg>
#include <cstdint>
#include <cstdio>

#include "core/board.h"
#include "core/cost_meter.h"
#include "core/protocol_format.h"
#include "core/text_output.h"
#include "model_data.h"
#include "model_settings.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"
#include "test_images.h"

namespace {

// CG_ARENA_BYTES (a CMake cache variable) overrides the size the export measured.
#ifdef CG_ARENA_BYTES
constexpr int kArenaSize = CG_ARENA_BYTES;
#else
constexpr int kArenaSize = kTensorArenaSize;
#endif
constexpr int kLineSize = 256;

alignas(16) uint8_t tensor_arena[kArenaSize];

using CgOpResolver = tflite::MicroMutableOpResolver<kNumOps>;

tflite::MicroInterpreter* interpreter = nullptr;
CgBoardInfo board;
int image_index = 0;
int correct_count = 0;
int failed_count = 0;
int gate_on_counts[kNumGatedBlocks > 0 ? kNumGatedBlocks : 1] = {};

// Registers exactly the ops the export listed (CG_MODEL_OPS in model_settings.h).
TfLiteStatus RegisterOps(CgOpResolver& op_resolver) {
#define CG_REGISTER_OP(method, registration) \
  TF_LITE_ENSURE_STATUS(op_resolver.Add##method(registration));
  CG_MODEL_OPS(CG_REGISTER_OP)
#undef CG_REGISTER_OP
  return kTfLiteOk;
}

void WriteLine(const char* format, ...) __attribute__((format(printf, 1, 2)));
void WriteLine(const char* format, ...) {
  char line[kLineSize];
  va_list args;
  va_start(args, format);
  vsnprintf(line, sizeof line, format, args);
  va_end(args);
  CgWriteText(line);
}

[[noreturn]] void Fail(const char* reason, const char* explanation) {
  char line[kLineSize];
  CgFormatErrorLine(reason, explanation, line, sizeof line);
  CgWriteText(line);
  CgBoardStop(false);
}

// Name of the first op the model uses that RegisterOps() did not register, or nullptr.
const char* FirstUnregisteredOp(const tflite::Model* model, const CgOpResolver& op_resolver) {
  if (model->operator_codes() == nullptr || model->subgraphs() == nullptr) return nullptr;
  // Only the codes an operator refers to: a model may list codes that no operator uses.
  for (const tflite::SubGraph* subgraph : *model->subgraphs()) {
    if (subgraph->operators() == nullptr) continue;
    for (const tflite::Operator* op : *subgraph->operators()) {
      const tflite::OperatorCode* code = model->operator_codes()->Get(op->opcode_index());
      // Schema 3a keeps codes above 127 only in builtin_code: the larger field is the op.
      const int builtin = std::max<int>(code->deprecated_builtin_code(), code->builtin_code());
      const auto builtin_op = static_cast<tflite::BuiltinOperator>(builtin);
      if (builtin_op != tflite::BuiltinOperator_CUSTOM && op_resolver.FindOp(builtin_op) == nullptr) {
        return tflite::EnumNameBuiltinOperator(builtin_op);
      }
    }
  }
  return nullptr;
}

bool HasShape(const TfLiteTensor* tensor, const int* dims, int rank) {
  if (tensor->dims->size != rank) return false;
  for (int i = 0; i < rank; ++i) {
    if (tensor->dims->data[i] != dims[i]) return false;
  }
  return true;
}

void CheckInputAndOutputs() {
  const int image_dims[] = {1, kTestImageHeight, kTestImageWidth, kTestImageChannels};
  const int model_dims[] = {1, kInputHeight, kInputWidth, kInputChannels};
  const TfLiteTensor* input = interpreter->input(0);
  if (input->type != kTfLiteInt8 || !HasShape(input, image_dims, 4) ||
      !HasShape(input, model_dims, 4)) {
    char explanation[kLineSize];
    snprintf(explanation, sizeof explanation,
             "input tensor is not int8 [1,%d,%d,%d] as the test images and "
             "model_settings.h say; regenerate both from the same export",
             kTestImageHeight, kTestImageWidth, kTestImageChannels);
    Fail("input", explanation);
  }
  const int logits_dims[] = {1, kNumClasses};
  const TfLiteTensor* logits = interpreter->output(0);
  if (interpreter->outputs_size() != static_cast<size_t>(1 + kNumGatedBlocks) ||
      logits->type != kTfLiteInt8 || !HasShape(logits, logits_dims, 2)) {
    Fail("output", "expected int8 logits [1,kNumClasses] plus one bool per gated block");
  }
  for (int block = 0; block < kNumGatedBlocks; ++block) {
    if (interpreter->output(1 + block)->type != kTfLiteBool) {
      Fail("output", "gate outputs must be bool tensors of shape [1]");
    }
  }
}

int ArgMax(const int8_t* values, int count) {
  int best = 0;
  for (int i = 1; i < count; ++i) {
    if (values[i] > values[best]) best = i;
  }
  return best;
}

void WriteSummary() {
  char line[kLineSize];
  CgFormatSummaryLine(kNumTestImages, correct_count, failed_count, gate_on_counts,
                      kNumGatedBlocks, line, sizeof line);
  CgWriteText(line);
}

}  // namespace

void setup() {
  board = CgBoardInit();

  const tflite::Model* model = tflite::GetModel(g_cosinegate_model_data);
  if (model->version() != TFLITE_SCHEMA_VERSION) {
    char explanation[kLineSize];
    snprintf(explanation, sizeof explanation,
             "model schema version %lu, this TFLM reads version %d",
             static_cast<unsigned long>(model->version()), TFLITE_SCHEMA_VERSION);
    Fail("schema", explanation);
  }

  static CgOpResolver op_resolver;
  if (RegisterOps(op_resolver) != kTfLiteOk) {
    Fail("op", "registering the exported op list failed (kNumOps too small?)");
  }

  // The export measured the arena on a 64-bit host, an upper bound; a smaller arena
  // may fit (see arena_used in the header). If it does not, TFLM can stop in an
  // assertion ("HALTED") while allocating IF subgraphs instead of failing cleanly.
  if (kArenaSize < kTensorArenaSize) {
    WriteLine("# arena of %d bytes is below the %d bytes the export measured; "
              "if TFLM stops with HALTED, the arena is too small\n",
              kArenaSize, kTensorArenaSize);
  }

  const char* missing_op = FirstUnregisteredOp(model, op_resolver);
  if (missing_op != nullptr) {
    char explanation[kLineSize];
    snprintf(explanation, sizeof explanation,
             "the model uses %s, which model_settings.h does not list; regenerate it from "
             "this export (python -m cosinegate.export.carray)", missing_op);
    Fail("op", explanation);
  }

  static tflite::MicroInterpreter static_interpreter(model, op_resolver, tensor_arena,
                                                     kArenaSize);
  interpreter = &static_interpreter;
  if (interpreter->AllocateTensors() != kTfLiteOk) {
    // TFLM has printed the shortfall of the allocation that failed ('# TFLM:' lines).
    char explanation[kLineSize];
    snprintf(explanation, sizeof explanation,
             "AllocateTensors failed with a %d-byte arena (the export measured %d); add "
             "the shortfall TFLM reports above and rebuild with CG_ARENA_BYTES",
             kArenaSize, kTensorArenaSize);
    Fail("arena", explanation);
  }
  CheckInputAndOutputs();

  const CgRunInfo info = {kModelId, board, kArenaSize,
                          static_cast<unsigned>(interpreter->arena_used_bytes()),
                          kNumTestImages, kNumClasses, kNumGatedBlocks};
  char line[kLineSize];
  CgFormatHeaderLine(info, line, sizeof line);
  CgWriteText(line);
}

void loop() {
  if (image_index == kNumTestImages) {
    WriteSummary();
    CgBoardStop(failed_count == 0);
  }
  const int index = image_index++;
  TfLiteTensor* input = interpreter->input(0);
  for (int i = 0; i < kTestImageSize; ++i) input->data.int8[i] = g_test_images[index][i];

  CgCostMeterBegin();
  const TfLiteStatus status = interpreter->Invoke();
  CgCostMeterEnd();
  if (status != kTfLiteOk) {
    ++failed_count;
    char explanation[kLineSize];
    snprintf(explanation, sizeof explanation, "idx=%d Invoke() failed, continuing", index);
    char line[kLineSize];
    CgFormatErrorLine("invoke", explanation, line, sizeof line);
    CgWriteText(line);
    return;
  }

  const int prediction = ArgMax(interpreter->output(0)->data.int8, kNumClasses);
  if (prediction == g_test_labels[index]) ++correct_count;
  bool gates[kNumGatedBlocks > 0 ? kNumGatedBlocks : 1] = {};
  for (int block = 0; block < kNumGatedBlocks; ++block) {
    gates[block] = interpreter->output(1 + block)->data.b[0];
    gate_on_counts[block] += gates[block];
  }
  char line[kLineSize];
  CgFormatInferenceLine(index, g_test_labels[index], prediction, gates, kNumGatedBlocks, line,
                        sizeof line);
  CgWriteText(line);
  CgCostMeterReport();
  CgWriteText("\n");
}
