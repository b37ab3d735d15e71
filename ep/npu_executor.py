"""The NPU executor: runs fused xdna nodes on the NPU (real through pyxrt, or simulated) with one
launch per fused op, weights resident for the session's life.

- Weights (2-D constants) are converted once when added: padded to the design's bucket, bf16 (or
  the hi/lo/hi stack of the accurate precision), in the GEMM's tile-major layout with one params
  object per column block (bias and activation, ``kernels/matmul/design.py``: ``pack_weight``),
  written into a device buffer and synced once; a node's bias and activation are written into the
  params objects on its first call (again only when another node uses the weight differently).
- ``matmul``: the whole GEMM in one launch (M padded to rows * m, N to columns * n) of the design the
  compiled model's plan chose (``use_gemm_plan``: the dynamic-K design, or the design for its K; without
  a plan, the design for its K); only the activations' real rows go to the device, only the result's
  real rows back. A weight's device layout is the same for both designs, so a plan can change its design.
- ``attention``: all heads of the call in one launch (split into head groups only if a launch could
  come near the driver's 2-s timeout).
- ``softmax``: all rows in one launch.
- The first time the process opens a design on the device, ``ep/self_check.py`` runs one small launch
  against the reference; a design that fails is disabled (its calls raise, so they fall back to the
  CPU, counted under a cause naming the design).

Every call is counted per node in ``ep/stats.py``: launches, bytes each way, modelled device time (the
cost model the partitioner uses), wall time of the launch, host overhead, design switches.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from xdna_ep.ep import cost_model, self_check
from xdna_ep.ep.executor import Executor
from xdna_ep.ep.stats import ExecutorStats
from xdna_ep.ep.xrt_backend import BACKENDS, Buffer, Design, XrtDevice, get_device
from xdna_ep.errors import DeviceError
from xdna_ep.kernels.attention import design as attention_design
from xdna_ep.kernels.attention import reference as attention_reference
from xdna_ep.kernels.attention.spec import AttentionSpec
from xdna_ep.kernels.matmul import design as matmul_design
from xdna_ep.kernels.matmul import reference as matmul_reference
from xdna_ep.kernels.matmul.spec import MatmulSpec
from xdna_ep.kernels.softmax import reference as softmax_reference
from xdna_ep.kernels.softmax.spec import MAX_COLS, SoftmaxSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NpuOptions:
    """Where and how the xdna ops run on an NPU."""

    device: str = "sim"  # "sim": the simulated NPU; "npu": the real one through pyxrt
    profile: str = "npu1"  # which NPU: "npu1" (Phoenix / Hawk Point) or "npu2" (Strix)
    precision: str = "bf16"  # "bf16" or "accurate" (bf16 hi + lo split, about fp32)

    def __post_init__(self) -> None:
        if self.device not in BACKENDS:
            raise ValueError(f"NpuExecutor device {self.device!r}: valid devices are {', '.join(BACKENDS)}")
        cost_model.check_precision(self.precision)
        cost_model.get_profile(self.profile)


@dataclass
class ResidentWeight:
    """A GEMM weight on the device: W (k, n) padded to (k_pad, n_pad), run on the design of ``spec``."""

    spec: MatmulSpec  # the design for its K, or the dynamic-K design
    buffer: Buffer
    k: int
    n: int
    k_pad: int
    n_pad: int
    k_launch: int  # K of its launches: k_pad, or 3 * k_pad in the accurate precision
    params_key: tuple = ("", "")  # (bias key, activation) its params objects hold


def _float32(name: str, array: np.ndarray) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.dtype != np.float32:
        raise ValueError(f"{name} must be a float32 ndarray, got {getattr(array, 'dtype', type(array).__name__)}")
    return array


class NpuExecutor(Executor):
    """Executor of fused xdna nodes on the NPU (see the module docstring)."""

    name = "npu"

    def __init__(self, device: str = "sim", profile: str = "npu1", precision: str = "bf16") -> None:
        self.options = NpuOptions(device=device, profile=profile, precision=precision)
        self.device: XrtDevice = get_device(self.options.device, self.options.profile)
        self.profile = self.device.profile
        self.precision = precision
        self.statistics = ExecutorStats(device, self.profile.name, precision)
        self._host_weights: dict[str, np.ndarray] = {}
        self._resident: dict[str, ResidentWeight] = {}
        self._gemm_plans: dict[str, object] = {}  # weight key -> kernels.designs.GemmPlan
        self._params: dict[tuple, Buffer] = {}
        self._scratch: dict[tuple[str, str], Buffer] = {}
        self._lock = threading.Lock()

    # --- weights --------------------------------------------------------------------------------

    def use_gemm_plan(self, weight_keys: Iterable[str], plan) -> None:
        """Run the GEMMs of ``weight_keys`` on the designs ``plan`` (a GemmPlan) chose; None keeps one per K."""
        if plan is None:
            return
        with self._lock:
            for key in weight_keys:
                self._gemm_plans[key] = plan
                weight = self._resident.get(key)
                if weight is not None:  # already resident: same buffer and layout, another design
                    self._resident[key] = replace(weight, spec=plan.gemm_spec(weight.k_launch))

    def add_weight(self, key: str, array: np.ndarray) -> None:
        """Keep a constant; a 2-D one is a GEMM weight and becomes resident on the device now."""
        array = np.ascontiguousarray(array, dtype=np.float32)
        with self._lock:
            self._host_weights[key] = array
            if array.ndim == 2 and key not in self._resident:
                self._resident[key] = self._make_resident(array, self._gemm_plans.get(key))

    def has_weight(self, key: str) -> bool:
        return key in self._host_weights

    def _make_resident(self, w: np.ndarray, plan) -> ResidentWeight:
        k, n = w.shape
        k_pad, n_pad = (cost_model.round_up(k, self.profile.gemm_k_multiple),
                        cost_model.round_up(n, self.profile.gemm_n_multiple))  # fmt: skip
        k_launch = cost_model.GEMM_PARTS[self.precision] * k_pad
        spec = plan.gemm_spec(k_launch) if plan is not None else MatmulSpec(k=k_launch, profile=self.profile.name)
        design = self.device.design(spec)
        tiled = matmul_reference.prepare_weight(w, k_pad, n_pad, spec.tile[2], self.precision)
        params = matmul_reference.prepare_params(None, "", n_pad, spec.tile[2])
        packed = matmul_design.pack_weight(tiled, params, k_launch, n_pad, spec)
        buffer = design.buffer("b", packed.nbytes)
        buffer.view(np.uint16)[: packed.size] = packed
        self._record_constant(buffer.to_device())
        return ResidentWeight(spec=spec, buffer=buffer, k=k, n=n, k_pad=k_pad, n_pad=n_pad, k_launch=k_launch)

    def _record_constant(self, nbytes: int) -> None:
        self.device.record_transfer(nbytes, to_device=True)
        self.statistics.record_weight(nbytes)

    def _design(self, spec) -> Design:
        """The open design of ``spec``, self-checked the first time the process opens it on this device.

        A design whose check failed stays disabled: DeviceError, with the design named in its cause.
        """
        design = self.device.design(spec)
        with self.device.lock:
            if spec.name not in self.device.self_checks:
                try:
                    failure = self_check.check_design(self.device, spec)
                except BaseException:  # the device failed (not the design): check again on the next open
                    self.device.self_checks.pop(spec.name, None)
                    raise
                self.device.self_checks[spec.name] = failure
                if failure:
                    logger.warning("NPU design %s disabled: %s; its nodes run on the CPU", spec.name, failure)
            failure = self.device.self_checks[spec.name]
        if failure:
            raise DeviceError(f"design {spec.name} is disabled: {failure}", cause=f"self-check failed: {spec.name}")
        return design

    def _set_params(self, weight: ResidentWeight, bias_key: str, bias: np.ndarray | None, activation: str) -> None:
        """Write the bias and activation of a node into the params objects of its resident weight."""
        if weight.params_key == (bias_key, activation):
            return
        spec = weight.spec
        _, k_tile, n_tile = spec.tile
        blocks = weight.n_pad // n_tile
        params = matmul_reference.prepare_params(bias, activation, weight.n_pad, n_tile)
        objects = matmul_design.params_objects(params, blocks, spec)  # (blocks, k * n)
        view = weight.buffer.view(np.uint16, (blocks, weight.k_launch + k_tile, n_tile))
        view[:, weight.k_launch :, :] = objects.reshape(blocks, k_tile, n_tile)
        self._record_constant(weight.buffer.to_device())
        weight.params_key = (bias_key, activation)

    def _constant_buffer(self, design: Design, key: tuple, make_values) -> Buffer:
        """A params buffer of ``design`` built once per ``key`` from ``make_values()`` (f32) and synced once."""
        full_key = (design.spec.name, *key)
        buffer = self._params.get(full_key)
        if buffer is None:
            values = make_values()
            buffer = design.buffer("params", values.nbytes)
            buffer.view(np.float32)[: values.size] = values
            self._record_constant(buffer.to_device())
            self._params[full_key] = buffer
        return buffer

    def _scratch_buffer(self, design: Design, arg: str, nbytes: int, copy: str = "") -> Buffer:
        """A per-call buffer of ``design`` for ``arg``, reused across calls, grown when too small;
        ``copy`` names another one for the same argument (launches batched in one runlist)."""
        key = (design.spec.name, arg + copy)
        buffer = self._scratch.get(key)
        if buffer is None or buffer.nbytes < nbytes:
            buffer = design.buffer(arg, nbytes)
            self._scratch[key] = buffer
        return buffer

    # --- ops ------------------------------------------------------------------------------------

    def matmul(self, node: str, x: np.ndarray, weight_key: str, bias_key: str, activation: str) -> np.ndarray:
        """y = act(x @ W + b): x (..., K) float32 -> (..., N) float32, one launch per row chunk."""
        start = time.perf_counter()
        _float32("x", x)
        weight = self._resident.get(weight_key)
        if weight is None:
            raise KeyError(f"{node}: weight {weight_key!r} is not resident on the NPU executor")
        if x.ndim < 1 or x.shape[-1] != weight.k:
            raise ValueError(f"{node}: x has shape {x.shape}, the weight has {weight.k} rows")
        bias = None
        if bias_key:
            bias = self._host_weights.get(bias_key)
            if bias is None or bias.shape != (weight.n,):
                raise ValueError(f"{node}: bias {bias_key!r} missing or not of shape ({weight.n},)")
        lead = x.shape[:-1]
        rows = x.reshape(-1, weight.k)
        m = rows.shape[0]
        y = np.empty((m, weight.n), dtype=np.float32)
        if m == 0:
            return y.reshape(*lead, weight.n)
        spec = weight.spec
        k_launch = weight.k_launch
        profile = self.profile
        m_pad = cost_model.round_up(m, profile.gemm_m_multiple)
        launches = cost_model.launches_for(profile, cost_model.gemm_compute_s(profile, m_pad, k_launch, weight.n_pad))
        chunk = cost_model.round_up(math.ceil(m / launches), profile.gemm_m_multiple)
        counters = _CallCounters()
        with self.device.lock:
            design = self._design(spec)
            self._set_params(weight, bias_key, bias, activation)
            for first in range(0, m, chunk):
                part = rows[first : first + chunk]
                rows_here = part.shape[0]
                rows_pad = cost_model.round_up(rows_here, profile.gemm_m_multiple)
                a = self._scratch_buffer(design, "a", rows_pad * k_launch * 2)
                c = self._scratch_buffer(design, "c", rows_pad * weight.n_pad * 4)
                a_rows = a.view(np.uint16, (rows_pad, k_launch))[:rows_here]
                matmul_reference.prepare_activations(part, weight.k_pad, self.precision, out=a_rows)
                counters.sent(self.device, a.to_device(rows_here * k_launch * 2))
                compute = cost_model.gemm_compute_s(
                    profile, rows_pad, k_launch, weight.n_pad, dynamic_k=spec.dynamic_k, gelu=activation == "gelu"
                )
                shape = (rows_pad, k_launch, weight.n_pad)
                counters.launched(design.launch(shape, [a, weight.buffer, c], compute))
                counters.received(self.device, c.from_device(rows_here * weight.n_pad * 4))
                y[first : first + rows_here] = c.view(np.float32, (rows_pad, weight.n_pad))[:rows_here, : weight.n]
        counters.record(self.statistics, node, "matmul", spec.name, start)
        return y.reshape(*lead, weight.n)

    def attention(
        self, node: str, q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, causal: bool
    ) -> np.ndarray:
        """softmax(q @ k^T * scale [+ causal]) @ v: q (b, h, n_q, d), k and v (b, h, n_kv, d) float32."""
        start = time.perf_counter()
        for name, array in (("q", q), ("k", k), ("v", v)):
            _float32(name, array)
        if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
            raise ValueError(f"{node}: q {q.shape}, k {k.shape}, v {v.shape} are not (b, h, n, d) attention operands")
        batch, n_head, n_q, head_dim = q.shape
        n_kv = k.shape[2]
        if causal and n_q > n_kv:
            raise ValueError(f"{node}: causal attention with n_q={n_q} > n_kv={n_kv} leaves queries without keys")
        heads = batch * n_head
        out = np.empty((heads, n_q, head_dim), dtype=np.float32)
        if heads == 0 or n_q == 0:
            return out.reshape(batch, n_head, n_q, head_dim)
        if n_kv == 0:
            raise ValueError(f"{node}: attention over zero keys")
        profile = self.profile
        q_pad, kv_pad, d_pad = cost_model.padded_attention_shape(profile, n_q, n_kv, head_dim)
        spec = AttentionSpec(head_dim=d_pad, precision=self.precision, profile=profile.name)
        parts = spec.parts
        total = cost_model.attention_compute_s(profile, heads, q_pad, kv_pad, d_pad, parts)
        group = math.ceil(heads / cost_model.launches_for(profile, total))
        q3, k3, v3 = (a.reshape(heads, a.shape[2], head_dim) for a in (q, k, v))
        counters = _CallCounters()
        with self.device.lock:
            design = self._design(spec)
            params = attention_reference.prepare_params(scale, n_q, n_kv, causal)
            # head groups (more than one only when one launch could near the driver's timeout) go as one
            # runlist, each on buffers of its own
            runs, outputs = [], []
            for index, first in enumerate(range(0, heads, group)):
                hg = min(group, heads - first)
                sizes = spec.arg_bytes(hg, q_pad, kv_pad)
                suffix = "" if index == 0 else f"#{index}"
                buffers = {name: self._scratch_buffer(design, name, sizes[name], suffix) for name in ("q", "kv", "o")}
                operands = {
                    name: attention_reference.prepare_operand(source[first : first + hg], n_pad, d_pad, self.precision)
                    for name, source, n_pad in (("q", q3, q_pad), ("k", k3, kv_pad), ("v", v3, kv_pad))
                }  # bf16 bits [parts, hg, n_pad, d_pad] each
                attention_design.pack_q(operands["q"], params, spec, out=buffers["q"].view(np.uint16))
                attention_design.pack_kv(operands["k"], operands["v"], out=buffers["kv"].view(np.uint16))
                for name in ("q", "kv"):
                    counters.sent(self.device, buffers[name].to_device(sizes[name]))
                compute = cost_model.attention_compute_s(profile, hg, q_pad, kv_pad, d_pad, parts)
                args = [buffers["q"], buffers["kv"], buffers["o"]]
                runs.append(((hg, q_pad, kv_pad, d_pad), args, compute))
                outputs.append((first, hg, buffers["o"], sizes["o"]))
            for result in design.launch_batch(runs):
                counters.launched(result)
            for first, hg, o_buffer, o_bytes in outputs:
                counters.received(self.device, o_buffer.from_device(o_bytes))
                out[first : first + hg] = o_buffer.view(np.float32, (hg, q_pad, d_pad))[:, :n_q, :head_dim]
        counters.record(self.statistics, node, "attention", spec.name, start)
        return out.reshape(batch, n_head, n_q, head_dim)

    def softmax(self, node: str, x: np.ndarray, axis: int) -> np.ndarray:
        """Softmax of float32 ``x`` along ``axis``: all rows in one launch."""
        start = time.perf_counter()
        _float32("x", x)
        if not -x.ndim <= axis < x.ndim:
            raise ValueError(f"{node}: axis {axis} out of range for a {x.ndim}-D input")
        moved = np.moveaxis(x, axis, -1)
        cols = moved.shape[-1]
        rows = int(np.prod(moved.shape[:-1], dtype=np.int64))
        if rows == 0 or cols == 0:
            return np.empty_like(x)
        if cols > MAX_COLS:
            raise ValueError(f"{node}: softmax over {cols} columns: the NPU design handles at most {MAX_COLS}")
        cols_pad = cost_model.round_up(cols, cost_model.SOFTMAX_COL_MULTIPLE)
        spec = SoftmaxSpec(cols=cols_pad, profile=self.profile.name)
        rows_pad = cost_model.round_up(rows, spec.row_multiple)
        counters = _CallCounters()
        with self.device.lock:
            design = self._design(spec)
            params = self._constant_buffer(design, ("params", cols), lambda: softmax_reference.prepare_params(cols))
            sizes = spec.arg_bytes(rows_pad)
            xb = self._scratch_buffer(design, "x", sizes["x"])
            yb = self._scratch_buffer(design, "y", sizes["y"])
            xb.view(np.float32, (rows_pad, cols_pad))[:rows, :cols] = moved.reshape(rows, cols)
            counters.sent(self.device, xb.to_device(rows * cols_pad * 4))
            compute = cost_model.softmax_compute_s(self.profile, rows_pad, cols_pad)
            counters.launched(design.launch((rows_pad, cols_pad), [xb, params, yb], compute))
            counters.received(self.device, yb.from_device(rows * cols_pad * 4))
            y = yb.view(np.float32, (rows_pad, cols_pad))[:rows, :cols].reshape(moved.shape)
            y = np.ascontiguousarray(np.moveaxis(y, -1, axis))
        counters.record(self.statistics, node, "softmax", spec.name, start)
        return y

    # --- statistics -----------------------------------------------------------------------------

    def record_fallback(self, node: str, kind: str, cause: str) -> None:
        """Count a call of ``node`` that was recomputed on the CPU, with its cause."""
        self.statistics.record_fallback(node, kind, cause)

    def stats(self) -> dict:
        """This executor's statistics plus the shared device's counters (JSON-ready)."""
        data = self.statistics.as_dict()
        data["device_counters"] = self.device.stats.as_dict()
        data["device_description"] = self.device.describe()
        return data


class _CallCounters:
    """What one executor call did, gathered across its launches."""

    def __init__(self) -> None:
        self.launches = 0
        self.bytes_to_device = 0
        self.bytes_from_device = 0
        self.modelled_s = 0.0
        self.wall_s = 0.0
        self.switches = 0

    def sent(self, device: XrtDevice, nbytes: int) -> None:
        self.bytes_to_device += nbytes
        self.modelled_s += device.record_transfer(nbytes, to_device=True)

    def received(self, device: XrtDevice, nbytes: int) -> None:
        self.bytes_from_device += nbytes
        self.modelled_s += device.record_transfer(nbytes, to_device=False)

    def launched(self, result) -> None:
        self.launches += 1
        self.modelled_s += result.modelled_s
        self.wall_s += result.wall_s
        self.switches += int(result.switched_design)

    def record(self, stats: ExecutorStats, node: str, kind: str, design: str, start: float) -> None:
        elapsed = time.perf_counter() - start
        stats.record_call(
            node,
            kind,
            design=design,
            launches=self.launches,
            bytes_to_device=self.bytes_to_device,
            bytes_from_device=self.bytes_from_device,
            modelled_device_s=self.modelled_s,
            device_wall_s=self.wall_s,
            host_s=max(0.0, elapsed - self.wall_s),
            design_switches=self.switches,
        )
