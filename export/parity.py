"""Host-side parity of the exported models against each other, on real images.

  onnx_vs_pytorch           PyTorch deploy mode vs onnxruntime: identical gates, logits ~1e-7
  int8_vs_float             int8 TFLite (tf.lite.Interpreter) vs the float model: top-1 and gates
  tflm_vs_tflite_ref        TFLite reference kernels vs TFLM: share of bit-exact logits, largest
                            difference in LSB, gate agreement
  forced_on_vs_all_compute  force_gates(on) vs the unrestructured all-compute int8 model: bitwise
  folded_vs_gated           with gates folded by proof (`gate_bounds.py`): the folded model vs
                            the one with every IF kept, bitwise

    x = float_inputs(images, info)                    # images, labels: load_arrays(..., "test")
    checks = {**onnx_parity(model, onnx_bytes, x),
              **int8_parity(model, gated, all_compute, gated_indices, x, labels,
                            input_scale, input_zero_point, arena_size)}
"""
import warnings

import numpy as np
import torch
from tqdm import tqdm

from cosinegate.export.native import import_tensorflow
from cosinegate.export.restructure import force_gates


def _progress(items, desc: str, enabled: bool):
    return tqdm(items, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True)


def float_inputs(images: np.ndarray, info) -> np.ndarray:
    """uint8 NHWC -> normalised float32 NCHW (the PyTorch/ONNX input)."""
    from cosinegate.train.data import normalize
    return normalize(images, info).numpy()


def quantize_inputs(x_nchw: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """float NCHW -> int8 NHWC with the model's input quantisation (round half away from zero,
    as TFLite's QUANTIZE does)."""
    from cosinegate.export.quantize import quantize_input
    return quantize_input(x_nchw.transpose(0, 2, 3, 1), scale, zero_point)


def pytorch_deploy(model, x_nchw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The PyTorch reference in deploy mode: logits (N, classes) and decisions (N, n_gated +
    n_exits): the gates, then per early exit whether the image went on past it. A gate behind the
    exit an image left at is 0, as the deployed model reports it."""
    from cosinegate.train.evaluate import gates_reached
    from cosinegate.train.exits import select_logits
    from cosinegate.train.model import macs_breakdown
    with torch.no_grad():
        final, stats, exit_logits = model(torch.from_numpy(x_nchw), "deploy", with_exits=True)
    logits, passed = select_logits(exit_logits, final, model.exit_thresholds)
    gates = (torch.stack([st["g"] for st in stats], 1) if stats
             else torch.zeros(len(x_nchw), 0))
    if exit_logits:
        gates = gates * gates_reached(macs_breakdown(model.cfg), model.gated_indices, passed)
    went_on = passed.view(-1, 1) > torch.arange(len(exit_logits)).view(1, -1)
    return logits.numpy(), np.concatenate([gates.numpy() > 0.5, went_on.numpy()], 1)


class TfliteRunner:
    """Batch-1 tf.lite.Interpreter through its signature: returns (logits int8 (1, classes),
    gates bool (n_gated,)) read from the outputs named `logits` and `gate_names`. Default kernels
    without XNNPACK (which does not take IF), or the reference kernels."""

    def __init__(self, tflite_bytes: bytes, gate_names, reference_kernels: bool = False):
        tf = import_tensorflow()
        resolver = tf.lite.experimental.OpResolverType
        with warnings.catch_warnings():  # "tf.lite.Interpreter is deprecated" (LiteRT's is not installed)
            warnings.simplefilter("ignore")
            self.interpreter = tf.lite.Interpreter(
            model_content=tflite_bytes, num_threads=1,
            experimental_op_resolver_type=(resolver.BUILTIN_REF if reference_kernels
                                           else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
        self.signature = self.interpreter.get_signature_runner()
        self.gate_names = list(gate_names)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.signature(input=x)
        gates = np.array([bool(out[name].reshape(-1)[0]) for name in self.gate_names], dtype=bool)
        return out["logits"].copy(), gates


def run_all(runner, xs: np.ndarray, desc: str, progress: bool):
    results = [runner(xs[i:i + 1]) for i in _progress(range(len(xs)), desc, progress)]
    return np.concatenate([r[0] for r in results]), np.stack([r[1] for r in results])


def _match_on_full_paths(gates: np.ndarray, all_gates: np.ndarray, gated_indices: list[int], model) -> bool:
    """Whether the deployed decisions (N, n_gated + n_exits) equal the all-compute model's where
    the deployed model skipped no gated block before the decision: a skipped block changes every
    input after it, which the all-compute model, running every block, never sees."""
    # the blocks each decision reads the result of: those before a gate's block, up to an exit's
    reads = [[i < g for i in gated_indices] for g in gated_indices] + \
            [[i <= e for i in gated_indices] for e in model.cfg.exit_blocks]
    skipped = ~gates[:, :len(gated_indices)]                                     # (N, n_gated)
    upstream = np.array(reads, dtype=bool).reshape(len(reads), len(gated_indices))
    full_path = ~((skipped[:, None, :] & upstream[None]).any(2))                  # (N, n_decisions)
    return bool(np.array_equal(gates[full_path], all_gates[full_path]))


def _agreement(a: np.ndarray, b: np.ndarray) -> float | None:
    return float(np.mean(a == b)) if a.size else None


def _max_lsb(a: np.ndarray, b: np.ndarray) -> int:
    """Largest difference between two int8 arrays, in quantisation steps."""
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


def onnx_parity(model, onnx_bytes: bytes, x_nchw: np.ndarray, progress: bool = True) -> dict:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    ref_logits, ref_gates = pytorch_deploy(model, x_nchw)
    results = [session.run(None, {"input": x_nchw[i:i + 1]})
               for i in _progress(range(len(x_nchw)), "parity onnx", progress)]
    logits = np.concatenate([r[0] for r in results])
    gates = np.concatenate([r[1] for r in results]) > 0.5 if len(results[0]) > 1 else ref_gates
    return {"onnx_vs_pytorch": {
        "gate_agreement": _agreement(gates, ref_gates),
        "gates_identical": bool(np.array_equal(gates, ref_gates)),
        "max_abs_logit_diff": float(np.abs(logits - ref_logits).max()),
        "top1_agreement": _agreement(logits.argmax(1), ref_logits.argmax(1)),
    }}


def int8_parity(model, gated: bytes, all_compute: bytes, gated_indices: list[int],
                x_nchw: np.ndarray, labels: np.ndarray, input_scale: float,
                input_zero_point: int, arena_size: int, progress: bool = True,
                unfolded: bytes | None = None, exits: int = 0) -> dict:
    """`gated` is the deployed model; `unfolded`, when its proven-constant gates were folded, the
    same model with every IF kept (then the forced check runs on that one). "gates" below are all
    the model's decisions: its gated blocks, then its `exits` early exits."""
    from cosinegate.export.tflm import TflmRunner
    xq = quantize_inputs(x_nchw, input_scale, input_zero_point)
    ref_logits, ref_gates = pytorch_deploy(model, x_nchw)
    gate_names = [f"gate_{i}" for i in gated_indices] + [f"exit_{k}" for k in range(exits)]
    logits, gates = run_all(TfliteRunner(gated, gate_names), xq, "parity int8", progress)
    ref_k_logits, ref_k_gates = run_all(TfliteRunner(gated, gate_names, reference_kernels=True),
                                         xq, "parity ref kernels", progress)
    # + 16: the slack the firmware adds for aligning the arena start (carray.py)
    micro = TflmRunner(gated, arena_size + 16, num_outputs=1 + len(gate_names))
    tflm_logits, tflm_gates = run_all(micro, xq, "parity tflm", progress)
    on_logits, on_gates = run_all(TfliteRunner(force_gates(unfolded or gated, on=True), gate_names), xq,
                                   "parity forced", progress)
    all_logits, all_gates = run_all(TfliteRunner(all_compute, [f"pred{i}" for i in gated_indices]
                                                 + [f"cont{k}" for k in range(exits)]),
                                     xq, "parity all-compute", progress)
    n_gated = len(gated_indices)
    # the all-compute model decides at every exit and gate; the deployed one only at those an
    # image reaches
    all_gates[:, n_gated:] = np.logical_and.accumulate(all_gates[:, n_gated:], axis=1)
    if exits:
        from cosinegate.train.evaluate import gates_reached
        from cosinegate.train.model import macs_breakdown
        passed = torch.from_numpy(all_gates[:, n_gated:].sum(1))
        all_gates[:, :n_gated] &= gates_reached(macs_breakdown(model.cfg), gated_indices, passed).numpy()
    checks = {}
    if unfolded is not None:
        kept_logits, kept_gates = run_all(TfliteRunner(unfolded, gate_names), xq, "parity unfolded", progress)
        checks["folded_vs_gated"] = {
            "bit_exact_fraction": _agreement(np.all(logits == kept_logits, 1), True),
            "max_lsb_diff": _max_lsb(logits, kept_logits),
            "gates_identical": bool(np.array_equal(gates, kept_gates)),
        }
    return {
        "int8_vs_float": {
            "top1_agreement": _agreement(logits.argmax(1), ref_logits.argmax(1)),
            "gate_agreement": _agreement(gates, ref_gates),
            "accuracy_float": _agreement(ref_logits.argmax(1), labels),
            "accuracy_int8": _agreement(logits.argmax(1), labels),
            "gate_open_rate_float": ref_gates.mean(0).round(4).tolist(),
            "gate_open_rate_int8": gates.mean(0).round(4).tolist(),
        },
        "tflm_vs_tflite_ref": {
            "bit_exact_fraction": _agreement(np.all(tflm_logits == ref_k_logits, 1), True),
            "max_lsb_diff": _max_lsb(tflm_logits, ref_k_logits),
            "gate_agreement": _agreement(tflm_gates, ref_k_gates),
        },
        "tflm_vs_tflite": {
            "gate_agreement": _agreement(tflm_gates, gates),
            "max_lsb_diff": _max_lsb(tflm_logits, logits),
        },
        "forced_on_vs_all_compute": {
            "bit_exact_fraction": _agreement(np.all(on_logits == all_logits, 1), True),
            "max_lsb_diff": _max_lsb(on_logits, all_logits),
            "forced_gates_all_on": bool(on_gates.all()),
            # the restructured model's predicates are the all-compute model's, unchanged, wherever
            # the deployed model ran every block the decision depends on
            "gates_match_all_compute": _match_on_full_paths(gates, all_gates, gated_indices, model),
        },
        **checks,
    }
