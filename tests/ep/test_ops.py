"""The xdna custom ops: outputs cross as ndarrays (never lists), op bodies never raise (CPU fallback,
counted, warned once), and strict sessions turn a fallback into an error."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from xdna_ep.ep import ops
from xdna_ep.ep.executor import ReferenceExecutor
from xdna_ep.ep.registry import register, release
from xdna_ep.errors import FallbackError
from xdna_ep.graph_passes import xdna_ops

K, N = 8, 6


@pytest.fixture()
def linear_model():
    rng = np.random.default_rng(7)
    weights = {"W": rng.standard_normal((K, N)).astype(np.float32), "b": rng.standard_normal(N).astype(np.float32)}
    compiled = register(weights, device="cpu", profile="npu1", precision="bf16")
    yield compiled
    release(compiled.key)


def matmul_attributes(model_key: str) -> dict[str, str]:
    """Attributes as onnxruntime-extensions hands them to Python: every value a string."""
    return {"model_key": model_key, "node": "mm", "weight_key": "W", "bias_key": "b", "activation": "", "k": str(K), "n": str(N)}


def op_id(op_type: str) -> int:
    return next(key for key, node_type in ops._NODE_TYPE_BY_ID.items() if node_type.op_type == op_type)


def test_the_output_crosses_as_the_array_itself_not_a_list(linear_model):
    x = np.random.default_rng(8).standard_normal((3, K)).astype(np.float32)
    returned_id, shape, output = ops._invoke(op_id(xdna_ops.MATMUL), [x], matmul_attributes(linear_model.key))
    assert returned_id == op_id(xdna_ops.MATMUL)
    assert isinstance(output, np.ndarray) and output.dtype == np.float32 and output.flags.c_contiguous
    assert shape == (3, N)
    np.testing.assert_allclose(output, x @ linear_model.weights["W"] + linear_model.weights["b"], rtol=1e-6, atol=1e-6)


class DeviceLost(RuntimeError):
    """Raised only by this file's failing executor, so its warning is this file's to count."""


class FailingExecutor(ReferenceExecutor):
    name = "failing"

    def matmul(self, node, x, weight_key, bias_key, activation):
        raise DeviceLost("device lost")


def test_a_failing_executor_falls_back_to_the_reference_counted_and_warned_once(linear_model, caplog):
    linear_model.use_executor(FailingExecutor())
    x = np.ones((2, K), np.float32)
    before = dict(ops.fallback_counts())
    with caplog.at_level(logging.WARNING, logger="xdna_ep.ep.ops"):
        outputs = [ops._invoke(op_id(xdna_ops.MATMUL), [x], matmul_attributes(linear_model.key))[2] for _ in range(3)]
    for output in outputs:
        np.testing.assert_allclose(output, x @ linear_model.weights["W"] + linear_model.weights["b"], rtol=1e-6, atol=1e-6)
    assert linear_model.fallbacks == 3
    key = (xdna_ops.MATMUL, "DeviceLost")
    assert ops.fallback_counts()[key] - before.get(key, 0) == 3
    warnings = [r for r in caplog.records if "fell back to the CPU" in r.getMessage()]
    assert len(warnings) == 1 and "device lost" in warnings[0].getMessage()  # once per cause


def test_an_unknown_model_key_returns_a_placeholder_and_records_the_failure_not_a_crash():
    x = np.ones((4, K), np.float32)
    with ops.collect_fallbacks() as fallbacks:
        _, shape, _ = ops._invoke(op_id(xdna_ops.MATMUL), [x], matmul_attributes("not-compiled-here"))
    assert shape == (4, N)  # the op must return the right shape; run() raises on the recorded failure
    failed = ops.failures(fallbacks)
    assert len(failed) == 1 and "not compiled in this process" in failed[0].message


def test_a_wrong_input_width_is_recorded_as_not_computed_and_never_raises_inside_the_op(linear_model):
    x = np.ones((2, K + 1), np.float32)  # the reference cannot compute it either
    with ops.collect_fallbacks() as fallbacks:
        _, shape, _ = ops._invoke(op_id(xdna_ops.MATMUL), [x], matmul_attributes(linear_model.key))
    assert shape == (2, N)
    assert [f.recomputed for f in fallbacks] == [True, False]  # the device attempt, then the CPU's
    assert "the weight has 8 rows" in ops.failures(fallbacks)[0].message


def test_an_op_that_computes_nowhere_makes_run_raise_after_the_op_returns(monkeypatch):
    from real_sessions import model_folder

    import xdna_ep
    from xdna_ep.ep import session as session_module
    from xdna_ep.ep.registry import CompiledModel
    from xdna_ep.errors import ComputeError

    folder = model_folder("tiny.en")
    monkeypatch.setattr(session_module, "make_executor", lambda device, profile, precision: FailingExecutor())
    monkeypatch.setattr(CompiledModel, "reference", lambda self: FailingExecutor())
    session = xdna_ep.InferenceSession(folder / "decoder_with_past_model.onnx", device="sim", placement="npu")
    feeds = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.int64 if "ids" in i.name else np.float32) for i in session.get_inputs()}
    with pytest.raises(ComputeError, match="neither on the sim nor on the CPU.*device lost"):
        session.run(None, feeds)


def _softmax_session(model_key: str) -> ort.InferenceSession:
    node = xdna_ops.make_softmax("x", "y", "sm", axis=-1)
    xdna_ops.set_string_attribute(node, "model_key", model_key)
    graph = helper.make_graph(
        [node], "sm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(xdna_ops.DOMAIN, 1)])
    model.ir_version = 10
    options = ort.SessionOptions()
    options.register_custom_ops_library(ops.library_path())
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_ops_run_inside_onnx_runtime(linear_model):
    x = np.array([[1, 2, 3, 4, 5], [0, 0, 0, 0, 0]], np.float32)
    y = _softmax_session(linear_model.key).run(None, {"x": x})[0]
    expected = np.exp(x - x.max(1, keepdims=True))
    np.testing.assert_allclose(y, expected / expected.sum(1, keepdims=True), rtol=1e-6, atol=1e-7)


def test_strict_session_raises_on_a_fallback(monkeypatch):
    from real_sessions import model_folder

    import xdna_ep
    from xdna_ep.ep import session as session_module

    folder = model_folder("tiny.en")
    monkeypatch.setattr(session_module, "make_executor", lambda device, profile, precision: FailingExecutor())
    strict = xdna_ep.InferenceSession(folder / "decoder_with_past_model.onnx", device="sim", placement="npu", strict=True)
    feeds = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.int64 if "ids" in i.name else np.float32) for i in strict.get_inputs()}
    with pytest.raises(FallbackError, match="recomputed on the CPU"):
        strict.run(None, feeds)
    lenient = xdna_ep.InferenceSession(folder / "decoder_with_past_model.onnx", device="sim", placement="npu")
    assert np.isfinite(lenient.run(None, feeds)[0]).all()
    assert lenient.compiled.fallbacks > 0


def test_the_private_hook_api_of_onnxruntime_extensions_is_the_one_the_ops_were_built_on():
    """What ops.py relies on, pinned: the stock hook takes (op id, inputs, attributes) and returns
    (op id, shape, flat list); our hook is the one installed; every xdna op definition has an int _id."""
    import onnxruntime_extensions
    from onnxruntime_extensions import _ocos

    assert onnxruntime_extensions.__version__ == ops.TESTED_EXTENSIONS_VERSION
    assert ops._stock_invocation is _ocos._on_pyop_invocation
    assert sorted(node_type.op_type for node_type in ops._NODE_TYPE_BY_ID.values()) == sorted(xdna_ops.OP_TYPES)
    assert all(isinstance(op_id, int) for op_id in ops._NODE_TYPE_BY_ID)
    with pytest.raises(RuntimeError, match="Unable to find function id=-1"):
        ops._stock_invocation(-1, [], {})  # an id nobody defined: the stock hook's own error


def test_an_extensions_release_without_the_hook_api_is_refused_with_the_version_to_install():
    class Extensions:
        __version__ = "9.9.9"

        class PyCustomOpDef:
            pass

    class Ocos:
        pass

    with pytest.raises(ImportError, match=r"9\.9\.9 lacks _ocos._on_pyop_invocation, PyCustomOpDef.install_hooker.*==0\.15\.2"):
        ops.check_extension_hooks(Extensions, Ocos)


def test_measure_op_overhead_reports_the_boundary_cost():
    result = ops.measure_op_overhead(n_ops=4, repeats=3)
    assert {"xdna_node_us", "xdna_executor_us", "ort_node_us", "xdna_boundary_overhead_us"} <= set(result)
    assert result["xdna_node_us"] > 0 and result["ort_node_us"] > 0
