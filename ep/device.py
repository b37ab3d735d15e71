"""NPU device profiles: the figures the cost model, the partitioner and the simulated NPU use.

Two profiles, named as the XDNA driver names them: ``npu1`` (Phoenix / Hawk Point, XDNA, AIE2) and
``npu2`` (Strix, XDNA2, AIE2P). Every figure carries its source; the sources are collected in
``../shared/docs/npu.md``. *derived* means computed from other figures here; *fitted* means a
constant fitted to some measurements of npu.md and checked on others it never saw (``ep/calibration.py``,
``xdna-ep bench --calibration``); *unverified* means no primary source
confirmed it.
"""

from __future__ import annotations

from dataclasses import dataclass


# The one free parameter of the bottom-up timing, fitted by ep/calibration.py (fit_array_clock) on the
# points it marks "fit"; tests/ep/test_calibration.py checks that this value is that fit's result.
ARRAY_CLOCK_NPU1_HZ = 935e6


@dataclass(frozen=True)
class DeviceProfile:
    """One NPU generation: array geometry, memories, rates, fixed costs and driver limits."""

    name: str  # driver name: "npu1" or "npu2"
    description: str
    xrt_names: tuple[str, ...]  # what XRT's device name query returns for this generation (first: canonical)
    # --- array geometry
    columns: int  # usable columns with a shim DMA (whole-array designs spread N over them)
    rows: int  # compute rows per column (whole-array designs spread M over them)
    tile_data_bytes: int  # data memory per compute tile
    tile_program_bytes: int  # program memory per compute tile
    memtile_bytes: int  # memtile (L2) per column
    intrinsic_bf16: tuple[int, int, int]  # bf16 matmul intrinsic r x s x t (aie::mmul shape)
    core_clock_hz: float  # clock assumed to drive the cores (unverified which of npuclk/hclk)
    shim_channels_in: int  # shim DMA input channels per column
    shim_channels_out: int  # shim DMA output channels per column
    shim_bytes_per_cycle: int  # bytes per cycle per shim channel
    # --- whole-array GEMM tiling (per core m x k x n): the bucket/padding granularity of the designs
    gemm_tile: tuple[int, int, int]
    # --- peaks (marketing and best published)
    bf16_peak_flops: float  # best published bf16 GEMM, FLOP/s
    int8_peak_ops: float  # best published int8 GEMM, OP/s
    marketing_int8_tops: float
    # --- the bottom-up timing (kernels/timing.py, kernels/*/cycles.py)
    array_clock_hz: float  # clock of the cores' issue slots and the DMA channels: the one fitted parameter
    mmul_cycles_per_issue: int  # cycles one bf16 aie::mmul issue (r x s x t) occupies the matrix unit
    # --- host <-> device
    host_device_bytes_per_s: float  # buffer sync bandwidth (memory is shared with the CPU)
    launch_s: float  # one kernel(...) + run.wait() from Python via raw pyxrt
    runtime_parameters_s: float  # added per launch of a dynamic-K design: its runtime parameters and barriers
    runlist_launch_factor: float  # per-run cost of a launch batched in a runlist, relative to launch_s
    design_switch_s: float  # switching the array from one compiled design to another (one switch)
    context_create_s: float  # creating a hardware context for a registered xclbin
    xclbin_load_s: float  # reading + registering an xclbin
    idle_wake_s: float  # first launch after about 10 s idle (power state)
    concurrent_cpu_gemm_factor: float  # NPU GEMM rate multiplier while the CPU is busy too
    # --- driver limits
    hw_contexts: int  # hardware contexts, system-wide (shared with other processes)
    max_in_flight_per_context: int  # commands in flight per hardware context
    driver_timeout_s: float  # a launch making no progress this long is killed (ERT_CMD_STATE_TIMEOUT)

    @property
    def cores(self) -> int:
        """Compute tiles used by a whole-array design."""
        return self.columns * self.rows

    @property
    def shim_in_bytes_per_s(self) -> float:
        """Aggregate DDR -> array bandwidth of the shim DMAs (derived)."""
        return self.columns * self.shim_channels_in * self.shim_bytes_per_cycle * self.array_clock_hz

    @property
    def shim_out_bytes_per_s(self) -> float:
        """Aggregate array -> DDR bandwidth of the shim DMAs (derived)."""
        return self.columns * self.shim_channels_out * self.shim_bytes_per_cycle * self.array_clock_hz

    @property
    def gemm_m_multiple(self) -> int:
        """M of a whole-array GEMM must be a multiple of rows * m (npu.md constraints)."""
        return self.rows * self.gemm_tile[0]

    @property
    def gemm_k_multiple(self) -> int:
        """K must be a multiple of the per-core k."""
        return self.gemm_tile[1]

    @property
    def gemm_n_multiple(self) -> int:
        """N must be a multiple of columns * n."""
        return self.columns * self.gemm_tile[2]


NPU1 = DeviceProfile(
    name="npu1",
    description="Phoenix / Hawk Point (XDNA, AIE2), 4 x 4 compute tiles",
    # mlir-aie python/utils/hostruntime xrt runtime: the names it maps to NPU1
    xrt_names=("RyzenAI-npu1", "NPU Phoenix"),
    # 4 usable columns x 4 compute rows; column 0 has no shim DMA (xdna-driver amdnpu.rst, npu1_regs.c)
    columns=4,
    rows=4,
    tile_data_bytes=64 * 1024,  # AMD UG1603 (AIE-ML): 64 KB data memory per compute tile
    tile_program_bytes=16 * 1024,  # AMD UG1603: 16 KB program memory
    memtile_bytes=512 * 1024,  # AMD UG1603: 512 KB memtile per column
    intrinsic_bf16=(4, 8, 4),  # mlir-aie whole_array.py: aie2 bf16 mmul r, s, t
    core_clock_hz=847e6,  # xdna-driver npu1_regs.c DPM top npuclk (unverified that it drives the cores)
    shim_channels_in=2,  # npu.md: 2 in + 2 out channels per column, 4 B/cycle each
    shim_channels_out=2,
    shim_bytes_per_cycle=4,
    gemm_tile=(64, 64, 32),  # mlir-aie whole_array.py defaults m=64, k=64, n=32
    bf16_peak_flops=3.14e12,  # arXiv 2512.13282, best published npu1 bf16 GEMM
    int8_peak_ops=6.76e12,  # arXiv 2512.13282, best published npu1 int8 GEMM
    marketing_int8_tops=16.0,  # AMD: Hawk Point 16 TOPS (Phoenix 10)
    # fitted (ep/calibration.py, `xdna-ep bench --calibration`) on one measurement, whisper-xdna README's
    # 1536x1536x384 GEMM at 1761 GFLOPS; the driver's top npuclk is 847 MHz, the fit lands near it.
    # Checked on the held-out points (tests/ep/test_calibration.py)
    array_clock_hz=ARRAY_CLOCK_NPU1_HZ,
    mmul_cycles_per_issue=1,  # AM020: AIE-ML bf16 matrix multiply, 128 MACs (4 x 8 x 4) per cycle
    host_device_bytes_per_s=60e9,  # mlir-aie PR #2559: 55-66 GB/s host-device copies
    launch_s=60e-6,  # mlir-aie #2381, XRT #9018: 45 / 60 us per kernel() + wait() (empty / trivial)
    # unmeasured: the dynamic-K GEMM (mlir-aie whole_array_dyn.py) writes 2 runtime-parameter words and
    # sets one barrier per core in every instruction stream (48 register writes on npu1). Charged as the
    # whole difference between a trivial and an empty launch (60 - 45 us, same sources): a generous bound
    runtime_parameters_s=15e-6,
    runlist_launch_factor=0.76,  # whisper-xdna README: runlist about 24 % faster per run
    design_switch_s=2.81e-3 / 2,  # whisper-xdna README: 2.81 ms per pair of switches
    context_create_s=2.5e-3,  # whisper-xdna: about 2.5 ms per hardware context
    xclbin_load_s=20e-3,  # iree-amd-aie #380: about 20 ms to load an xclbin
    idle_wake_s=0.136,  # mlir-aie #2944: about 136 ms for the first launch after 10 s idle
    concurrent_cpu_gemm_factor=682 / 1082,  # whisper-xdna HISTORY.md: 1082 -> 682 GFLOPS with CPU busy
    hw_contexts=6,  # xdna-driver amdnpu.rst: 6 hardware contexts on npu1
    max_in_flight_per_context=4,  # xdna-driver: at most 4 commands in flight per context
    driver_timeout_s=2.0,  # xdna-driver aie2_tdr.c: 2 s without progress -> timeout, contexts restart
)

NPU2 = DeviceProfile(
    name="npu2",
    description="Strix (XDNA2, AIE2P), 8 x 4 compute tiles",
    # mlir-aie's xrt host runtime maps these to NPU2; RyzenAI-npu5 (Strix Halo, AIE2P) as reported by xrt-smi
    xrt_names=("RyzenAI-npu4", "RyzenAI-npu5", "RyzenAI-npu6", "NPU Strix", "NPU Strix Halo", "NPU Krackan"),
    columns=8,  # xdna-driver npu4_family.h: 8 columns x 4 compute rows
    rows=4,
    tile_data_bytes=64 * 1024,  # AMD UG1603 / npu.md: 64 KB data memory per compute tile
    tile_program_bytes=16 * 1024,  # unverified for AIE2P: taken equal to AIE2
    memtile_bytes=512 * 1024,  # npu.md: 512 KB memtile per column
    intrinsic_bf16=(8, 8, 8),  # mlir-aie whole_array.py: aie2p bf16 mmul r, s, t
    core_clock_hz=1267e6,  # xdna-driver npu4 DPM top npuclk (unverified that it drives the cores)
    shim_channels_in=2,  # unverified on npu2: taken equal to npu1
    shim_channels_out=2,
    shim_bytes_per_cycle=4,
    gemm_tile=(64, 64, 32),  # same per-core tiling as npu1 (whole_array.py defaults)
    bf16_peak_flops=14.71e12,  # arXiv 2512.13282
    int8_peak_ops=38.05e12,  # arXiv 2512.13282
    marketing_int8_tops=50.0,  # AMD: Strix 50 TOPS
    # derived: npu1's fitted clock scaled by the two drivers' top npuclk (1267 / 847 MHz); unverified
    array_clock_hz=ARRAY_CLOCK_NPU1_HZ * 1267 / 847,
    # unverified: an 8 x 8 x 8 bf16 issue (512 MACs) taken at 2 cycles, 256 bf16 MACs per cycle per core,
    # which puts 32 cores at 1267 MHz at 20.8 TFLOPS peak against the best published 14.71 (arXiv 2512.13282)
    mmul_cycles_per_issue=2,
    host_device_bytes_per_s=60e9,  # unverified on npu2: taken equal to npu1 (shared LPDDR)
    launch_s=60e-6,  # unverified on npu2: same driver path as npu1
    runtime_parameters_s=15e-6,  # unverified on npu2: npu1's figure (its 32 cores take twice the writes)
    runlist_launch_factor=0.76,  # unverified on npu2: whisper-xdna measured it on npu1
    design_switch_s=2.81e-3 / 2,  # unverified on npu2
    context_create_s=2.5e-3,  # unverified on npu2
    xclbin_load_s=20e-3,  # unverified on npu2
    idle_wake_s=0.136,  # unverified on npu2
    concurrent_cpu_gemm_factor=682 / 1082,  # unverified on npu2
    hw_contexts=16,  # xdna-driver npu4_family.h: 16 hardware contexts
    max_in_flight_per_context=4,  # xdna-driver (common to the aie2 driver)
    driver_timeout_s=2.0,  # xdna-driver aie2_tdr.c (common to the aie2 driver)
)

PROFILES: dict[str, DeviceProfile] = {profile.name: profile for profile in (NPU1, NPU2)}

DEFAULT_PROFILE = "npu1"


# hardware contexts one process takes of the device's system-wide ones (npu1 has 6, shared with every
# other process): an integer, or unset for half of them
HW_CONTEXTS_ENV = "XDNA_EP_HW_CONTEXTS"


def profile_for_device_name(device_name: str) -> str:
    """The profile of the NPU XRT names ``device_name`` (its device name query); ValueError if unknown.

    Longest match first, so "NPU Strix Halo" is not read as "NPU Strix"'s prefix of something else.
    """
    names = sorted(((xrt_name, profile.name) for profile in PROFILES.values() for xrt_name in profile.xrt_names),
                   key=lambda pair: -len(pair[0]))  # fmt: skip
    for xrt_name, profile_name in names:
        if xrt_name in device_name:
            return profile_name
    known = ", ".join(name for name, _ in names)
    raise ValueError(f"unknown NPU {device_name!r}: xdna-ep has profiles for {known}")


def hw_context_share(profile: DeviceProfile, requested: str | int | None = None) -> int:
    """Hardware contexts this process may hold: ``requested`` (or $XDNA_EP_HW_CONTEXTS), else half of the
    device's; ValueError naming the variable when it is not an integer in 1..hw_contexts."""
    import os

    raw = requested if requested is not None else os.environ.get(HW_CONTEXTS_ENV)
    if raw is None or raw == "":
        return max(1, profile.hw_contexts // 2)
    try:
        share = int(raw)
    except (TypeError, ValueError):
        share = 0
    if not 1 <= share <= profile.hw_contexts or str(raw).strip() != str(share):
        raise ValueError(
            f"{HW_CONTEXTS_ENV}={raw!r}: must be an integer from 1 to {profile.hw_contexts} "
            f"(the hardware contexts of {profile.name}, shared with other processes)"
        )
    return share


def get_profile(name: str | DeviceProfile) -> DeviceProfile:
    """The profile called ``name`` ("npu1" or "npu2"); a DeviceProfile is returned as is."""
    if isinstance(name, DeviceProfile):
        return name
    try:
        return PROFILES[name]
    except KeyError:
        valid = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown NPU profile {name!r}: valid profiles are {valid}") from None
