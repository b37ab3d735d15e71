"""What the passes share: an index over an ONNX graph, constants, rewrites, and the record of originals.

A fusion matches on a ``GraphView`` (producers, consumers, constants through Identity chains), then
applies ``Rewrite``s: the fused node takes the place of the matched node that produced the output,
the matched nodes nothing else needs leave the graph, and they are recorded in the model's
``metadata_props`` under ``xdna.original/<fused node name>`` so that the partitioner can write a node
that stays on the CPU back as exactly those ONNX nodes.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import GraphProto, ModelProto, NodeProto, TensorProto, helper, numpy_helper

from xdna_ep.graph_passes import xdna_ops

ORIGINAL_PREFIX = "xdna.original/"
MAX_IR_VERSION = 13  # ONNX Runtime 1.31 loads IR version <= 13


class GraphView:
    """Producers, consumers and constants of one graph (not of its subgraphs), built once per match round."""

    def __init__(self, graph: GraphProto):
        self.graph = graph
        self.initializers = {init.name: init for init in graph.initializer}
        self.outputs = {out.name for out in graph.output}
        self.inputs = {inp.name for inp in graph.input}
        self._producer: dict[str, NodeProto] = {}
        self._consumers: dict[str, list[NodeProto]] = {}
        self.position: dict[int, int] = {}
        for index, node in enumerate(graph.node):
            self.position[id(node)] = index
            for name in node.output:
                if name:
                    self._producer[name] = node
            for name in node.input:
                if name:
                    self._consumers.setdefault(name, []).append(node)
        self._names = {node.name for node in graph.node} | set(self._producer) | set(self.initializers) | self.inputs

    def producer(self, name: str) -> NodeProto | None:
        return self._producer.get(name)

    def consumers(self, name: str) -> list[NodeProto]:
        return self._consumers.get(name, [])

    def producer_of(self, name: str, op_type: str) -> NodeProto | None:
        """The producer of ``name`` if it is an ``op_type`` node of the default domain, else None."""
        node = self._producer.get(name)
        if node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx"):
            return node
        return None

    def resolve_identity(self, name: str) -> str:
        """Follow Identity nodes up to the tensor they copy."""
        seen = 0
        while (node := self.producer_of(name, "Identity")) is not None and seen < 64:
            name, seen = node.input[0], seen + 1
        return name

    def initializer(self, name: str) -> TensorProto | None:
        """The initializer behind ``name`` (through Identity nodes), or None."""
        return self.initializers.get(self.resolve_identity(name))

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is a constant (initializer or Constant node, through Identity)."""
        name = self.resolve_identity(name)
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer_of(name, "Constant")
        if node is None or len(node.attribute) != 1:
            return None
        attribute = node.attribute[0]
        if attribute.name == "value":
            return numpy_helper.to_array(attribute.t)
        if attribute.name in ("value_float", "value_floats", "value_int", "value_ints"):
            return np.asarray(helper.get_attribute_value(attribute))
        return None

    def scalar(self, name: str) -> float | None:
        """The value of ``name`` if it is a one-element numeric constant."""
        value = self.constant(name)
        if value is None or value.size != 1 or value.dtype.kind not in "fiu":
            return None
        return float(value.reshape(()))

    def is_graph_output(self, name: str) -> bool:
        return name in self.outputs

    def fresh_name(self, base: str) -> str:
        """A tensor or node name not used in the graph yet."""
        name, index = base, 0
        while name in self._names:
            index += 1
            name = f"{base}_{index}"
        self._names.add(name)
        return name


@dataclass
class Rewrite:
    """One fusion: ``fused`` replaces the matched nodes; ``helpers`` are new nodes that feed it.

    ``anchor`` is the matched node whose output the fused node now produces; ``matched`` are all the
    nodes of the pattern (those still needed by other nodes stay in the graph). ``after`` are new nodes
    that read the fused node's output (a layout back to the anchor's output). ``originals``, when
    given, is what the partitioner writes back for the fused node instead of the removed nodes: ONNX
    nodes computing exactly the fused node's output from its inputs.
    """

    fused: NodeProto
    anchor: NodeProto
    matched: list[NodeProto]
    helpers: list[NodeProto] = field(default_factory=list)
    after: list[NodeProto] = field(default_factory=list)
    originals: list[NodeProto] | None = None


def removable_nodes(view: GraphView, matched: Sequence[NodeProto], anchor: NodeProto) -> list[NodeProto]:
    """The matched nodes that nothing outside the pattern needs once ``anchor``'s output is fused.

    A node is removable when none of its outputs is a graph output and every consumer of its outputs
    is itself removable. Nodes shared with other patterns stay, so that writing one fused node back
    never depends on another one.
    """
    matched_ids = {id(node) for node in matched}
    removable = {id(anchor)}
    changed = True
    while changed:
        changed = False
        for node in matched:
            if id(node) in removable:
                continue
            outputs = [name for name in node.output if name]
            if any(view.is_graph_output(name) for name in outputs):
                continue
            if all(
                id(consumer) in removable and id(consumer) in matched_ids
                for name in outputs
                for consumer in view.consumers(name)
            ):
                removable.add(id(node))
                changed = True
    return sorted((node for node in matched if id(node) in removable), key=lambda node: view.position[id(node)])


def apply_rewrites(model: ModelProto, view: GraphView, rewrites: Sequence[Rewrite]) -> None:
    """Replace each rewrite's removable nodes by its helpers + fused node, in place; record the originals.

    The rewrites must not overlap (no node removed by two of them).
    """
    if not rewrites:
        return
    removed_ids: set[int] = set()
    inserted_at: dict[int, list[NodeProto]] = {}
    for rewrite in rewrites:
        removed = removable_nodes(view, rewrite.matched, rewrite.anchor)
        overlap = removed_ids & {id(node) for node in removed}
        if overlap:
            raise AssertionError(f"overlapping rewrites at {rewrite.fused.name}")
        removed_ids |= {id(node) for node in removed}
        inserted_at[id(rewrite.anchor)] = [*rewrite.helpers, rewrite.fused, *rewrite.after]
        record_originals(model, rewrite.fused.name, removed if rewrite.originals is None else rewrite.originals)
    splice_nodes(model.graph, inserted_at, removed_ids)
    ensure_xdna_opset(model)


def splice_nodes(graph: GraphProto, inserted_at: dict[int, list[NodeProto]], removed_ids: set[int]) -> None:
    """Rebuild the node list: the nodes keyed (by ``id``) in ``inserted_at`` are replaced by theirs, the
    other nodes in ``removed_ids`` leave, the rest stay in order."""
    new_nodes: list[NodeProto] = []
    for node in graph.node:
        if id(node) in inserted_at:
            new_nodes.extend(inserted_at[id(node)])
        elif id(node) not in removed_ids:
            new_nodes.append(node)
    replace_nodes(graph, new_nodes)


def add_constant(view: GraphView, nodes: list[NodeProto], value: np.ndarray, hint: str = "xdna_shape") -> str:
    """Append a Constant node holding ``value`` to ``nodes``; return its output, a fresh name from ``hint``."""
    name = view.fresh_name(hint)
    nodes.append(helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(value)))
    return name


def replace_nodes(graph: GraphProto, nodes: Iterable[NodeProto]) -> None:
    """Set the graph's node list (copies the protos)."""
    nodes = [onnx.NodeProto.FromString(node.SerializeToString()) for node in nodes]
    del graph.node[:]
    graph.node.extend(nodes)


def ensure_xdna_opset(model: ModelProto) -> None:
    """Import the xdna domain when the graph has xdna nodes; set an IR version ONNX Runtime 1.31 loads."""
    has_xdna = any(node.domain == xdna_ops.DOMAIN for node in model.graph.node)
    imported = any(opset.domain == xdna_ops.DOMAIN for opset in model.opset_import)
    if has_xdna and not imported:
        model.opset_import.append(helper.make_opsetid(xdna_ops.DOMAIN, xdna_ops.OPSET_VERSION))
    if not has_xdna and imported:
        kept = [opset for opset in model.opset_import if opset.domain != xdna_ops.DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(kept)
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION


def record_originals(model: ModelProto, fused_name: str, nodes: Sequence[NodeProto]) -> None:
    """Keep the ONNX nodes a fused node replaced, so that the partitioner can write them back."""
    graph = helper.make_graph(list(nodes), fused_name, [], [])
    entry = model.metadata_props.add()
    entry.key = ORIGINAL_PREFIX + fused_name
    entry.value = base64.b64encode(graph.SerializeToString()).decode("ascii")


def originals(model: ModelProto, fused_name: str) -> list[NodeProto]:
    """The ONNX nodes ``fused_name`` replaced (KeyError if none were recorded)."""
    key = ORIGINAL_PREFIX + fused_name
    for entry in model.metadata_props:
        if entry.key == key:
            return list(GraphProto.FromString(base64.b64decode(entry.value)).node)
    raise KeyError(f"no original nodes recorded for {fused_name}")


def drop_original_records(model: ModelProto) -> None:
    """Remove every ``xdna.original/*`` record (after partitioning they are no longer needed)."""
    kept = [(entry.key, entry.value) for entry in model.metadata_props if not entry.key.startswith(ORIGINAL_PREFIX)]
    del model.metadata_props[:]
    for key, value in kept:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def remove_dead_nodes(model: ModelProto) -> int:
    """Remove nodes none of whose outputs reach a graph output (or a subgraph); returns how many.

    Works on any node order (ONNX Runtime's fp16 converter, for one, appends its input Casts last):
    liveness is followed from the outputs through the producers, not through the node list.
    """
    graph = model.graph
    needed = {out.name for out in graph.output}
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in _subgraphs(attribute):
                needed |= _outer_names(subgraph)
    producer = {name: index for index, node in enumerate(graph.node) for name in node.output if name}
    live: set[int] = set()
    stack = [producer[name] for name in needed if name in producer]
    while stack:
        index = stack.pop()
        if index in live:
            continue
        live.add(index)
        stack.extend(producer[name] for name in graph.node[index].input if name in producer)
    removed = len(graph.node) - len(live)
    if removed:
        replace_nodes(graph, [node for index, node in enumerate(graph.node) if index in live])
    return removed


def remove_unused_initializers(model: ModelProto) -> None:
    """Drop initializers no node (nor subgraph) reads. A graph input's default stays: it is part of the
    interface (a caller may feed that input or not), not a weight."""
    graph = model.graph
    used = {name for node in graph.node for name in node.input}
    used |= {out.name for out in graph.output} | {inp.name for inp in graph.input}
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in _subgraphs(attribute):
                used |= _outer_names(subgraph)
    unused = [index for index, init in enumerate(graph.initializer) if init.name not in used]
    for index in reversed(unused):  # in place: copying the kept weights would cost seconds
        del graph.initializer[index]


def topological_sort(graph: GraphProto) -> None:
    """Order nodes so that each comes after the producers of its inputs (stable for sorted graphs)."""
    available = {init.name for init in graph.initializer} | {inp.name for inp in graph.input} | {""}
    pending = list(graph.node)
    ordered: list[NodeProto] = []
    producers = {name for node in pending for name in node.output}
    outer = set()  # names from an enclosing scope (subgraphs) or otherwise unproduced
    for node in pending:
        outer |= {name for name in node.input if name not in producers}
    available |= outer
    while pending:
        remaining = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                remaining.append(node)
        if len(remaining) == len(pending):
            raise ValueError(f"graph has a cycle or a missing producer at node {remaining[0].name}")
        pending = remaining
    if [id(node) for node in ordered] != [id(node) for node in graph.node]:
        replace_nodes(graph, ordered)


def _subgraphs(attribute: onnx.AttributeProto) -> list[GraphProto]:
    if attribute.type == onnx.AttributeProto.GRAPH:
        return [attribute.g]
    if attribute.type == onnx.AttributeProto.GRAPHS:
        return list(attribute.graphs)
    return []


def _outer_names(graph: GraphProto) -> set[str]:
    """Names a subgraph reads from its enclosing scope."""
    local = {init.name for init in graph.initializer} | {inp.name for inp in graph.input}
    local |= {name for node in graph.node for name in node.output}
    names = set()
    for node in graph.node:
        names |= {name for name in node.input if name and name not in local}
        for attribute in node.attribute:
            for subgraph in _subgraphs(attribute):
                names |= {name for name in _outer_names(subgraph) if name not in local}
    return names


def has_subgraph_ops(model: ModelProto, op_types: Iterable[str]) -> bool:
    """True when any If/Loop/Scan body of the main graph holds a node of one of ``op_types``."""
    wanted = set(op_types)

    def visit(graph: GraphProto) -> bool:
        for node in graph.node:
            for attribute in node.attribute:
                for subgraph in _subgraphs(attribute):
                    if any(inner.op_type in wanted for inner in subgraph.node) or visit(subgraph):
                        return True
        return False

    return visit(model.graph)
