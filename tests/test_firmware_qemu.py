"""The QEMU firmware ports against the host TFLM interpreter.

Builds firmware/ports/qemu with CMake for an int8 export, runs it under qemu-system-arm
with the instruction-count plugin, and checks every embedded test image's prediction and
gate string against tflite_micro's Python interpreter on the same int8 input, for each
kernel flavour whose library exists, plus the one-line failures for bad builds and the
Cortex-M4 cycle estimate's accounting. With CMSIS-NN kernels the same check runs on the
Cortex-M7 (mps2-an500), M33 (mps2-an505) and M55 (mps3-an547), each against a TFLM library
built for that core; a core whose library is missing is skipped with the make command. The STM32F405 port (firmware/ports/stm32f4) is run
the same way under QEMU's netduinoplus2, its text read from the emulated USART.

Environment:
  CG_TFLM_ROOT        (required) tflite-micro checkout in which TFLM's Makefile built
                      libtensorflow-microlite.a for TARGET=cortex_m_generic
                      TARGET_ARCH=cortex-m4+fp, with and/or without
                      OPTIMIZED_KERNEL_DIR=cmsis_nn, and for the other cores
                      cortex-m7+fp, cortex-m33, cortex-m55 with cmsis_nn
                      (firmware/README.md). Unset: skip.
  CG_FIRMWARE_EXPORT  (optional) an export folder from `cg-export --int8`; by default a
                      tiny digits model with three IF-gated blocks is made here with TF.

    CG_TFLM_ROOT=/work/tflm/tflite-micro .venv/bin/python -m pytest tests/test_firmware_qemu.py -q
Needs arm-none-eabi-gcc + newlib, cmake, qemu-system-arm and cc; a few minutes.
"""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cosinegate.bench import qemu, stm32f4
from cosinegate.export.carray import write_model_sources
from cosinegate.export.test_images import load_test_split, make_test_set, write_test_images

pytestmark = pytest.mark.firmware

TFLM_ROOT = os.environ.get("CG_TFLM_ROOT")
if not TFLM_ROOT:
    pytest.skip("CG_TFLM_ROOT is not set: point it at a tflite-micro checkout with TFLM "
                "libraries built for cortex-m4+fp (see firmware/README.md)",
                allow_module_level=True)
if qemu.missing_tools():
    pytest.skip(f"missing tools for the firmware test: {', '.join(qemu.missing_tools())}",
                allow_module_level=True)

NUM_TEST_IMAGES = 10
TINY_MODEL_GATE_QUANTILES = (0.3, 0.5, 0.7)   # of the stem's mean activation: gates differ


def _tflm_library(kernels: str, core: str = qemu.DEFAULT_CORE) -> Path:
    try:
        return qemu.find_tflm_library(TFLM_ROOT, kernels, qemu.CORES[core].tflm_target_arch)
    except FileNotFoundError as error:
        pytest.skip(str(error))


def _all_builtin_ops(model: bytes) -> list[str]:
    """Builtin op names over every subgraph (IF branches included)."""
    from cosinegate.export.native import tflite_flatbuffer_utils, tflite_schema
    schema, flatbuffer_utils = tflite_schema(), tflite_flatbuffer_utils()
    names = {code: name for name, code in vars(schema.BuiltinOperator).items()
             if not name.startswith("_")}
    parsed = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    codes = [parsed.operatorCodes[op.opcodeIndex] for sg in parsed.subgraphs for op in sg.operators]
    return sorted({names[max(c.builtinCode, c.deprecatedBuiltinCode)] for c in codes})


def _tflm_arena_bytes(model: bytes, input_shape) -> int:
    """Smallest arena (to 16 bytes) in which the host TFLM interpreter runs the model."""
    from tflite_micro.python.tflite_micro import runtime

    def runs(size: int) -> bool:
        try:
            interpreter = runtime.Interpreter.from_bytes(model, arena_size=size)
            interpreter.set_input(np.zeros(input_shape, np.int8), 0)
            interpreter.invoke()
            return True
        except RuntimeError:
            return False

    low, high = 256, 1 << 20
    while high - low > 16:
        middle = (low + high) // 2
        low, high = (low, middle) if runs(middle) else (middle, high)
    return high


def _make_tiny_gated_export(out_dir: Path) -> Path:
    """Digits model: stem conv, three residual blocks each behind tf.cond (-> TFLite IF,
    gate output gate_i), mean pool, dense; untrained, full int8 like cg-export --int8."""
    from cosinegate.export.native import import_tensorflow
    tf = import_tensorflow()  # in the order that lets this process export exits models later

    mean, std = [0.25], [0.35]
    images, _ = load_test_split("digits", None)
    calibration = ((images[:100].astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
    tf.random.set_seed(0)
    stem = tf.keras.layers.Conv2D(8, 3, padding="same", activation="relu")
    blocks = [(tf.keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
               tf.keras.layers.Conv2D(8, 3, padding="same")) for _ in range(3)]
    head = tf.keras.layers.Dense(10)
    stem_means = [float(tf.reduce_mean(stem(calibration[i:i + 1])))
                  for i in range(len(calibration))]
    thresholds = [float(np.quantile(stem_means, q)) for q in TINY_MODEL_GATE_QUANTILES]

    class TinyGated(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 1], tf.float32)])
        def __call__(self, x):
            h = stem(x)                                                      # (1, 8, 8, 8)
            outputs = {}
            for i, (conv_a, conv_b) in enumerate(blocks):
                gate = tf.reshape(tf.reduce_mean(h) > thresholds[i], [1])    # (1,) bool
                h = tf.cond(gate[0], lambda h=h, a=conv_a, b=conv_b: tf.nn.relu(h + b(a(h))),
                            lambda h=h: h)
                outputs[f"gate_{i}"] = gate
            # Signature outputs are ordered by name: "class_logits" sorts before "gate_*".
            outputs["class_logits"] = head(tf.reduce_mean(h, axis=[1, 2]))  # (1, 10)
            return outputs

    module = TinyGated()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.__call__.get_concrete_function()], module)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([calibration[i:i + 1]] for i in range(100))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    model = converter.convert()

    details = tf.lite.Interpreter(model_content=model).get_input_details()[0]
    scale, zero_point = details["quantization"]
    report = {"input": {"shape": [1, 8, 8, 1], "scale": float(scale),
                        "zero_point": int(zero_point), "mean": mean, "std": std},
              "num_classes": 10, "gated_blocks": 3, "dataset": "digits",
              "tflm_ops": _all_builtin_ops(model),
              "tflm_arena_bytes": _tflm_arena_bytes(model, (1, 8, 8, 1))}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model_int8.tflite").write_bytes(model)
    (out_dir / "export_report.json").write_text(json.dumps(report, indent=1))
    write_model_sources(out_dir / "model_int8.tflite", report, out_dir)
    return out_dir


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    given = os.environ.get("CG_FIRMWARE_EXPORT")
    if given:
        return Path(given)
    return _make_tiny_gated_export(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def report(export_dir) -> dict:
    return json.loads((export_dir / "export_report.json").read_text())


@pytest.fixture(scope="module")
def test_set(export_dir, report, tmp_path_factory):
    """(images dir with test_images.cc, int8 images (N, H, W, C), labels (N,))."""
    images, labels = load_test_split(report["dataset"], None)
    quantized, labels = make_test_set(report, images, labels, NUM_TEST_IMAGES)
    images_dir = tmp_path_factory.mktemp("images")
    write_test_images(quantized, labels, report["dataset"], images_dir)
    return images_dir, quantized, labels


@pytest.fixture(scope="module")
def host_results(export_dir, report, test_set) -> list[tuple[int, str]]:
    """(prediction, gate string) per test image from the host TFLM interpreter."""
    from tflite_micro.python.tflite_micro import runtime
    interpreter = runtime.Interpreter.from_bytes(
        (export_dir / "model_int8.tflite").read_bytes())
    results = []
    for image in test_set[1]:
        interpreter.set_input(image[None], 0)                                # (1, H, W, C)
        interpreter.invoke()
        logits = interpreter.get_output(0).ravel()                           # (classes,)
        gates = "".join("1" if interpreter.get_output(1 + i).ravel()[0] else "0"
                        for i in range(report["gated_blocks"]))
        results.append((int(np.argmax(logits)), gates))
    return results


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    return qemu.build_plugin(tmp_path_factory.mktemp("plugin"))


def test_every_exported_op_has_a_resolver_method(export_dir):
    resolver = (Path(TFLM_ROOT) / "tensorflow/lite/micro/micro_mutable_op_resolver.h").read_text()
    settings = (export_dir / "model_settings.h").read_text()
    methods = [line.split("(")[1].split(",")[0] for line in settings.splitlines()
               if line.startswith("  X(")]
    assert methods
    assert [m for m in methods if f"TfLiteStatus Add{m}(" not in resolver] == []


@pytest.mark.parametrize("kernels", qemu.KERNELS)
def test_qemu_matches_host_tflm(kernels, export_dir, report, test_set, host_results, plugin,
                                tmp_path):
    elf = qemu.build_firmware(export_dir, TFLM_ROOT, _tflm_library(kernels), kernels,
                              tmp_path / "build", images_dir=test_set[0])
    result = qemu.run_firmware(elf, plugin, profile_path=tmp_path / "profile.txt")
    log = result.log
    assert result.returncode == 0 and log.errors == [], result.output
    assert log.header.cost_unit == "instructions" and log.header.core == "cortex-m4"
    assert log.header.gated_blocks == report["gated_blocks"]
    assert 0 < log.header.arena_used <= log.header.arena_bytes
    assert log.skipped_lines == 0, result.output
    assert [i.idx for i in log.inferences] == list(range(NUM_TEST_IMAGES))
    assert [i.label for i in log.inferences] == test_set[2].tolist()
    assert [(i.pred, i.gates) for i in log.inferences] == host_results
    assert all(i.cost_unit == "instructions" and i.cost > 0 for i in log.inferences)
    assert log.summary.correct == sum(p == l for (p, _), l in zip(host_results, test_set[2]))
    # The flat profile accounts for every counted instruction, almost all inside named functions.
    profile = qemu.function_profile(elf, tmp_path / "profile.txt", len(log.inferences))
    total = sum(i.cost for i in log.inferences) / len(log.inferences)
    assert sum(c for _, c in profile) == pytest.approx(total, rel=1e-12)
    assert sum(c for name, c in profile if name.startswith("0x")) < 0.01 * total
    assert any(word in name for name, _ in profile for word in ("ConvPerChannel", "arm_convolve")), profile[:5]
    # The cycle estimate decodes the same blocks the counter counted: the totals agree exactly.
    assert [t.instructions for t in result.timing] == [i.cost for i in log.inferences]
    for timing in result.timing:
        low, high = timing.bounds()
        assert timing.instructions < low < timing.cycles() < high < 3 * timing.instructions
        assert 0 < timing.refills < timing.counts["branch"] + timing.counts["multiple"] + timing.counts["load"]
        assert sum(timing.counts.values()) == timing.instructions
        assert timing.counts["mul"] > 0 and timing.counts["load"] > 0


@pytest.mark.parametrize("core", [core for core in qemu.CORES if core != qemu.DEFAULT_CORE])
def test_other_cores_match_host_tflm(core, export_dir, report, test_set, host_results, plugin, tmp_path):
    """The Cortex-M7, M33 and M55 ports with CMSIS-NN kernels (the M55's use MVE): host TFLM's
    predictions and gates, the core's name in the header, instructions but no M4 cycle estimate."""
    spec = qemu.CORES[core]
    elf = qemu.build_firmware(export_dir, TFLM_ROOT, _tflm_library("cmsis_nn", core), "cmsis_nn",
                              tmp_path / "build", images_dir=test_set[0], core=core)
    assert qemu.marker_addresses(elf)["begin"] in range(*spec.flash)
    result = qemu.run_firmware(elf, plugin, profile_path=tmp_path / "profile.txt", core=core)
    log = result.log
    assert result.returncode == 0 and log.errors == [] and log.skipped_lines == 0, result.output
    assert (log.header.core, log.header.cost_unit) == (spec.name, "instructions")
    assert log.header.gated_blocks == report["gated_blocks"]
    assert [i.label for i in log.inferences] == test_set[2].tolist()
    assert [(i.pred, i.gates) for i in log.inferences] == host_results
    assert all(i.cost_unit == "instructions" and i.cost > 0 for i in log.inferences)
    assert result.timing is None
    profile = qemu.function_profile(elf, tmp_path / "profile.txt", len(log.inferences))
    total = sum(i.cost for i in log.inferences) / len(log.inferences)
    assert sum(c for _, c in profile) == pytest.approx(total, rel=1e-12)
    assert any("arm_convolve" in name for name, _ in profile), profile[:5]


def test_stm32f4_port_on_netduinoplus2(export_dir, report, test_set, host_results, tmp_path):
    """Start-up, clock fallback and USART1 of the STM32F405 port, under QEMU's model of the part."""
    kernels = "cmsis_nn"
    elf = stm32f4.build_firmware(export_dir, TFLM_ROOT, _tflm_library(kernels), kernels,
                                 tmp_path / "build", images_dir=test_set[0])
    size = qemu.firmware_size(elf)
    assert size.flash <= 1 << 20 and size.ram + size.stack <= 128 << 10
    log, output = stm32f4.run_qemu(elf, timeout_s=600)
    assert log.errors == [] and log.skipped_lines == 0, output
    # QEMU models no RCC: the PLL never locks, and the firmware says it runs on the 16 MHz HSI.
    assert (log.header.core, log.header.clock_hz, log.header.cost_unit) == ("cortex-m4", 16_000_000, "cycles")
    assert [(i.pred, i.gates) for i in log.inferences] == host_results
    assert [i.label for i in log.inferences] == test_set[2].tolist()
    assert log.summary.images == NUM_TEST_IMAGES


def _without_op(export_dir: Path, report: dict, out_dir: Path) -> Path:
    """Copy of the export whose model_settings.h forgets the classifier's op."""
    out_dir.mkdir()
    shutil.copy(export_dir / "model_int8.tflite", out_dir)
    reduced = dict(report, tflm_ops=[op for op in report["tflm_ops"] if op != "FULLY_CONNECTED"])
    write_model_sources(out_dir / "model_int8.tflite", reduced, out_dir)
    return out_dir


@pytest.mark.parametrize("fault, says", [
    ("arena", "the export measured"), ("op", "uses FULLY_CONNECTED"), ("input", "input tensor")])
def test_bad_build_stops_with_one_clear_line(fault, says, export_dir, report, test_set, plugin,
                                             tmp_path):
    model_dir, images_dir, arena_bytes = export_dir, test_set[0], None
    if fault == "arena":
        arena_bytes = 1024
    elif fault == "op":
        model_dir = _without_op(export_dir, report, tmp_path / "model")
    else:
        _, height, width, channels = report["input"]["shape"]
        wrong = np.zeros((2, height + 1, width, channels), np.int8)
        images_dir = tmp_path / "images"
        write_test_images(wrong, np.array([0, 1]), report["dataset"], images_dir)
    elf = qemu.build_firmware(model_dir, TFLM_ROOT, _tflm_library("reference"), "reference",
                              tmp_path / "build", images_dir=images_dir, arena_bytes=arena_bytes)
    result = qemu.run_firmware(elf, plugin)
    assert result.returncode != 0
    assert [e.reason for e in result.log.errors] == [fault], result.output
    assert says in result.log.errors[0].message
    assert result.log.inferences == [] and result.log.header is None


def _host_decisions(tflite: bytes, images, outputs: int) -> list[tuple[int, str]]:
    """(prediction, decision string) per image from the host TFLM interpreter."""
    from tflite_micro.python.tflite_micro import runtime
    interpreter = runtime.Interpreter.from_bytes(tflite)
    results = []
    for image in images:
        interpreter.set_input(image[None], 0)                                # (1, H, W, C)
        interpreter.invoke()
        decisions = "".join("1" if interpreter.get_output(1 + i).ravel()[0] else "0" for i in range(outputs))
        results.append((int(np.argmax(interpreter.get_output(0).ravel())), decisions))
    return results


def test_early_exit_model_on_qemu_takes_the_host_decisions_and_stops_early(plugin, tmp_path):
    """Nested IFs on the device: the same predictions and exits as host TFLM, and an image that
    leaves at an exit runs fewer instructions than any that went on past it."""
    from cosinegate.export import cli as export_cli
    from cosinegate.train.cli import main as train_main
    run, export = tmp_path / "run", tmp_path / "export"
    assert train_main(["--preset", "demo", "--no-gated", "--exits", "1,2", "--depth", "8", "--epochs", "2",
                       "--threads", "1", "--no-progress", "--out", str(run)]) == 0
    assert export_cli.main([str(run / "last.pt"), "--int8", "--out", str(export), "--exit-threshold", "0.5",
                            "--parity-images", "60", "--calibration-images", "60", "--no-progress"]) == 0
    report = json.loads((export / "export_report.json").read_text())
    images, labels = load_test_split(report["dataset"], None)
    quantized, labels = make_test_set(report, images, labels, 40)
    write_test_images(quantized, labels, report["dataset"], tmp_path / "images")
    host = _host_decisions((export / "model_int8.tflite").read_bytes(), quantized, 2)
    elf = qemu.build_firmware(export, TFLM_ROOT, _tflm_library("cmsis_nn"), "cmsis_nn", tmp_path / "build",
                              images_dir=tmp_path / "images")
    log = qemu.run_firmware(elf, plugin).log
    assert log.errors == [] and log.header.gated_blocks == 2
    assert [(i.pred, i.gates) for i in log.inferences] == host
    cost = {gates: [i.cost for i in log.inferences if i.gates == gates] for _, gates in host}
    assert "01" not in cost  # nobody goes on past exit 1 without passing exit 0
    depths = sorted(cost, key=lambda gates: gates.count("1"))                # "00", "10", "11"
    assert len(depths) >= 2, cost.keys()
    assert all(max(cost[a]) < min(cost[b]) for a, b in zip(depths, depths[1:]))


def test_gates_behind_an_exit_on_qemu_take_the_host_decisions(plugin, tmp_path):
    """Gate IFs nested in an exit's then-branch on the device: the same predictions, gates and
    exits as host TFLM, and a block behind an exit runs only for images that went on past it."""
    from cosinegate.export import cli as export_cli
    from cosinegate.train.cli import main as train_main
    run, export = tmp_path / "run", tmp_path / "export"
    assert train_main(["--preset", "demo", "--gate-init", "open", "--exits", "1,2", "--depth", "8",
                       "--epochs", "2", "--threads", "1", "--no-progress", "--out", str(run)]) == 0
    assert export_cli.main([str(run / "last.pt"), "--int8", "--out", str(export), "--exit-threshold", "0.5",
                            "--gate-threshold", "0.0001", "--parity-images", "60", "--calibration-images", "60",
                            "--no-progress"]) == 0
    report = json.loads((export / "export_report.json").read_text())
    images, labels = load_test_split(report["dataset"], None)
    quantized, labels = make_test_set(report, images, labels, 40)
    write_test_images(quantized, labels, report["dataset"], tmp_path / "images")
    host = _host_decisions((export / "model_int8.tflite").read_bytes(), quantized, 5)
    elf = qemu.build_firmware(export, TFLM_ROOT, _tflm_library("cmsis_nn"), "cmsis_nn", tmp_path / "build",
                              images_dir=tmp_path / "images")
    log = qemu.run_firmware(elf, plugin).log
    assert log.errors == [] and log.header.gated_blocks == 5   # gate_0..2, exit_0, exit_1
    assert [(i.pred, i.gates) for i in log.inferences] == host
    # every gate open: block 1 runs exactly when the image passed exit 0, block 2 when it passed exit 1
    assert all(g[1] == g[3] and g[2] == g[4] for _, g in host)
    assert len({g for _, g in host}) >= 2
