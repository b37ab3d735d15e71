"""Calibration of the bottom-up NPU timing against published measurements, with a holdout.

The timing (``kernels/timing.py`` + ``kernels/*/cycles.py``) counts cycles from the kernels' inner
loops and bytes on the DMA channels; its one free parameter is the clock those cycles run at
(``DeviceProfile.array_clock_hz``: the driver's top npuclk is 847 MHz, unverified that it is the
cores' and the DMAs' clock). It is fitted on the points marked "fit" and the model is judged on the
points marked "held-out", which the fit never sees. Figures taken as published (launch, switch) are
inputs of the model and listed as "fit" with their own figure: they are not predictions.

Peers' end-to-end figures measure the peers' kernels, not ours: they are compared, not fitted, with the
difference explained (``comparisons``). Measurements of npu.md not used are listed with the reason.

    xdna-ep bench --calibration [--json]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from xdna_ep.ep import cost_model
from xdna_ep.ep.device import NPU1, DeviceProfile
from xdna_ep.kernels.timing import FP32_MUL_ISSUES

ROLES = ("fit", "held-out")
HELD_OUT_TOLERANCE = 0.30  # the issue's acceptance band for held-out points
WHISPER_XDNA_README = "drakosha/whisper-xdna README"
WHISPER_XDNA_HISTORY = "drakosha/whisper-xdna HISTORY.md"


@dataclass(frozen=True)
class Measurement:
    """One published measurement and the model's figure for the same thing."""

    source: str
    what: str
    measured_ms: float
    role: str  # "fit" or "held-out"
    modelled: Callable[[DeviceProfile], float]  # modelled milliseconds on a profile

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")


def _gemm_ms(m: int, k: int, n: int) -> Callable[[DeviceProfile], float]:
    """One whole-array GEMM launch, launch included, weights resident (whisper-xdna's benchmark loop)."""

    def modelled(profile: DeviceProfile) -> float:
        padded = cost_model.padded_gemm_shape(profile, m, k, n)
        return (profile.launch_s + cost_model.gemm_compute_s(profile, *padded)) * 1e3

    return modelled


def _gemm_at(m: int, k: int, n: int, gflops: float) -> float:
    return 2.0 * m * k * n / (gflops * 1e9) * 1e3


def _raw_pyxrt_512_ms(profile: DeviceProfile) -> float:
    # HISTORY.md's loop writes A and B, launches, reads C: the weight copy counts too
    estimate = cost_model.estimate_matmul(profile, 512, 512, 512)
    return (estimate.device_s + cost_model.transfer_s(profile, 512 * 512 * cost_model.BF16_BYTES)) * 1e3


MEASUREMENTS: tuple[Measurement, ...] = (
    Measurement(WHISPER_XDNA_README, "bf16 GEMM 1536x1536x384, 4 columns: 1761 GFLOPS",
                _gemm_at(1536, 1536, 384, 1761), "fit", _gemm_ms(1536, 1536, 384)),
    Measurement("mlir-aie #2381, XRT #9018", "trivial launch, kernel() + wait()", 0.060, "fit",
                lambda profile: profile.launch_s * 1e3),
    Measurement(WHISPER_XDNA_README, "a pair of design switches", 2.81, "fit",
                lambda profile: 2 * profile.design_switch_s * 1e3),
    Measurement(WHISPER_XDNA_README, "bf16 GEMM 1536x5120x1280, 4 columns: 1514 GFLOPS",
                _gemm_at(1536, 5120, 1280, 1514), "held-out", _gemm_ms(1536, 5120, 1280)),
    Measurement(WHISPER_XDNA_README, "bf16 GEMM 1536x1280x1280, 4 columns: 1409 GFLOPS",
                _gemm_at(1536, 1280, 1280, 1409), "held-out", _gemm_ms(1536, 1280, 1280)),
    Measurement(WHISPER_XDNA_README, "bf16 GEMM 1536x64x1536 (skinny K), 4 columns: 386 GFLOPS",
                _gemm_at(1536, 64, 1536, 386), "held-out", _gemm_ms(1536, 64, 1536)),
    Measurement(WHISPER_XDNA_HISTORY, "512^3 bf16 GEMM from raw pyxrt, copies and launch included", 0.267,
                "held-out", _raw_pyxrt_512_ms),
)

UNUSED = (
    ("whisper-xdna README", "int8 GEMM 1930-2020 GOPS", "no int8 design here"),
    ("whisper-xdna HISTORY.md", "untuned GEMM 412 GFLOPS; per-shape tiles 2.5-4.6x", "shapes and tiles not published"),
    ("whisper-xdna HISTORY.md", "IRON wrapper 1.385 ms per 512^3 GEMM", "host wrapper overhead; this project calls raw pyxrt"),
    ("whisper-xdna HISTORY.md", "NPU GEMM 1082 -> 682 GFLOPS with the CPU busy", "shape not published; "
     "shared-memory contention is not modelled (the bench's device time assumes an idle CPU)"),
    ("mlir-aie #2944", "first launch after 10 s idle: 136 ms", "not in a steady-state pass"),
    ("whisper-xdna; iree-amd-aie #380", "context creation 2.5 ms, xclbin load 20 ms", "once per session, not per pass"),
    ("mlir-aie PR #2559", "host-device copies 55-66 GB/s", "input of the model (60 GB/s), not a prediction"),
    ("whisper-xdna README", "runlist about 24 % less per run", "input of the model, not a prediction"),
)


def relative_error(modelled: float, measured: float) -> float:
    return (modelled - measured) / measured


def fit_array_clock(points: tuple[Measurement, ...] = MEASUREMENTS, base: DeviceProfile = NPU1) -> float:
    """The array clock minimising the squared relative error over the "fit" points (a 1-D search,
    log-spaced from 200 MHz to 3 GHz, then refined); the held-out points are never read."""
    fit = [point for point in points if point.role == "fit"]

    def cost(clock_hz: float) -> float:
        profile = dataclasses.replace(base, array_clock_hz=clock_hz)
        return sum(relative_error(point.modelled(profile), point.measured_ms) ** 2 for point in fit)

    low, high = math.log(200e6), math.log(3e9)
    for _ in range(4):  # grid, then refine around the best
        grid = [low + (high - low) * i / 200 for i in range(201)]
        best = min(grid, key=lambda x: cost(math.exp(x)))
        step = (high - low) / 200
        low, high = best - step, best + step
    return math.exp((low + high) / 2)


@dataclass(frozen=True)
class CalibrationPoint:
    source: str
    what: str
    measured_ms: float
    modelled_ms: float
    role: str

    @property
    def error(self) -> float:
        """Relative error of the model, (modelled - measured) / measured."""
        return relative_error(self.modelled_ms, self.measured_ms)

    def as_dict(self) -> dict:
        return {
            "source": self.source, "what": self.what, "measured_ms": round(self.measured_ms, 4),
            "modelled_ms": round(self.modelled_ms, 4), "role": self.role, "error": round(self.error, 4),
        }  # fmt: skip


def calibration_points(profile: DeviceProfile = NPU1) -> list[CalibrationPoint]:
    """Every measurement with the model's figure on ``profile`` (the fitted npu1 by default)."""
    return [
        CalibrationPoint(point.source, point.what, point.measured_ms, point.modelled(profile), point.role)
        for point in MEASUREMENTS
    ]


def encoder_device_ms(
    profile: DeviceProfile, d_model: int, n_head: int, n_layers: int, fp32_mul_issues: int = FP32_MUL_ISSUES[0]
) -> float:
    """Modelled device time of one Whisper encoder pass (GEMMs and attention of every layer on the NPU,
    one launch each, no switches or transfers): the figure compared with a peer's whole encoder."""
    from xdna_ep.kernels.designs import HEAD_DIM, N_AUDIO_CTX, encoder_layer_gemms

    gemms = encoder_layer_gemms(d_model, profile.name)
    layer = sum(
        cost_model.gemm_compute_s(profile, *shape, gelu=i == 4, fp32_mul_issues=fp32_mul_issues)
        for i, shape in enumerate(gemms)
    )
    q, kv, d = cost_model.padded_attention_shape(profile, N_AUDIO_CTX, N_AUDIO_CTX, HEAD_DIM)
    layer += cost_model.attention_compute_s(profile, n_head, q, kv, d, 1, fp32_mul_issues=fp32_mul_issues)
    return n_layers * (layer + (len(gemms) + 1) * profile.launch_s) * 1e3


def comparisons(profile: DeviceProfile = NPU1) -> list[dict]:
    """Peers' figures next to the model's, with the reason for a difference larger than 2x."""
    from xdna_ep.kernels.designs import HEAD_DIM, N_AUDIO_CTX

    q, kv, d = cost_model.padded_attention_shape(profile, N_AUDIO_CTX, N_AUDIO_CTX, HEAD_DIM)
    head_ms = (cost_model.attention_compute_s(profile, 1, q, kv, d, 1) + profile.launch_s) * 1e3
    # the peer chains three kernels (QK^T -> softmax -> PV) through DDR: the 1500 x 1500 bf16 scores
    # leave and re-enter the array twice; with our DMA model that traffic alone costs:
    score_bytes = N_AUDIO_CTX * N_AUDIO_CTX * 2
    chained_ms = (4 * score_bytes / profile.shim_in_bytes_per_s + 2 * profile.launch_s) * 1e3
    peer_head_ms = 1016.0 / 640
    large_gemm = 4096
    large_ms = cost_model.gemm_compute_s(profile, large_gemm, large_gemm, large_gemm) * 1e3
    peak_tflops = profile.cores * 2 * math.prod(profile.intrinsic_bf16) / profile.mmul_cycles_per_issue * profile.array_clock_hz / 1e12
    tiny_ms = encoder_device_ms(profile, 384, 6, 4)
    return [
        {
            "source": WHISPER_XDNA_README, "what": "attention, one 1500x1500x64 head (large-v3: 1016 ms / 640 heads)",
            "measured_ms": round(peer_head_ms, 3), "modelled_ms": round(head_ms, 3),
            "ratio": round(peer_head_ms / head_ms, 2),
            "why": f"the peer chains QK^T, softmax and PV through DDR: its scores cross the shim DMAs four "
                   f"times, {chained_ms:.2f} ms on our DMA model, plus three kernels' fills; ours stay on the "
                   f"cores (online softmax). The rest of the gap is the peer's kernels, whose cycles are "
                   f"not published",
        },
        {
            "source": "arXiv 2512.13282", "what": "best published npu1 bf16 GEMM, 3.14 TFLOPS (tuned tiles)",
            "measured_ms": round(2 * large_gemm**3 / 3.14e12 * 1e3, 3), "modelled_ms": round(large_ms, 3),
            "ratio": round(large_ms / (2 * large_gemm**3 / 3.14e12 * 1e3), 2),
            "why": f"our {large_gemm}^3 GEMM with the default 64x64x32 tiles is bound by the A channel "
                   f"(m x k bf16 per K step at 4 B/cycle); the matrix units' modelled peak is "
                   f"{peak_tflops:.2f} TFLOPS, above the published 3.14",
        },
        {
            "source": WHISPER_XDNA_README, "what": "tiny encoder, 1500 positions, Hawk Point: 484 ms",
            "measured_ms": 484.0, "modelled_ms": round(tiny_ms, 2), "ratio": round(484.0 / tiny_ms, 1),
            "why": "the peer's figure is its whole encoder (host work, per-launch Python, CPU ops included); "
                   "ours here is the array alone: xdna-ep bench --device sim gives the whole pass",
        },
    ]


def kernel_check(profile: DeviceProfile = NPU1) -> dict:
    """Cycles per tile of every kernel call, and the kernels whose cycle model shows a scalar float loop
    per element (``kernels.timing.check_vector_only``: none is accepted)."""
    from xdna_ep.kernels.attention import cycles as attention_cycles
    from xdna_ep.kernels.matmul import cycles as matmul_cycles
    from xdna_ep.kernels.softmax import cycles as softmax_cycles
    from xdna_ep.kernels.timing import check_vector_only

    tiles = (
        matmul_cycles.tiles(profile)
        + attention_cycles.tiles(profile, cost_model.ATTENTION_Q_ROWS_PER_CORE, cost_model.ATTENTION_KV_TILE, 64)
        + softmax_cycles.tiles()
    )
    return {"cycles_per_call": {tile.kernel: round(tile.cycles) for tile in tiles}, "scalar_loops": check_vector_only(tiles)}


def report(profile: DeviceProfile = NPU1) -> dict:
    """Everything ``bench --calibration`` prints: the points, the fitted parameter, comparisons, unused."""
    return {
        "kernels": kernel_check(profile),
        "parameter": {"array_clock_hz": profile.array_clock_hz, "fitted_hz": fit_array_clock()},
        "points": [point.as_dict() for point in calibration_points(profile)],
        "comparisons": comparisons(profile),
        "unused": [{"source": s, "what": w, "why": why} for s, w, why in UNUSED],
    }


def format_report(data: dict) -> list[str]:
    points = data["points"]
    held_out = [p for p in points if p["role"] == "held-out"]
    worst = max((abs(p["error"]) for p in held_out), default=0.0)
    lines = [
        f"xdna-ep bench --calibration (npu1): one free parameter, the array clock, fitted at "
        f"{data['parameter']['fitted_hz'] / 1e6:.0f} MHz (profile: {data['parameter']['array_clock_hz'] / 1e6:.0f} MHz)",
    ]
    for role in ROLES:
        chosen = [p for p in points if p["role"] == role]
        lines.append(f"{role} ({len(chosen)} points):")
        lines += [
            f"  {p['what']} [{p['source']}]: measured {p['measured_ms']:.3f} ms, modelled {p['modelled_ms']:.3f} ms, "
            f"error {p['error'] * 100:+.1f} %"
            for p in chosen
        ]
    lines.append(f"held-out: {len(held_out)} points, worst |error| {worst * 100:.1f} % (acceptance {HELD_OUT_TOLERANCE * 100:.0f} %)")
    lines.append("peers' figures (their kernels, compared, not fitted):")
    lines += [
        f"  {c['what']} [{c['source']}]: measured {c['measured_ms']} ms, ours modelled {c['modelled_ms']} ms "
        f"(ratio {c['ratio']}): {c['why']}"
        for c in data["comparisons"]
    ]
    kernels = data["kernels"]
    lines.append(
        "kernel cycle models (cycles per call, one core): "
        + ", ".join(f"{name} {cycles}" for name, cycles in kernels["cycles_per_call"].items())
    )
    lines += [f"  scalar float loop: {line}" for line in kernels["scalar_loops"]] or [
        "  no kernel runs a scalar float loop per element"
    ]
    lines.append("not used:")
    lines += [f"  {u['what']} [{u['source']}]: {u['why']}" for u in data["unused"]]
    return lines
