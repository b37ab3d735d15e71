"""The simulated NPU executes the design's dataflow: real small shapes equal the op reference (the
oracle), and perturbing one access pattern or reordering of any design changes the result."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from xdna_ep.ep import design_sim
from xdna_ep.kernels.attention import design as attention_design
from xdna_ep.kernels.attention import reference as attention_reference
from xdna_ep.kernels.attention import tile as attention_tile
from xdna_ep.kernels.attention.spec import AttentionSpec
from xdna_ep.kernels.dataflow import AccessPattern
from xdna_ep.kernels.designs import describe
from xdna_ep.kernels.matmul import design as matmul_design
from xdna_ep.kernels.matmul import reference as matmul_reference
from xdna_ep.kernels.matmul import tile as matmul_tile
from xdna_ep.kernels.matmul.spec import MatmulSpec
from xdna_ep.kernels.softmax import reference as softmax_reference
from xdna_ep.kernels.softmax import tile as softmax_tile
from xdna_ep.kernels.softmax.spec import SoftmaxSpec


class Case:
    """One design at a small shape: its dataflow, host buffers, core model and oracle output."""

    def __init__(self, flow, host, spec, model, expected, atol, select=lambda out: out):
        self.flow, self.host, self.spec, self.model, self.atol = flow, host, spec, model, atol
        self.expected, self.select = expected, select  # select: the part of the output the oracle defines

    def run(self, flow=None) -> np.ndarray:
        flow = flow or self.flow
        out_name = next(arg.name for arg in flow.args if arg.direction == "out")
        out = design_sim.run(flow, self.host, lambda f, s: self.model.run_cores(f, s, self.spec))[out_name]
        return self.select(out)

    def with_transfer(self, fifo: str, change, index: int = 0):
        """The flow with the ``index``-th transfer of ``fifo`` replaced by ``change(transfer)``."""
        chosen = [t for t in self.flow.transfers if t.fifo == fifo][index]
        transfers = tuple(change(t) if t is chosen else t for t in self.flow.transfers)
        return dataclasses.replace(self.flow, transfers=transfers)

    def with_dims(self, fifo: str, dims: AccessPattern):
        fifos = tuple(dataclasses.replace(f, dims=dims) if f.name == fifo else f for f in self.flow.fifos)
        return dataclasses.replace(self.flow, fifos=fifos)


def gemm(profile: str = "npu1", activation: str = "gelu", n: int | None = None) -> Case:
    spec = MatmulSpec(k=None, profile=profile)
    m, k = 256, 128
    n = n or (256 if profile == "npu1" else 512)  # two column blocks per column on npu1
    rng = np.random.default_rng(0)
    x, w, bias = (rng.standard_normal(shape).astype(np.float32) for shape in ((m, k), (k, n), (n,)))
    tiled = matmul_reference.prepare_weight(w, k, n, spec.tile[2], "bf16")
    params = matmul_reference.prepare_params(bias, activation, n, spec.tile[2])
    host = {
        "a": matmul_reference.prepare_activations(x, k, "bf16").reshape(-1),
        "b": matmul_design.pack_weight(tiled, params, k, n, spec),
        "c": np.zeros(m * n, np.float32),
    }
    expected = matmul_reference.matmul_reference(x, w, bias, activation).reshape(-1)
    # K tiles accumulated one after the other in fp32 vs all of K at once: measured <= 7.6e-6
    return Case(describe(spec, (m, k, n)), host, spec, matmul_tile, expected, atol=1.5e-5)


def attention(precision: str = "bf16", causal: bool = False) -> Case:
    spec = AttentionSpec(head_dim=64, precision=precision)
    heads, n_q, n_kv = 2, 512, 64
    true_q, true_kv = (40, 60) if causal else (512, 50)  # causal as the decoder: the last n_q of n_kv positions
    rng = np.random.default_rng(1)
    q = rng.standard_normal((heads, true_q, 64)).astype(np.float32)
    k, v = (rng.standard_normal((heads, true_kv, 64)).astype(np.float32) for _ in range(2))
    params = attention_reference.prepare_params(0.125, true_q, true_kv, causal)
    bits = {name: attention_reference.prepare_operand(x, n, 64, precision) for name, x, n in
            (("q", q, n_q), ("k", k, n_kv), ("v", v, n_kv))}  # fmt: skip
    host = {
        "q": attention_design.pack_q(bits["q"], params, spec),
        "kv": attention_design.pack_kv(bits["k"], bits["v"]),
        "o": np.zeros(heads * n_q * 64, np.float32),
    }
    expected = attention_reference.attention_reference(q, k, v, 0.125, causal, precision)
    # the kernel's online softmax rounds exp(s - running max) to bf16 per key tile, the reference
    # exp(s - final max): measured max |difference| 1.5e-3 with 50 keys in bf16 (probabilities ~1/50),
    # 2.9e-6 in accurate (60 keys)
    atol = {"bf16": 2e-3, "accurate": 4e-6}[precision]
    flow = describe(spec, (heads, n_q, n_kv))
    return Case(flow, host, spec, attention_tile, expected, atol, lambda out: out.reshape(heads, n_q, 64)[:, :true_q])


def softmax() -> Case:
    spec = SoftmaxSpec(cols=64)
    rows, cols = 32, 50
    x = np.random.default_rng(2).standard_normal((rows, 64)).astype(np.float32) * 4
    params = softmax_reference.prepare_params(cols)
    expected = np.zeros((rows, 64), np.float32)
    expected[:, :cols] = softmax_reference.softmax_reference(x[:, :cols])
    host = {"x": x.reshape(-1), "params": params, "y": np.zeros(rows * 64, np.float32)}
    return Case(describe(spec, (rows,)), host, spec, softmax_tile, expected.reshape(-1), atol=0)


CASES = {
    "gemm npu1": gemm,
    "gemm npu2": lambda: gemm("npu2", ""),
    # 65 column blocks per column: A's repeat (at most 64 per BD) takes two transfers per row block
    "gemm wide N": lambda: gemm("npu1", "", n=65 * 4 * 32),
    "attention bf16": attention,
    "attention accurate causal": lambda: attention("accurate", causal=True),
    "softmax": softmax,
}


@pytest.mark.parametrize("name", CASES)
def test_the_design_computes_what_the_reference_computes(name):
    case = CASES[name]()
    if name == "gemm wide N":
        assert [t.pattern.sizes[0] for t in case.flow.transfers if t.fifo == "A_0"] == [64, 1]
    np.testing.assert_allclose(case.run(), case.expected, rtol=0, atol=case.atol)


def differs(case: Case, flow) -> bool:
    """The perturbed design's output is not the oracle's, or the launch would hang (an error)."""
    try:
        out = case.run(flow)
    except RuntimeError:
        return True
    return not np.allclose(out, case.expected, rtol=0, atol=10 * case.atol + 1e-6)


def swap_inner(t):
    sizes, strides = list(t.pattern.sizes), list(t.pattern.strides)
    sizes[-2], sizes[-1], strides[-2], strides[-1] = sizes[-1], sizes[-2], strides[-1], strides[-2]
    return dataclasses.replace(t, pattern=AccessPattern(t.pattern.offset, tuple(sizes), tuple(strides)))


def shift(elements):
    return lambda t: dataclasses.replace(t, pattern=dataclasses.replace(t.pattern, offset=t.pattern.offset + elements))


def stride(dim, value):
    def change(t):
        strides = list(t.pattern.strides)
        strides[dim] = value
        return dataclasses.replace(t, pattern=dataclasses.replace(t.pattern, strides=tuple(strides)))

    return change


def skip_tile(t):
    """One fewer repetition of the outermost stepping dimension: the last tile is never moved."""
    sizes = list(t.pattern.sizes)
    dim = next(i for i, size in enumerate(sizes) if size > 1)
    sizes[dim] -= 1
    return dataclasses.replace(t, pattern=dataclasses.replace(t.pattern, sizes=tuple(sizes)))


MUTATIONS = {
    "gemm: A rows read with the K tile's stride swapped (k for K)": ("gemm npu1", lambda c: c.with_transfer("A_0", stride(2, 64))),
    "gemm: B column blocks read one column block apart": ("gemm npu1", lambda c: c.with_transfer("B_1", stride(1, 6144))),
    # npu1's B tile (k, n) = (64, 32) in s x t = 8 x 4 blocks, re-blocked as 4 x 8 instead
    "gemm: B re-blocked with s and t swapped": ("gemm npu1", lambda c: c.with_dims(
        "B_L1_0", AccessPattern(0, (16, 4, 4, 8), (128, 8, 32, 1)))),
    "gemm: C drained with the column-block stride of one column": ("gemm npu1", lambda c: c.with_transfer("C_2", stride(1, 32))),
    "gemm: a C tile skipped": ("gemm npu1", lambda c: c.with_transfer("C_3", skip_tile)),
    "attention: query tiles of the wrong core": ("attention bf16", lambda c: c.with_transfer("Q_1", shift(4096), index=1)),
    "attention: key/value stream from the other head": ("attention bf16", lambda c: c.with_transfer("KV_0", shift(8192))),
    "attention: output chunks drained transposed": ("attention accurate causal", lambda c: c.with_transfer("O_0", swap_inner)),
    "softmax: rows one element off": ("softmax", lambda c: c.with_transfer("X_1", shift(2))),
    "softmax: a row skipped": ("softmax", lambda c: c.with_transfer("Y_0", lambda t: dataclasses.replace(
        t, pattern=AccessPattern(t.pattern.offset, (1, 1, 1, t.pattern.length - 64), (0, 0, 0, 1))))),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_a_perturbed_access_pattern_changes_the_result(mutation):
    name, mutate = MUTATIONS[mutation]
    case = CASES[name]()
    assert differs(case, mutate(case))


def test_a_launch_never_calls_the_op_reference(monkeypatch):
    from xdna_ep.ep.npu_executor import NpuExecutor

    executor = NpuExecutor("sim", "npu1", "bf16")
    w = np.ones((64, 64), np.float32)
    executor.add_weight("w", w)
    executor.matmul("n", np.ones((3, 64), np.float32), "w", "", "")  # opens the design: its self-check uses the oracle
    for module in (matmul_reference, attention_reference, softmax_reference):
        monkeypatch.setattr(module, "run_on_device", lambda *a, **k: pytest.fail("the simulator called the reference"))
    y = executor.matmul("n", np.ones((3, 64), np.float32), "w", "", "")
    np.testing.assert_array_equal(y, np.full((3, 64), 64.0, np.float32))  # exact: sums of ones


def test_a_design_whose_start_up_check_fails_is_disabled_and_its_nodes_fall_back(caplog):
    from xdna_ep.ep import faults
    from xdna_ep.ep import simulated_pyxrt as xrt
    from xdna_ep.ep.npu_executor import NpuExecutor
    from xdna_ep.errors import DeviceError

    with xrt.separate_machine("npu1"):
        from xdna_ep.ep.xrt_backend import XrtDevice

        executor = NpuExecutor("sim", "npu1", "bf16")
        executor.device = XrtDevice("sim", "npu1")  # a device of its own: nothing checked yet
        x = np.random.default_rng(6).standard_normal((4, 40)).astype(np.float32)
        with faults.inject("corrupt_result", times=1) as fault:  # only the self-check launch is corrupted
            with pytest.raises(DeviceError, match=r"xdna_softmax_c48_npu1 is disabled: its start-up self-check launch "
                                                  r"differs from the softmax reference") as raised:
                executor.softmax("s", x, -1)
        assert fault.fired == 1
        assert raised.value.cause == "self-check failed: xdna_softmax_c48_npu1"
        assert "NPU design xdna_softmax_c48_npu1 disabled" in caplog.text
        with pytest.raises(DeviceError, match="is disabled"):  # stays disabled, without a new check
            executor.softmax("s", x, -1)
        assert executor.device.stats.launches == 1
        # a design that passes its check runs as before
        y = executor.softmax("s", x[:, :20], -1)
        np.testing.assert_allclose(y, softmax_reference.softmax_reference(x[:, :20]), rtol=0, atol=1e-6)
