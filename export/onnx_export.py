"""ONNX export of the frozen networks (opset 18, batch 1) through `torch.onnx.export(dynamo=True)`.

`export_deploy` gives `model.onnx`: input `input` (1, C, H, W) float, outputs `logits`
(1, classes) and the decisions (1, n) float 0/1 (absent for a plain ResNet): `gates`, `exits`, or
`decisions` for a net with both (its gates, then its exits). One `If` per gated block and per exit,
whose subgraphs are renamed `block{i}_then` / `block{i}_else` (`exit{k}_then` / `exit{k}_else`;
`torch.cond` lowers to real `If` nodes at opset 18, lower opsets fail). `export_all_compute` gives the control-flow-free graph the int8 path starts
from. `force_onnx_gates` is the ONNX counterpart of `restructure.force_gates`.

    deploy = export_deploy(frozen, (1, 3, 32, 32))
"""
import contextlib
import io
import warnings

import onnx
import torch

from cosinegate.export.freeze import AllComputeNet, DeployNet, FrozenModel
from cosinegate.export.native import captured_stderr

OPSET = 18


def _export(module: torch.nn.Module, shape, output_names) -> onnx.ModelProto:
    x = torch.zeros(shape)
    # The exporter narrates each step on stdout, warns about its own internals and, for a nested
    # `torch.cond`, dumps the traced graph on fd 2: keep the CLI's one-line-per-stage output readable.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), captured_stderr():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.eval(), (x,), dynamo=True, opset_version=OPSET,
                                    input_names=["input"], output_names=output_names,
                                    verbose=False)
    model = program.model_proto
    _strip_metadata(model.graph)
    return model


def _strip_metadata(graph: onnx.GraphProto) -> None:
    """Drop the exporter's per-node metadata (Python stack traces with absolute paths and
    process-wide counters), which would make two exports of one checkpoint differ."""
    del graph.metadata_props[:]
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        del info.metadata_props[:]
    for node in graph.node:
        del node.metadata_props[:]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _strip_metadata(attr.g)


def export_deploy(frozen: FrozenModel, input_shape) -> onnx.ModelProto:
    """The deploy network with one `If` per gated block (and per early exit, each deeper exit's
    inside the then-branch of the one before); checked with `onnx.checker`. The second output
    holds the decisions (`FrozenModel.decision_names`)."""
    deploy = DeployNet(frozen)
    kinds = {kind for kind, _ in deploy.network_order()}
    decisions = {frozenset({"gate"}): "gates", frozenset({"exit"}): "exits"}.get(frozenset(kinds), "decisions")
    model = _export(deploy, input_shape, ["logits", decisions] if kinds else ["logits"])
    branches = _if_nodes(model.graph)  # network order, as `DeployNet.network_order` lists them
    names = [f"block{i}" if kind == "gate" else f"exit{i}" for kind, i in deploy.network_order()]
    if len(branches) != len(names):
        raise RuntimeError(f"expected {len(names)} If nodes, the exporter produced {len(branches)}")
    for node, name in zip(branches, names):
        node.name = f"{name}_if"
        for attr in node.attribute:
            role = {"then_branch": "then", "else_branch": "else"}[attr.name]
            attr.g.name = f"{name}_{role}"
    model.graph.name = "cosinegate_deploy"
    onnx.checker.check_model(model, full_check=True)
    return model


def _if_nodes(graph: onnx.GraphProto) -> list:
    """The `If` nodes in graph order, each followed by those nested in its branches."""
    found = []
    for node in graph.node:
        if node.op_type == "If":
            found.append(node)
            for attr in node.attribute:
                found.extend(_if_nodes(attr.g))
    return found


def export_all_compute(frozen: FrozenModel, input_shape) -> onnx.ModelProto:
    """Every block computed; outputs named as in `AllComputeNet.forward`."""
    net = AllComputeNet(frozen)
    with torch.no_grad():
        names = list(net(torch.zeros(input_shape)))
    return _export(net, input_shape, names)


def force_onnx_gates(model: onnx.ModelProto, on: bool) -> onnx.ModelProto:
    """A copy whose every `If` condition is the constant `on` (all blocks computed / skipped);
    its `gates` output still reports what the controllers decided."""
    forced = onnx.ModelProto()
    forced.CopyFrom(model)
    constant = onnx.helper.make_tensor("forced_gate", onnx.TensorProto.BOOL, [], [on])
    forced.graph.initializer.append(constant)
    for node in _if_nodes(forced.graph):
        node.input[0] = "forced_gate"
    return forced
