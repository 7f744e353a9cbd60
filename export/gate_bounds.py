"""Which int8 gates are constant for every input: interval analysis of the quantised controller.

A gated block's IF predicate is `GREATER(FC2(ReLU(FC1(GAP(x)))), c)` in the int8 model. Starting
from the widest input FC1 can see (every int8 value in every channel, whatever the image), the
bounds are carried through both int8 fully connected layers in integer arithmetic, the way
TFLite computes them: acc = sum (q_in - zp_in) * w + bias, then requantised and clamped to the
fused activation. Each requantisation widens by one step so the bound also holds for TFLite's
fixed-point rounding. If even the largest reachable logit is not above c, the block can never
run (`NEVER`); if the smallest already is, it always runs (`ALWAYS`), allowing for the rounding
of GREATER's own rescaling of its two operands. Anything else, or a graph
of another shape, is `INPUT`: decided per image, as trained.

    bounds = gate_bounds(all_compute_int8_bytes, gated_indices)   # GateBound per gated block
    [b.decision for b in bounds]                                  # e.g. ['always', 'never', 'input']

The proof covers all inputs, so folding a proven gate (`restructure(..., static=...)`) changes no
output of the int8 model for any image; the export checks that on the parity images too.
"""
from dataclasses import dataclass

import numpy as np

from cosinegate.export.native import tflite_schema

ALWAYS, NEVER, INPUT = "always", "never", "input"
_INT8_MIN, _INT8_MAX = -128, 127


@dataclass
class GateBound:
    index: int                   # the gated block
    decision: str                # ALWAYS, NEVER or INPUT
    logit: tuple | None          # (low, high) the compared value can reach, real units
    threshold: float | None      # the constant it is compared with, real units
    reason: str = ""             # why INPUT when the graph was not the expected chain


def _constant(model, tensor) -> np.ndarray | None:
    data = model.buffers[tensor.buffer].data
    if data is None or len(data) == 0:
        return None
    dtype = {tflite_schema().TensorType.INT8: np.int8, tflite_schema().TensorType.INT32: np.int32}.get(tensor.type)
    if dtype is None:
        return None
    return np.frombuffer(bytes(np.asarray(data, dtype=np.uint8)), dtype=dtype).reshape(tensor.shape)


def _quant(tensor) -> tuple[np.ndarray, np.ndarray]:
    q = tensor.quantization
    return np.asarray(q.scale, dtype=np.float64), np.asarray(q.zeroPoint, dtype=np.int64)


def _activation_range(fused: int, zero_point: int) -> tuple[int, int] | None:
    schema = tflite_schema().ActivationFunctionType
    if fused == schema.NONE:
        return _INT8_MIN, _INT8_MAX
    if fused == schema.RELU:
        return max(_INT8_MIN, zero_point), _INT8_MAX
    return None


def fully_connected_bounds(model, sg, op, low: np.ndarray, high: np.ndarray):
    """Output int8 bounds (low, high) per output unit of an int8 FULLY_CONNECTED op whose input
    channels lie in [low, high] (int8 values); None for a variant this analysis does not cover."""
    x, w, b = (sg.tensors[t] if t >= 0 else None for t in op.inputs[:3])
    out = sg.tensors[op.outputs[0]]
    weights = _constant(model, w)
    if weights is None or weights.ndim != 2 or weights.dtype != np.int8:
        return None
    bias = _constant(model, b) if b is not None else np.zeros(weights.shape[0], np.int32)
    if bias is None:
        return None
    s_in, z_in = _quant(x)
    s_w, z_w = _quant(w)
    if np.any(z_w != 0):  # TFLite's int8 FC takes symmetric weights; anything else is not covered
        return None
    s_out, z_out = _quant(out)
    clamp = _activation_range(op.builtinOptions.fusedActivationFunction, int(z_out[0]))
    if clamp is None:
        return None
    w64 = weights.astype(np.int64)
    d_low, d_high = low - int(z_in[0]), high - int(z_in[0])     # q_in - zp_in
    acc_low = bias + np.minimum(w64 * d_low, w64 * d_high).sum(1)
    acc_high = bias + np.maximum(w64 * d_low, w64 * d_high).sum(1)
    multiplier = s_in[0] * s_w / s_out[0]                         # per-tensor or per-channel weights
    q_low = np.floor(acc_low * multiplier).astype(np.int64) - 1 + int(z_out[0])
    q_high = np.ceil(acc_high * multiplier).astype(np.int64) + 1 + int(z_out[0])
    return np.clip(q_low, *clamp), np.clip(q_high, *clamp)


def _producer_chain(model, pred: int):
    """(GREATER, FC2, FC1) behind predicate tensor `pred` of subgraph 0, through RESHAPEs; else None."""
    schema = tflite_schema().BuiltinOperator
    from cosinegate.export.restructure import _producers, builtin_code
    sg = model.subgraphs[0]
    producers = {t: sg.operators[k] for t, k in _producers(sg).items()}

    def code(op):
        return builtin_code(model.operatorCodes[op.opcodeIndex])

    def skip_reshapes(t):
        while t in producers and code(producers[t]) == schema.RESHAPE:
            t = producers[t].inputs[0]
        return producers.get(t)

    greater = skip_reshapes(pred)
    if greater is None or code(greater) != schema.GREATER:
        return None
    fc2 = skip_reshapes(greater.inputs[0])
    if fc2 is None or code(fc2) != schema.FULLY_CONNECTED:
        return None
    fc1 = skip_reshapes(fc2.inputs[0])
    if fc1 is None or code(fc1) != schema.FULLY_CONNECTED:
        return None
    return greater, fc2, fc1


def predicate_bound(model, pred: int, index: int) -> GateBound:
    """The bound of one predicate tensor of subgraph 0."""
    sg = model.subgraphs[0]
    chain = _producer_chain(model, pred)
    if chain is None:
        return GateBound(index, INPUT, None, None, "predicate is not GREATER(FC(FC(...)), constant)")
    greater, fc2, fc1 = chain
    threshold_tensor = sg.tensors[greater.inputs[1]]
    threshold = _constant(model, threshold_tensor)
    if threshold is None or threshold.size != 1:
        return GateBound(index, INPUT, None, None, "the comparison's right side is not a constant")
    channels = sg.tensors[fc1.inputs[1]].shape[1]
    hidden = fully_connected_bounds(model, sg, fc1, np.full(channels, _INT8_MIN, np.int64),
                                    np.full(channels, _INT8_MAX, np.int64))
    logit = None if hidden is None else fully_connected_bounds(model, sg, fc2, *hidden)
    if logit is None:
        return GateBound(index, INPUT, None, None, "a controller layer is not a plain int8 FC")
    s_a, z_a = _quant(sg.tensors[fc2.outputs[0]])
    s_c, z_c = _quant(threshold_tensor)
    q_low, q_high, q_c = int(logit[0][0]), int(logit[1][0]), int(threshold.reshape(-1)[0])
    low, high = float((q_low - z_a[0]) * s_a[0]), float((q_high - z_a[0]) * s_a[0])
    c = float((q_c - z_c[0]) * s_c[0])
    # GREATER rescales both operands: (q - zp) * 2^8 * scale / (2 * max scale), rounded.
    unit = 2 * max(s_a[0], s_c[0]) / 256            # one step of that common scale, real units
    if q_c == z_c[0]:
        # Against zero the sign survives rescaling; a positive value must not round down to 0.
        smallest = (q_low - z_a[0]) * s_a[0] / unit
        decision = NEVER if q_high <= z_a[0] else ALWAYS if q_low > z_a[0] and smallest >= 1 else INPUT
    else:  # margins for the rounding of both rescaled operands
        margin = s_a[0] + 2 * unit
        decision = NEVER if high + margin <= c else ALWAYS if low - margin > c else INPUT
    return GateBound(index, decision, (low, high), c)


def gate_bounds(tflite_bytes: bytes, gated_indices: list[int]) -> list[GateBound]:
    """One GateBound per gated block of the all-compute int8 model (outputs `pred{i}`)."""
    from cosinegate.export.restructure import read_model, signature_outputs
    model = read_model(tflite_bytes)
    named = signature_outputs(model)
    return [predicate_bound(model, named[f"pred{i}"], i) for i in gated_indices]
