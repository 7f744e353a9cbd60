"""Translate the frozen all-compute ONNX graph into a TensorFlow function (NCHW -> NHWC).

A deliberately small translator: it knows the handful of ops `AllComputeNet` exports to
(Conv, Relu, Add, Pad, Slice, ReduceMean, Gemm, Reshape, Greater; AveragePool, Softmax and
ReduceMax for early exits) and refuses anything else with
the op's name, so the int8 TFLite model is built from the same ONNX graph as `model.onnx`
(general converters such as onnx2tf empty the branches of an `If`, which is why we have our own).
Every 4-D activation is kept NHWC; axes, pads and slices are remapped accordingly. A global
average (ReduceMean over H and W) becomes an average pool with the whole plane as its window:
TFLM runs int8 MEAN through a generic reference loop (about 180 instructions per element on a
Cortex-M4, a fifth of a gated ResNet-20's inference), AVERAGE_POOL_2D through CMSIS-NN.

    fn = onnx_to_tf_function(onnx_model)     # tf.function: x (1, H, W, C) -> {output name: tensor}
"""
import numpy as np
import onnx
from onnx import numpy_helper

_NCHW_TO_NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}


class TranslateError(RuntimeError):
    """The ONNX graph holds an op or attribute the translator does not handle."""


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """The (begin, end) padding TF's 'SAME' applies along one spatial axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _Translator:
    def __init__(self, model: onnx.ModelProto):
        import tensorflow as tf
        self.tf = tf
        self.graph = model.graph
        self.consts = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant":
                self.consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])

    def __call__(self, x):
        env = {self.graph.input[0].name: x}   # x: (1, H, W, C)
        nhwc = {self.graph.input[0].name}      # names of 4-D tensors held as NHWC
        for node in self.graph.node:
            if node.op_type == "Constant":
                continue
            handler = getattr(self, f"_op_{node.op_type}", None)
            if handler is None:
                raise TranslateError(f"ONNX op {node.op_type} ({node.name}) is not supported by "
                                     "the ONNX-to-TF translator")
            out, is_nhwc = handler(node, env, nhwc)
            env[node.output[0]] = out
            if is_nhwc:
                nhwc.add(node.output[0])
        return {o.name: env[o.name] for o in self.graph.output}

    def _const(self, name: str) -> np.ndarray:
        if name not in self.consts:
            raise TranslateError(f"expected a constant for {name!r}")
        return self.consts[name]

    def _value(self, name: str, env: dict):
        return env[name] if name in env else self.tf.constant(self._const(name))

    def _op_Conv(self, node, env, nhwc):
        tf = self.tf
        a = _attrs(node)
        if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])):
            raise TranslateError(f"Conv {node.name}: groups and dilation are not supported")
        x = env[node.input[0]]                                                  # (1, H, W, Cin)
        w = self._const(node.input[1]).transpose(2, 3, 1, 0)                    # (kh, kw, Cin, Cout)
        strides = list(a.get("strides", [1, 1]))
        top, left, bottom, right = a.get("pads", [0, 0, 0, 0])
        same = [_same_padding(int(x.shape[1 + i]), w.shape[i], strides[i]) for i in range(2)]
        if [(top, bottom), (left, right)] == same:
            padding = "SAME"
        elif not any((top, bottom, left, right)):
            padding = "VALID"
        else:  # PyTorch pads symmetrically where SAME would not (stride 2): pad explicitly
            x = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
            padding = "VALID"
        y = tf.nn.conv2d(x, tf.constant(w), strides=[1, *strides, 1], padding=padding)
        if len(node.input) > 2 and node.input[2]:
            y = tf.nn.bias_add(y, tf.constant(self._const(node.input[2])))
        return y, True

    def _op_Relu(self, node, env, nhwc):
        return self.tf.nn.relu(env[node.input[0]]), node.input[0] in nhwc

    def _op_Add(self, node, env, nhwc):
        a, b = node.input
        if (a in nhwc) != (b in nhwc):
            raise TranslateError(f"Add {node.name}: mixes a 4-D activation with another layout")
        return self.tf.add(self._value(a, env), self._value(b, env)), a in nhwc

    def _op_Greater(self, node, env, nhwc):
        a, b = node.input
        if a in nhwc or b in nhwc:
            raise TranslateError(f"Greater {node.name}: only 1-D/2-D operands are supported")
        return self.tf.greater(self._value(a, env), self._value(b, env)), False

    def _op_ReduceMean(self, node, env, nhwc):
        a = _attrs(node)
        axes = (self._const(node.input[1]).tolist() if len(node.input) > 1
                else a.get("axes"))
        name = node.input[0]
        rank = len(env[name].shape)
        axes = [ax % rank for ax in axes]
        keepdims = bool(a.get("keepdims", 1))
        if name in nhwc:
            axes = [_NCHW_TO_NHWC_AXIS[ax] for ax in axes]
            if sorted(axes) == [1, 2]:
                x = env[name]
                pooled = self.tf.nn.avg_pool2d(x, ksize=[int(x.shape[1]), int(x.shape[2])],
                                               strides=1, padding="VALID")       # (1, 1, 1, C)
                if keepdims:
                    return pooled, True
                return self.tf.reshape(pooled, [int(x.shape[0]), int(x.shape[3])]), False
        return self.tf.reduce_mean(env[name], axis=axes, keepdims=keepdims), name in nhwc and keepdims

    def _op_Gemm(self, node, env, nhwc):
        tf = self.tf
        a = _attrs(node)
        if a.get("transA", 0) or node.input[0] in nhwc:
            raise TranslateError(f"Gemm {node.name}: transA and 4-D inputs are not supported")
        w = self._const(node.input[1])
        w = w.T if a.get("transB", 0) else w                                    # (in, out)
        w = w * np.float32(a.get("alpha", 1.0))
        y = tf.matmul(env[node.input[0]], tf.constant(w.astype(np.float32)))
        if len(node.input) > 2 and node.input[2]:
            bias = self._const(node.input[2]) * np.float32(a.get("beta", 1.0))
            y = y + tf.constant(bias.astype(np.float32))
        return y, False

    def _op_Reshape(self, node, env, nhwc):
        # (1, C, 1, 1) flattens to the same order in either layout; larger maps would not
        if node.input[0] in nhwc and list(env[node.input[0]].shape[1:3]) != [1, 1]:
            raise TranslateError(f"Reshape {node.name}: reshaping a 4-D activation is not supported")
        shape = [int(d) for d in self._const(node.input[1])]
        return self.tf.reshape(env[node.input[0]], shape), False

    def _op_AveragePool(self, node, env, nhwc):
        a = _attrs(node)
        if node.input[0] not in nhwc or any(a.get("pads", [0, 0, 0, 0])) or a.get("ceil_mode", 0):
            raise TranslateError(f"AveragePool {node.name}: only unpadded pooling of a 4-D activation")
        kernel = [int(k) for k in a["kernel_shape"]]
        strides = [int(k) for k in a.get("strides", kernel)]
        return self.tf.nn.avg_pool2d(env[node.input[0]], ksize=kernel, strides=strides, padding="VALID"), True

    def _op_Softmax(self, node, env, nhwc):
        axis = _attrs(node).get("axis", -1)
        if node.input[0] in nhwc or axis not in (-1, len(env[node.input[0]].shape) - 1):
            raise TranslateError(f"Softmax {node.name}: only over the last axis of a 2-D tensor")
        return self.tf.nn.softmax(env[node.input[0]], axis=-1), False

    def _op_ReduceMax(self, node, env, nhwc):
        a = _attrs(node)
        axes = self._const(node.input[1]).tolist() if len(node.input) > 1 else a.get("axes")
        if node.input[0] in nhwc:
            raise TranslateError(f"ReduceMax {node.name}: only over 1-D/2-D operands")
        return self.tf.reduce_max(env[node.input[0]], axis=axes, keepdims=bool(a.get("keepdims", 1))), False

    def _op_Slice(self, node, env, nhwc):
        x = env[node.input[0]]
        rank = len(x.shape)
        starts, ends = self._const(node.input[1]), self._const(node.input[2])
        axes = self._const(node.input[3]) if len(node.input) > 3 else np.arange(len(starts))
        steps = self._const(node.input[4]) if len(node.input) > 4 else np.ones_like(starts)
        begin, end, stride = [0] * rank, [int(d) for d in x.shape], [1] * rank
        for start, stop, ax, step in zip(starts, ends, axes, steps):
            ax = int(ax) % rank
            if node.input[0] in nhwc:
                ax = _NCHW_TO_NHWC_AXIS[ax]
            if step <= 0:
                raise TranslateError(f"Slice {node.name}: only positive steps are supported")
            size = int(x.shape[ax])
            begin[ax] = int(np.clip(start + size if start < 0 else start, 0, size))
            end[ax] = int(np.clip(stop + size if stop < 0 else stop, 0, size))
            stride[ax] = int(step)
        return self.tf.strided_slice(x, begin, end, stride), node.input[0] in nhwc

    def _op_Pad(self, node, env, nhwc):
        a = _attrs(node)
        if a.get("mode", b"constant") not in (b"constant", "constant"):
            raise TranslateError(f"Pad {node.name}: only constant padding is supported")
        if len(node.input) > 2 and node.input[2] and float(self._const(node.input[2])) != 0.0:
            raise TranslateError(f"Pad {node.name}: only zero padding is supported")
        if len(node.input) > 3 and node.input[3]:
            raise TranslateError(f"Pad {node.name}: the axes input is not supported")
        x = env[node.input[0]]
        rank = len(x.shape)
        pads = [int(p) for p in self._const(node.input[1])]
        pairs = [[pads[i], pads[i + rank]] for i in range(rank)]
        if node.input[0] in nhwc:
            pairs = [pairs[0], pairs[2], pairs[3], pairs[1]]
        return self.tf.pad(x, pairs), node.input[0] in nhwc


def onnx_to_tf_function(model: onnx.ModelProto):
    """A `tf.function` of one NHWC float input returning {ONNX output name: tensor}; 4-D outputs
    are NHWC. Raises TranslateError for ops outside the supported set."""
    import tensorflow as tf
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]   # (1, C, H, W)
    if len(dims) != 4 or dims[0] != 1:
        raise TranslateError(f"expected a batch-1 NCHW input, got shape {dims}")
    translator = _Translator(model)
    spec = tf.TensorSpec([1, dims[2], dims[3], dims[1]], tf.float32, name="input")
    return tf.function(translator, input_signature=[spec], autograph=False)
