"""Any int8 image classifier as a bare `.tflite`: accuracy on a dataset's test split and MACs per image.

    python -m cosinegate.bench.classifier model.tflite --dataset cifar10 --data-dir DATA --preprocess raw --out DIR

No export report is needed: the input's shape and quantisation come from the model itself, and the
preprocessing is named. `raw` feeds the pixels 0..255 as real values (the MLPerf Tiny image
classification reference takes them so: input scale 1, zero point -128); `normalized` first maps
them to (pixel / 255 - mean) / std with the dataset's per-channel statistics, as `cg-train` does.
MACs are counted from the graph (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED), so a model of
another origin is measured the same way as ours. Writes DIR/classifier.json, with the per-image
correctness string for paired tests.

With `--tflm-root` (default $CG_TFLM_ROOT) the same model also runs in the QEMU firmware (CMSIS-NN
kernels) on the first `--qemu-images` test images: instructions per inference and, on the Cortex-M4
(`--core m4`, the default), the cycle estimate of cosinegate.bench.m4_timing in milliseconds at
`--clock-mhz`; `--core m7|m33|m55` runs the Cortex-M7, M33 or M55 port instead (instructions only):

    python -m cosinegate.bench.classifier model.tflite --dataset cifar10 --preprocess raw --out DIR
        --tflm-root $CG_TFLM_ROOT --qemu-images 3 [--flash-wait-states 5] [--core m4]     (one line)
"""
import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from cosinegate import atomic, errors

PREPROCESSING = ("raw", "normalized")


class ClassifierError(ValueError):
    """A model or dataset that this evaluation cannot use: one line for the user."""


def count_macs(tflite_bytes: bytes) -> int:
    """Multiply-accumulates of one inference over the main subgraph's CONV_2D, DEPTHWISE_CONV_2D
    and FULLY_CONNECTED ops, from their tensor shapes."""
    from cosinegate.export.restructure import builtin_code, read_model
    from cosinegate.export.native import tflite_schema
    ops = tflite_schema().BuiltinOperator
    model = read_model(tflite_bytes)
    sg = model.subgraphs[0]
    total = 0
    for op in sg.operators or []:
        code = builtin_code(model.operatorCodes[op.opcodeIndex])
        weights = sg.tensors[op.inputs[1]].shape if code in (ops.CONV_2D, ops.DEPTHWISE_CONV_2D,
                                                             ops.FULLY_CONNECTED) else None
        if weights is None:
            continue
        out = sg.tensors[op.outputs[0]].shape
        if code == ops.CONV_2D:            # weights (cout, kh, kw, cin), output (1, h, w, cout)
            total += int(np.prod(out[1:])) * int(np.prod(weights[1:]))
        elif code == ops.DEPTHWISE_CONV_2D:  # weights (1, kh, kw, cout)
            total += int(np.prod(out[1:])) * int(weights[1] * weights[2])
        else:                              # weights (units, inputs)
            total += int(np.prod(out[:-1])) * int(weights[0] * weights[1])
    return total


class BareClassifier:
    """tf.lite.Interpreter over a single-input, single-output int8 model, one image at a time."""

    def __init__(self, tflite_bytes: bytes):
        from cosinegate.export.native import captured_stderr, import_tensorflow
        tf = import_tensorflow()
        try:  # the XNNPACK delegate announces itself on fd 2 ("INFO: Created ...")
            with warnings.catch_warnings(), captured_stderr():
                warnings.simplefilter("ignore")
                self.interpreter = tf.lite.Interpreter(model_content=tflite_bytes, num_threads=1)
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ClassifierError(f"not a usable TFLite model ({str(e).strip().splitlines()[0][:200]})") from None
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ClassifierError(f"expected one input and one output, got {len(inputs)} and {len(outputs)}")
        self.input, self.output = inputs[0], outputs[0]
        if self.input["dtype"] != np.int8:
            raise ClassifierError(f"expected an int8 input, got {np.dtype(self.input['dtype']).name}")
        self.scale, self.zero_point = self.input["quantization"]
        if not self.scale > 0:
            raise ClassifierError("the model's input has no quantisation scale")

    @property
    def input_shape(self) -> tuple:
        return tuple(int(d) for d in self.input["shape"][1:])

    def quantize(self, x: np.ndarray) -> np.ndarray:
        q = np.round(x / self.scale) + self.zero_point
        return np.clip(q, -128, 127).astype(np.int8)

    def __call__(self, image_q: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], image_q[None])
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"]).reshape(-1).copy()


def preprocess(images: np.ndarray, dataset: str, how: str) -> np.ndarray:
    """uint8 NHWC -> the real-valued NHWC input the model was trained on."""
    if how == "raw":
        return images.astype(np.float64)
    from cosinegate.train.data import dataset_info
    info = dataset_info(dataset)
    return (images / 255.0 - np.asarray(info.mean)) / np.asarray(info.std)


def evaluate(tflite_bytes: bytes, dataset: str, data_dir, how: str, count: int, progress: bool = True) -> dict:
    from cosinegate.train.data import load_arrays
    from tqdm import tqdm
    images, labels = load_arrays(dataset, data_dir, "test")
    model = BareClassifier(tflite_bytes)
    images, labels = images[:count], labels[:count]
    if model.input_shape != images.shape[1:]:
        raise ClassifierError(f"the model takes {model.input_shape} inputs, {dataset} images are {images.shape[1:]}")
    xq = model.quantize(preprocess(images, dataset, how))
    predictions = np.array([model(x).argmax() for x in tqdm(xq, desc="tflite int8", disable=not progress,
                                                             leave=False)])
    right = predictions == labels
    return {"dataset": dataset, "split": "test", "images": int(len(labels)), "preprocess": how,
            "input_scale": float(model.scale), "input_zero_point": int(model.zero_point),
            "accuracy": float(right.mean()), "macs": count_macs(tflite_bytes), "model_bytes": len(tflite_bytes),
            "correct": "".join("1" if c else "0" for c in right)}


def firmware_report(tflite_bytes: bytes, dataset: str, model: BareClassifier) -> dict:
    """What the firmware's generated sources need (cosinegate.export.carray), for a model that
    did not come from cg-export: input, classes, no gated blocks, TFLM's arena and op list."""
    from cosinegate.export.restructure import op_names
    from cosinegate.export.tflm import measure_arena
    classes = int(np.prod(model.output["shape"]))
    return {"dataset": dataset, "num_classes": classes, "gated_blocks": 0,
            "input": {"shape": [1, *model.input_shape], "scale": float(model.scale),
                      "zero_point": int(model.zero_point)},
            "tflm_arena_bytes": measure_arena(tflite_bytes), "tflm_ops": op_names(tflite_bytes)}


def qemu_run(tflite_bytes: bytes, dataset: str, data_dir, how: str, count: int, tflm_root,
             clock_hz: int, flash_wait_states: int | None = None, kernels: str = "cmsis_nn",
             core: str = "m4") -> dict:
    """Build the QEMU firmware for `core` (cosinegate.bench.qemu.CORES) for the model and `count`
    test images and run it; the Cortex-M4 cycle estimate comes with the Cortex-M4 only."""
    from cosinegate.bench import m4_timing, qemu
    from cosinegate.export.carray import write_model_sources
    from cosinegate.export.test_images import write_test_images
    from cosinegate.train.data import load_arrays
    missing = qemu.missing_tools()
    if missing:
        raise ClassifierError(f"the QEMU run needs {', '.join(missing)} on PATH (firmware/README.md)")
    model = BareClassifier(tflite_bytes)
    images, labels = load_arrays(dataset, data_dir, "test")
    images, labels = images[:count], labels[:count].astype(np.int64)
    report = firmware_report(tflite_bytes, dataset, model)
    with tempfile.TemporaryDirectory(prefix="cg-classifier-") as work:
        work = Path(work)
        (work / "model_int8.tflite").write_bytes(tflite_bytes)
        write_model_sources(work / "model_int8.tflite", report, work, generated_by="cosinegate.bench.classifier")
        write_test_images(model.quantize(preprocess(images, dataset, how)), labels, dataset, work,
                          generated_by="cosinegate.bench.classifier")
        lib = qemu.find_tflm_library(tflm_root, kernels, qemu.CORES[core].tflm_target_arch)
        elf = qemu.build_firmware(work, tflm_root, lib, kernels, work / "build", core=core)
        result = qemu.run_firmware(elf, qemu.build_plugin(work / "build"),
                                   flash_loads=flash_wait_states is not None, core=core)
        size = qemu.firmware_size(elf)
    if result.log.errors or len(result.log.inferences) != count:
        raise ClassifierError(f"the firmware did not run every image: {result.output[-500:]}")
    costs = [i.cost for i in result.log.inferences]
    measured = {"kernels": kernels, "images": count, "tflm_library": str(lib),
                "core": qemu.CORES[core].name, "machine": qemu.CORES[core].machine,
                "predictions": [i.pred for i in result.log.inferences],
                "instructions_mean": float(np.mean(costs)), "flash_bytes": size.flash, "ram_bytes": size.ram,
                "arena_used": result.log.header.arena_used}
    if result.timing is not None:
        measured["m4_estimate"] = m4_timing.summarize(result.timing, clock_hz, flash_wait_states)
    return measured


def build_parser() -> argparse.ArgumentParser:
    from cosinegate.bench import qemu
    parser = errors.ArgumentParser(prog="cg-classifier", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("model", type=Path, help="an int8 .tflite classifier")
    parser.add_argument("--dataset", required=True, help="cifar10 | mnist | fashion-mnist | digits")
    parser.add_argument("--data-dir", help="dataset root (default: $CG_DATA_DIR, then ./data)")
    parser.add_argument("--preprocess", choices=PREPROCESSING, required=True,
                        help="raw: pixels 0..255 as they are; normalized: per-channel mean and std")
    parser.add_argument("--images", type=int, default=10000, metavar="N", help="test images (default 10000)")
    parser.add_argument("--out", type=Path, required=True, help="folder for classifier.json (created)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--tflm-root", type=Path, default=os.environ.get("CG_TFLM_ROOT"),
                        help="TFLM tree with built libraries: also run the QEMU firmware")
    parser.add_argument("--core", choices=qemu.CORES, default=qemu.DEFAULT_CORE,
                        help=f"QEMU core: {', '.join(qemu.CORES)} (default {qemu.DEFAULT_CORE}, the only one "
                             "with a cycle estimate)")
    parser.add_argument("--qemu-images", type=int, default=3, metavar="N",
                        help="test images in the QEMU firmware (default 3)")
    parser.add_argument("--clock-mhz", type=float, default=120.0,
                        help="core clock for the estimated milliseconds (default 120)")
    parser.add_argument("--flash-wait-states", type=int, metavar="WS",
                        help="Cortex-M4: also charge WS cycles per new 8-byte flash word the data loads read")
    return parser


# RuntimeError: the DataError of a missing data set (imported lazily, with torch)
@errors.command("cg-classifier", expected=(ClassifierError, RuntimeError, OSError))
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.flash_wait_states is not None and args.core != "m4":
        parser.error("--flash-wait-states needs --core m4: the cycle model is the Cortex-M4's")
    if args.images < 1:
        raise ClassifierError("--images must be at least 1")
    data = args.model.read_bytes()
    if not data:
        raise ClassifierError(f"{args.model} is empty")
    try:
        result = {"model": str(args.model), **evaluate(data, args.dataset, args.data_dir, args.preprocess,
                                                       args.images, not args.no_progress)}
        if args.tflm_root:
            result["qemu"] = qemu_run(data, args.dataset, args.data_dir, args.preprocess, args.qemu_images,
                                      args.tflm_root, int(args.clock_mhz * 1e6), args.flash_wait_states,
                                      core=args.core)
    except ClassifierError as e:
        raise ClassifierError(f"{args.model}: {e}") from None
    atomic.write_text(args.out / "classifier.json", json.dumps(result, indent=1) + "\n")
    print(f"cg-classifier: {args.model}: int8 accuracy {result['accuracy']:.4f} on {result['images']} "
          f"{args.dataset} test images, {result['macs']:,} MACs -> {args.out / 'classifier.json'}")
    if "qemu" in result and "m4_estimate" not in result["qemu"]:
        q = result["qemu"]
        print(f"cg-classifier: QEMU {q['core']} ({q['kernels']}, {q['images']} images): "
              f"{q['instructions_mean']:,.0f} instructions (not cycles: the cycle model is the Cortex-M4's), "
              f"flash {q['flash_bytes']:,} B, arena used {q['arena_used']:,} B")
    elif "qemu" in result:
        q, m4 = result["qemu"], result["qemu"]["m4_estimate"]
        print(f"cg-classifier: QEMU Cortex-M4 ({q['kernels']}, {q['images']} images): "
              f"{q['instructions_mean']:,.0f} instructions, {m4['cycles']:,.0f} estimated cycles "
              f"({m4['cycles_low']:,.0f}..{m4['cycles_high']:,.0f}) = {m4['ms']:.1f} ms at "
              f"{m4['clock_hz'] / 1e6:g} MHz, flash {q['flash_bytes']:,} B, arena used {q['arena_used']:,} B")
        if "cycles_flash" in m4:
            print(f"cg-classifier: with {m4['flash_wait_states']} flash wait states per new 8-byte word "
                  f"({m4['flash_words']:,.0f} of {m4['flash_loads']:,.0f} flash data loads): "
                  f"{m4['cycles_flash']:,.0f} cycles = {m4['ms_flash']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
