"""graph.py: dead-node removal and the topological sort on graphs whose nodes are not in order."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from xdna_ep.graph_passes.graph import remove_dead_nodes, topological_sort


def out_of_order_model() -> onnx.ModelProto:
    """y = Relu(Cast(x)), with the Cast listed after its consumer (as ONNX Runtime's fp16 converter
    appends its input Casts), and one dead Neg of the Cast."""
    nodes = [
        helper.make_node("Relu", ["x_cast"], ["y"], name="relu"),
        helper.make_node("Neg", ["x_cast"], ["unused"], name="dead"),
        helper.make_node("Cast", ["x"], ["x_cast"], name="cast", to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_dead_node_removal_keeps_the_live_nodes_whatever_their_order():
    model = out_of_order_model()
    assert remove_dead_nodes(model) == 1
    assert sorted(node.name for node in model.graph.node) == ["cast", "relu"]


def test_sort_then_dead_node_removal_gives_a_valid_model():
    model = out_of_order_model()
    topological_sort(model.graph)
    remove_dead_nodes(model)
    assert [node.name for node in model.graph.node] == ["cast", "relu"]
    onnx.checker.check_model(model, full_check=True)
