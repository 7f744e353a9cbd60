"""Flatbuffer surgery: carve one TFLite `IF` per gated block out of the all-compute int8 model.

Input: the int8 flatbuffer of `AllComputeNet` (`quantize.convert_int8`), whose signature names the
extra outputs `stem`, `y{i}` (block outputs), `s{i}` (non-identity shortcuts) and `pred{i}`
(bool (1,) gate predicates). For every gated block i with input x, shortcut s, output y:

  then-subgraph `block{i}_then`  the ops between x/s and y that neither s nor the predicate needs
                                 (the block's int8 convolutions and residual add), moved over
                                 with copies of their tensors (constant buffers are shared)
  else-subgraph `block{i}_else`  QUANTIZE int8 -> int8: s requantised to y's scale/zero point
  main graph                     IF(pred, x[, s]) -> y, ops re-sorted topologically

The predicate tensors themselves become outputs 1..N named `gate_{i}` (output 0 is `logits`);
the other surgery-only outputs are dropped and unused tensors and buffers deleted, so TFLM does
not allocate them. Last, an offline memory plan (`memory_plan.py`) puts each branch's input and
output where the IF's are, so TFLM's IF copies no activation. Uses the TFLite schema object API,
never hand-parsed bytes.

    gated = restructure(all_compute_int8_bytes, gated_indices=[0, 1, 2])
    all_on = force_gates(gated, on=True)     # every IF predicate a constant: all blocks computed
    folded = restructure(all_compute_int8_bytes, [0, 1, 2], static={0: False, 2: True})
                                             # gates proven constant (gate_bounds.py): no IF
"""
import copy
import functools

import numpy as np

from cosinegate.export import memory_plan as plan
from cosinegate.export.native import tflite_flatbuffer_utils, tflite_schema


class RestructureError(RuntimeError):
    """The int8 graph does not have the shape the surgery expects."""


def read_model(tflite_bytes: bytes):
    """The flatbuffer as a mutable `ModelT` (schema object API)."""
    fbu = tflite_flatbuffer_utils()
    return fbu.read_model_from_bytearray(bytearray(tflite_bytes))


def write_model(model) -> bytes:
    fbu = tflite_flatbuffer_utils()
    return bytes(fbu.convert_object_to_bytearray(model))


def builtin_code(opcode) -> int:
    # Codes >= 127 live in builtinCode only; older files hold small codes in the deprecated field.
    return max(opcode.builtinCode, opcode.deprecatedBuiltinCode)


def builtin_names() -> dict[int, str]:
    schema = tflite_schema()
    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def op_names(tflite_bytes: bytes) -> list[str]:
    """Sorted builtin op names used in any subgraph (e.g. ['ADD', 'CONV_2D', 'IF', ...])."""
    model, names = read_model(tflite_bytes), builtin_names()
    return sorted({names[builtin_code(model.operatorCodes[op.opcodeIndex])]
                   for sg in model.subgraphs for op in (sg.operators or [])})


def branch_weight_bytes(tflite_bytes: bytes) -> list[int]:
    """Bytes of constant data (weights, biases) the then-subgraph of each gated block's IF holds
    (`block{i}_then`, nested in an exit's branch or not), in block order: the flash a block
    occupies whether or not it ever runs."""
    model = read_model(tflite_bytes)
    sizes = {}
    for branch in model.subgraphs[1:]:
        name = branch.name.decode()
        if name.startswith("block") and name.endswith("_then"):
            buffers = {t.buffer for t in branch.tensors if _is_constant(model, t)}
            sizes[int(name[len("block"):-len("_then")])] = sum(len(model.buffers[b].data) for b in buffers)
    return [sizes[i] for i in sorted(sizes)]


def input_quantization(tflite_bytes: bytes) -> tuple[float, int]:
    """(scale, zero_point) of input 0."""
    model = read_model(tflite_bytes)
    main = model.subgraphs[0]
    q = main.tensors[main.inputs[0]].quantization
    return float(q.scale[0]), int(q.zeroPoint[0])


def validate_int8(tflite_bytes: bytes, num_gated: int, num_exits: int = 0, gates_behind_exit: int = 0) -> None:
    """Raise RestructureError unless the model is the deployable contract: int8 NHWC input,
    int8 logits then `num_gated` bool [1] gates and `num_exits` bool [1] exit decisions, one IF
    per gate that is not a folded constant (predicate = that gate output) and one per exit (the
    first in the main graph, each deeper one inside the one before), every then-subgraph holding
    int8 convolutions, and no FLOAT32 tensor in any subgraph. The last `gates_behind_exit` gates
    not folded sit after the first exit: their IFs are nested in its then-branch."""
    schema = tflite_schema()
    model = read_model(tflite_bytes)
    main, types = model.subgraphs[0], schema.TensorType
    floats = [(k, t.name.decode()) for k, sg in enumerate(model.subgraphs) for t in sg.tensors
              if t.type == types.FLOAT32]
    if floats:
        raise RestructureError(f"{len(floats)} FLOAT32 tensors left, e.g. {floats[0][1]!r} "
                               f"in subgraph {floats[0][0]}")
    (x,), outputs = main.inputs, list(main.outputs)
    if main.tensors[x].type != types.INT8 or len(main.tensors[x].shape) != 4:
        raise RestructureError("input 0 is not an int8 NHWC tensor")
    if main.tensors[outputs[0]].type != types.INT8 or len(outputs) != 1 + num_gated + num_exits:
        raise RestructureError(f"expected int8 logits, {num_gated} gate outputs and {num_exits} exit outputs")
    if any(main.tensors[t].type != types.BOOL or list(main.tensors[t].shape) != [1]
           for t in outputs[1:]):
        raise RestructureError("gate outputs must be bool [1] tensors")
    def code(op):
        return builtin_code(model.operatorCodes[op.opcodeIndex])

    computed = [t for t in outputs[1:1 + num_gated] if not _is_constant(model, main.tensors[t])]
    computed = computed[:len(computed) - gates_behind_exit]
    computed += outputs[1 + num_gated:2 + num_gated] if num_exits else []  # deeper exits are nested
    branches = if_ops(model)
    if [op.inputs[0] for op in branches] != computed:
        raise RestructureError(f"expected {len(computed)} IF ops whose predicates are the computed decision outputs")
    nested = [op for sg in model.subgraphs[1:] for op in sg.operators
              if code(op) == schema.BuiltinOperator.IF]
    if len(nested) != max(num_exits - 1, 0) + gates_behind_exit:
        raise RestructureError(f"expected {max(num_exits - 1, 0) + gates_behind_exit} nested IF ops "
                               "for the deeper exits and the gates behind the first exit")
    def int8_convolutions(sg) -> bool:
        """`sg` runs int8 convolutions, itself or in the then-branch of an IF it holds."""
        convs = [o for o in sg.operators if code(o) == schema.BuiltinOperator.CONV_2D]
        inner = [model.subgraphs[o.builtinOptions.thenSubgraphIndex] for o in sg.operators
                 if code(o) == schema.BuiltinOperator.IF]
        return (all(sg.tensors[o.inputs[1]].type == types.INT8 for o in convs)
                and (bool(convs) or any(int8_convolutions(b) for b in inner)))

    for op in branches + nested:
        then_sg = model.subgraphs[op.builtinOptions.thenSubgraphIndex]
        if not int8_convolutions(then_sg):
            raise RestructureError(f"then-subgraph {then_sg.name.decode()} has no int8 convolution")


def _opcode_index(model, code: int, version: int) -> int:
    """Index of the operator code for builtin `code`, appended when the model lacks it."""
    schema = tflite_schema()
    for i, opcode in enumerate(model.operatorCodes):
        if builtin_code(opcode) == code:
            return i
    opcode = schema.OperatorCodeT()
    opcode.builtinCode = code
    opcode.deprecatedBuiltinCode = min(code, schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
    opcode.version = version
    model.operatorCodes.append(opcode)
    return len(model.operatorCodes) - 1


def _is_constant(model, tensor) -> bool:
    data = model.buffers[tensor.buffer].data
    return data is not None and len(data) > 0


def _producers(sg) -> dict[int, int]:
    return {t: k for k, op in enumerate(sg.operators) for t in op.outputs if t >= 0}


def _ancestors(sg, tensors, producers) -> set[int]:
    """Indices of the ops that (transitively) produce `tensors`."""
    seen, stack = set(), [producers[t] for t in tensors if t in producers]
    while stack:
        k = stack.pop()
        if k not in seen:
            seen.add(k)
            stack.extend(producers[t] for t in sg.operators[k].inputs if t in producers)
    return seen


def _toposort(sg) -> None:
    """Re-order ops so each runs after its inputs' producers; ties keep the current order."""
    producers = _producers(sg)
    pending = list(range(len(sg.operators)))
    ready_tensors = {t for t in range(len(sg.tensors)) if t not in producers}
    order = []
    while pending:
        for pos, k in enumerate(pending):
            if all(t < 0 or t in ready_tensors for t in sg.operators[k].inputs):
                break
        else:
            raise RestructureError("the main graph has a cycle after inserting IF ops")
        order.append(pending.pop(pos))
        ready_tensors.update(sg.operators[k].outputs)
    sg.operators = [sg.operators[k] for k in order]


def _new_subgraph(name: str):
    schema = tflite_schema()
    sg = schema.SubGraphT()
    sg.name, sg.tensors, sg.operators = name.encode(), [], []
    return sg


def _block_ops(model, index: int, x: int, s: int, y: int, pred: int) -> list[int]:
    """Indices of the subgraph-0 ops between block `index`'s input x (and shortcut s) and its
    output y that neither s nor the predicate needs: the block's computed path."""
    main = model.subgraphs[0]
    producers = _producers(main)
    keep = _ancestors(main, [x, s, pred], producers)
    moved = sorted(_ancestors(main, [y], producers) - keep)
    if not moved:
        raise RestructureError(f"block {index}: found no ops between its input and output")
    moved_set = set(moved)
    inner = {t for k in moved for t in main.operators[k].outputs} - {y}
    if any(t in inner for k, op in enumerate(main.operators) if k not in moved_set
           for t in op.inputs) or inner & set(main.outputs):
        raise RestructureError(f"block {index}: an inner tensor is used outside the block")
    external = {t for k in moved for t in main.operators[k].inputs
                if t >= 0 and t not in inner and not _is_constant(model, main.tensors[t])}
    if not external <= {x, s}:
        raise RestructureError(f"block {index}: its ops read tensors other than x and s")
    return moved


def _requantize(model, source: int, target: int, sg=None):
    """QUANTIZE int8 -> int8: the skipped block's output y = relu(s) = s (s >= 0), requantised
    from the shortcut's scale/zero point to y's."""
    schema = tflite_schema()
    op = schema.OperatorT()
    op.opcodeIndex = _opcode_index(model, schema.BuiltinOperator.QUANTIZE, 1)
    op.inputs, op.outputs = [source], [target]
    return op


def _same_quantization(a, b) -> bool:
    qa, qb = a.quantization, b.quantization
    return (a.type == b.type and list(a.shape) == list(b.shape)
            and np.array_equal(qa.scale, qb.scale) and np.array_equal(qa.zeroPoint, qb.zeroPoint))


def _copy(model, source: int, target: int, sg=None):
    """RESHAPE to the same shape: TFLM runs it as one memcpy, where an int8 -> int8 QUANTIZE
    between equal scales still requantises every byte (43 M4 instructions a byte). Both tensors
    keep their lifetimes, so TFLM's planner lays out the arena as it did for the QUANTIZE."""
    schema = tflite_schema()
    options = schema.ReshapeOptionsT()
    options.newShape = [int(d) for d in (sg or model.subgraphs[0]).tensors[target].shape]
    op = schema.OperatorT()
    op.opcodeIndex = _opcode_index(model, schema.BuiltinOperator.RESHAPE, 1)
    op.inputs, op.outputs = [source], [target]
    op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.ReshapeOptions, options
    return op


def _drop_block(model, index: int, x: int, s: int, y: int, pred: int) -> None:
    """Block `index` never runs: its ops leave subgraph 0 and y becomes the shortcut, copied
    where y and s share a scale (as after `cg-export`'s recalibration), requantised otherwise."""
    main = model.subgraphs[0]
    dropped = set(_block_ops(model, index, x, s, y, pred))
    main.operators = [op for k, op in enumerate(main.operators) if k not in dropped]
    same = _same_quantization(main.tensors[s], main.tensors[y])
    main.operators.append(_copy(model, s, y) if same else _requantize(model, s, y))


def _carve_block(model, index: int, x: int, s: int, y: int, pred: int) -> None:
    """Replace block `index`'s computed path in subgraph 0 by IF(pred, x[, s]) -> y."""
    main = model.subgraphs[0]
    moved = _block_ops(model, index, x, s, y, pred)
    moved_set = set(moved)
    branch_inputs = [x] if s == x else [x, s]

    then_sg, else_sg = _new_subgraph(f"block{index}_then"), _new_subgraph(f"block{index}_else")
    local = functools.partial(_local, main)
    then_map = {}
    then_sg.inputs = [local(then_sg, then_map, t) for t in branch_inputs]
    for k in moved:
        op = copy.deepcopy(main.operators[k])
        op.inputs = [local(then_sg, then_map, t) for t in op.inputs]
        op.outputs = [local(then_sg, then_map, t) for t in op.outputs]
        then_sg.operators.append(op)
    then_sg.outputs = [then_map[y]]

    else_map = {}
    else_sg.inputs = [local(else_sg, else_map, t) for t in branch_inputs]
    else_sg.operators.append(_requantize(model, else_map[s], local(else_sg, else_map, y)))
    else_sg.outputs = [else_map[y]]

    branch = _if_op(model, then_sg, else_sg, [pred, *branch_inputs], [y])
    main.operators = [op for k, op in enumerate(main.operators) if k not in moved_set] + [branch]


def _local(main, sg, mapping: dict, t: int) -> int:
    """Tensor `t` of subgraph 0 as a tensor of branch `sg` (a copy, made once per branch)."""
    if t < 0:
        return t
    if t not in mapping:
        mapping[t] = len(sg.tensors)
        sg.tensors.append(copy.deepcopy(main.tensors[t]))
    return mapping[t]


def _if_op(model, then_sg, else_sg, inputs: list[int], outputs: list[int]):
    """Append the two branches to the model; the IF operator that runs one of them."""
    schema = tflite_schema()
    model.subgraphs.extend([then_sg, else_sg])
    options = schema.IfOptionsT()
    options.thenSubgraphIndex = len(model.subgraphs) - 2
    options.elseSubgraphIndex = len(model.subgraphs) - 1
    branch = schema.OperatorT()
    branch.opcodeIndex = _opcode_index(model, schema.BuiltinOperator.IF, 1)
    branch.inputs, branch.outputs = list(inputs), list(outputs)
    branch.builtinOptionsType, branch.builtinOptions = schema.BuiltinOptions.IfOptions, options
    return branch


def _carve_exit(model, k: int, x: int, z: int, went_on: int, y: int, deeper: list[int]) -> None:
    """Replace the rest of the network after early exit `k` by IF(went_on, x, z) -> [y, *deeper].

    x is the stage output the exit reads, z its logits, went_on its decision (true: go on), y the
    network's logits, `deeper` the decisions taken after this exit: the later exits' and the gates'
    of the blocks after it (carved already, so the rest of the network holds their IFs).
    then-subgraph `exit{k}_then`: every op between x and y / `deeper` that neither z nor went_on
    needs. else-subgraph `exit{k}_else`: z requantised (or copied) to y's scale, and each deeper
    decision a constant false (the image never got there)."""
    main = model.subgraphs[0]
    _toposort(main)  # the gates' IFs were appended at the end: the moved ops keep this order
    producers = _producers(main)
    keep = _ancestors(main, [x, z, went_on], producers)
    moved = sorted(_ancestors(main, [y, *deeper], producers) - keep)
    if not moved:
        raise RestructureError(f"exit {k}: found no ops after it")
    moved_set = set(moved)
    produced = {t for i in moved for t in main.operators[i].outputs}
    outside = [t for i, op in enumerate(main.operators) if i not in moved_set for t in op.inputs]
    if any(t in produced for t in outside):
        raise RestructureError(f"exit {k}: a tensor after it is used before it")
    external = {t for i in moved for t in main.operators[i].inputs
                if t >= 0 and t not in produced and not _is_constant(model, main.tensors[t])}
    if not external <= {x}:
        raise RestructureError(f"exit {k}: the ops after it read tensors other than its stage output")
    local = functools.partial(_local, main)
    then_sg, else_sg = _new_subgraph(f"exit{k}_then"), _new_subgraph(f"exit{k}_else")
    then_map, else_map = {}, {}
    then_sg.inputs = [local(then_sg, then_map, t) for t in (x, z)]
    for i in moved:
        op = copy.deepcopy(main.operators[i])
        op.inputs = [local(then_sg, then_map, t) for t in op.inputs]
        op.outputs = [local(then_sg, then_map, t) for t in op.outputs]
        then_sg.operators.append(op)
    then_sg.outputs = [then_map[t] for t in (y, *deeper)]

    else_sg.inputs = [local(else_sg, else_map, t) for t in (x, z)]
    answer = local(else_sg, else_map, y)
    same = _same_quantization(main.tensors[z], main.tensors[y])
    else_sg.operators.append((_copy if same else _requantize)(model, else_map[z], answer, else_sg))
    never = [_constant_in(model, else_sg, main.tensors[t], False) for t in deeper]
    else_sg.outputs = [answer, *never]

    branch = _if_op(model, then_sg, else_sg, [went_on, x, z], [y, *deeper])
    main.operators = [op for i, op in enumerate(main.operators) if i not in moved_set] + [branch]


def _constant_in(model, sg, like, value: bool) -> int:
    """A new tensor of subgraph `sg` shaped like `like`, holding the constant `value`."""
    schema = tflite_schema()
    buffer = schema.BufferT()
    buffer.data = np.array([int(value)], dtype=np.uint8)
    model.buffers.append(buffer)
    constant = copy.deepcopy(like)
    constant.buffer = len(model.buffers) - 1
    constant.name = constant.name + b"_never"
    sg.tensors.append(constant)
    return len(sg.tensors) - 1


def _compact_tensors(model, sg, signature=None) -> None:
    """Delete tensors no op, input or output of `sg` refers to, renumbering the rest."""
    used = set(sg.inputs) | set(sg.outputs)
    for op in sg.operators:
        used.update(t for t in list(op.inputs) + list(op.outputs) if t >= 0)
    new_index = {old: new for new, old in enumerate(sorted(used))}
    sg.tensors = [sg.tensors[old] for old in sorted(used)]
    remap = lambda ts: [new_index[t] if t >= 0 else t for t in ts]  # noqa: E731
    for op in sg.operators:
        op.inputs, op.outputs = remap(op.inputs), remap(op.outputs)
    sg.inputs, sg.outputs = remap(sg.inputs), remap(sg.outputs)
    if signature is not None:
        for entry in list(signature.inputs) + list(signature.outputs):
            entry.tensorIndex = new_index[entry.tensorIndex]


def _compact_buffers(model) -> None:
    """Delete buffers no tensor or metadata refers to; buffer 0 stays the empty sentinel."""
    used = {0} | {t.buffer for sg in model.subgraphs for t in sg.tensors}
    used |= {m.buffer for m in (model.metadata or [])}
    new_index = {old: new for new, old in enumerate(sorted(used))}
    model.buffers = [model.buffers[old] for old in sorted(used)]
    for sg in model.subgraphs:
        for t in sg.tensors:
            t.buffer = new_index[t.buffer]
    for m in model.metadata or []:
        m.buffer = new_index[m.buffer]


def _compact_opcodes(model) -> None:
    """Delete operator codes no op refers to: a folded model without IFs must not list IF or
    GREATER, or the firmware (and any op-resolver check) would ask for kernels it never runs."""
    used = sorted({op.opcodeIndex for sg in model.subgraphs for op in sg.operators})
    new_index = {old: new for new, old in enumerate(used)}
    model.operatorCodes = [model.operatorCodes[old] for old in used]
    for sg in model.subgraphs:
        for op in sg.operators:
            op.opcodeIndex = new_index[op.opcodeIndex]


def _set_outputs(model, named: list[tuple[str, int]]) -> None:
    """Subgraph 0 outputs and signature outputs become `named`, in order; tensors renamed."""
    schema = tflite_schema()
    main, signature = model.subgraphs[0], model.signatureDefs[0]
    main.outputs = [t for _, t in named]
    signature.outputs = []
    for name, t in named:
        main.tensors[t].name = name.encode()
        entry = schema.TensorMapT()
        entry.name, entry.tensorIndex = name.encode(), t
        signature.outputs.append(entry)


def signature_outputs(model) -> dict[str, int]:
    """Output name -> subgraph-0 tensor index, from the model's (first) signature."""
    return {(e.name.decode() if isinstance(e.name, bytes) else e.name): e.tensorIndex
            for e in model.signatureDefs[0].outputs}


def if_ops(model) -> list:
    """The main graph's IF operators, in graph order."""
    schema = tflite_schema()
    return [op for op in model.subgraphs[0].operators
            if builtin_code(model.operatorCodes[op.opcodeIndex]) == schema.BuiltinOperator.IF]


def _constant_bool(model, like: int, value: bool) -> int:
    """A new subgraph-0 tensor shaped like tensor `like`, holding the constant `value`."""
    main = model.subgraphs[0]
    index = _constant_in(model, main, main.tensors[like], value)
    main.tensors[index].name = main.tensors[like].name
    return index


def _prune_dead_ops(sg) -> None:
    """Delete the ops no output of `sg` depends on (e.g. the controller of a folded gate)."""
    live = _ancestors(sg, sg.outputs, _producers(sg))
    sg.operators = [op for k, op in enumerate(sg.operators) if k in live]


def block_input(named: dict, index: int) -> int:
    """Block `index`'s input tensor among the all-compute model's named outputs: the output of
    the last block before it that has one (a deleted identity block has none), else the stem's."""
    for j in range(index - 1, -1, -1):
        if f"y{j}" in named:
            return named[f"y{j}"]
    return named["stem"]


def restructure(tflite_bytes: bytes, gated_indices: list[int], memory_plan: bool = True,
                static: dict[int, bool] | None = None, exit_blocks: list[int] = ()) -> bytes:
    """The deployable int8 model: one IF per gated block, outputs `logits`, `gate_{i}`...
    `exit_blocks`: the blocks after which early exits read (`AllComputeNet`'s `exit{k}`,
    `cont{k}`): one nested IF per exit, outputs `exit_{k}` after the gates; the IFs of the gates
    after an exit sit in its then-branch, and their outputs are false for an image that left.
    With `memory_plan` (a net without exits), the offline plan of `memory_plan.py` lets each IF
    skip its copies.

    `static` maps gated blocks to a decision proven for every input (`gate_bounds.py`): True
    leaves the block inline with no IF and no controller, False deletes the block and its
    weights (y is the shortcut, copied or requantised). Their `gate_{i}` outputs become that constant.
    """
    static = static or {}
    model = read_model(tflite_bytes)
    if len(model.subgraphs) != 1 or not model.signatureDefs:
        raise RestructureError("expected the single-subgraph all-compute model with a signature")
    signature = model.signatureDefs[0]
    named = signature_outputs(model)
    gates = {}
    for i in gated_indices:
        x = block_input(named, i)
        s, y, pred = named.get(f"s{i}", x), named[f"y{i}"], named[f"pred{i}"]
        if i not in static:
            _carve_block(model, i, x, s, y, pred)
        elif not static[i]:
            _drop_block(model, i, x, s, y, pred)
        gates[i] = _constant_bool(model, pred, static[i]) if i in static else pred
    exits = len(exit_blocks)
    went_on = [named[f"cont{k}"] for k in range(exits)]
    for k in reversed(range(exits)):  # deepest first: each exit's IF holds the deeper ones
        # the decisions an image that leaves here never reaches: surfaced from the then-branch
        later = [gates[i] for i in gated_indices if i > exit_blocks[k] and i not in static]
        _carve_exit(model, k, block_input(named, exit_blocks[k] + 1), named[f"exit{k}"], went_on[k],
                    named["logits"], went_on[k + 1:] + later)
    _set_outputs(model, [("logits", named["logits"])] + [(f"gate_{i}", gates[i]) for i in gated_indices]
                 + [(f"exit_{k}", went_on[k]) for k in range(exits)])
    main = model.subgraphs[0]
    _prune_dead_ops(main)
    _toposort(main)
    _compact_tensors(model, main, signature)
    _compact_buffers(model)
    _compact_opcodes(model)
    if memory_plan and if_ops(model) and not exits:
        plan.add_plan(model, if_ops(model))
    return write_model(model)



def force_gates(tflite_bytes: bytes, on) -> bytes:
    """Every IF predicate replaced by a constant: all gated blocks computed (`on=True`), all
    skipped (`on=False`), or one decision per IF in graph order (`on=[True, False, ...]`).

    The controllers still run (their decision lands in an unused tensor `gate_{i}_controller`),
    so instruction counts of the forced models bracket the deployed model's. Outputs `gate_{i}`
    become the constants, i.e. they still are the IF predicates.
    """
    model = read_model(tflite_bytes)
    main = model.subgraphs[0]
    branches = if_ops(model)
    if not branches:
        return write_model(model)
    decisions = [bool(on)] * len(branches) if isinstance(on, (bool, np.bool_)) else [bool(d) for d in on]
    if len(decisions) != len(branches):
        raise ValueError(f"{len(decisions)} forced decisions for {len(branches)} IF ops")
    for op, decision in zip(branches, decisions):
        old = op.inputs[0]
        new = _constant_bool(model, old, decision)
        main.tensors[old].name = main.tensors[old].name + b"_controller"
        op.inputs[0] = new
        main.outputs = [new if t == old else t for t in main.outputs]
        for entry in model.signatureDefs[0].outputs:
            if entry.tensorIndex == old:
                entry.tensorIndex = new
    plan.append_online(model, subgraph=0, count=len(branches))
    if isinstance(on, (bool, np.bool_)):  # the deeper exits' IFs, nested in the branches, too
        _force_nested(model, bool(on))
    return write_model(model)


def _force_nested(model, on: bool) -> None:
    """Every IF inside a branch subgraph takes the constant `on`; a branch output that was its
    predicate (a deeper exit's decision, surfaced) becomes that constant too."""
    schema = tflite_schema()
    for sg in model.subgraphs[1:]:
        for op in sg.operators:
            if builtin_code(model.operatorCodes[op.opcodeIndex]) != schema.BuiltinOperator.IF:
                continue
            old = op.inputs[0]
            new = _constant_in(model, sg, sg.tensors[old], on)
            op.inputs[0] = new
            sg.outputs = [new if t == old else t for t in sg.outputs]
