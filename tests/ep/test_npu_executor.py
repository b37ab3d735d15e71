"""NpuExecutor on the simulated NPU: results equal the kernels' references, one launch per call,
weights sent once, activations only per call, clear errors on bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from xdna_ep.ep import cost_model, stats
from xdna_ep.ep import simulated_pyxrt as xrt
from xdna_ep.ep.device import NPU1
from xdna_ep.ep.npu_executor import NpuExecutor, NpuOptions
from xdna_ep.kernels.attention.reference import attention_reference
from xdna_ep.kernels.designs import plan_gemms
from xdna_ep.kernels.matmul.reference import matmul_reference
from xdna_ep.kernels.matmul.spec import MatmulSpec
from xdna_ep.kernels.softmax.reference import softmax_reference


@pytest.fixture(params=["bf16", "accurate"])
def executor(request):
    return NpuExecutor(device="sim", profile="npu1", precision=request.param)


def _weights(executor, k, n, seed=0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    executor.add_weight(f"w{k}x{n}", w)
    executor.add_weight(f"b{n}", b)
    return w, b


def test_matmul_equals_the_reference_with_one_launch_and_activations_only(executor):
    w, b = _weights(executor, 70, 45)  # odd sizes: K, N and M all padded
    x = np.random.default_rng(1).standard_normal((2, 37, 70)).astype(np.float32)
    assert executor.statistics.weight_bytes_to_device > 0  # the weight went at add_weight
    constant_bytes = []
    for call in range(2):
        y = executor.matmul("fc", x, "w70x45", "b45", "gelu")
        expected = matmul_reference(x.reshape(-1, 70), w, b, "gelu", executor.precision).reshape(2, 37, 45)
        np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)  # padding reorders fp32 sums only
        constant_bytes.append(executor.statistics.weight_bytes_to_device)  # + bias/activation params, once
    node = executor.stats()["nodes"]["fc"]
    parts = cost_model.GEMM_PARTS[executor.precision]
    assert node["calls"] == 2 and node["launches"] == 2
    assert node["bytes_to_device"] == 2 * 74 * parts * 128 * 2  # real rows x padded K x bf16, per call
    assert node["bytes_from_device"] == 2 * 74 * 128 * 4
    assert constant_bytes[0] == constant_bytes[1]  # nothing constant was sent again


def test_matmul_modelled_time_is_the_cost_model_estimate(executor):
    _weights(executor, 384, 1536)
    x = np.random.default_rng(2).standard_normal((1500, 384)).astype(np.float32)
    executor.matmul("warm", x, "w384x1536", "", "")  # the design is loaded now
    executor.matmul("fc1", x, "w384x1536", "", "")
    node = executor.stats()["nodes"]["fc1"]
    estimate = cost_model.estimate_matmul(NPU1, 1500, 384, 1536, precision=executor.precision)
    assert node["modelled_device_s"] == pytest.approx(estimate.device_s, rel=1e-9)
    assert node["bytes_to_device"] == estimate.bytes_to_device
    assert node["bytes_from_device"] == estimate.bytes_from_device


def test_a_dynamic_k_plan_runs_both_ks_on_one_design_without_switches(executor):
    # an MLP: K = 384 then K = 1536, twice; planned per K ("per_k/") and on the dynamic-K design ("dyn/")
    gemm_plan = plan_gemms(["xdna_matmul_k384_npu1", "xdna_attention_d64_bf16_npu1", "xdna_matmul_k1536_npu1"])
    assert gemm_plan.dynamic_k
    executor.use_gemm_plan(["dyn/fc1", "dyn/fc2"], gemm_plan)  # before the weights, as the registry does
    rng = np.random.default_rng(4)
    w1 = (rng.standard_normal((384, 1536)) / np.sqrt(384)).astype(np.float32)
    w2 = (rng.standard_normal((1536, 384)) / np.sqrt(1536)).astype(np.float32)
    x = rng.standard_normal((256, 384)).astype(np.float32)
    outputs = {}
    for plan_name in ("per_k", "dyn"):
        executor.add_weight(f"{plan_name}/fc1", w1)
        executor.add_weight(f"{plan_name}/fc2", w2)
        for call in range(2):
            h = executor.matmul(f"{plan_name}/fc1/{call}", x, f"{plan_name}/fc1", "", "")
            outputs[plan_name] = executor.matmul(f"{plan_name}/fc2/{call}", h, f"{plan_name}/fc2", "", "")
    np.testing.assert_array_equal(outputs["dyn"], outputs["per_k"])  # same kernel, same numerics
    nodes = executor.stats()["nodes"]
    assert {nodes[f"dyn/{fc}/1"]["design"] for fc in ("fc1", "fc2")} == {"xdna_matmul_kdyn_npu1"}
    assert nodes["per_k/fc1/1"]["design"] != nodes["per_k/fc2/1"]["design"]
    assert nodes["dyn/fc1/1"]["design_switches"] == nodes["dyn/fc2/1"]["design_switches"] == 0
    assert nodes["per_k/fc1/1"]["design_switches"] == nodes["per_k/fc2/1"]["design_switches"] == 1
    # the same launch without its switch, plus the dynamic design's runtime parameters
    expected = nodes["per_k/fc2/1"]["modelled_device_s"] - NPU1.design_switch_s + NPU1.runtime_parameters_s
    assert nodes["dyn/fc2/1"]["modelled_device_s"] == pytest.approx(expected, rel=1e-12)


def test_a_plan_given_after_the_weight_moves_it_to_the_dynamic_design_without_sending_it_again(executor):
    w, _ = _weights(executor, 128, 128)
    weight_bytes = executor.statistics.weight_bytes_to_device
    executor.use_gemm_plan(["w128x128"], plan_gemms(["xdna_matmul_k128_npu1", "xdna_matmul_k256_npu1"]))
    x = np.random.default_rng(5).standard_normal((3, 128)).astype(np.float32)
    y = executor.matmul("late", x, "w128x128", "", "")
    np.testing.assert_allclose(y, matmul_reference(x, w, precision=executor.precision), rtol=1e-6, atol=1e-6)
    assert executor.stats()["nodes"]["late"]["design"] == "xdna_matmul_kdyn_npu1"
    # the weight (and the params objects packed with it, the same in both designs) stayed on the device
    assert executor.statistics.weight_bytes_to_device - weight_bytes == 0


# The simulator runs attention.cc's online softmax: in bf16 it rounds exp(s - running max) to bf16 per
# key tile and rescales later, where the reference rounds exp(s - final max) once. Measured max |sim -
# reference| on these shapes: bf16 4.1e-4 (both are 1.1e-3 from an fp64 result), accurate 1.3e-6.
ONLINE_SOFTMAX_ATOL = {"bf16": 6e-4, "accurate": 2e-6}


@pytest.mark.parametrize(("n_q", "n_kv", "causal"), [(1500, 1500, False), (5, 29, True), (1, 1500, False)])
def test_attention_equals_the_reference_in_one_launch(executor, n_q, n_kv, causal):
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 6, n_q, 64)).astype(np.float32)
    k = rng.standard_normal((1, 6, n_kv, 64)).astype(np.float32)
    v = rng.standard_normal((1, 6, n_kv, 64)).astype(np.float32)
    out = executor.attention("attn", q, k, v, 0.125, causal)
    expected = attention_reference(q, k, v, 0.125, causal, executor.precision)
    np.testing.assert_allclose(out, expected, rtol=0, atol=ONLINE_SOFTMAX_ATOL[executor.precision])
    assert executor.stats()["nodes"]["attn"]["launches"] == 1


def test_attention_splits_heads_only_when_a_launch_could_time_out():
    impatient = dataclasses.replace(NPU1, driver_timeout_s=2e-3)
    with xrt.separate_machine(impatient):
        from xdna_ep.ep.xrt_backend import XrtDevice

        executor = NpuExecutor(device="sim", profile="npu1", precision="bf16")
        executor.device = XrtDevice("sim", impatient)
        executor.profile = impatient
        rng = np.random.default_rng(4)
        q, k, v = (rng.standard_normal((1, 6, 1500, 64)).astype(np.float32) for _ in range(3))
        out = executor.attention("attn", q, k, v, 0.125, False)
    np.testing.assert_allclose(out, attention_reference(q, k, v, 0.125, False, "bf16"), rtol=0, atol=ONLINE_SOFTMAX_ATOL["bf16"])
    launches = executor.stats()["nodes"]["attn"]["launches"]
    assert 1 < launches <= 6


@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_softmax_equals_the_reference(axis):
    executor = NpuExecutor(device="sim", profile="npu1", precision="bf16")
    x = (np.random.default_rng(5).standard_normal((3, 50, 70)) * 5).astype(np.float32)
    np.testing.assert_array_equal(executor.softmax("sm", x, axis), softmax_reference(x, axis))


def test_npu2_profile_pads_n_to_eight_columns():
    with xrt.separate_machine("npu2"):
        from xdna_ep.ep.xrt_backend import XrtDevice

        executor = NpuExecutor(device="sim", profile="npu2", precision="bf16")
        assert executor.profile.name == "npu2"
        executor.device = XrtDevice("sim", "npu2")
        w, _ = _weights(executor, 64, 300)
        x = np.random.default_rng(6).standard_normal((10, 64)).astype(np.float32)
        np.testing.assert_allclose(executor.matmul("mm", x, "w64x300", "", ""), matmul_reference(x, w), rtol=1e-6, atol=1e-6)
        assert executor.stats()["nodes"]["mm"]["bytes_from_device"] == 10 * 512 * 4  # N padded to 2 x 256


def test_bad_input_raises_clear_errors():
    executor = NpuExecutor(device="sim", profile="npu1", precision="bf16")
    _weights(executor, 64, 128)
    with pytest.raises(ValueError, match=r"x has shape \(3, 65\), the weight has 64 rows"):
        executor.matmul("mm", np.zeros((3, 65), np.float32), "w64x128", "", "")
    with pytest.raises(KeyError, match=r"weight 'missing' is not resident"):
        executor.matmul("mm", np.zeros((3, 64), np.float32), "missing", "", "")
    with pytest.raises(ValueError, match=r"x must be a float32 ndarray, got float64"):
        executor.matmul("mm", np.zeros((3, 64)), "w64x128", "", "")
    with pytest.raises(ValueError, match=r"unknown activation 'relu'"):
        executor.matmul("mm", np.zeros((3, 64), np.float32), "w64x128", "", "relu")
    q = np.zeros((1, 2, 8, 64), np.float32)
    with pytest.raises(ValueError, match=r"causal attention with n_q=8 > n_kv=4"):
        executor.attention("attn", q, q[:, :, :4], q[:, :, :4], 1.0, True)
    with pytest.raises(ValueError, match=r"softmax over 5000 columns"):
        executor.softmax("sm", np.zeros((2, 5000), np.float32), -1)
    with pytest.raises(ValueError, match=r"NpuExecutor device 'cpu'"):
        NpuOptions(device="cpu")


def test_stats_snapshot_and_summary_cover_live_executors():
    stats.reset()
    executor = NpuExecutor(device="sim", profile="npu1", precision="bf16")
    _weights(executor, 64, 128)
    executor.matmul("mm", np.ones((4, 64), np.float32), "w64x128", "", "")
    executor.record_fallback("mm", "matmul", "DeviceError")
    data = stats.snapshot()
    assert data["totals"]["launches"] >= 1
    assert data["totals"]["fallback_causes"].get("DeviceError", 0) >= 1
    line = stats.summary(data)
    assert "launches" in line and "modelled device time" in line and "DeviceError x1" in line


def test_since_names_the_executor_that_did_the_work_among_several_live_ones():
    executors = {precision: NpuExecutor(device="sim", precision=precision) for precision in ("bf16", "accurate")}
    for executor in executors.values():
        _weights(executor, 64, 128)
    for worker in ("accurate", "bf16"):
        before = stats.snapshot()
        for _ in range(2):
            executors[worker].matmul("mm", np.ones((4, 64), np.float32), "w64x128", "", "")
        assert stats.since(before)["precision"] == worker  # whichever of the two the snapshot lists first


def test_snapshot_counts_the_fallbacks_the_ops_recorded(monkeypatch):
    from xdna_ep.ep import ops

    monkeypatch.setattr(ops, "fallback_counts", lambda: {("MatMul", "DeviceError"): 2})
    before = stats.snapshot()
    assert before["totals"]["fallback_causes"]["MatMul: DeviceError"] == 2
    assert before["totals"]["fallbacks"] >= 2
    monkeypatch.setattr(ops, "fallback_counts", lambda: {("MatMul", "DeviceError"): 5})
    assert stats.since(before)["totals"]["fallbacks"] == 3


def test_designs_past_the_context_budget_drain_every_context_and_still_compute():
    from xdna_ep.ep.xrt_backend import XrtDevice

    with xrt.separate_machine("npu1"):
        executor = NpuExecutor(device="sim", profile="npu1", precision="bf16")
        executor.device = XrtDevice("sim", "npu1", context_budget=2)
        weights = {k: _weights(executor, k, 128, seed=k)[0] for k in (64, 128, 192)}  # three GEMM designs
        x = {k: np.ones((4, k), np.float32) for k in weights}
        for k, w in weights.items():
            got = executor.matmul(f"mm{k}", x[k], f"w{k}x128", "", "")
            np.testing.assert_allclose(got, matmul_reference(x[k], w), rtol=1e-6, atol=1e-6)  # fp32 sum order
        counters = executor.device.stats.as_dict()
        assert counters["context_evictions"] >= 2  # the third design drained both open contexts
        assert len(executor.device.designs) <= 2
