"""The fused attention design: softmax(q @ k^T * scale [+ causal mask]) @ v for a group of heads in
one launch.

Query rows are spread over all cores (``ATTENTION_Q_ROWS_PER_CORE`` per core per step), keys and values
stream through in tiles of ``ATTENTION_KV_TILE`` with an online softmax whose statistics (row max, row
sum, rescaling) stay in fp32; scores never leave the cores. The head dimension is baked into the
xclbin; heads, padded n_q and n_kv live in the instruction stream; scale, true n_q / n_kv and the
causal flag in the params buffer. The ``accurate`` precision is its own design: q, k, v arrive as bf16
hi + lo parts and both products use three bf16 products (hi*hi + hi*lo + lo*hi).

Device buffers, in runtime-sequence order (group ids 3, 4, 5), laid out as the dataflow of
``kernels/attention/design.py`` streams them:
- ``q``: bf16 [header object | heads x n_q_pad / q_rows query tiles of [parts, q_rows, head_dim]]; the
  header object (one query tile's size) holds the f32 params: scale, n_q, n_kv, causal
- ``kv``: bf16 [heads, n_kv_pad / kv_tile, (k, v), parts, kv_tile, head_dim]
- ``o``: f32 [heads, n_q_pad, head_dim]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from xdna_ep.ep.cost_model import (
    ATTENTION_HEAD_DIM_MULTIPLE,
    ATTENTION_KV_TILE,
    ATTENTION_Q_ROWS_PER_CORE,
    PRECISIONS,
)
from xdna_ep.ep.device import DeviceProfile, get_profile
from xdna_ep.kernels.artifacts import ArgSpec, sim_instruction_words, sim_xclbin_manifest

KIND = "attention"
PARAMS_WORDS = 16
PARTS = {"bf16": 1, "accurate": 2}  # bf16 copies of each of q, k, v per precision

ARGS = (
    ArgSpec("q", 3, "bf16", "in"),
    ArgSpec("kv", 4, "bf16", "in"),
    ArgSpec("o", 5, "f32", "out"),
)


@dataclass(frozen=True)
class AttentionSpec:
    """One compiled attention design (one xclbin): head dimension, precision, NPU."""

    head_dim: int  # padded head dimension baked into the xclbin
    precision: str = "bf16"
    profile: str = "npu1"
    kind: ClassVar[str] = KIND

    def __post_init__(self) -> None:
        get_profile(self.profile)
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}: valid precisions are {', '.join(PRECISIONS)}")
        if self.head_dim <= 0 or self.head_dim % ATTENTION_HEAD_DIM_MULTIPLE:
            raise ValueError(
                f"attention head_dim={self.head_dim} must be a positive multiple of {ATTENTION_HEAD_DIM_MULTIPLE}"
            )

    @property
    def device_profile(self) -> DeviceProfile:
        return get_profile(self.profile)

    @property
    def parts(self) -> int:
        return PARTS[self.precision]

    @property
    def q_multiple(self) -> int:
        return self.device_profile.cores * ATTENTION_Q_ROWS_PER_CORE

    @property
    def kv_multiple(self) -> int:
        return ATTENTION_KV_TILE

    @property
    def name(self) -> str:
        return f"xdna_attention_d{self.head_dim}_{self.precision}_{self.profile}"

    @property
    def xclbin_name(self) -> str:
        return f"{self.name}.xclbin"

    def insts_name(self, heads: int, n_q: int, n_kv: int) -> str:
        return f"{self.name}_h{heads}_q{n_q}_kv{n_kv}.insts.bin"

    @property
    def c_symbol(self) -> str:
        """The AIE C function processing one (query tile, key tile) step (kernels/attention/attention.cc)."""
        return f"xdna_attention_step_{self.precision}"

    @property
    def params_symbol(self) -> str:
        """Copies the launch's params header object into the core's state (once per launch)."""
        return "xdna_attention_params"

    @property
    def init_symbol(self) -> str:
        return "xdna_attention_init"

    @property
    def finish_symbol(self) -> str:
        return "xdna_attention_finish"

    @property
    def object_name(self) -> str:
        return f"xdna_attention_d{self.head_dim}_{self.precision}.o"

    @property
    def args(self) -> tuple[ArgSpec, ...]:
        return ARGS

    def check_shape(self, heads: int, n_q: int, n_kv: int) -> None:
        if heads <= 0:
            raise ValueError(f"{self.name}: heads={heads} must be positive")
        if n_q <= 0 or n_q % self.q_multiple:
            raise ValueError(f"{self.name}: n_q={n_q} must be a positive multiple of {self.q_multiple}")
        if n_kv <= 0 or n_kv % self.kv_multiple:
            raise ValueError(f"{self.name}: n_kv={n_kv} must be a positive multiple of {self.kv_multiple}")

    def design_shape(self, insts_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(heads, n_q, n_kv) of an instruction stream's (heads, n_q, n_kv, head_dim)."""
        heads, n_q, n_kv, head_dim = insts_shape
        if head_dim != self.head_dim:
            raise ValueError(f"instruction stream for head_dim={head_dim} on {self.name}, built for {self.head_dim}")
        return heads, n_q, n_kv

    def arg_bytes(self, heads: int, n_q: int, n_kv: int) -> dict[str, int]:
        d, q_tile = self.head_dim, self.parts * ATTENTION_Q_ROWS_PER_CORE * self.head_dim
        return {
            "q": (1 + heads * n_q // ATTENTION_Q_ROWS_PER_CORE) * q_tile * 2,
            "kv": 2 * self.parts * heads * n_kv * d * 2,
            "o": heads * n_q * d * 4,
        }

    def instruction_words(self, heads: int, n_q: int, n_kv: int):
        self.check_shape(heads, n_q, n_kv)
        return sim_instruction_words(KIND, (heads, n_q, n_kv, self.head_dim))

    def sim_manifest(self) -> dict:
        params = {
            "head_dim": self.head_dim,
            "precision": self.precision,
            "profile": self.profile,
            "q_rows_per_core": ATTENTION_Q_ROWS_PER_CORE,
            "kv_tile": ATTENTION_KV_TILE,
        }
        return sim_xclbin_manifest(KIND, self.name, ARGS, params)
