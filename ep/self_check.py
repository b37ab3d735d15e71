"""The start-up self-check of a design: the first time a process opens a design on a device, one small
launch is compared with the op's reference.

A design that computes something else on silicon (a wrong stride, a stale buffer, a kernel built for
another tile) would otherwise give fluent wrong transcripts. A mismatch disables the design for the
process: ``NpuExecutor`` raises a ``DeviceError`` whose cause names it, so its nodes run on the CPU,
counted as fallbacks with that cause (and a strict session fails). The same code runs on the simulated
NPU, where ``faults.inject("corrupt_result")`` makes it fail on purpose.
"""

from __future__ import annotations

import numpy as np

from xdna_ep.ep.xrt_backend import XrtDevice
from xdna_ep.kernels.attention import design as attention_design
from xdna_ep.kernels.attention import reference as attention_reference
from xdna_ep.kernels.matmul import design as matmul_design
from xdna_ep.kernels.matmul import reference as matmul_reference
from xdna_ep.kernels.softmax import reference as softmax_reference

# largest |device - reference| accepted, relative to max |reference|: the design-level numerics differ
# from the references by fp32 summation order in the GEMM and softmax (about 1e-6 relative) and by the
# online softmax's bf16 rounding in attention (about 1.5e-3 of the output range, tests/ep/test_design_sim.py);
# a wrong stride or a stale buffer is O(1)
TOLERANCE = {"matmul": 1e-4, "softmax": 1e-4, "attention": 5e-3}


def _launch(device: XrtDevice, spec, shape: tuple[int, ...], inputs: dict[str, np.ndarray]) -> np.ndarray:
    """One launch of ``spec`` at ``shape`` on fresh buffers; returns the output buffer as float32."""
    design = device.design(spec)
    sizes = spec.arg_bytes(*shape)
    buffers = []
    for arg in spec.args:
        buffer = design.buffer(arg.name, sizes[arg.name])
        if arg.direction == "in":
            values = inputs[arg.name]
            buffer.view(values.dtype)[: values.size] = values.reshape(-1)
            buffer.to_device()
        buffers.append(buffer)
    design.launch(_insts_shape(spec, shape), buffers, 0.0)
    out = buffers[-1]
    out.from_device()
    return out.view(np.float32).copy()


def _insts_shape(spec, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape ``Design.launch`` takes for an instruction stream of ``spec`` at the design shape."""
    if spec.kind == "attention":
        return (*shape, spec.head_dim)
    if spec.kind == "softmax":
        return (*shape, spec.cols)
    return shape


def _gemm(device: XrtDevice, spec, rng) -> tuple[np.ndarray, np.ndarray]:
    profile = spec.device_profile
    m, k, n = profile.gemm_m_multiple, spec.k or spec.tile[1], profile.gemm_n_multiple
    x, w, bias = (rng.standard_normal(size).astype(np.float32) for size in ((m, k), (k, n), (n,)))
    tiled = matmul_reference.prepare_weight(w, k, n, spec.tile[2], "bf16")
    params = matmul_reference.prepare_params(bias, "gelu", n, spec.tile[2])
    inputs = {
        "a": matmul_reference.prepare_activations(x, k, "bf16"),
        "b": matmul_design.pack_weight(tiled, params, k, n, spec),
    }
    got = _launch(device, spec, (m, k, n), inputs)[: m * n]
    return got, matmul_reference.matmul_reference(x, w, bias, "gelu").reshape(-1)


def _attention(device: XrtDevice, spec, rng) -> tuple[np.ndarray, np.ndarray]:
    heads, n_q, n_kv, d = 1, spec.q_multiple, spec.kv_multiple, spec.head_dim
    q, k, v = (rng.standard_normal((heads, n, d)).astype(np.float32) for n in (n_q, n_kv, n_kv))
    scale = 1.0 / np.sqrt(d)
    bits = {name: attention_reference.prepare_operand(x, x.shape[1], d, spec.precision) for name, x in
            (("q", q), ("k", k), ("v", v))}  # fmt: skip
    params = attention_reference.prepare_params(scale, n_q, n_kv, False)
    inputs = {"q": attention_design.pack_q(bits["q"], params, spec), "kv": attention_design.pack_kv(bits["k"], bits["v"])}
    got = _launch(device, spec, (heads, n_q, n_kv), inputs)[: heads * n_q * d]
    return got, attention_reference.attention_reference(q, k, v, scale, False, spec.precision).reshape(-1)


def _softmax(device: XrtDevice, spec, rng) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = spec.row_multiple, spec.cols
    x = (4 * rng.standard_normal((rows, cols))).astype(np.float32)
    inputs = {"x": x, "params": softmax_reference.prepare_params(cols)}
    got = _launch(device, spec, (rows,), inputs)[: rows * cols]
    return got, softmax_reference.softmax_reference(x).reshape(-1)


def check_design(device: XrtDevice, spec) -> str:
    """Run ``spec``'s self-check launch on ``device``: "" if it matches the reference, else why not."""
    rng = np.random.default_rng(20260401)
    run = {"matmul": _gemm, "attention": _attention, "softmax": _softmax}[spec.kind]
    got, expected = run(device, spec, rng)
    scale = float(np.abs(expected).max()) or 1.0
    error = float(np.nanmax(np.abs(got - expected))) if np.isfinite(got).all() else float("inf")
    allowed = TOLERANCE[spec.kind] * scale
    if error > allowed:
        return f"its start-up self-check launch differs from the {spec.kind} reference by {error:.3g} (allowed {allowed:.3g})"
    return ""
