"""The whole-array GEMM design: bf16 A[M, K] @ bf16 B[K, N] -> fp32 C[M, N], bias and GELU fused.

Two variants of one design (``kernels/matmul/design.py``):
- static K (``MatmulSpec(k=384)``): K is baked into the xclbin (npu.md: a K mismatch silently gives wrong
  results), so one xclbin per K; M and N live in the instruction stream (one per (M, N) bucket);
- dynamic K (``MatmulSpec(k=None)``, after mlir-aie's ``whole_array_dyn.py``): the instruction stream
  writes each core's trip counts as runtime parameters, so one xclbin serves every K that is a multiple
  of the per-core k; one instruction stream per (M, K, N).
Which one a session uses is planned in ``kernels/designs.py``. The ``accurate`` precision uses the same
design with three times the K: A' = [a_hi | a_hi | a_lo], B' = [b_hi; b_lo; b_hi].

The design shape of a launch is (M, K, N) for both variants (the instruction stream encodes all three).

Device buffers, in runtime-sequence order (group ids 3, 4, 5):
- ``a``: bf16 [M, K] row-major (activations, written per call; the DMA tiles it on the way in)
- ``b``: bf16 weights in tile-major layout [N / n, K + k, n] (converted once, resident): each column
  block's K rows, then one k x n params object (f32 words: word 0 = activation code, words
  PARAMS_WORDS.. = the block's n biases), stored pre-permuted so the memtile's s x t re-blocking
  delivers it in order (``kernels/matmul/design.py``: ``pack_weight``)
- ``c``: f32 [M, N] row-major (results)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from xdna_ep.ep.device import DeviceProfile, get_profile
from xdna_ep.kernels.artifacts import ArgSpec, sim_instruction_words, sim_xclbin_manifest

KIND = "matmul"
NAME_PREFIX = "xdna_matmul_"

# params block header (f32 words) in front of each column block's n biases
PARAMS_WORDS = 16
ACTIVATIONS = {"": 0, "gelu": 1}  # activation name -> code in params word 0

# runtime parameters of each core in the dynamic-K design (int32 words): K / k, output tiles per core
RTP_WORDS = 2

ARGS = (
    ArgSpec("a", 3, "bf16", "in"),
    ArgSpec("b", 4, "bf16", "in"),
    ArgSpec("c", 5, "f32", "out"),
)


@dataclass(frozen=True)
class MatmulSpec:
    """One compiled GEMM design (one xclbin): its K (None: dynamic K) and the NPU it is built for."""

    k: int | None  # reduction length baked into the xclbin (padded; 3 x K in accurate mode); None: dynamic
    profile: str = "npu1"
    kind: ClassVar[str] = KIND

    def __post_init__(self) -> None:
        profile = get_profile(self.profile)
        if self.k is not None and (self.k <= 0 or self.k % profile.gemm_k_multiple):
            raise ValueError(f"GEMM design K={self.k} must be a positive multiple of {profile.gemm_k_multiple}")

    @property
    def dynamic_k(self) -> bool:
        """True for the dynamic-K design (K arrives in the instruction stream)."""
        return self.k is None

    @property
    def device_profile(self) -> DeviceProfile:
        return get_profile(self.profile)

    @property
    def tile(self) -> tuple[int, int, int]:
        """Per-core tile (m, k, n)."""
        return self.device_profile.gemm_tile

    @property
    def name(self) -> str:
        return f"{NAME_PREFIX}k{'dyn' if self.dynamic_k else self.k}_{self.profile}"

    @property
    def xclbin_name(self) -> str:
        return f"{self.name}.xclbin"

    def insts_name(self, m: int, k: int, n: int) -> str:
        """Instruction stream for the (M, K, N) bucket (K is in the name only when it is not baked in)."""
        return f"{self.name}_m{m}_k{k}_n{n}.insts.bin" if self.dynamic_k else f"{self.name}_m{m}_n{n}.insts.bin"

    @property
    def c_symbol(self) -> str:
        """The AIE C function computing one m x k x n tile (kernels/matmul/matmul.cc)."""
        return "xdna_matmul_bf16_f32"

    @property
    def zero_symbol(self) -> str:
        return "xdna_zero_f32"

    @property
    def epilogue_symbol(self) -> str:
        return "xdna_bias_gelu_f32"

    @property
    def object_name(self) -> str:
        m, k, n = self.tile
        return f"xdna_mm_{m}x{k}x{n}.o"

    @property
    def args(self) -> tuple[ArgSpec, ...]:
        return ARGS

    def check_shape(self, m: int, k: int, n: int) -> None:
        """ValueError unless (M, K, N) is a legal launch of this design."""
        profile = self.device_profile
        if m <= 0 or m % profile.gemm_m_multiple:
            raise ValueError(f"{self.name}: M={m} must be a positive multiple of {profile.gemm_m_multiple}")
        if self.dynamic_k and (k <= 0 or k % profile.gemm_k_multiple):
            raise ValueError(f"{self.name}: K={k} must be a positive multiple of the per-core k {profile.gemm_k_multiple}")
        if not self.dynamic_k and k != self.k:
            raise ValueError(
                f"instruction stream for K={k} on {self.name}, built for K={self.k} "
                f"(on the device this silently gives wrong results)"
            )
        if n <= 0 or n % profile.gemm_n_multiple:
            raise ValueError(f"{self.name}: N={n} must be a positive multiple of {profile.gemm_n_multiple}")

    def design_shape(self, insts_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(M, K, N) of an instruction stream; ValueError if this design cannot run it (K of another design)."""
        m, k, n = insts_shape
        self.check_shape(m, k, n)
        return m, k, n

    def b_elements(self, k: int, n: int) -> int:
        """bf16 elements of the ``b`` buffer for (K, N): per column block K rows and one params object."""
        return (k + self.tile[1]) * n

    def arg_bytes(self, m: int, k: int, n: int) -> dict[str, int]:
        """Minimum size of each buffer argument for the (M, K, N) bucket."""
        return {"a": m * k * 2, "b": self.b_elements(k, n) * 2, "c": m * n * 4}

    def instruction_words(self, m: int, k: int, n: int):
        """The simulated instruction stream of the (M, K, N) bucket."""
        self.check_shape(m, k, n)
        return sim_instruction_words(KIND, (m, k, n))

    def sim_manifest(self) -> dict:
        m, k, n = self.tile
        params = {"k": self.k, "profile": self.profile, "tile": [m, k, n], "params_words": PARAMS_WORDS}
        return sim_xclbin_manifest(KIND, self.name, ARGS, params)


def is_matmul_design(name: str) -> bool:
    """Whether ``name`` (a design name) is a GEMM design, of either variant."""
    return name.startswith(NAME_PREFIX)
