"""Time model of one fused node on the NPU and on the CPU: the partitioner decides with it; the simulated
NPU times each launch by the same walk over the design (one source of truth).

NPU time of one launch = host overhead (custom-op call, fp32 -> bf16 conversion of the activations,
copies) + launch (kernel() + wait() from Python) + transfers (activations in, results out; weights are
resident and never counted per call) + compute on the array, for the shape padded to the design's
bucket (whole-array GEMM: M to rows * m, K to k, N to columns * n).

Compute on the array is bottom-up (``kernels/timing.py``): each kernel's cycles per tile, counted from
its inner loops (``kernels/<op>/cycles.py``: matrix-unit issues, vector ALU operations, load and store
issues, loop fills), summed by the timing walk over the design's dataflow description at the padded
shape (``kernels/timing.py`` ``flow_time``, the walk the simulator runs over the description each launch
executes), each step bounded by its busiest shim channel;
the accurate precision runs the same GEMM design with 3 x K. One parameter, the array clock, is fitted
on one published GEMM and the model is checked on held-out measurements (``ep/calibration.py``,
``xdna-ep bench --calibration``).

The dynamic-K GEMM design (K in the instruction stream, ``kernels/matmul/spec.py``) adds its runtime
parameters to every launch (``DeviceProfile.runtime_parameters_s``). Design switches are not part of a
node's estimate: they depend on the order of a whole pass, which ``kernels/designs.py`` plans.

Attention (one fused kernel, query rows spread over all cores, keys streamed in tiles with online
softmax in fp32) and softmax are modelled the same way from ``attention.cc`` and ``softmax.cc``.

CPU time is ONNX Runtime's CPU EP on the 2-core x86 machines of this project, measured here with
``intra_op_num_threads=2`` (script in ``ep/cost_model.py``'s test): MatMul 58-110 GFLOPS for M >= 16,
weight-bandwidth-bound for single rows (1x384x384 in about 5 us of node time, 13 us through
``session.run``), Softmax 0.49 ns per element, elementwise ops 0.2 ns per element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xdna_ep.ep.device import DeviceProfile, get_profile
from xdna_ep.kernels.attention import cycles as attention_cycles
from xdna_ep.kernels.matmul import cycles as matmul_cycles
from xdna_ep.kernels.softmax import cycles as softmax_cycles
from xdna_ep.kernels.timing import FP32_MUL_ISSUES

PRECISIONS = ("bf16", "accurate")

# bf16 products per MAC: bf16 = a*b; accurate = a_hi*b_hi + a_hi*b_lo + a_lo*b_hi (hi + lo split)
PRODUCTS = {"bf16": 1, "accurate": 3}

# bf16 copies of the GEMM activations: bf16 [a]; accurate [a_hi | a_hi | a_lo] against [b_hi; b_lo; b_hi]
# (the same whole-array design with 3 x K, so accurate needs no kernel of its own)
GEMM_PARTS = {"bf16": 1, "accurate": 3}

# bf16 copies of each of q, k, v: bf16 one; accurate hi and lo (the kernel forms the three products)
ATTENTION_PARTS = {"bf16": 1, "accurate": 2}

BF16_BYTES = 2
FP32_BYTES = 4

# attention kernel tiling (kernels/attention/spec.py uses the same figures)
ATTENTION_Q_ROWS_PER_CORE = 32  # query rows per core per step: n_q pads to cores * this
ATTENTION_KV_TILE = 32  # keys per streamed tile: n_kv pads to this (64 would not fit a core's 64 KB)
ATTENTION_HEAD_DIM_MULTIPLE = 8  # head_dim pads to the bf16 intrinsic's reduction size

# softmax kernel tiling: rows spread over all cores, columns in vectors of 16 fp32 lanes
SOFTMAX_COL_MULTIPLE = 16

# a launch must stay well inside the driver's 2-s job timeout: plan launches under half of it
LAUNCH_BUDGET_FRACTION = 0.5


@dataclass(frozen=True)
class HostCosts:
    """Host-side costs of the NPU path on the Python custom-op boundary (this machine)."""

    custom_op_call_s: float = 4e-6  # design.md: 3-5 us fixed per onnxruntime-extensions op call
    bf16_convert_s_per_element: float = 0.46e-9  # measured here: fp32 -> bf16 round-to-nearest-even, NumPy
    copy_s_per_element: float = 0.085e-9  # measured here: np.copyto of fp32, 1500 x 384


@dataclass(frozen=True)
class CpuProfile:
    """ONNX Runtime CPU EP on a 2-core x86 machine, measured here (intra_op_num_threads=2)."""

    name: str = "cpu-2core"
    node_s: float = 5e-6  # fixed per MatMul node: 1x384x384 costs about 10 us in all (design.md)
    gemm_flops_per_s: float = 75e9  # measured: 58-97 GFLOPS at M=1500, 96-110 at M=16..256
    weight_bytes_per_s: float = 100e9  # measured: 1x384x1536 in about 15 us of node time (cache)
    softmax_s_per_element: float = 0.49e-9  # measured: Softmax [1,6,1500,1500] in 6.6 ms
    elementwise_s_per_element: float = 0.2e-9  # measured: Relu [1,6,1500,1500] in 2.7 ms


HOST = HostCosts()
CPU = CpuProfile()


@dataclass(frozen=True)
class Estimate:
    """Modelled cost of one call of a fused node on the NPU and on the CPU (seconds, bytes, FLOPs).

    npu_s is everything the NPU path costs the caller: host_s + launch_s + transfer_s + compute_s.
    device_s (launch + transfer + compute) is what the simulated NPU reports as modelled device time.
    """

    npu_s: float
    cpu_s: float
    launches: int
    bytes_to_device: int
    bytes_from_device: int
    flops: int  # useful FLOPs of the unpadded shape
    padded_flops: int  # FLOPs the array executes (padded shape, all products)
    host_s: float
    launch_s: float
    transfer_s: float
    compute_s: float
    design: str  # the compiled design this call needs (one xclbin per design)

    @property
    def device_s(self) -> float:
        return self.launch_s + self.transfer_s + self.compute_s

    @property
    def placement(self) -> str:
        """"npu" when the NPU path is cheaper, else "cpu"."""
        return "npu" if self.npu_s < self.cpu_s else "cpu"

    @property
    def reason(self) -> str:
        """Why the placement won, in one line with both times."""
        winner, loser = ("NPU", "CPU") if self.placement == "npu" else ("CPU", "NPU")
        fast, slow = sorted((self.npu_s, self.cpu_s))
        return (
            f"{winner} {fast * 1e6:.0f} us < {loser} {slow * 1e6:.0f} us "
            f"(npu: launch {self.launch_s * 1e6:.0f} + transfer {self.transfer_s * 1e6:.0f} "
            f"+ compute {self.compute_s * 1e6:.0f} + host {self.host_s * 1e6:.0f} us)"
        )


def _design_name(kind: str, profile: DeviceProfile, **params) -> str:
    """The xclbin design a call needs, named by its kernel spec (imported late: the specs import this module)."""
    if kind == "matmul":
        from xdna_ep.kernels.matmul.spec import MatmulSpec

        return MatmulSpec(profile=profile.name, **params).name
    if kind == "attention":
        from xdna_ep.kernels.attention.spec import AttentionSpec

        return AttentionSpec(profile=profile.name, **params).name
    from xdna_ep.kernels.softmax.spec import SoftmaxSpec

    return SoftmaxSpec(profile=profile.name, **params).name


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: valid precisions are {', '.join(PRECISIONS)}")
    return precision


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= value (and >= multiple)."""
    return max(multiple, -(-value // multiple) * multiple)


def padded_gemm_shape(profile: DeviceProfile, m: int, k: int, n: int) -> tuple[int, int, int]:
    """(M, K, N) padded to the whole-array design's bucket: M to rows*m, K to k, N to columns*n."""
    return (
        round_up(m, profile.gemm_m_multiple),
        round_up(k, profile.gemm_k_multiple),
        round_up(n, profile.gemm_n_multiple),
    )


def gemm_compute_s(
    profile: DeviceProfile, m: int, k: int, n: int, *, dynamic_k: bool = False, gelu: bool = False,
    fp32_mul_issues: int = FP32_MUL_ISSUES[0],
) -> float:  # fmt: skip
    """Array time of one whole-array GEMM of an already padded (M, K, N), bottom-up
    (``kernels/matmul/cycles.py``).

    ``dynamic_k``: the dynamic-K design (K in the instruction stream), whose cores first wait for their
    runtime parameters; its per-tile kernel and data movement are the static design's.
    """
    seconds = matmul_cycles.design_time(profile, m, k, n, gelu=gelu, fp32_mul_issues=fp32_mul_issues).seconds
    return seconds + (profile.runtime_parameters_s if dynamic_k else 0.0)


def attention_compute_s(
    profile: DeviceProfile, heads: int, n_q: int, n_kv: int, head_dim: int, parts: int,
    fp32_mul_issues: int = FP32_MUL_ISSUES[0],
) -> float:  # fmt: skip
    """Array time of one fused attention launch of already padded shapes (parts: 1 bf16, 2 accurate),
    bottom-up (``kernels/attention/cycles.py``)."""
    return attention_cycles.design_time(
        profile, heads, n_q, n_kv, head_dim, parts, q_rows=ATTENTION_Q_ROWS_PER_CORE, kv_tile=ATTENTION_KV_TILE,
        fp32_mul_issues=fp32_mul_issues,
    ).seconds  # fmt: skip


def softmax_compute_s(profile: DeviceProfile, rows: int, cols: int, fp32_mul_issues: int = FP32_MUL_ISSUES[0]) -> float:
    """Array time of one softmax launch of an already padded (rows, cols) fp32 matrix, bottom-up
    (``kernels/softmax/cycles.py``)."""
    return softmax_cycles.design_time(profile, rows, cols, fp32_mul_issues).seconds


def transfer_s(profile: DeviceProfile, nbytes: int) -> float:
    """Buffer sync time of ``nbytes`` host <-> device."""
    return nbytes / profile.host_device_bytes_per_s


def launches_for(profile: DeviceProfile, compute_s: float) -> int:
    """Launches needed so that none runs longer than half the driver's job timeout."""
    return max(1, math.ceil(compute_s / (profile.driver_timeout_s * LAUNCH_BUDGET_FRACTION)))


def cpu_matmul_s(m: int, k: int, n: int, *, bias: bool = False, gelu: bool = False, cpu: CpuProfile = CPU) -> float:
    """ONNX Runtime CPU time of x[m,k] @ W[k,n] (+ bias) (+ erf GELU: 5 elementwise nodes)."""
    flops = 2.0 * m * k * n
    weight_bytes = FP32_BYTES * k * n
    seconds = cpu.node_s + max(flops / cpu.gemm_flops_per_s, weight_bytes / cpu.weight_bytes_per_s)
    elementwise_nodes = (1 if bias else 0) + (5 if gelu else 0)
    seconds += elementwise_nodes * (cpu.node_s / 5 + m * n * cpu.elementwise_s_per_element)
    return seconds


def estimate_matmul(
    profile: DeviceProfile | str,
    m: int,
    k: int,
    n: int,
    *,
    precision: str = "bf16",
    bias: bool = False,
    gelu: bool = False,
    host: HostCosts = HOST,
    cpu: CpuProfile = CPU,
) -> Estimate:
    """Cost of y[m, n] = act(x[m, k] @ W[k, n] + b) with W resident on the device.

    One launch of a whole-array GEMM design. The estimate names the per-K design; the design-set
    planner (``kernels/designs.py``) may move the session's GEMMs to the dynamic-K design.
    """
    profile = get_profile(profile)
    parts = GEMM_PARTS[check_precision(precision)]
    mp, kp, np_ = padded_gemm_shape(profile, m, k, n)
    compute = gemm_compute_s(profile, mp, parts * kp, np_, gelu=gelu)
    launches = launches_for(profile, compute)
    to_device = m * parts * kp * BF16_BYTES  # the real rows only: padding rows are never synced
    from_device = m * np_ * FP32_BYTES
    transfer = transfer_s(profile, to_device + from_device)
    # host: call, convert x (and its lo part), copy x in, copy y out (unpadded part)
    host_s = (
        host.custom_op_call_s
        + parts * m * k * host.bf16_convert_s_per_element
        + (m * k + m * n) * host.copy_s_per_element
    )
    launch = launches * profile.launch_s
    return Estimate(
        npu_s=host_s + launch + transfer + compute,
        cpu_s=cpu_matmul_s(m, k, n, bias=bias, gelu=gelu, cpu=cpu),
        launches=launches,
        bytes_to_device=to_device,
        bytes_from_device=from_device,
        flops=2 * m * k * n,
        padded_flops=2 * mp * parts * kp * np_,
        host_s=host_s,
        launch_s=launch,
        transfer_s=transfer,
        compute_s=compute,
        design=_design_name("matmul", profile, k=parts * kp),
    )


def padded_attention_shape(
    profile: DeviceProfile, n_q: int, n_kv: int, head_dim: int
) -> tuple[int, int, int]:
    """(n_q, n_kv, head_dim) padded to the attention design's bucket."""
    return (
        round_up(n_q, profile.cores * ATTENTION_Q_ROWS_PER_CORE),
        round_up(n_kv, ATTENTION_KV_TILE),
        round_up(head_dim, ATTENTION_HEAD_DIM_MULTIPLE),
    )


def estimate_attention(
    profile: DeviceProfile | str,
    batch: int,
    n_head: int,
    n_q: int,
    n_kv: int,
    head_dim: int,
    *,
    precision: str = "bf16",
    host: HostCosts = HOST,
    cpu: CpuProfile = CPU,
) -> Estimate:
    """Cost of softmax(q @ k^T * scale) @ v for q (batch, n_head, n_q, head_dim), k/v (.., n_kv, ..).

    All heads of the call in one launch (split only if a launch would approach the driver timeout).
    """
    profile = get_profile(profile)
    parts = ATTENTION_PARTS[check_precision(precision)]
    products = PRODUCTS[precision]
    heads = batch * n_head
    qp, kvp, dp = padded_attention_shape(profile, n_q, n_kv, head_dim)
    compute = attention_compute_s(profile, heads, qp, kvp, dp, parts)
    launches = launches_for(profile, compute)
    # q, k, v, plus each launch's params header object (one query tile, kernels/attention/design.py)
    header = parts * ATTENTION_Q_ROWS_PER_CORE * dp * BF16_BYTES
    to_device = heads * parts * (qp + 2 * kvp) * dp * BF16_BYTES + launches * header
    from_device = heads * qp * dp * FP32_BYTES
    transfer = transfer_s(profile, to_device + from_device)
    in_elements = heads * (n_q + 2 * n_kv) * head_dim
    out_elements = heads * n_q * head_dim
    host_s = (
        host.custom_op_call_s
        + parts * in_elements * host.bf16_convert_s_per_element
        + (in_elements + out_elements) * host.copy_s_per_element
    )
    scores = heads * n_q * n_kv
    useful_flops = heads * 2 * (2 * n_q * n_kv * head_dim)
    cpu_s = (
        4 * cpu.node_s  # MatMul, scale, Softmax, MatMul
        + useful_flops / cpu.gemm_flops_per_s
        + scores * (cpu.softmax_s_per_element + cpu.elementwise_s_per_element)
    )
    launch = launches * profile.launch_s
    return Estimate(
        npu_s=host_s + launch + transfer + compute,
        cpu_s=cpu_s,
        launches=launches,
        bytes_to_device=to_device,
        bytes_from_device=from_device,
        flops=useful_flops,
        padded_flops=heads * products * 2 * (2 * qp * kvp * dp),
        host_s=host_s,
        launch_s=launch,
        transfer_s=transfer,
        compute_s=compute,
        design=_design_name("attention", profile, head_dim=dp, precision=precision),
    )


def estimate_softmax(
    profile: DeviceProfile | str,
    rows: int,
    cols: int,
    *,
    precision: str = "bf16",
    host: HostCosts = HOST,
    cpu: CpuProfile = CPU,
) -> Estimate:
    """Cost of a row softmax of a (rows, cols) float32 matrix: fp32 in, fp32 statistics, fp32 out."""
    profile = get_profile(profile)
    check_precision(precision)
    rp = round_up(rows, profile.cores)
    cp = round_up(cols, SOFTMAX_COL_MULTIPLE)
    nbytes = rows * cp * FP32_BYTES  # the real rows only, each way
    compute = softmax_compute_s(profile, rp, cp)
    launches = launches_for(profile, compute)
    transfer = transfer_s(profile, 2 * nbytes)
    host_s = host.custom_op_call_s + 2 * rows * cols * host.copy_s_per_element
    launch = launches * profile.launch_s
    return Estimate(
        npu_s=host_s + launch + transfer + compute,
        cpu_s=cpu.node_s + rows * cols * cpu.softmax_s_per_element,
        launches=launches,
        bytes_to_device=nbytes,
        bytes_from_device=nbytes,
        flops=5 * rows * cols,  # max, subtract, exp, sum, scale
        padded_flops=5 * rp * cp,
        host_s=host_s,
        launch_s=launch,
        transfer_s=transfer,
        compute_s=compute,
        design=_design_name("softmax", profile, cols=cp),
    )
