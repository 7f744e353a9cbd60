"""Offline memory plan that lets TFLM's IF run without copying activations.

TFLM's IF copies each of its inputs into the branch subgraph's input tensor and the branch's
output back into its own output, except where the two already share memory
(`CopyOpInputsToSubgraphInputs` in TFLM's kernel_util.cc). Its online planner never makes them
share, so a gated block holds its input twice and pays two activation copies per inference.

This plan fixes the offsets of the main graph's IF inputs and outputs (first fit, largest first,
over their main-graph lifetimes, like TFLM's greedy planner) and gives every branch input and
output the offset of the IF tensor it would be copied from or to. Every other tensor stays -1:
TFLM plans it online, around the fixed ones. The plan travels in the model as the
"OfflineMemoryAllocation" metadata (TFLM docs/memory_management.md): int32 version, subgraph
count, tensor count, then one offset per tensor of every subgraph in order.

    add_plan(model, if_ops)                  # ModelT and its main-graph IF operators
    append_online(model, subgraph=0, count=1)  # after appending tensors to a planned model
"""
import numpy as np

from cosinegate.export.native import tflite_schema

METADATA_NAME = b"OfflineMemoryAllocation"
ONLINE = -1            # TFLM's kOnlinePlannedBuffer
ALIGNMENT = 16         # TFLM's buffer alignment in the arena
_ITEMSIZE = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1, 10: 8}  # TensorType -> bytes


class MemoryPlanError(RuntimeError):
    """The plan would let two live tensors share memory."""


def _bytes(tensor) -> int:
    return int(np.prod(tensor.shape)) * _ITEMSIZE[tensor.type] if tensor.shape is not None else 0


def _lifetimes(sg) -> dict[int, tuple[int, int]]:
    """tensor -> (first op writing it or -1 for inputs, last op reading it or len(ops) for outputs)."""
    first = {t: -1 for t in sg.inputs}
    last = {}
    for k, op in enumerate(sg.operators):
        for t in op.outputs:
            first.setdefault(t, k)
        for t in op.inputs:
            if t >= 0:
                last[t] = k
    for t in sg.outputs:
        last[t] = len(sg.operators)
    return {t: (first[t], last.get(t, first[t])) for t in first}


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return not (a[1] < b[0] or b[1] < a[0])


def _first_fit(tensors: list[int], size: dict, life: dict) -> dict[int, int]:
    offsets: dict[int, int] = {}
    for t in sorted(tensors, key=lambda t: (-size[t], t)):
        busy = sorted((offsets[u], offsets[u] + size[u]) for u in offsets if _overlap(life[t], life[u]))
        offset = 0
        for start, end in busy:
            if offset + size[t] <= start:
                break
            offset = max(offset, -(-end // ALIGNMENT) * ALIGNMENT)
        offsets[t] = offset
    return offsets


def _plan_index(model) -> int | None:
    names = [m.name for m in (model.metadata or [])]
    return names.index(METADATA_NAME) if METADATA_NAME in names else None


def _write(model, flat: list[int]) -> None:
    schema = tflite_schema()
    data = np.array([1, len(model.subgraphs), len(flat), *flat], dtype="<i4").view(np.uint8)
    index = _plan_index(model)
    if index is not None:
        model.buffers[model.metadata[index].buffer].data = data
        return
    buffer = schema.BufferT()
    buffer.data = data
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]


def read_plan(model) -> list[int] | None:
    """The plan's offsets, one per tensor of every subgraph in order, or None without a plan."""
    index = _plan_index(model)
    if index is None:
        return None
    words = np.asarray(model.buffers[model.metadata[index].buffer].data, dtype=np.uint8).view("<i4")
    return words[3:3 + int(words[2])].tolist()


def add_plan(model, if_ops: list) -> None:
    """Plan the main graph's IF tensors and alias the branches' inputs and outputs to them."""
    main = model.subgraphs[0]
    life = _lifetimes(main)
    fixed = sorted({t for op in if_ops for t in [*op.inputs[1:], *op.outputs]})
    size = {t: _bytes(main.tensors[t]) for t in fixed}
    offsets = _first_fit(fixed, size, life)
    for t in fixed:  # the invariant the plan rests on, checked rather than assumed
        for u in fixed:
            if t < u and _overlap(life[t], life[u]) and \
                    _overlap((offsets[t], offsets[t] + size[t] - 1), (offsets[u], offsets[u] + size[u] - 1)):
                raise MemoryPlanError(f"tensors {t} and {u} are live together at the same offset")
    table = [[ONLINE] * len(sg.tensors) for sg in model.subgraphs]
    for t, offset in offsets.items():
        table[0][t] = offset
    for op in if_ops:
        for index in (op.builtinOptions.thenSubgraphIndex, op.builtinOptions.elseSubgraphIndex):
            branch = model.subgraphs[index]
            for outer, inner in zip(op.inputs[1:], branch.inputs):
                table[index][inner] = offsets[outer]
            for outer, inner in zip(op.outputs, branch.outputs):
                if inner not in branch.inputs:  # a pass-through output keeps its input's place
                    table[index][inner] = offsets[outer]
    _write(model, [o for offsets in table for o in offsets])


def append_online(model, subgraph: int, count: int) -> None:
    """Keep a plan in step after `count` tensors were appended to `subgraph`: they plan online."""
    flat = read_plan(model)
    if flat is None:
        return
    end = sum(len(sg.tensors) for sg in model.subgraphs[:subgraph + 1]) - count
    _write(model, flat[:end] + [ONLINE] * count + flat[end:])
