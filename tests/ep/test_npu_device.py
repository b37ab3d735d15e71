"""The real NPU through XRT's pyxrt: each kernel against its reference (``requires_npu``), and the
binding choice where there is no NPU."""

from __future__ import annotations

import numpy as np
import pytest

from xdna_ep.ep.xrt_backend import load_binding, npu_status
from xdna_ep.errors import DeviceError

NPU_USABLE, NPU_REASON = npu_status()
requires_npu = pytest.mark.skipif(not NPU_USABLE, reason=f"no usable NPU: {NPU_REASON}")


def test_the_simulated_binding_is_the_simulator_and_a_missing_npu_is_named():
    sim = load_binding("sim")
    assert sim.SIMULATED and hasattr(sim, "device") and hasattr(sim, "ert_cmd_state")
    if not NPU_USABLE:
        with pytest.raises(DeviceError, match=r"device npu: no usable NPU: "):
            load_binding("npu")
    with pytest.raises(ValueError, match=r"unknown NPU backend 'gpu'"):
        load_binding("gpu")


@pytest.fixture(scope="module")
def npu_executor():
    from xdna_ep.ep.npu_executor import NpuExecutor

    return NpuExecutor(device="npu", profile="npu1", precision="bf16")


@pytest.mark.requires_npu
@requires_npu
def test_gemm_on_the_npu_equals_its_reference(npu_executor):
    from xdna_ep.kernels.matmul.reference import matmul_reference

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((384, 1536)) / np.sqrt(384)).astype(np.float32)
    b = rng.standard_normal(1536).astype(np.float32)
    npu_executor.add_weight("w", w)
    npu_executor.add_weight("b", b)
    x = rng.standard_normal((1500, 384)).astype(np.float32)
    got = npu_executor.matmul("fc1", x, "w", "b", "gelu")
    # the array sums K in another order than NumPy: fp32 rounding differences only
    np.testing.assert_allclose(got, matmul_reference(x, w, b, "gelu"), rtol=1e-4, atol=1e-4)


@pytest.mark.requires_npu
@requires_npu
def test_attention_on_the_npu_equals_its_reference(npu_executor):
    from xdna_ep.kernels.attention.reference import attention_reference

    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 6, 1500, 64)).astype(np.float32) for _ in range(3))
    got = npu_executor.attention("attn", q, k, v, 0.125, False)
    np.testing.assert_allclose(got, attention_reference(q, k, v, 0.125, False), rtol=1e-3, atol=1e-4)


@pytest.mark.requires_npu
@requires_npu
def test_softmax_on_the_npu_equals_its_reference(npu_executor):
    from xdna_ep.kernels.softmax.reference import softmax_reference

    x = (np.random.default_rng(2).standard_normal((6, 1500, 1500)) * 8).astype(np.float32)
    np.testing.assert_allclose(npu_executor.softmax("sm", x, -1), softmax_reference(x), rtol=1e-5, atol=1e-7)
