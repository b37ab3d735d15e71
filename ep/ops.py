"""The ``xdna`` custom ops ONNX Runtime calls: defined once, at import, with onnxruntime-extensions.

Register them on a session with ``SessionOptions.register_custom_ops_library(library_path())``
(``xdna_ep.session_options`` does it). The op types, inputs and attributes come from
``graph_passes/xdna_ops.py``, the one definition the passes also build nodes from.

What onnxruntime-extensions 0.15.2 Python ops demand (design.md), and how this file meets it:

- An exception, or too few outputs, inside an op aborts the process. Every op body catches
  everything, recomputes on the CPU (``ReferenceExecutor`` over the same weights), counts the fallback
  with its cause and warns once per cause. If even that fails (say, a model compiled in another
  process), the output is NaN of the right shape, counted and reported: never a crash.
- The stock invocation path returns outputs as Python lists (``tolist()``: about 77 ns per element).
  This module installs its own invocation hook that hands ONNX Runtime the output ndarray itself; the
  extension then copies it once into the output tensor (``measure_op_overhead`` measures it, a test
  checks that no list is made).
- Inputs (weights too) are copied on every call, so weights travel by key (``weight_key``), never as
  inputs; only float32 tensors cross; every node carries every declared attribute.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnxruntime_extensions
from onnxruntime_extensions import _ocos

from xdna_ep.ep.executor import Executor
from xdna_ep.ep.registry import CompiledModel, lookup
from xdna_ep.graph_passes import xdna_ops

logger = logging.getLogger(__name__)

PyCustomOpDef = onnxruntime_extensions.PyCustomOpDef
_ATTRIBUTE_TYPES = {str: PyCustomOpDef.dt_string, int: PyCustomOpDef.dt_int64, float: PyCustomOpDef.dt_float}


def library_path() -> str:
    """The custom-op library to pass to ``SessionOptions.register_custom_ops_library``."""
    return onnxruntime_extensions.get_library_path()


# --- statistics ------------------------------------------------------------------------------------


@dataclass
class OpStats:
    """Calls of one op type in this process and the time spent inside the executor."""

    calls: int = 0
    executor_s: float = 0.0
    fallbacks: int = 0


STATS: dict[str, OpStats] = {op_type: OpStats() for op_type in xdna_ops.OP_TYPES}
FALLBACK_CAUSES: Counter = Counter()  # (op type, cause) -> count
_warned: set[tuple[str, str]] = set()
_warn_lock = threading.Lock()


def fallback_counts() -> dict[tuple[str, str], int]:
    """(op type, cause) -> how many calls were recomputed on the CPU, in this process."""
    return dict(FALLBACK_CAUSES)


def reset_stats() -> None:
    for op_type in STATS:
        STATS[op_type] = OpStats()
    FALLBACK_CAUSES.clear()


def _record_fallback(op_type: str, node: str, model: CompiledModel | None, error: BaseException) -> None:
    cause = f"{type(error).__name__}: {error}"
    cause_kind = type(error).__name__
    STATS[op_type].fallbacks += 1
    FALLBACK_CAUSES[(op_type, cause_kind)] += 1
    if model is not None:
        model.fallbacks += 1
    with _warn_lock:
        if (op_type, cause_kind) not in _warned:
            _warned.add((op_type, cause_kind))
            logger.warning("xdna::%s %s fell back to the CPU (%s); further such fallbacks are only counted", op_type, node, cause)


# --- the ops ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Node:
    """A node's attributes parsed once (they arrive as strings on every call)."""

    model: CompiledModel | None
    name: str
    attrs: dict


_nodes: dict[tuple[str, str], _Node] = {}


def _node(attributes: dict) -> _Node:
    key = (attributes["model_key"], attributes["node"])
    node = _nodes.get(key)
    if node is None:
        try:
            model = lookup(key[0])
        except KeyError:
            model = None
        node = _Node(model=model, name=key[1], attrs=dict(attributes))
        _nodes[key] = node
    return node


def _run(
    op_type: str,
    attributes: dict,
    compute: Callable[[Executor, _Node], np.ndarray],
    expected_shape: Callable[[_Node], tuple[int, ...]],
) -> np.ndarray:
    """Run ``compute`` on the model's executor; on any failure, on the reference; never raise."""
    stats = STATS[op_type]
    stats.calls += 1
    node = None
    try:
        node = _node(attributes)
        if node.model is None:
            raise LookupError(f"model_key {attributes.get('model_key')!r} was not compiled in this process")
        start = time.perf_counter()
        output = compute(node.model.executor(), node)
        stats.executor_s += time.perf_counter() - start
        return _checked(output, expected_shape(node))
    except BaseException as error:  # noqa: BLE001 - anything escaping aborts the process
        name = node.name if node is not None else str(attributes.get("node"))
        _record_fallback(op_type, name, node.model if node is not None else None, error)
    try:
        if node is None or node.model is None:
            raise LookupError("no weights to recompute with")
        return _checked(compute(node.model.reference(), node), expected_shape(node))
    except BaseException as error:  # noqa: BLE001
        logger.error("xdna::%s %s could not be computed at all (%s): output is NaN", op_type, attributes.get("node"), error)
        try:
            return np.full(expected_shape(node or _Node(None, "", dict(attributes))), np.nan, dtype=np.float32)
        except BaseException:  # noqa: BLE001
            return np.full((1,), np.nan, dtype=np.float32)


def _checked(output: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(output, np.ndarray) or output.dtype != np.float32 or output.shape != tuple(shape):
        got = getattr(output, "shape", type(output).__name__), getattr(output, "dtype", "")
        raise ValueError(f"executor returned {got}, expected float32 {tuple(shape)}")
    return output if output.flags.c_contiguous else np.ascontiguousarray(output)


def _matmul(inputs: list[np.ndarray], attributes: dict) -> np.ndarray:
    x = inputs[0]

    def compute(executor: Executor, node: _Node) -> np.ndarray:
        if x.shape[-1:] != (int(node.attrs["k"]),):
            raise ValueError(f"x has shape {x.shape}, the weight has {node.attrs['k']} rows")
        model = node.model
        return executor.matmul(
            node.name, x, model.device_key(node.attrs["weight_key"]), model.device_key(node.attrs["bias_key"]),
            node.attrs["activation"],
        )  # fmt: skip

    return _run(xdna_ops.MATMUL, attributes, compute, lambda node: (*x.shape[:-1], int(node.attrs["n"])))


def _attention(inputs: list[np.ndarray], attributes: dict) -> np.ndarray:
    q, k, v = inputs

    def compute(executor: Executor, node: _Node) -> np.ndarray:
        if q.ndim != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
            raise ValueError(f"q {q.shape}, k {k.shape}, v {v.shape} are not (b, h, n, d) attention operands")
        return executor.attention(node.name, q, k, v, float(node.attrs["scale"]), node.attrs["causal"] == "1")

    return _run(xdna_ops.ATTENTION, attributes, compute, lambda node: (*q.shape[:3], v.shape[-1]))


def _softmax(inputs: list[np.ndarray], attributes: dict) -> np.ndarray:
    x = inputs[0]

    def compute(executor: Executor, node: _Node) -> np.ndarray:
        return executor.softmax(node.name, x, int(node.attrs["axis"]))

    return _run(xdna_ops.SOFTMAX, attributes, compute, lambda node: x.shape)


_BODIES = {xdna_ops.MATMUL: _matmul, xdna_ops.ATTENTION: _attention, xdna_ops.SOFTMAX: _softmax}
_OPS_BY_ID: dict[int, Callable[[list[np.ndarray], dict], np.ndarray]] = {}


def _declare_all() -> None:
    """Define the xdna ops with onnxruntime-extensions (once per process, before any session)."""
    for op_type, body in _BODIES.items():
        attrs = {name: _ATTRIBUTE_TYPES[kind] for name, kind in xdna_ops.ATTRIBUTES[op_type].items()}
        opdef = onnxruntime_extensions.onnx_op(
            op_type=f"{xdna_ops.DOMAIN}::{op_type}",
            inputs=[PyCustomOpDef.dt_float] * xdna_ops.N_INPUTS[op_type],
            outputs=[PyCustomOpDef.dt_float],
            attrs=attrs,
        )(body)
        _OPS_BY_ID[opdef._id] = body


_stock_invocation = _ocos._on_pyop_invocation


def _invoke(op_id: int, inputs: list, attributes: dict) -> tuple:
    """The invocation hook: (op id, output shape, output ndarray); other Python ops go the stock way."""
    body = _OPS_BY_ID.get(op_id)
    if body is None:
        return _stock_invocation(op_id, inputs, attributes)
    output = body(inputs, attributes)
    return op_id, output.shape, output


_declare_all()
PyCustomOpDef.install_hooker(_invoke)


# --- measurement -----------------------------------------------------------------------------------


def measure_op_overhead(n_ops: int = 64, repeats: int = 200, width: int = 384) -> dict[str, float]:
    """Host cost of one xdna op at the Python boundary, next to ONNX Runtime's own MatMul.

    A chain of ``n_ops`` xdna::MatMul nodes on a (1, width) row with (width, width) weights runs on
    the reference executor; the time ONNX Runtime spends per node minus the time inside the executor
    is the boundary overhead (input copy, Python call, attribute lookup, output copy). The same chain
    of ONNX MatMul nodes gives the CPU alternative. Returns microseconds per node (medians of runs).
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from xdna_ep.ep.registry import register, release

    rng = np.random.default_rng(0)
    weights = {f"w{i}": (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32) for i in range(n_ops)}
    compiled = register(weights, device="cpu", profile="npu1", precision="bf16")

    def chain(fused: bool) -> bytes:
        nodes, previous = [], "x"
        for i in range(n_ops):
            out = f"t{i}" if i < n_ops - 1 else "y"
            if fused:
                node = xdna_ops.make_matmul(previous, out, f"mm{i}", weight_key=f"w{i}", bias_key="", activation="", k=width, n=width)
                xdna_ops.set_string_attribute(node, "model_key", compiled.key)
            else:
                node = helper.make_node("MatMul", [previous, f"w{i}"], [out], name=f"mm{i}")
            nodes.append(node)
            previous = out
        inits = [] if fused else [numpy_helper.from_array(w, name) for name, w in weights.items()]
        graph = helper.make_graph(
            nodes, "chain",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])], inits,
        )  # fmt: skip
        opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(xdna_ops.DOMAIN, 1)] if fused else [])
        model = helper.make_model(graph, opset_imports=opsets)
        model.ir_version = 10
        return model.SerializeToString()

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.register_custom_ops_library(library_path())
    x = rng.standard_normal((1, width)).astype(np.float32)
    results = {}
    try:
        for label, fused in (("xdna", True), ("ort", False)):
            session = ort.InferenceSession(chain(fused), options, providers=["CPUExecutionProvider"])
            for _ in range(5):
                session.run(None, {"x": x})
            run_times, executor_times = [], []
            for _ in range(repeats):
                before = STATS[xdna_ops.MATMUL].executor_s
                start = time.perf_counter()
                session.run(None, {"x": x})
                run_times.append(time.perf_counter() - start)
                executor_times.append(STATS[xdna_ops.MATMUL].executor_s - before)
            results[f"{label}_node_us"] = float(np.median(run_times)) / n_ops * 1e6
            if fused:
                results["xdna_executor_us"] = float(np.median(executor_times)) / n_ops * 1e6
        results["xdna_boundary_overhead_us"] = results["xdna_node_us"] - results["xdna_executor_us"]
    finally:
        release(compiled.key)
    return results
