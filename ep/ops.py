"""The ``xdna`` custom ops ONNX Runtime calls: defined once, at import, with onnxruntime-extensions.

Register them on a session with ``SessionOptions.register_custom_ops_library(library_path())``
(``xdna_ep.session_options`` does it). The op types, inputs and attributes come from
``graph_passes/xdna_ops.py``, the one definition the passes also build nodes from.

What onnxruntime-extensions 0.15.2 Python ops demand (design.md), and how this file meets it:

- An exception, or too few outputs, inside an op aborts the process. Every op body catches
  everything, recomputes on the CPU (``ReferenceExecutor`` over the same weights), counts the fallback
  with its cause and warns once per cause. If even that fails (say, a model compiled in another
  process), the op must still return: it returns a placeholder of the right shape and records the
  failure, and ``xdna_ep.InferenceSession.run`` raises ``ComputeError`` naming it once ONNX Runtime
  returns, so the placeholder is never handed out as a result.
- The stock invocation path returns outputs as Python lists (``tolist()``: about 77 ns per element).
  This module installs its own invocation hook that hands ONNX Runtime the output ndarray itself; the
  extension then copies it once into the output tensor (``measure_op_overhead`` measures it, a test
  checks that no list is made).
- Inputs (weights too) are copied on every call, so weights travel by key (``weight_key``), never as
  inputs; only float32 tensors cross; every node carries every declared attribute.

The invocation hook replaces onnxruntime-extensions' process-wide one through private names:
``_ocos._on_pyop_invocation`` (the stock hook, kept for other Python ops), ``PyCustomOpDef.install_hooker``
and the ``_id`` of each op definition; and it relies on the extension accepting an ndarray where the
stock hook returns a list. ``check_extension_hooks`` refuses, with the version it was tested with, an
onnxruntime-extensions that lacks those names; ``tests/ep/test_ops.py`` pins the behaviour.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnxruntime_extensions
from onnxruntime_extensions import _ocos

from xdna_ep.ep.executor import Executor
from xdna_ep.ep.registry import CompiledModel, OpStats, lookup, on_release
from xdna_ep.graph_passes import xdna_ops

logger = logging.getLogger(__name__)

PyCustomOpDef = onnxruntime_extensions.PyCustomOpDef
_ATTRIBUTE_TYPES = {str: PyCustomOpDef.dt_string, int: PyCustomOpDef.dt_int64, float: PyCustomOpDef.dt_float}


def library_path() -> str:
    """The custom-op library to pass to ``SessionOptions.register_custom_ops_library``."""
    return onnxruntime_extensions.get_library_path()


# --- statistics ------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Fallback:
    """One op call that was recomputed on the CPU."""

    op_type: str
    node: str
    cause: str  # what counters group by: "DeviceError: ERT_CMD_STATE_TIMEOUT", "ValueError", ...
    message: str  # the error in full
    recomputed: bool = True  # False: the CPU could not compute it either; the op's output is a placeholder


_this_run = threading.local()  # .fallbacks: the list collect_fallbacks() opened on this thread, if any


@contextlib.contextmanager
def collect_fallbacks() -> Iterator[list[Fallback]]:
    """The fallbacks of the xdna ops that run on this thread inside the block, in order.

    ONNX Runtime's sequential executor (its default) runs every node on the thread that called
    ``run()``: a run wrapped in this block sees its own fallbacks, never another thread's.
    """
    previous = getattr(_this_run, "fallbacks", None)
    collected: list[Fallback] = []
    _this_run.fallbacks = collected
    try:
        yield collected
    finally:
        _this_run.fallbacks = previous


def take_interrupt() -> bool:
    """Whether a KeyboardInterrupt (Ctrl-C) was caught inside an xdna op on this thread since the last
    call; clears it. An op must not raise, so ``xdna_ep.InferenceSession.run`` raises it after the run."""
    interrupted = getattr(_this_run, "interrupted", False)
    _this_run.interrupted = False
    return interrupted


def cause_of(error: BaseException) -> str:
    """The cause a fallback is counted and warned under: the error type, and the device's cause if it gave one."""
    cause = getattr(error, "cause", None)
    return f"{type(error).__name__}: {cause}" if cause else type(error).__name__


def _record_fallback(op_type: str, node: str, model: CompiledModel | None, error: BaseException) -> None:
    message = f"{type(error).__name__}: {error}"
    cause = cause_of(error)
    with _warn_lock:  # several sessions run ops at once (threads): counts stay exact
        STATS[op_type].fallbacks += 1
        FALLBACK_CAUSES[(op_type, cause)] += 1
        if model is not None:
            model.fallbacks += 1
            model.op_stats[op_type].fallbacks += 1
        first = (op_type, cause) not in _warned
        _warned.add((op_type, cause))
    collected = getattr(_this_run, "fallbacks", None)
    if collected is not None:
        collected.append(Fallback(op_type, node, cause, message))
    if first:
        logger.warning("xdna::%s %s fell back to the CPU (%s); further such fallbacks are only counted", op_type, node, message)


def _record_failure(op_type: str, node: str, message: str) -> None:
    """An op that could compute neither on its device nor on the CPU: logged, and kept for run() to raise."""
    logger.error("xdna::%s %s could not be computed on the device nor on the CPU (%s)", op_type, node, message)
    collected = getattr(_this_run, "fallbacks", None)
    if collected is not None:
        collected.append(Fallback(op_type, node, "not computed", message, recomputed=False))


def failures(fallbacks: list[Fallback]) -> list[Fallback]:
    """The calls among ``fallbacks`` that were not computed at all (their outputs are placeholders)."""
    return [fallback for fallback in fallbacks if not fallback.recomputed]


# --- the ops ---------------------------------------------------------------------------------------


class _Node:
    """One xdna node of one compiled model: its attributes parsed once (they arrive as strings on
    every call), its model resolved once. ``__call__`` is the hot path and never raises."""

    op_type = ""
    __slots__ = ("name", "_model", "stats")

    def __init__(self, attributes: dict) -> None:
        self.name = attributes.get("node", "")
        try:
            self._model = weakref.ref(lookup(attributes.get("model_key", "")))
        except KeyError:
            self._model = lambda: None
        self.stats = STATS[self.op_type]

    @property
    def model(self) -> CompiledModel | None:
        """The compiled model (None once released: its session is gone)."""
        return self._model()

    def compute(self, executor: Executor, inputs: list) -> np.ndarray:
        raise NotImplementedError

    def output_shape(self, inputs: list) -> tuple[int, ...]:
        raise NotImplementedError

    def __call__(self, inputs: list) -> np.ndarray:
        stats = self.stats
        stats.calls += 1
        try:
            model = self.model
            if model is None:
                raise LookupError("its model_key was not compiled in this process (or was released)")
            model_stats = model.op_stats[self.op_type]
            model_stats.calls += 1
            executor = model._executor or model.executor()
            start = time.perf_counter()
            output = self.compute(executor, inputs)
            elapsed = time.perf_counter() - start
            stats.executor_s += elapsed
            model_stats.executor_s += elapsed
            if (
                output.__class__ is np.ndarray
                and output.dtype == np.float32
                and output.shape == self.output_shape(inputs)
                and output.flags.c_contiguous
            ):
                return output
            raise ValueError(f"executor returned {getattr(output, 'shape', output)!r}, not C-contiguous float32 "
                             f"{self.output_shape(inputs)}")
        except BaseException as error:  # noqa: BLE001 - anything escaping aborts the process
            return self.fallback(inputs, error)

    def fallback(self, inputs: list, error: BaseException) -> np.ndarray:
        """Recompute on the reference (counted, warned once per cause). If even that fails, the failure
        is recorded for ``run()`` to raise and a NaN placeholder is returned (the op must return)."""
        if isinstance(error, KeyboardInterrupt):  # not a device fault: the session re-raises it after the run
            _this_run.interrupted = True
        else:
            _record_fallback(self.op_type, self.name, self.model, error)
        try:
            if self.model is None:
                raise LookupError("no weights to recompute with") from error
            output = self.compute(self.model.reference(), inputs)
            if output.shape != self.output_shape(inputs):
                raise ValueError(f"reference returned shape {output.shape}")
            return np.ascontiguousarray(output, dtype=np.float32)
        except BaseException as final:  # noqa: BLE001
            message = f"{type(error).__name__}: {error}; on the CPU: {type(final).__name__}: {final}"
            _record_failure(self.op_type, self.name, message)
            try:
                return np.full(self.output_shape(inputs), np.nan, dtype=np.float32)
            except BaseException:  # noqa: BLE001 - inputs too broken to know the shape
                return np.full((1,), np.nan, dtype=np.float32)


class _MatMul(_Node):
    op_type = xdna_ops.MATMUL
    __slots__ = ("weight", "bias", "activation", "k", "n")

    def __init__(self, attributes: dict) -> None:
        super().__init__(attributes)
        device_key = self.model.device_key if self.model is not None else (lambda name: name)
        self.weight = device_key(attributes["weight_key"])
        self.bias = device_key(attributes["bias_key"])
        self.activation = attributes["activation"]
        self.k, self.n = int(attributes["k"]), int(attributes["n"])

    def compute(self, executor: Executor, inputs: list) -> np.ndarray:
        x = inputs[0]
        if x.shape[-1] != self.k:
            raise ValueError(f"x has shape {x.shape}, the weight has {self.k} rows")
        return executor.matmul(self.name, x, self.weight, self.bias, self.activation)

    def output_shape(self, inputs: list) -> tuple[int, ...]:
        return (*inputs[0].shape[:-1], self.n)


class _Attention(_Node):
    op_type = xdna_ops.ATTENTION
    __slots__ = ("scale", "causal")

    def __init__(self, attributes: dict) -> None:
        super().__init__(attributes)
        self.scale = float(attributes["scale"])
        self.causal = attributes["causal"] == "1"

    def compute(self, executor: Executor, inputs: list) -> np.ndarray:
        q, k, v = inputs
        if q.ndim != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
            raise ValueError(f"q {q.shape}, k {k.shape}, v {v.shape} are not (b, h, n, d) attention operands")
        return executor.attention(self.name, q, k, v, self.scale, self.causal)

    def output_shape(self, inputs: list) -> tuple[int, ...]:
        q, _, v = inputs
        return (*q.shape[:3], v.shape[-1])


class _Softmax(_Node):
    op_type = xdna_ops.SOFTMAX
    __slots__ = ("axis",)

    def __init__(self, attributes: dict) -> None:
        super().__init__(attributes)
        self.axis = int(attributes["axis"])

    def compute(self, executor: Executor, inputs: list) -> np.ndarray:
        return executor.softmax(self.name, inputs[0], self.axis)

    def output_shape(self, inputs: list) -> tuple[int, ...]:
        return inputs[0].shape


_NODE_TYPES = {xdna_ops.MATMUL: _MatMul, xdna_ops.ATTENTION: _Attention, xdna_ops.SOFTMAX: _Softmax}
_NODE_TYPE_BY_ID: dict[int, type[_Node]] = {}
_nodes: dict[tuple[int, str, str], _Node] = {}


def _declare_all() -> None:
    """Define the xdna ops with onnxruntime-extensions (once per process, before any session)."""

    def never_called(*inputs, **attributes):  # the invocation hook below dispatches instead
        raise AssertionError("xdna ops are dispatched by ops._invoke")

    for op_type, node_type in _NODE_TYPES.items():
        attrs = {name: _ATTRIBUTE_TYPES[kind] for name, kind in xdna_ops.ATTRIBUTES[op_type].items()}
        opdef = onnxruntime_extensions.onnx_op(
            op_type=f"{xdna_ops.DOMAIN}::{op_type}",
            inputs=[PyCustomOpDef.dt_float] * xdna_ops.N_INPUTS[op_type],
            outputs=[PyCustomOpDef.dt_float],
            attrs=attrs,
        )(never_called)
        op_id = getattr(opdef, "_id", None)
        if not isinstance(op_id, int):
            raise ImportError(
                f"onnxruntime-extensions {onnxruntime_extensions.__version__}: an op definition has no integer _id, "
                f"which the xdna ops' invocation hook dispatches on: install onnxruntime-extensions=={TESTED_EXTENSIONS_VERSION}"
            )
        _NODE_TYPE_BY_ID[op_id] = node_type


TESTED_EXTENSIONS_VERSION = "0.15.2"  # the onnxruntime-extensions whose private hook API this file uses


def check_extension_hooks(module=onnxruntime_extensions, ocos=_ocos) -> None:
    """Raise ImportError naming what is missing when onnxruntime-extensions lacks the private hook API."""
    missing = []
    if not callable(getattr(ocos, "_on_pyop_invocation", None)):
        missing.append("_ocos._on_pyop_invocation")
    if not callable(getattr(getattr(module, "PyCustomOpDef", None), "install_hooker", None)):
        missing.append("PyCustomOpDef.install_hooker")
    if missing:
        raise ImportError(
            f"onnxruntime-extensions {getattr(module, '__version__', '?')} lacks {', '.join(missing)}, which the xdna "
            f"ops' zero-copy invocation hook needs: install onnxruntime-extensions=={TESTED_EXTENSIONS_VERSION}"
        )
    if getattr(module, "__version__", "") != TESTED_EXTENSIONS_VERSION:
        logger.warning(
            "onnxruntime-extensions %s: the xdna ops' invocation hook was tested with %s only",
            module.__version__, TESTED_EXTENSIONS_VERSION,
        )  # fmt: skip


check_extension_hooks()
_stock_invocation = _ocos._on_pyop_invocation


def _invoke(op_id: int, inputs: list, attributes: dict) -> tuple:
    """The invocation hook: (op id, output shape, output ndarray); other Python ops go the stock way."""
    node_type = _NODE_TYPE_BY_ID.get(op_id)
    if node_type is None:
        return _stock_invocation(op_id, inputs, attributes)
    key = (op_id, attributes.get("model_key", ""), attributes.get("node", ""))
    node = _nodes.get(key)
    if node is None:
        try:
            node = node_type(attributes)
        except BaseException as error:  # noqa: BLE001 - a malformed node must not abort the process
            logger.error("xdna::%s: bad attributes %s (%s)", node_type.op_type, attributes, error)
            output = np.full((1,), np.nan, dtype=np.float32)
            return op_id, output.shape, output
        _nodes[key] = node
    output = node(inputs)
    return op_id, output.shape, output


def _forget_model(model_key: str) -> None:
    """Drop the parsed nodes of a released compiled model."""
    for key in [key for key in _nodes if key[1] == model_key]:
        _nodes.pop(key, None)


_declare_all()
PyCustomOpDef.install_hooker(_invoke)
on_release(_forget_model)


# --- measurement -----------------------------------------------------------------------------------


def measure_op_overhead(n_ops: int = 64, repeats: int = 200, width: int = 384) -> dict[str, float]:
    """Host cost of one xdna op at the Python boundary, next to ONNX Runtime's own MatMul.

    A chain of ``n_ops`` xdna::MatMul nodes on a (1, width) row with (width, width) weights runs on
    the reference executor; the time ONNX Runtime spends per node minus the time inside the executor
    is the boundary overhead (input copy, Python call, attribute parsing, checks, output copy). The
    same chain of ONNX MatMul nodes gives the CPU alternative. Both sessions use one intra-op thread.
    Microseconds per node, from the fastest of ``repeats`` runs (the least disturbed by other load)
    and the median run.
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
    options.intra_op_num_threads = 1
    options.register_custom_ops_library(library_path())
    x = rng.standard_normal((1, width)).astype(np.float32)
    results: dict[str, float] = {}
    try:
        for label, fused in (("xdna", True), ("ort", False)):
            session = ort.InferenceSession(chain(fused), options, providers=["CPUExecutionProvider"])
            for _ in range(5):
                session.run(None, {"x": x})
            runs = []  # (run seconds, seconds inside the executor)
            for _ in range(repeats):
                before = STATS[xdna_ops.MATMUL].executor_s
                start = time.perf_counter()
                session.run(None, {"x": x})
                runs.append((time.perf_counter() - start, STATS[xdna_ops.MATMUL].executor_s - before))
            fastest = min(runs)
            median_run = float(np.median([run for run, _ in runs]))
            results[f"{label}_node_us"] = fastest[0] / n_ops * 1e6
            results[f"{label}_node_median_us"] = median_run / n_ops * 1e6
            if fused:
                results["xdna_executor_us"] = fastest[1] / n_ops * 1e6
                results["xdna_boundary_overhead_us"] = (fastest[0] - fastest[1]) / n_ops * 1e6
                overheads = [(run - inside) / n_ops * 1e6 for run, inside in runs]
                results["xdna_boundary_overhead_median_us"] = float(np.median(overheads))
    finally:
        release(compiled.key)
    return results
