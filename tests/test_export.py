"""Tests for `cg-export`: frozen ONNX with `If` branches, int8 TFLite with `IF` ops, parity, bad input.

    pytest tests/test_export.py            # ~1-2 min on 2 CPU cores

One tiny checkpoint (ResNet-8 on digits, 3 gated blocks, 2 epochs) is trained once per module;
the int8 models and one full `cg-export --int8` run are shared by the tests that read them.
"""
import copy
import json

import numpy as np
import onnx
import pytest
import torch

from cosinegate.export import onnx_export, parity, quantize, restructure, tflm
from cosinegate.export.freeze import freeze
from cosinegate.export.native import import_tensorflow
from cosinegate.train import checkpoint
from cosinegate.train.data import dataset_info, load_arrays
from conftest import EXPORT_CALIBRATION_IMAGES, EXPORT_PARITY_IMAGES, export_tiny

pytestmark = pytest.mark.slow  # each test runs a converter or reads one's output
PARITY_IMAGES = EXPORT_PARITY_IMAGES
CALIBRATION_IMAGES = EXPORT_CALIBRATION_IMAGES
EXPORT_FILES = {"model.onnx", "model_int8.tflite", "model_data.cc", "model_data.h",
                "model_settings.h", "export_report.json"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tiny_ckpt):
    """The tiny model, its frozen form, its ONNX and int8 models, and test images."""
    model = checkpoint.build_model(checkpoint.load(tiny_ckpt))
    frozen = freeze(model)
    shape = (1, 1, 8, 8)
    images, labels = load_arrays("digits", None, "test")
    x = parity.float_inputs(images[:PARITY_IMAGES], dataset_info("digits"))
    calibration = quantize.calibration_images("digits", None, CALIBRATION_IMAGES)
    all_compute = quantize.convert_int8(onnx_export.export_all_compute(frozen, shape), calibration)
    gated = restructure.restructure(all_compute, frozen.gated_indices)
    scale, zero_point = restructure.input_quantization(gated)
    return {"model": model, "frozen": frozen, "gated_indices": frozen.gated_indices,
            "onnx": onnx_export.export_deploy(frozen, shape), "all_compute": all_compute,
            "gated": gated, "x": x, "labels": labels[:PARITY_IMAGES],
            "xq": parity.quantize_inputs(x, scale, zero_point)}


def _export(ckpt, out, *extra):
    return export_tiny(ckpt, out, *extra)


@pytest.fixture
def exported(tiny_export):
    return tiny_export


def _gate_names(indices):
    return [f"gate_{i}" for i in indices]


# --- files and structure -------------------------------------------------------------------

def test_export_writes_every_file_and_the_report(exported):
    assert {p.name for p in exported.iterdir()} == EXPORT_FILES
    report = json.loads((exported / "export_report.json").read_text())
    for key in ("format", "version", "checkpoint", "dataset", "num_classes", "gated_blocks",
                "gated_indices", "decision_outputs", "removed_blocks", "macs_full", "macs_plain", "macs_stem",
                "macs_per_block", "macs_controllers", "macs_exits", "macs_head",
                "input", "tflm_arena_bytes", "tflm_ops", "files", "parity"):
        assert key in report, key
    assert report["gated_blocks"] == 3 and report["input"]["layout"] == "NHWC"
    assert report["input"]["shape"] == [1, 8, 8, 1]
    assert report["tflm_ops"] == sorted(report["tflm_ops"]) and "IF" in report["tflm_ops"]
    # Global averages are average pools (CMSIS-NN kernel), not MEAN (a slow generic loop in TFLM).
    assert "AVERAGE_POOL_2D" in report["tflm_ops"] and "MEAN" not in report["tflm_ops"]
    assert report["tflm_arena_bytes"] > 0 and set(report["files"]) == EXPORT_FILES
    assert report["tflm_arena_bytes"] < report["tflm_arena_bytes_online_plan"]  # the offline plan saves
    assert len(report["branch_weight_bytes"]) == 3
    assert report["parity"]["images"] == PARITY_IMAGES
    assert "kNumGatedBlocks = 3" in (exported / "model_settings.h").read_text()


def test_onnx_has_one_named_if_per_gated_block(exported):
    model = onnx.load(str(exported / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert {op.version for op in model.opset_import if op.domain in ("", "ai.onnx")} == {18}
    branches = [n for n in model.graph.node if n.op_type == "If"]
    assert len(branches) == 3
    for node, index in zip(branches, [0, 1, 2]):
        graphs = {a.name: a.g for a in node.attribute}
        assert graphs["then_branch"].name == f"block{index}_then"
        assert graphs["else_branch"].name == f"block{index}_else"
        assert "Conv" in {n.op_type for n in graphs["then_branch"].node}
        assert "Conv" not in {n.op_type for n in graphs["else_branch"].node}
    assert [o.name for o in model.graph.output] == ["logits", "gates"]


def test_tflite_has_if_ops_int8_then_branches_and_no_float(exported):
    data = (exported / "model_int8.tflite").read_bytes()
    restructure.validate_int8(data, 3)  # contract: IF per block, int8 convs, no FLOAT32
    import_tensorflow()
    from tensorflow.lite.python import schema_py_generated as schema
    model = restructure.read_model(data)
    names = restructure.builtin_names()
    main = model.subgraphs[0]
    ifs = [op for op in main.operators
           if names[restructure.builtin_code(model.operatorCodes[op.opcodeIndex])] == "IF"]
    assert len(ifs) == 3
    for op, index in zip(ifs, [0, 1, 2]):
        then_sg = model.subgraphs[op.builtinOptions.thenSubgraphIndex]
        else_sg = model.subgraphs[op.builtinOptions.elseSubgraphIndex]
        assert then_sg.name == f"block{index}_then".encode()
        assert else_sg.name == f"block{index}_else".encode()
        assert [names[restructure.builtin_code(model.operatorCodes[o.opcodeIndex])]
                for o in else_sg.operators] == ["QUANTIZE"]
    assert all(t.type != schema.TensorType.FLOAT32 for sg in model.subgraphs for t in sg.tensors)
    inp = main.tensors[main.inputs[0]]
    assert inp.type == schema.TensorType.INT8 and list(inp.shape) == [1, 8, 8, 1]
    outputs = [main.tensors[t] for t in main.outputs]
    assert [t.name.decode() for t in outputs] == ["logits", "gate_0", "gate_1", "gate_2"]
    assert outputs[0].type == schema.TensorType.INT8 and list(outputs[0].shape) == [1, 10]
    # the gate outputs ARE the IF predicates
    assert [op.inputs[0] for op in ifs] == list(main.outputs[1:])


def test_branch_weight_bytes_are_each_blocks_int8_kernels(tiny):
    """Two 3x3 int8 convolutions and their int32 biases per then-branch; a stride-2 one also
    holds the explicit PAD before its convolution (paddings: a 4x2 int32 constant)."""
    expected = [b.out_channels * (b.in_channels + b.out_channels) * 9 + 2 * b.out_channels * 4
                + (4 * 2 * 4 if b.stride == 2 else 0) for b in tiny["frozen"].blocks if b.gate is not None]
    assert restructure.branch_weight_bytes(tiny["gated"]) == expected


def test_surgery_removes_unused_tensors(tiny):
    before = restructure.read_model(tiny["all_compute"]).subgraphs[0]
    after = restructure.read_model(tiny["gated"])
    for sg in after.subgraphs:  # every tensor left is read or written by something
        used = set(sg.inputs) | set(sg.outputs)
        for op in sg.operators:
            used |= {t for t in list(op.inputs) + list(op.outputs) if t >= 0}
        assert used == set(range(len(sg.tensors))), sg.name
    assert len(after.subgraphs[0].tensors) < len(before.tensors)


def test_same_checkpoint_gives_byte_identical_models(tiny_ckpt, exported, tmp_path):
    assert _export(tiny_ckpt, tmp_path / "again") == 0
    for name in ("model.onnx", "model_int8.tflite"):
        assert (tmp_path / "again" / name).read_bytes() == (exported / name).read_bytes(), name


# --- parity ---------------------------------------------------------------------------------

def test_onnxruntime_matches_pytorch_deploy_mode(tiny):
    checks = parity.onnx_parity(tiny["model"], tiny["onnx"].SerializeToString(), tiny["x"],
                                progress=False)["onnx_vs_pytorch"]
    assert checks["gates_identical"]
    assert checks["max_abs_logit_diff"] < 1e-4


def test_int8_tflite_agrees_with_float_model(tiny):
    ref_logits, ref_gates = parity.pytorch_deploy(tiny["model"], tiny["x"])
    runner = parity.TfliteRunner(tiny["gated"], _gate_names(tiny["gated_indices"]))
    results = [runner(tiny["xq"][i:i + 1]) for i in range(len(tiny["xq"]))]
    logits = np.concatenate([r[0] for r in results])
    gates = np.stack([r[1] for r in results])
    top1 = np.mean(logits.argmax(1) == ref_logits.argmax(1))
    gate_agreement = np.mean(gates == ref_gates)
    print(f"int8 vs float: top-1 {top1:.2%}, gates {gate_agreement:.2%}")
    assert top1 >= 0.95 and gate_agreement >= 0.98


def test_tflm_matches_tflite_reference_kernels(tiny):
    arena = tflm.measure_arena(tiny["gated"])
    n = len(tiny["gated_indices"])
    micro = tflm.TflmRunner(tiny["gated"], arena, num_outputs=1 + n)
    ref = parity.TfliteRunner(tiny["gated"], _gate_names(tiny["gated_indices"]),
                              reference_kernels=True)
    worst, gate_agree = 0, []
    for i in range(len(tiny["xq"])):
        (a, ga), (b, gb) = micro(tiny["xq"][i:i + 1]), ref(tiny["xq"][i:i + 1])
        worst = max(worst, int(np.abs(a.astype(int) - b.astype(int)).max()))
        gate_agree.append(np.array_equal(ga, gb))
    print(f"TFLM vs TFLite reference kernels: max {worst} LSB, gates agree {np.mean(gate_agree):.2%}")
    # TFLM's int8 FULLY_CONNECTED rounds a near-tie logit differently now and then: 1 LSB
    assert worst <= 1 and all(gate_agree)


def test_offline_memory_plan_lets_if_share_its_tensors_and_changes_no_result(tiny):
    """Each branch's input and output sit where the IF's do (so TFLM's IF copies nothing), the
    arena shrinks, and TFLM computes the same bytes as with its own plan, forced models too."""
    from cosinegate.export import memory_plan
    model = restructure.read_model(tiny["gated"])
    offsets = memory_plan.read_plan(model)
    assert len(offsets) == sum(len(sg.tensors) for sg in model.subgraphs)
    start = np.cumsum([0] + [len(sg.tensors) for sg in model.subgraphs])
    for op in restructure.if_ops(model):
        for index in (op.builtinOptions.thenSubgraphIndex, op.builtinOptions.elseSubgraphIndex):
            branch = model.subgraphs[index]
            pairs = [*zip(op.inputs[1:], branch.inputs), *zip(op.outputs, branch.outputs)]
            assert all(offsets[outer] >= 0 and offsets[start[index] + inner] == offsets[outer]
                       for outer, inner in pairs)
    online = restructure.restructure(tiny["all_compute"], tiny["gated_indices"], memory_plan=False)
    assert memory_plan.read_plan(restructure.read_model(online)) is None
    n = 1 + len(tiny["gated_indices"])
    for on in (None, [True, False, True]):
        planned, plain = tiny["gated"], online
        if on is not None:
            planned, plain = restructure.force_gates(planned, on=on), restructure.force_gates(plain, on=on)
        arena, arena_online = tflm.measure_arena(planned), tflm.measure_arena(plain)
        assert arena < arena_online
        a, b = tflm.TflmRunner(planned, arena, n), tflm.TflmRunner(plain, arena_online, n)
        for i in range(len(tiny["xq"])):
            for left, right in zip(a(tiny["xq"][i:i + 1]), b(tiny["xq"][i:i + 1])):
                np.testing.assert_array_equal(left, right)


def test_forcing_every_gate_on_reproduces_the_all_compute_model(tiny):
    names = _gate_names(tiny["gated_indices"])
    forced = parity.TfliteRunner(restructure.force_gates(tiny["gated"], on=True), names)
    full = parity.TfliteRunner(tiny["all_compute"], [f"pred{i}" for i in tiny["gated_indices"]])
    for i in range(len(tiny["xq"])):
        (a, gates), (b, _) = forced(tiny["xq"][i:i + 1]), full(tiny["xq"][i:i + 1])
        assert gates.all()
        np.testing.assert_array_equal(a, b)


def test_forcing_gates_off_skips_every_block_in_tflite_and_tflm(tiny):
    off = restructure.force_gates(tiny["gated"], on=False)
    n = len(tiny["gated_indices"])
    logits, gates = parity.TfliteRunner(off, _gate_names(tiny["gated_indices"]))(tiny["xq"][:1])
    micro_logits, micro_gates = tflm.TflmRunner(off, tflm.measure_arena(off), 1 + n)(tiny["xq"][:1])
    assert not gates.any() and not micro_gates.any()
    assert np.abs(logits.astype(int) - micro_logits.astype(int)).max() <= 1


def test_forcing_one_decision_per_block(tiny):
    mask = [True, False, True]
    forced = restructure.force_gates(tiny["gated"], on=mask)
    _, gates = parity.TfliteRunner(forced, _gate_names(tiny["gated_indices"]))(tiny["xq"][:1])
    assert gates.tolist() == mask
    with pytest.raises(ValueError, match="2 forced decisions for 3 IF ops"):
        restructure.force_gates(tiny["gated"], on=[True, False])


def test_forced_onnx_if_conditions(tiny):
    import onnxruntime as ort
    forced = onnx_export.force_onnx_gates(tiny["onnx"], on=True)
    onnx.checker.check_model(forced)
    session = ort.InferenceSession(forced.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = np.concatenate([session.run(None, {"input": tiny["x"][i:i + 1]})[0] for i in range(4)])
    with torch.no_grad():
        full, _ = tiny["model"](torch.from_numpy(tiny["x"][:4]), "full")
    np.testing.assert_allclose(logits, full.numpy(), atol=1e-4)


def test_report_repeats_the_parity_checks(exported):
    checks = json.loads((exported / "export_report.json").read_text())["parity"]
    assert checks["onnx_vs_pytorch"]["gates_identical"]
    assert checks["onnx_vs_pytorch"]["max_abs_logit_diff"] < 1e-4
    assert checks["int8_vs_float"]["top1_agreement"] >= 0.95
    assert checks["tflm_vs_tflite_ref"]["max_lsb_diff"] <= 1
    assert checks["tflm_vs_tflite_ref"]["gate_agreement"] == 1.0
    assert checks["forced_on_vs_all_compute"]["bit_exact_fraction"] == 1.0


# --- gates proven constant for every input ---------------------------------------------------

def _pinned_gates(frozen, logits: dict):
    """A copy of `frozen` whose gate k computes the constant logit `logits[k]` for every input."""
    pinned = copy.deepcopy(frozen)
    for block in pinned.blocks:
        if block.index in logits:
            block.gate.weight = torch.zeros_like(block.gate.weight)
            block.gate.bias = torch.full_like(block.gate.bias, logits[block.index])
    return pinned


def test_without_residuals_passes_the_shortcut_through(tiny):
    """The recalibration network: a listed block outputs its input (its shortcut), as a skipped
    block does when deployed; the others and the original are untouched."""
    from cosinegate.export.freeze import AllComputeNet, without_residuals
    frozen = tiny["frozen"]
    first = frozen.gated_indices[0]
    x = torch.from_numpy(tiny["x"][:1])
    with torch.no_grad():
        before, after = AllComputeNet(frozen)(x), AllComputeNet(without_residuals(frozen, [first]))(x)
    block_input = before["stem"] if first == 0 else before[f"y{first - 1}"]
    torch.testing.assert_close(after[f"y{first}"], before.get(f"s{first}", block_input), rtol=0, atol=0)
    assert not torch.equal(before[f"y{first}"], after[f"y{first}"])
    assert frozen.blocks[first].conv2.weight.abs().sum() > 0
    copy_ = without_residuals(frozen, [first])
    copy_.blocks[first].gate.weight = copy_.blocks[first].gate.weight * 2
    assert not torch.equal(copy_.blocks[first].gate.weight, frozen.blocks[first].gate.weight)


def test_gate_heads_with_huge_logits_are_scaled_for_tflm(tiny):
    """TFLM's int8 GREATER aborts on an input scale of 1 or more: a head whose logits span
    thousands crashes TFLM (reported as an error, not a dead process) until bound_gate_logits
    scales it by a power of two, after which the int8 model loads and decides as before."""
    from cosinegate.export.freeze import bound_gate_logits
    loud = copy.deepcopy(tiny["frozen"])
    for block in loud.blocks:
        block.gate.weight, block.gate.bias = block.gate.weight * 4096, block.gate.bias * 4096
    calibration = quantize.calibration_images("digits", None, CALIBRATION_IMAGES)
    unscaled = restructure.restructure(quantize.convert_int8(
        onnx_export.export_all_compute(loud, (1, 1, 8, 8)), calibration), tiny["gated_indices"])
    with pytest.raises(tflm.TflmError, match="crashed"):
        tflm.check_tflm_ops(unscaled)
    shifts = bound_gate_logits(loud, torch.from_numpy(calibration.transpose(0, 3, 1, 2).copy()))
    assert set(shifts) == set(tiny["gated_indices"]) and min(shifts.values()) >= 5
    scaled = restructure.restructure(quantize.convert_int8(
        onnx_export.export_all_compute(loud, (1, 1, 8, 8)), calibration), tiny["gated_indices"])
    tflm.check_tflm_ops(scaled)
    names = _gate_names(tiny["gated_indices"])
    reference, runner = parity.TfliteRunner(tiny["gated"], names), parity.TfliteRunner(scaled, names)
    for i in range(len(tiny["xq"])):
        np.testing.assert_array_equal(reference(tiny["xq"][i:i + 1])[1], runner(tiny["xq"][i:i + 1])[1])


def test_gate_bounds_contain_every_logit_the_int8_model_computes(tiny):
    """The interval of each controller's int8 output holds the value TFLite computes on every
    test image, and a proven decision is the one the predicate takes on each of them."""
    from cosinegate.export import gate_bounds
    tf = import_tensorflow()
    model = restructure.read_model(tiny["all_compute"])
    named = restructure.signature_outputs(model)
    bounds = gate_bounds.gate_bounds(tiny["all_compute"], tiny["gated_indices"])
    assert [b.index for b in bounds] == tiny["gated_indices"]
    interpreter = tf.lite.Interpreter(
        model_content=tiny["all_compute"], experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    logit_tensors = [gate_bounds._producer_chain(model, named[f"pred{i}"])[1].outputs[0]
                     for i in tiny["gated_indices"]]
    for i in range(len(tiny["xq"])):
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], tiny["xq"][i:i + 1])
        interpreter.invoke()
        for bound, t in zip(bounds, logit_tensors):
            scale, zero_point = interpreter.get_tensor_details()[t]["quantization"]
            value = (int(interpreter.get_tensor(t).reshape(-1)[0]) - zero_point) * scale
            assert bound.logit[0] - 1e-9 <= value <= bound.logit[1] + 1e-9
            if bound.decision != gate_bounds.INPUT:
                assert (value > bound.threshold) == (bound.decision == gate_bounds.ALWAYS)


def test_folding_proven_gates_changes_no_output_and_drops_the_dead_weights(tiny):
    from cosinegate.export import gate_bounds
    pinned = _pinned_gates(tiny["frozen"], {0: -50.0, 2: 50.0})
    all_compute = quantize.convert_int8(onnx_export.export_all_compute(pinned, (1, 1, 8, 8)),
                                        quantize.calibration_images("digits", None, CALIBRATION_IMAGES))
    bounds = gate_bounds.gate_bounds(all_compute, tiny["gated_indices"])
    assert (bounds[0].decision, bounds[2].decision) == (gate_bounds.NEVER, gate_bounds.ALWAYS)
    kept = restructure.restructure(all_compute, tiny["gated_indices"])
    folded = restructure.restructure(all_compute, tiny["gated_indices"], static={0: False, 2: True})
    restructure.validate_int8(folded, 3)
    model = restructure.read_model(folded)
    assert len(restructure.if_ops(model)) == 1 and len(model.subgraphs) == 3
    # block 0's convolutions are gone, block 2's run inline: only block 0's weights leave
    assert len(kept) - len(folded) >= restructure.branch_weight_bytes(kept)[0]
    assert restructure.branch_weight_bytes(folded) == restructure.branch_weight_bytes(kept)[1:2]
    names = _gate_names(tiny["gated_indices"])
    arena_kept, arena_folded = tflm.measure_arena(kept), tflm.measure_arena(folded)
    assert arena_folded <= arena_kept
    runners = [(parity.TfliteRunner(kept, names), parity.TfliteRunner(folded, names)),
               (tflm.TflmRunner(kept, arena_kept, 4), tflm.TflmRunner(folded, arena_folded, 4))]
    for a, b in runners:
        for i in range(len(tiny["xq"])):
            (logits_a, gates_a), (logits_b, gates_b) = a(tiny["xq"][i:i + 1]), b(tiny["xq"][i:i + 1])
            np.testing.assert_array_equal(logits_a, logits_b)
            np.testing.assert_array_equal(gates_a.reshape(-1), gates_b.reshape(-1))
            assert gates_b.reshape(-1)[0] == 0 and gates_b.reshape(-1)[2] == 1


def test_folding_every_gate_leaves_no_if_or_greater_op_code(tiny):
    """With every gate folded the model is a static network: its op-code table must not list IF
    or GREATER either, or the firmware asks for kernels no op uses (seen on a ResNet-32)."""
    pinned = _pinned_gates(tiny["frozen"], {i: (-50.0 if k == 0 else 50.0) for k, i in enumerate(tiny["gated_indices"])})
    all_compute = quantize.convert_int8(onnx_export.export_all_compute(pinned, (1, 1, 8, 8)),
                                        quantize.calibration_images("digits", None, CALIBRATION_IMAGES))
    static = {i: k != 0 for k, i in enumerate(tiny["gated_indices"])}
    folded = restructure.restructure(all_compute, tiny["gated_indices"], static=static)
    model = restructure.read_model(folded)
    names = restructure.builtin_names()
    codes = {names[restructure.builtin_code(c)] for c in model.operatorCodes}
    assert not restructure.if_ops(model) and codes == set(restructure.op_names(folded))
    assert not codes & {"IF", "GREATER"}
    assert tflm.measure_arena(folded) > 0


def test_cg_export_folds_a_gate_proven_closed(tiny_ckpt, exported, tmp_path):
    """End to end: a checkpoint whose block 0 controller can only say "skip" exports without
    block 0's weights, and the folded model matches the unfolded one on every parity image."""
    ckpt = checkpoint.load(tiny_ckpt)
    state, prefix = ckpt["model"], "blocks.0.controller."
    gamma = float(state["blocks.0.gamma"])
    for head in ("head_c", "head_cir"):
        state[prefix + head + ".weight"].zero_()
    state[prefix + "head_c.bias"].fill_(-50.0 / gamma - float(state[prefix + "head_cir.bias"]))
    checkpoint.save(tmp_path / "closed.pt", ckpt)
    assert _export(tmp_path / "closed.pt", tmp_path / "folded", "--fold-static-gates") == 0
    report = json.loads((tmp_path / "folded" / "export_report.json").read_text())
    assert report["gate_bounds"][0]["decision"] == "never" and 0 in report["folded_gates"]["never"]
    # calibrated again with block 0 adding nothing, as deployed
    assert 0 in report["calibrated_without_blocks"]
    assert report["branch_weight_bytes"][0] == 0
    assert report["parity"]["folded_vs_gated"] == {"bit_exact_fraction": 1.0, "max_lsb_diff": 0,
                                                   "gates_identical": True}
    assert report["file_bytes"]["model_int8.tflite"] < (exported / "model_int8.tflite").stat().st_size
    # the shortcut and block 0's output now share a scale: y is a copy (RESHAPE), not a requantisation
    model = restructure.read_model((tmp_path / "folded" / "model_int8.tflite").read_bytes())
    names = restructure.builtin_names()
    main_ops = [names[restructure.builtin_code(model.operatorCodes[op.opcodeIndex])]
                for op in model.subgraphs[0].operators]
    assert "RESHAPE" in main_ops and "QUANTIZE" not in main_ops
    from cosinegate.bench.cli import main as bench_main  # the bench reads a folded export as any other
    assert bench_main([str(tmp_path / "folded"), "--out", str(tmp_path / "bench"), "--images", "10",
                       "--no-plain", "--latency-runs", "2", "--latency-warmup", "1", "--no-progress"]) == 0
    bench = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert 0 in bench["folded_gates"]["never"] and bench["runtimes"]["tflm"]["exec_rate_per_block"][0] == 0
    # the folded gate's controller is gone from the int8 model, and from what it is said to execute
    torch_run, tflm_run = bench["runtimes"]["torch"], bench["runtimes"]["tflm"]
    routing = sum((a - b) * report["macs_per_block"][i] for i, a, b in
                  zip(report["gated_indices"], tflm_run["exec_rate_per_block"], torch_run["exec_rate_per_block"]))
    folded = report["folded_gates"]["always"] + report["folded_gates"]["never"]
    controllers = sum(report["macs_controllers"][i] for i in folded)
    assert controllers > 0 and tflm_run["mac_ratio"] == pytest.approx(
        torch_run["mac_ratio"] + (routing - controllers) / report["macs_plain"], abs=1e-9)
    assert "Exported with `--fold-static-gates`: " in (tmp_path / "bench" / "BENCH.md").read_text()


def test_blocks_deleted_by_static_pruning_export_as_their_shortcut(tmp_path):
    """A net with an identity block (0) and a stride-2 block (2) deleted exports with one If
    (block 1), and every runtime takes the PyTorch model's decisions (the export's parity)."""
    from cosinegate.train.cli import main as train_main
    run = tmp_path / "run"
    assert train_main(["--preset", "demo", "--out", str(run), "--depth", "8", "--epochs", "1",
                       "--warmup-epochs", "1", "--removed-blocks", "0,2", "--threads", "1",
                       "--no-progress"]) == 0
    assert _export(run / "last.pt", tmp_path / "export") == 0
    report = json.loads((tmp_path / "export" / "export_report.json").read_text())
    assert report["gated_indices"] == [1]
    assert report["parity"]["onnx_vs_pytorch"]["gates_identical"]
    assert report["parity"]["int8_vs_float"]["top1_agreement"] > 0.9
    onnx_model = onnx.load(str(tmp_path / "export" / "model.onnx"))
    assert [n.op_type for n in onnx_model.graph.node].count("If") == 1
    model = checkpoint.build_model(checkpoint.load(run / "last.pt"))
    frozen = freeze(model)
    assert [b.removed for b in frozen.blocks] == [True, False, True]
    x = torch.from_numpy(parity.float_inputs(load_arrays("digits", None, "test")[0][:8], dataset_info("digits")))
    with torch.no_grad():
        expected = model(x, mode="deploy")[0]
    from cosinegate.export.freeze import DeployNet
    got = torch.cat([DeployNet(frozen)(x[i:i + 1])[0] for i in range(len(x))])
    assert torch.allclose(got, expected, atol=1e-4)


# --- bad input ------------------------------------------------------------------------------

def _assert_error(capsys, out, code, *fragments):
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cg-export: error: "), err
    for fragment in fragments:
        assert fragment in err[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".staging-" in p.name]


def test_not_a_checkpoint(tmp_path, capsys):
    bogus = tmp_path / "model.pt"
    bogus.write_text("hello")
    _assert_error(capsys, tmp_path / "out", _export(bogus, tmp_path / "out"), "not a readable")


def test_missing_checkpoint(tmp_path, capsys):
    _assert_error(capsys, tmp_path / "out", _export(tmp_path / "nope.pt", tmp_path / "out"),
                  "not found")


def test_checkpoint_of_another_format(tiny_ckpt, tmp_path, capsys):
    ckpt = checkpoint.load(tiny_ckpt)
    ckpt["format"] = 999
    torch.save(ckpt, tmp_path / "other.pt")
    _assert_error(capsys, tmp_path / "out", _export(tmp_path / "other.pt", tmp_path / "out"),
                  "format 999")


def test_checkpoint_of_another_version(tiny_ckpt, tmp_path, capsys):
    ckpt = checkpoint.load(tiny_ckpt)
    ckpt["version"] = "9.0.0"
    torch.save(ckpt, tmp_path / "old.pt")
    _assert_error(capsys, tmp_path / "out", _export(tmp_path / "old.pt", tmp_path / "out"),
                  "9.0.0")


def test_calibration_data_missing(tiny_ckpt, tmp_path, capsys):
    from cosinegate.train.model import CosineGateResNet, ModelConfig
    ckpt = checkpoint.load(tiny_ckpt)
    cfg = ModelConfig(**{**ckpt["model_config"], "in_channels": 3, "input_size": 32})
    state = {k: v for k, v in ckpt.items() if k not in ("kind", "format", "version")}
    state.update(config={**ckpt["config"], "dataset": "cifar10"}, model_config=vars(cfg),
                 model=CosineGateResNet(cfg).state_dict())
    checkpoint.save(tmp_path / "cifar.pt", state)
    code = _export(tmp_path / "cifar.pt", tmp_path / "out", "--data-dir", str(tmp_path / "nodata"))
    _assert_error(capsys, tmp_path / "out", code, "CIFAR-10 not found")


def test_op_tflm_cannot_run_is_refused():
    tf = import_tensorflow()

    @tf.function(input_signature=[tf.TensorSpec([4], tf.float32)])
    def segment_sum(x):
        return tf.math.segment_sum(x, tf.constant([0, 0, 1, 1]))

    holder = tf.Module()
    holder.f = segment_sum
    data = tf.lite.TFLiteConverter.from_concrete_functions(
        [segment_sum.get_concrete_function()], holder).convert()
    with pytest.raises(tflm.TflmError, match="SEGMENT_SUM"):
        tflm.check_tflm_ops(data)


def test_op_tflm_cannot_run_fails_the_export_cleanly(tiny_ckpt, tmp_path, capsys, monkeypatch):
    def refuse(_):
        raise tflm.TflmError("TFLM cannot run op SEGMENT_SUM: the model is not deployable")
    monkeypatch.setattr(tflm, "check_tflm_ops", refuse)
    _assert_error(capsys, tmp_path / "out", _export(tiny_ckpt, tmp_path / "out"), "SEGMENT_SUM")


def test_fold_static_gates_needs_int8(tiny_ckpt, tmp_path, capsys):
    from cosinegate.export import cli
    out = tmp_path / "out"
    code = cli.main([str(tiny_ckpt), "--out", str(out), "--fold-static-gates"])
    _assert_error(capsys, out, code, "--int8")


def test_plain_resnet_exports_without_if(tiny_ckpt, tmp_path, capsys):
    from cosinegate.train.model import CosineGateResNet, ModelConfig
    ckpt = checkpoint.load(tiny_ckpt)
    cfg = ModelConfig(**{**ckpt["model_config"], "gated": False})
    state = {k: v for k, v in ckpt.items() if k not in ("kind", "format", "version")}
    state.update(config={**ckpt["config"], "gated": False}, model_config=vars(cfg),
                 model=CosineGateResNet(cfg).eval().state_dict())
    checkpoint.save(tmp_path / "plain.pt", state)
    assert _export(tmp_path / "plain.pt", tmp_path / "out") == 0
    assert "exported without If" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "export_report.json").read_text())
    assert report["plain"] and report["gated_blocks"] == 0 and report["notes"]
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert "If" not in {n.op_type for n in model.graph.node}
    data = (tmp_path / "out" / "model_int8.tflite").read_bytes()
    restructure.validate_int8(data, 0)
    assert "IF" not in restructure.op_names(data)


def test_a_decision_float_and_int8_take_on_different_shares_of_images_is_named():
    from cosinegate.export.cli import divergent_decisions
    checks = {"int8_vs_float": {"gate_open_rate_float": [0.8, 1.0, 0.5, 0.55],
                                "gate_open_rate_int8": [0.79, 0.0, 0.5, 0.3]}}
    lines = divergent_decisions(checks, [0, 2, 7], exits=1)
    assert len(lines) == 2
    assert lines[0].startswith("block 2's gate is taken on 100% of the parity images in float and 0% in int8")
    assert lines[1].startswith("exit 0 is taken on 55% of the parity images in float and 30% in int8")
    assert divergent_decisions({"onnx_vs_pytorch": {}}, [0], exits=0) == []  # a float-only export
