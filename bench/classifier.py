"""Any int8 image classifier as a bare `.tflite`: accuracy on a dataset's test split and MACs per image.

    python -m cosinegate.bench.classifier model.tflite --dataset cifar10 --data-dir DATA --preprocess raw --out DIR

No export report is needed: the input's shape and quantisation come from the model itself, and the
preprocessing is named. `raw` feeds the pixels 0..255 as real values (the MLPerf Tiny image
classification reference takes them so: input scale 1, zero point -128); `normalized` first maps
them to (pixel / 255 - mean) / std with the dataset's per-channel statistics, as `cg-train` does.
MACs are counted from the graph (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED), so a model of
another origin is measured the same way as ours. Writes DIR/classifier.json, with the per-image
correctness string for paired tests.
"""
import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from cosinegate import atomic, errors

PREPROCESSING = ("raw", "normalized")


class ClassifierError(ValueError):
    """A model or dataset that this evaluation cannot use: one line for the user."""


def _schema():
    from tensorflow.lite.python import schema_py_generated as schema
    return schema


def count_macs(tflite_bytes: bytes) -> int:
    """Multiply-accumulates of one inference over the main subgraph's CONV_2D, DEPTHWISE_CONV_2D
    and FULLY_CONNECTED ops, from their tensor shapes."""
    from cosinegate.export.restructure import builtin_code, read_model
    ops = _schema().BuiltinOperator
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
        from cosinegate.export.native import import_tensorflow
        tf = import_tensorflow()
        try:
            with warnings.catch_warnings():
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cg-classifier", description=__doc__.split("\n\n")[0],
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
    return parser


# RuntimeError: the DataError of a missing data set (imported lazily, with torch)
@errors.command("cg-classifier", expected=(ClassifierError, RuntimeError, OSError))
def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.images < 1:
        raise ClassifierError("--images must be at least 1")
    data = args.model.read_bytes()
    if not data:
        raise ClassifierError(f"{args.model} is empty")
    try:
        result = {"model": str(args.model), **evaluate(data, args.dataset, args.data_dir, args.preprocess,
                                                       args.images, not args.no_progress)}
    except ClassifierError as e:
        raise ClassifierError(f"{args.model}: {e}") from None
    atomic.write_text(args.out / "classifier.json", json.dumps(result, indent=1) + "\n")
    print(f"cg-classifier: {args.model}: int8 accuracy {result['accuracy']:.4f} on {result['images']} "
          f"{args.dataset} test images, {result['macs']:,} MACs -> {args.out / 'classifier.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
