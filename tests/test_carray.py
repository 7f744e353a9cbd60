"""Tests for the firmware source generators: cosinegate.export.carray (model_data.cc,
model_settings.h) and cosinegate.export.test_images (test_images.cc/.h). No TFLM needed;
the generated C++ is syntax-checked with the host g++ when there is one.

    .venv/bin/python -m pytest tests/test_carray.py -q
"""
import re
import shutil
import subprocess

import numpy as np
import pytest

from cosinegate.export.carray import resolver_method, write_model_sources
from cosinegate.export.test_images import make_test_set, quantize_images, write_test_images

REPORT = {
    "input": {"shape": [1, 8, 8, 1], "scale": 0.0112, "zero_point": -64,
              "mean": [0.25], "std": [0.35]},
    "num_classes": 10,
    "gated_blocks": 3,
    "tflm_arena_bytes": 23104,
    "tflm_ops": ["CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED", "GREATER", "IF", "QUANTIZE",
                 "PAD", "STRIDED_SLICE", "ADD"],
    "dataset": "digits",
}


@pytest.fixture
def model_sources(tmp_path):
    tflite = tmp_path / "model_int8.tflite"
    tflite.write_bytes(bytes(range(256)) * 3 + b"\x01")   # 769 bytes, not a multiple of a row
    paths = write_model_sources(tflite, REPORT, tmp_path / "out")
    return {p.name: p.read_text() for p in paths}, tflite.read_bytes()


def test_model_data_holds_the_exact_bytes_aligned(model_sources):
    files, data = model_sources
    source = files["model_data.cc"]
    assert "alignas(16) const unsigned char g_cosinegate_model_data[]" in source
    assert "Do not edit" in source and "cosinegate.export.carray" in source
    values = [int(v, 16) for v in re.findall(r"0x([0-9a-f]{2})", source)]
    assert bytes(values) == data
    assert f"g_cosinegate_model_data_len = {len(data)};" in source
    assert "extern const unsigned char g_cosinegate_model_data[];" in files["model_data.h"]


def test_settings_come_from_the_report(model_sources):
    settings = model_sources[0]["model_settings.h"]
    for line in ("kInputHeight = 8;", "kInputChannels = 1;", "kInputZeroPoint = -64;",
                 "kNumClasses = 10;", "kNumGatedBlocks = 3;", 'kDataset[] = "digits";'):
        assert line in settings
    assert float(re.search(r"kInputScale = ([0-9.e-]+)f;", settings).group(1)) == \
        pytest.approx(0.0112)
    # Arena: report value rounded up to 16, plus 16 bytes of alignment slack.
    assert "kTensorArenaSize = 23120;" in settings
    assert re.search(r'kModelId\[\] = "digits-[0-9a-f]{12}";', settings)


def test_op_list_is_deduplicated_with_int8_kernels_where_tflm_has_them(model_sources):
    settings = model_sources[0]["model_settings.h"]
    ops = re.findall(r"^  X\((\w+), ([^)]*\)?)\)", settings, re.M)
    assert "kNumOps = 9;" in settings and len(ops) == 9
    registrations = dict(ops)
    assert registrations["Conv2D"] == "tflite::Register_CONV_2D_INT8()"
    assert registrations["Add"] == "tflite::Register_ADD_INT8()"
    assert registrations["If"] == "" and registrations["Pad"] == ""


def test_int8_kernels_can_be_turned_off(tmp_path):
    tflite = tmp_path / "m.tflite"
    tflite.write_bytes(b"\x00" * 8)
    settings = write_model_sources(tflite, REPORT, tmp_path, int8_kernels=False)[2].read_text()
    assert "_INT8" not in settings


@pytest.mark.parametrize("op, method", [
    ("CONV_2D", "Conv2D"), ("DEPTHWISE_CONV_2D", "DepthwiseConv2D"),
    ("FULLY_CONNECTED", "FullyConnected"), ("STRIDED_SLICE", "StridedSlice"), ("IF", "If"),
    ("AVERAGE_POOL_2D", "AveragePool2D"), ("BATCH_MATMUL", "BatchMatMul"),
    ("L2_NORMALIZATION", "L2Normalization"), ("PADV2", "PadV2"), ("mean", "Mean"),
])
def test_resolver_method_names(op, method):
    assert resolver_method(op) == method


def test_files_are_replaced_atomically_without_leftovers(tmp_path):
    tflite = tmp_path / "m.tflite"
    tflite.write_bytes(b"\x01\x02")
    write_model_sources(tflite, REPORT, tmp_path / "out")
    write_model_sources(tflite, REPORT, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        ["model_data.cc", "model_data.h", "model_settings.h"]


def test_quantize_rounds_half_away_from_zero_and_saturates():
    info = {"mean": [0.0], "std": [1.0], "scale": 1 / 255, "zero_point": -128}
    pixels = np.array([0, 1, 127, 128, 255], dtype=np.uint8).reshape(1, 1, 5, 1)
    assert quantize_images(pixels, info).ravel().tolist() == [-128, -127, -1, 0, 127]
    half = {"mean": [0.0], "std": [1.0], "scale": 2 / 255, "zero_point": 0}
    assert quantize_images(np.array([1, 3], np.uint8).reshape(1, 1, 2, 1), half).ravel() \
        .tolist() == [1, 2]                                   # 0.5 -> 1, 1.5 -> 2
    saturating = {"mean": [0.5], "std": [0.01], "scale": 0.1, "zero_point": 0}
    assert quantize_images(np.array([0, 255], np.uint8).reshape(1, 1, 2, 1), saturating) \
        .ravel().tolist() == [-128, 127]


def test_test_set_checks_the_input_shape():
    images = np.zeros((4, 8, 8, 1), np.uint8)
    quantized, labels = make_test_set(REPORT, images, np.arange(4), 2)
    assert quantized.shape == (2, 8, 8, 1) and quantized.dtype == np.int8
    assert labels.tolist() == [0, 1]
    with pytest.raises(ValueError, match="do not match"):
        make_test_set(REPORT, np.zeros((4, 32, 32, 3), np.uint8), np.arange(4), 2)


def test_test_images_sources_hold_images_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(-128, 128, size=(3, 8, 8, 1), dtype=np.int8)
    header_path, source_path = write_test_images(images, np.array([7, 0, 3]), "digits", tmp_path)
    header, source = header_path.read_text(), source_path.read_text()
    assert "kNumTestImages = 3;" in header and "kTestImageHeight = 8;" in header
    body = source.split("g_test_images[kNumTestImages][kTestImageSize] = {", 1)[1]
    body = body.split("};", 1)[0]
    values = [int(v) for v in re.findall(r"-?\d+", re.sub(r"//[^\n]*", "", body))]
    assert values == images.ravel().tolist()
    assert "g_test_labels[kNumTestImages] = {7, 0, 3};" in source


@pytest.mark.skipif(shutil.which("g++") is None, reason="no host g++ to syntax-check with")
def test_generated_sources_compile(model_sources, tmp_path):
    out = tmp_path / "out"
    write_test_images(np.zeros((2, 8, 8, 1), np.int8), np.array([1, 2]), "digits", out)
    # A stand-in resolver with the same Add<Op>(registration) shape as TFLM's.
    (out / "check.cc").write_text("""
#include "model_data.h"
#include "model_settings.h"
#include "test_images.h"
namespace tflite {
struct Reg {};
Reg Register_CONV_2D_INT8(); Reg Register_ADD_INT8(); Reg Register_FULLY_CONNECTED_INT8();
}
struct Resolver { int count = 0;
#define CG_METHOD(method, registration) int Add##method(tflite::Reg = {}) { return ++count; }
  CG_MODEL_OPS(CG_METHOD)
};
static_assert(kInputSize == kTestImageSize, "image size");
int main() { Resolver r;
#define CG_CALL(method, registration) r.Add##method(registration);
  CG_MODEL_OPS(CG_CALL)
  return r.count == kNumOps && g_cosinegate_model_data_len > 0 ? 0 : 1; }
""")
    result = subprocess.run(["g++", "-std=c++17", "-fsyntax-only", "-I", str(out),
                             str(out / "check.cc"), str(out / "model_data.cc"),
                             str(out / "test_images.cc")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
