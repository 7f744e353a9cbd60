"""Full-integer (int8) TFLite conversion of the all-compute network, calibrated on real images.

The all-compute ONNX graph (no control flow, block tensors exposed as extra outputs) is translated
to TensorFlow (`onnx_to_tf`) and converted the standard way: int8 weights and activations, int8
input and output, calibrated with a representative dataset of training images. The `IF`s are
carved out of this flatbuffer afterwards (`restructure`): converting `tf.cond` directly leaves
float DEQUANTIZE/QUANTIZE at the branch boundaries and a never-calibrated branch in float.

    images = calibration_images("digits", None, count=300)    # float NHWC, normalised
    tflite_bytes = convert_int8(all_compute_onnx, images)
"""
import numpy as np

from cosinegate.export.native import captured_stderr, import_tensorflow

DEFAULT_CALIBRATION_IMAGES = 300
_CALIBRATION_SEED = 0


def quantize_input(x_nhwc: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Normalised float NHWC -> int8 with the model's input quantisation, rounding half away from
    zero as TFLite's QUANTIZE op does. Host parity, the bench and the firmware's test images all
    quantise through this one function, so they feed the model identical bytes."""
    scaled = x_nhwc / np.float32(scale)
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
    return np.clip(rounded + int(zero_point), -128, 127).astype(np.int8)


def calibration_images(dataset: str, data_dir, count: int = DEFAULT_CALIBRATION_IMAGES) -> np.ndarray:
    """`count` training images (a fixed seeded draw), normalised, float32 NHWC (N, H, W, C).

    Raises `cosinegate.train.data.DataError` when the dataset cannot be found."""
    from cosinegate.train.data import dataset_info, load_arrays, normalize
    images, _ = load_arrays(dataset, data_dir, "train")
    pick = np.sort(np.random.default_rng(_CALIBRATION_SEED).permutation(len(images))[:count])
    return normalize(images[pick], dataset_info(dataset)).numpy().transpose(0, 2, 3, 1).copy()


def convert_int8(onnx_model, images: np.ndarray) -> bytes:
    """int8 TFLite flatbuffer of the (control-flow free) ONNX model; outputs keep their ONNX names
    in the signature ('serving_default'). `images`: float32 NHWC calibration inputs."""
    tf = import_tensorflow()
    from cosinegate.export.onnx_to_tf import onnx_to_tf_function
    function = onnx_to_tf_function(onnx_model)

    def representative_dataset():
        for i in range(len(images)):
            yield [images[i:i + 1]]                                             # (1, H, W, C)

    holder = tf.Module()  # a trackable owner makes the converter write the signature (output names)
    holder.function = function
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], holder)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with captured_stderr() as read:  # the converter prints its settings on fd 2
        try:
            return bytes(converter.convert())
        except Exception as e:
            raise RuntimeError(f"TFLite conversion failed: {e}\n{read()[-2000:]}") from None
